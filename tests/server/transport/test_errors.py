"""Malformed requests against a real server: the right status, a message naming the
problem, and the server keeps serving everyone else."""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest
from kairos.protos import codec
from kairos.protos import grpc_service_pb2 as pb
from kairos.protos import grpc_service_pb2_grpc as pb_grpc
from kairos_testing.models import standard_repository
from kairos_testing.server import running_server

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(standard_repository(tmp_path_factory.mktemp("repo"))) as process:
        yield process


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def fp32_request(model: str = "identity_fp32", rows: int = 2, width: int = 4) -> pb.ModelInferRequest:
    return codec.build_request(model, {"input": np.ones((rows, width), np.float32)})


def expect_error(stub, request, code: grpc.StatusCode, *fragments: str) -> str:
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(request, timeout=10)
    assert error.value.code() == code, error.value.details()
    for fragment in fragments:
        assert fragment in error.value.details()
    return error.value.details()


def test_valid_request_succeeds(stub):
    response = stub.ModelInfer(fp32_request(), timeout=10)
    np.testing.assert_array_equal(codec.decode_response_outputs(response)["output"], np.ones((2, 4)))


def test_unknown_model_and_version_are_not_found(stub):
    expect_error(stub, fp32_request("missing"), grpc.StatusCode.NOT_FOUND, "missing")
    request = fp32_request()
    request.model_version = "9"
    expect_error(stub, request, grpc.StatusCode.NOT_FOUND, "version 9")


def test_wrong_datatype_names_the_input(stub):
    request = codec.build_request("identity_fp32", {"input": np.ones((1, 4), np.float64)})
    expect_error(stub, request, INVALID, "'input'", "FP64", "FP32")


def test_wrong_rank_and_dims(stub):
    expect_error(
        stub, codec.build_request("identity_fp32", {"input": np.ones(4, np.float32)}), INVALID, "'input'", "dimensions"
    )
    expect_error(stub, fp32_request(width=5), INVALID, "'input'", "dimension 1 is 5")


def test_byte_length_disagreeing_with_shape(stub):
    request = fp32_request()
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    expect_error(stub, request, INVALID, "'input'", "28 bytes", "needs 32")


def test_missing_and_unknown_inputs(stub):
    request = codec.build_request("add_sub", {"a": np.ones((1, 4), np.float32)})
    expect_error(stub, request, INVALID, "missing input 'b'")
    request = codec.build_request(
        "identity_fp32", {"input": np.ones((1, 4), np.float32), "extra": np.ones((1, 4), np.float32)}
    )
    expect_error(stub, request, INVALID, "unknown input 'extra'")


def test_raw_count_mismatch_and_mixed_contents(stub):
    request = fp32_request()
    request.raw_input_contents.append(b"")
    expect_error(stub, request, INVALID, "raw_input_contents")
    request = fp32_request()
    request.inputs[0].contents.fp32_contents.extend([1.0] * 8)
    expect_error(stub, request, INVALID, "both raw_input_contents and contents")


def test_typed_contents_are_accepted(stub):
    request = pb.ModelInferRequest(model_name="identity_fp32")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    response = stub.ModelInfer(request, timeout=10)
    np.testing.assert_array_equal(codec.decode_response_outputs(response)["output"], [[1, 2, 3, 4]])


def test_broken_bytes_length_prefix(stub):
    request = pb.ModelInferRequest(model_name="identity_bytes")
    request.inputs.add(name="input", datatype="BYTES", shape=[1, 2])
    request.raw_input_contents.append(struct.pack("<I", 3) + b"abc" + struct.pack("<I", 99) + b"x")
    expect_error(stub, request, INVALID, "'input'", "length prefix 99")


def test_negative_dims_bf16_and_unknown_datatype(stub):
    request = fp32_request()
    request.inputs[0].shape[0] = -2
    expect_error(stub, request, INVALID, "negative dimension")
    request = fp32_request()
    request.inputs[0].datatype = "BF16"
    expect_error(stub, request, INVALID, "BF16 is not supported")
    request.inputs[0].datatype = "FLOAT32"
    expect_error(stub, request, INVALID, "unknown datatype 'FLOAT32'")


def test_unknown_requested_output(stub):
    request = fp32_request()
    request.outputs.add(name="nope")
    expect_error(stub, request, INVALID, "unknown output 'nope'")


def test_wrong_typed_parameters(stub):
    request = fp32_request()
    request.parameters["timeout"].string_param = "soon"
    expect_error(stub, request, INVALID, "'timeout'")
    request = fp32_request()
    request.parameters["priority"].int64_param = -1
    expect_error(stub, request, INVALID, "'priority'")


def test_batch_size_disagreement_between_inputs(stub):
    request = codec.build_request(
        "add_sub", {"a": np.ones((2, 4), np.float32), "b": np.ones((3, 4), np.float32)}
    )
    expect_error(stub, request, INVALID, "'b'", "3 rows")


def test_model_without_batch_dim(stub):
    response = stub.ModelInfer(codec.build_request("fixed", {"input": np.ones((2, 4), np.float32)}), timeout=10)
    assert codec.decode_response_outputs(response)["output"].shape == (2, 4)
    expect_error(stub, codec.build_request("fixed", {"input": np.ones((3, 4), np.float32)}), INVALID)


def test_invalid_model_names_cannot_reach_outside(stub):
    for name in ("../secrets", "/etc/passwd", "a/b", ".."):
        request = fp32_request(name)
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(request, timeout=10)
        assert error.value.code() in (INVALID, grpc.StatusCode.NOT_FOUND)
    with pytest.raises(grpc.RpcError) as error:
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="../x"), timeout=10)
    assert error.value.code() == INVALID


def test_corrupt_model_is_unavailable(stub):
    expect_error(stub, fp32_request("broken"), grpc.StatusCode.UNAVAILABLE, "broken")
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
    broken = [m for m in index.models if m.name == "broken"]
    assert broken and broken[0].state == "UNAVAILABLE" and broken[0].reason


def test_health_and_reflection_services(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(server.address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=5
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        services = {s.name for reply in replies for s in reply.list_services_response.service}
        assert "inference.GRPCInferenceService" in services


def test_server_still_serves_after_all_errors(server, stub):
    assert server.alive()
    test_valid_request_succeeds(stub)
