"""Configured limits and the status each answers with:

| limit                         | where                                   | status             |
|-------------------------------|-----------------------------------------|--------------------|
| message size                  | `--max-message-mb`                      | RESOURCE_EXHAUSTED |
| rows per request              | `--max-rows-per-request`                | RESOURCE_EXHAUSTED |
| queued rows per model         | config `scheduling.max_queued_rows`     | RESOURCE_EXHAUSTED |
| concurrent ModelStreamInfer   | `--max-streams`                         | RESOURCE_EXHAUSTED |
| calls waiting in gRPC's core  | `--max-pending-rpcs`                    | CANCELLED (by gRPC)|

All are "too much at once" refusals a client may retry smaller or elsewhere,
hence one status; malformed content is INVALID_ARGUMENT.
"""

from __future__ import annotations

import queue
import threading

import grpc
import numpy as np
import pytest
from kairos.protos import codec
from kairos.protos import grpc_service_pb2_grpc as pb_grpc
from kairos_testing.models import identity, write_model
from kairos_testing.reliability import mlp
from kairos_testing.server import running_server

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
MAX_STREAMS = 2
MAX_ROWS = 32
QUEUE_ROWS = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "identity_fp32", identity())
    write_model(repo, "slow", mlp(512, 6), config=(
        "max_batch_size: 2\nscheduling:\n  policy: fixed\n  execution: thread\n"
        f"  max_queued_rows: {QUEUE_ROWS}\n  profile_budget_s: 0.2\n"))
    args = ("--max-streams", str(MAX_STREAMS), "--max-rows-per-request", str(MAX_ROWS),
            "--max-message-mb", "1")
    with running_server(repo, *args) as process:
        yield process


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 8 << 20)]) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def rows_request(model: str, rows: int, width: int = 4):
    return codec.build_request(model, {"input": np.ones((rows, width), np.float32)})


class OpenStream:
    """A ModelStreamInfer call held open until closed, fed one request at a time."""

    def __init__(self, stub) -> None:
        self._requests: queue.Queue = queue.Queue()
        self.replies = stub.ModelStreamInfer(iter(self._requests.get, None), timeout=60)

    def roundtrip(self) -> None:
        self._requests.put(rows_request("identity_fp32", 1))
        reply = next(self.replies)
        assert not reply.error_message, reply.error_message

    def close(self) -> None:
        self._requests.put(None)
        for _ in self.replies:
            pass


def test_streams_beyond_the_limit_are_resource_exhausted(stub):
    streams = [OpenStream(stub) for _ in range(MAX_STREAMS)]
    for stream in streams:
        stream.roundtrip()  # each is open and counted on the server
    extra = OpenStream(stub)
    with pytest.raises(grpc.RpcError) as error:
        extra.roundtrip()
    assert error.value.code() == EXHAUSTED
    assert f"at most {MAX_STREAMS}" in error.value.details()
    streams.pop().close()
    # A closed stream frees its slot.
    replacement = OpenStream(stub)
    replacement.roundtrip()
    replacement.close()
    for stream in streams:
        stream.close()


def test_rows_per_request(stub):
    stub.ModelInfer(rows_request("identity_fp32", MAX_ROWS), timeout=10)
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(rows_request("identity_fp32", MAX_ROWS + 1), timeout=10)
    assert error.value.code() == EXHAUSTED
    assert f"at most {MAX_ROWS}" in error.value.details()


def test_message_size(stub):
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(rows_request("identity_fp32", 20, width=(1 << 20) // 80 + 10), timeout=10)
    assert error.value.code() == EXHAUSTED
    assert error.value.details()


def test_queued_rows(server, stub):
    # More rows than the queue may ever hold: refused at once, whatever the load.
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(rows_request("slow", QUEUE_ROWS + 1, width=512), timeout=10)
    assert error.value.code() == EXHAUSTED
    assert "queue full" in error.value.details()
    # Under a burst, requests are either served or refused: nothing else.
    futures = [stub.ModelInfer.future(rows_request("slow", 1, width=512), timeout=30) for _ in range(100)]
    codes = [f.code() for f in futures]
    assert set(codes) <= {grpc.StatusCode.OK, EXHAUSTED}
    assert grpc.StatusCode.OK in codes
    assert server.alive()


def test_stream_slot_is_released_when_the_client_cancels(stub):
    """A client that vanishes mid-stream must not keep its slot forever."""
    for _ in range(MAX_STREAMS + 2):
        stream = OpenStream(stub)
        stream.roundtrip()
        stream.replies.cancel()
    done = threading.Event()
    last = OpenStream(stub)

    def check() -> None:
        last.roundtrip()
        done.set()

    # Slots are freed as cancellations reach the server; retry briefly.
    for _ in range(50):
        try:
            check()
            break
        except grpc.RpcError as error:
            assert error.code() == EXHAUSTED
            threading.Event().wait(0.1)
            last = OpenStream(stub)
    assert done.is_set()
    last.close()


def test_requests_beyond_the_pending_limit_are_refused_natively_and_the_rest_served(tmp_path):
    """`--max-pending-rpcs`: past that many requests received and not yet answered,
    the native front end refuses new ones at once (RESOURCE_EXHAUSTED, never the
    CANCELLED grpc.aio's core sent); the rest are served, and the server serves on."""
    write_model(tmp_path, "slow", mlp(512, 6), config=(
        "max_batch_size: 1\nscheduling:\n  policy: none\n  execution: inline\n"
        "  profile_budget_s: 0.2\n"))
    with running_server(tmp_path, "--max-pending-rpcs", "1") as server, \
            grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = rows_request("slow", 1, width=512)
        calls = [stub.ModelInfer.future(request, timeout=60) for _ in range(200)]
        codes = [call.code() for call in calls]
        shed = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert codes.count(grpc.StatusCode.OK) + shed == len(calls), set(codes)
        assert shed > 0 and codes.count(grpc.StatusCode.OK) > 0
        refused = next(call for call in calls if call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert "queue full" in refused.details()
        assert stub.ModelInfer(request, timeout=30).model_name == "slow"
