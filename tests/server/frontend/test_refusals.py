"""What the native front end refuses on its own, against a real `kairos serve`: long
user-supplied strings come back as NOT_FOUND / INVALID_ARGUMENT with a short message
(never echoed whole, which would turn into RESOURCE_EXHAUSTED at the client's metadata
limit), deadlines that already passed, and a server that keeps serving afterwards."""

from __future__ import annotations

import urllib.request

import grpc
import numpy as np
import pytest
from kairos.protos import codec
from kairos.protos import grpc_service_pb2 as pb
from kairos.protos import grpc_service_pb2_grpc as pb_grpc
from kairos_testing.models import standard_repository
from kairos_testing.server import running_server

LONG = "n" * 10_000


@pytest.fixture(scope="module")
def channel(tmp_path_factory):
    repo = standard_repository(tmp_path_factory.mktemp("repo"))
    with running_server(repo) as server, grpc.insecure_channel(server.address) as channel:
        yield channel


@pytest.fixture
def stub(channel):
    return pb_grpc.GRPCInferenceServiceStub(channel)


def _request(**changes) -> pb.ModelInferRequest:
    request = codec.build_request("identity_fp32", {"input": np.ones((1, 4), np.float32)})
    for key, value in changes.items():
        if key == "datatype":
            request.inputs[0].datatype = value
        elif key == "input_name":
            request.inputs[0].name = value
        elif key == "output_name":
            request.outputs.add().name = value
        else:
            setattr(request, key, value)
    return request


@pytest.mark.parametrize("changes,code", [
    ({"model_name": LONG}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"model_name": "n" * 120}, grpc.StatusCode.NOT_FOUND),
    ({"model_version": "9" * 10_000}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"datatype": "D" * 10_000}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"input_name": LONG}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"output_name": LONG}, grpc.StatusCode.INVALID_ARGUMENT),
])
def test_long_user_strings_get_their_status_with_a_short_message(stub, changes, code):
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(_request(**changes), timeout=10)
    assert caught.value.code() == code, caught.value.details()
    assert len(caught.value.details()) < 300


@pytest.mark.parametrize("call,request_", [
    ("ModelMetadata", pb.ModelMetadataRequest(name=LONG)),
    ("ModelConfig", pb.ModelConfigRequest(name=LONG)),
    ("ModelReady", pb.ModelReadyRequest(name="identity_fp32", version="1" * 10_000)),
    ("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name=LONG)),
])
def test_long_names_in_other_rpcs_are_not_echoed_whole(stub, call, request_):
    with pytest.raises(grpc.RpcError) as caught:
        getattr(stub, call)(request_, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert len(caught.value.details()) < 300


def test_a_microsecond_deadline_is_refused_or_probed_and_the_server_serves_on(stub):
    """An idle model admits even a hopeless request now and then (the scheduler's probe
    relearns L(1)); otherwise it is refused for its deadline. Either way nothing breaks."""
    codes = set()
    request = _request()
    # the `timeout` parameter (µs), not the gRPC deadline: a client's own 1 µs deadline may
    # be rounded up by its timers, and a warm server then answers within it
    request.parameters["timeout"].int64_param = 1
    for _ in range(20):
        try:
            stub.ModelInfer(request, timeout=10)
            codes.add(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.add(exc.code())
            assert "deadline" in exc.details().lower(), exc.details()
    assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED,
                     grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert codes - {grpc.StatusCode.OK}, "20 microsecond deadlines, none refused"
    reply = stub.ModelInfer(_request(id="after"), timeout=10)
    assert reply.id == "after"
    assert codec.decode_response_outputs(reply)["output"].tolist() == [[1.0] * 4]


def test_undecodable_bytes_are_invalid_argument(channel):
    raw_infer = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=lambda b: b,
        response_deserializer=pb.ModelInferResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as caught:
        raw_infer(b"\xff\xff\xff", timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_native_refusals_are_counted_in_the_metrics(tmp_path):
    repo = standard_repository(tmp_path / "repo")
    with running_server(repo) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(3):
            with pytest.raises(grpc.RpcError):
                stub.ModelInfer(_request(model_name="absent"), timeout=10)
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(_request(datatype="INT8"), timeout=10)
        stub.ModelInfer(_request(), timeout=10)  # a hand-off after the refusals feeds them
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics").read().decode()
    assert 'kairos_frontend_refusals_total{reason="not_found"} 3.0' in text
    assert 'kairos_frontend_refusals_total{reason="invalid_argument"} 1.0' in text
    failures = [line for line in text.splitlines()
                if line.startswith("kairos_request_failures_total") and 'model="identity_fp32"' in line
                and 'reason="invalid_argument"' in line]
    assert failures and failures[0].endswith(" 1"), failures
