"""A paced closed-loop load (grpc.aio, one thread) that records every request's outcome.

`workers` coroutines each send one request, wait for its answer, then wait out
the rest of their period (`workers / rate` seconds), so the offered rate stays at
`rate` while the system keeps up and falls (closed loop) when it does not.
Every request is recorded with its start and end times (time.monotonic), its
status and, for failures, the details.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np
from kairos.protos import codec
from kairos.protos import grpc_service_pb2_grpc as pb_grpc


@dataclass
class Record:
    start: float
    end: float
    code: str  # "OK", "WRONG" (answered, wrong output), or a gRPC status name
    details: str = ""


class PacedLoad(threading.Thread):
    """Offers `rate` requests/s (closed loop, `workers` at a time) until stopped."""

    def __init__(self, address: str, model: str, x: np.ndarray,
                 check: Callable[[np.ndarray], bool], rate: float | None,
                 workers: int = 16, timeout_s: float = 5.0, max_seconds: float = 90.0) -> None:
        super().__init__(daemon=True)
        self.address, self.model, self.x, self.check = address, model, x, check
        self.rate, self.workers, self.timeout_s = rate, workers, timeout_s
        self.max_seconds = max_seconds  # a bound even if the test forgets to stop it
        self.records: list[Record] = []
        self.inflight = 0
        self._halt = threading.Event()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        request = codec.build_request(self.model, {"input": self.x})
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            ends = time.monotonic() + self.max_seconds
            await asyncio.gather(*(self._worker(i, stub, request, ends) for i in range(self.workers)))

    async def _worker(self, index: int, stub, request, ends: float) -> None:
        period = self.workers / self.rate if self.rate else 0.0
        due = time.monotonic() + period * index / self.workers
        while not self._halt.is_set() and time.monotonic() < ends:
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            due = max(due + period, time.monotonic())
            await self._one(stub, request)

    async def _one(self, stub, request) -> None:
        start = time.monotonic()
        self.inflight += 1
        try:
            reply = await stub.ModelInfer(request, timeout=self.timeout_s)
            out = codec.decode_response_outputs(reply)["output"]
            code, details = ("OK", "") if self.check(out) else ("WRONG", "wrong answer")
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code().name, exc.details() or ""
        finally:
            self.inflight -= 1
        self.records.append(Record(start, time.monotonic(), code, details))

    def finish(self) -> list[Record]:
        self._halt.set()
        self.join(self.timeout_s + 15)
        assert not self.is_alive(), "load generator did not stop"
        return self.records

    # ---- reading the records -----------------------------------------------------------

    def ok_count(self) -> int:
        return sum(1 for r in list(self.records) if r.code == "OK")

    def wait_for_ok(self, more: int, timeout: float = 30.0) -> None:
        """Block until `more` further requests succeeded."""
        target = self.ok_count() + more
        end = time.monotonic() + timeout
        while self.ok_count() < target:
            assert time.monotonic() < end, f"load stalled: {summary(self.records)}"
            time.sleep(0.01)


def failures(records: list[Record]) -> list[Record]:
    return [r for r in records if r.code != "OK"]


def summary(records: list[Record]) -> dict[str, int]:
    return dict(Counter(r.code for r in records))


def throughput(records: list[Record]) -> float:
    """Successful requests per second over the span of the records."""
    ok = [r for r in records if r.code == "OK"]
    if len(ok) < 2:
        return 0.0
    span = max(r.end for r in ok) - min(r.start for r in ok)
    return len(ok) / span if span > 0 else 0.0


def in_flight_at(records: list[Record], moment: float) -> list[Record]:
    return [r for r in records if r.start <= moment < r.end]
