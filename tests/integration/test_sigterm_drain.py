"""SIGTERM under load: every request sent before the signal is answered.

16 closed-loop clients keep a server busy; the test sends SIGTERM and records when.
Requests sent before that instant must all succeed (they reached the server and
must be served); requests sent after it may be refused with UNAVAILABLE, nothing
else; the server exits 0. Five repetitions, each on a fresh server process."""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
import numpy as np
from kairos.protos import codec
from kairos.protos import grpc_service_pb2_grpc as pb_grpc
from kairos_testing.server import running_server

CLIENTS = 16
REPETITIONS = 5
LOAD_BEFORE_SIGNAL_S = 1.0


async def _client(stub, request, stop_at: list[float], records: list) -> None:
    while True:
        sent = time.monotonic()
        if stop_at and sent > stop_at[0]:
            return
        try:
            await stub.ModelInfer(request, timeout=10)
            records.append((sent, "OK"))
        except grpc.aio.AioRpcError as exc:
            records.append((sent, exc.code().name))
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                await asyncio.sleep(0.005)


async def _load_then_sigterm(server) -> tuple[float, list]:
    request = codec.build_request("mlp256", {"input": np.ones((1, 256), np.float32)})
    records: list = []
    stop_at: list[float] = []
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        clients = [asyncio.ensure_future(_client(stub, request, stop_at, records))
                   for _ in range(CLIENTS)]
        await asyncio.sleep(LOAD_BEFORE_SIGNAL_S)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        stop_at.append(signalled + 0.5)
        await asyncio.gather(*clients)
    return signalled, records


def test_sigterm_under_load_serves_every_request_sent_before_it():
    for repetition in range(REPETITIONS):
        with running_server(None, "--grace-seconds", "10") as server:
            signalled, records = asyncio.run(_load_then_sigterm(server))
            assert server.process.wait(20) == 0, server.log()
        before = [outcome for sent, outcome in records if sent < signalled]
        after = {outcome for sent, outcome in records if sent >= signalled}
        failed = [o for o in before if o != "OK"]
        assert len(before) > 100, f"repetition {repetition}: only {len(before)} requests before"
        assert not failed, f"repetition {repetition}: {len(failed)} sent before SIGTERM failed: {failed[:5]}"
        assert after <= {"OK", "UNAVAILABLE"}, f"repetition {repetition}: {after}"
