"""Failure isolation: a model that fails at run time for some inputs fails only the
requests of that batch (INTERNAL, with onnxruntime's message), and the server
keeps serving; a bad request that validation can catch up front never joins a
batch, so it cannot fail its neighbours."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from kairos.protos import codec
from kairos.protos import grpc_service_pb2 as pb
from kairos.protos import grpc_service_pb2_grpc as pb_grpc
from kairos_testing.models import identity, write_model
from kairos_testing.reliability import TABLE_ROWS, gather_table, mlp, mlp_reference
from kairos_testing.server import running_server
from onnx import TensorProto

INTERNAL = grpc.StatusCode.INTERNAL
INVALID = grpc.StatusCode.INVALID_ARGUMENT
TIMEOUT = 60
MLP = mlp(256, 4, seed=3)
GATHER_BATCH = 4
# Slow enough (a few ms a row) that requests queue behind each running batch.
GATHER_WORK = 3_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    # Batches of at most GATHER_BATCH requests, held 2 ms to fill: a failing request has
    # neighbours, and at most GATHER_BATCH - 1 of them.
    write_model(repo, "gather", gather_table(work=GATHER_WORK), config=(
        f"max_batch_size: {GATHER_BATCH}\n"
        "scheduling:\n  policy: fixed\n  max_queue_delay_ms: 2\n"
    ))
    # The same model, one request per execution: no neighbours to take down.
    write_model(repo, "gather_alone", gather_table(), config="scheduling:\n  policy: none\n")
    write_model(repo, "mlp", MLP, config="scheduling:\n  policy: fixed\n  max_queue_delay_ms: 2\n")
    # Holds requests 5 ms to batch them: neighbours certainly share batches.
    write_model(repo, "text", identity(TensorProto.STRING, width=2),
                config="scheduling:\n  policy: fixed\n  max_queue_delay_ms: 5\n")
    with running_server(repo) as process:
        yield process


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def gather_request(model: str, index: int, rows: int = 1) -> pb.ModelInferRequest:
    return codec.build_request(model, {"indices": np.full((rows, 1), index, np.int64)})


def expected_rows(index: int, rows: int = 1) -> np.ndarray:
    table = np.arange(TABLE_ROWS * 4, dtype=np.float32).reshape(TABLE_ROWS, 4)
    return np.repeat(table[index][None, None, :], rows, axis=0)


def test_runtime_failure_is_internal_with_the_models_message(stub):
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(gather_request("gather", 1000), timeout=TIMEOUT)
    assert error.value.code() == INTERNAL
    assert "gather" in error.value.details() and "failed" in error.value.details()
    # ...and the next request to the same model is served normally.
    reply = stub.ModelInfer(gather_request("gather", 3, rows=2), timeout=TIMEOUT)
    np.testing.assert_array_equal(codec.decode_response_outputs(reply)["output"], expected_rows(3, 2))


def _gather_mix(stub, model: str, count: int = 300, bad_every: int = 3):
    """Concurrent requests, every `bad_every`-th one out of range; (index, future) pairs."""
    sent = []
    for i in range(count):
        index = 50 + i if i % bad_every == 0 else i % TABLE_ROWS
        sent.append((index, stub.ModelInfer.future(gather_request(model, index), timeout=TIMEOUT)))
    return sent


def test_runtime_failures_fail_only_their_batch(server, stub):
    sent = _gather_mix(stub, "gather", count=300, bad_every=20)
    bad = sum(index >= TABLE_ROWS for index, _ in sent)
    failed_good = 0
    for index, future in sent:
        if index >= TABLE_ROWS:
            assert future.code() == INTERNAL and "failed" in future.details()
        elif future.code() == grpc.StatusCode.OK:
            out = codec.decode_response_outputs(future.result())["output"]
            np.testing.assert_array_equal(out, expected_rows(index))
        else:
            # A good request shares the fate of a bad one only when batched with it.
            assert future.code() == INTERNAL and "failed" in future.details()
            failed_good += 1
    # Each failing batch holds one bad request at least and GATHER_BATCH requests at most:
    # no more than GATHER_BATCH - 1 good neighbours fail per bad request. A failure that
    # took down more (the whole queue, every request in flight) breaks this bound.
    assert failed_good <= (GATHER_BATCH - 1) * bad, (
        f"{failed_good} good requests failed beside {bad} bad ones in batches of "
        f"at most {GATHER_BATCH}"
    )
    assert server.alive()
    reply = stub.ModelInfer(gather_request("gather", 7), timeout=TIMEOUT)
    np.testing.assert_array_equal(codec.decode_response_outputs(reply)["output"], expected_rows(7))


def test_without_batching_no_good_request_fails(stub):
    for index, future in _gather_mix(stub, "gather_alone"):
        if index >= TABLE_ROWS:
            assert future.code() == INTERNAL
        else:
            assert future.code() == grpc.StatusCode.OK, future.details()


def _bad_up_front(i: int) -> pb.ModelInferRequest:
    """Requests validation refuses before queueing (shape, datatype, byte count)."""
    kind = i % 3
    if kind == 0:
        return codec.build_request("mlp", {"input": np.ones((2, 255), np.float32)})
    if kind == 1:
        return codec.build_request("mlp", {"input": np.ones((2, 256), np.float64)})
    request = codec.build_request("mlp", {"input": np.ones((2, 256), np.float32)})
    request.raw_input_contents[0] = request.raw_input_contents[0][:-1]
    return request


def test_bad_requests_caught_up_front_never_fail_their_neighbours(stub):
    rng = np.random.default_rng(0)
    sent = []
    for i in range(400):
        if i % 4 == 0:
            sent.append((None, stub.ModelInfer.future(_bad_up_front(i), timeout=TIMEOUT)))
        else:
            x = rng.standard_normal((1 + i % 3, 256)).astype(np.float32)
            sent.append((x, stub.ModelInfer.future(codec.build_request("mlp", {"input": x}),
                                                   timeout=TIMEOUT)))
    for x, future in sent:
        if x is None:
            assert future.code() == INVALID and future.details()
        else:
            assert future.code() == grpc.StatusCode.OK, future.details()
            out = codec.decode_response_outputs(future.result())["output"]
            np.testing.assert_allclose(out, mlp_reference(MLP, x), rtol=1e-4, atol=1e-4)
    # The good requests really were batched together (fewer executions than requests).
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="mlp"), timeout=TIMEOUT)
    model = stats.model_stats[0]
    assert model.execution_count < model.inference_count


def test_non_utf8_text_is_refused_alone(stub):
    """ONNX string tensors need UTF-8. A request carrying other bytes is refused up
    front (INVALID_ARGUMENT); it must not fail the requests batched with it."""
    sent = []
    for i in range(200):
        bad = i % 4 == 0
        items = np.array([[b"\xff\xfe" if bad else "caf\u00e9".encode(), str(i).encode()]], dtype=object)
        sent.append((bad, stub.ModelInfer.future(codec.build_request("text", {"input": items}),
                                                 timeout=TIMEOUT)))
    for bad, future in sent:
        if bad:
            assert future.code() == INVALID and "UTF-8" in future.details()
        else:
            assert future.code() == grpc.StatusCode.OK, future.details()
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="text"), timeout=TIMEOUT)
    assert stats.model_stats[0].execution_count < stats.model_stats[0].inference_count
