"""The streaming loop of `kairos batch`: chunks out over ModelStreamInfer, outputs back in order.

Chunks of `rows_per_request` rows go out on one `ModelStreamInfer` stream (through
`AsyncInferenceClient.stream_infer_responses`, which keeps `in_flight` requests
outstanding and hands results back in request order). Results are written in row order
through a reorder buffer keyed by chunk index: a chunk re-sent after a refusal comes back
later than its successors, which wait in the buffer (bounded: sending pauses while the
buffer is `MAX_AHEAD` chunks ahead of the writer).

Retries: a chunk refused with UNAVAILABLE, RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED is
re-sent after exponential backoff with full jitter; a stream that breaks (server restart,
connection lost) or goes silent for `stall_timeout_s` (a hung server) is re-opened and
every unanswered chunk re-sent. `max_retries`
consecutive failures without progress end the run.

Window: RESOURCE_EXHAUSTED means the server's queue is full (Kairos bounds queued rows per
model, batch rows included), so the number of requests outstanding is halved (down to 1)
and grows back by one per answered request, up to `in_flight` (AIMD): batch work backs off
instead of hammering a full queue.

The request deadline: batch work must not be refused for a deadline it was never meant to
have, so each request carries the `timeout` parameter (µs, default 10 minutes) and the
stream itself has no gRPC deadline (Kairos applies a stream's gRPC deadline to the whole
stream, not per request).
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._common import InferenceServerError
from ..aio_client import AsyncInferenceClient

RETRYABLE = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"})
# The request parameter that marks batch-mode work (server/transport/servicer.py).
BATCH_CLASS_PARAMETER = "kairos_class"


class BatchFailed(RuntimeError):
    """The run stopped before every row was done (the checkpoint says where)."""


@dataclass
class RetryPolicy:
    max_retries: int = 10  # consecutive failures without any progress
    base_s: float = 0.05
    cap_s: float = 5.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
        return self.rng.uniform(0.0, min(self.cap_s, self.base_s * (2 ** attempt)))


@dataclass
class Chunk:
    index: int
    start: int
    inputs: dict[str, np.ndarray]
    attempts: int = 0


@dataclass
class EngineStats:
    rows: int = 0  # rows written by this run
    requests: int = 0
    retries: int = 0
    reopened: int = 0
    errors: collections.Counter = field(default_factory=collections.Counter)


def status_of(error: InferenceServerError) -> str:
    """The gRPC status name of an error; stream errors carry it as 'STATUS: message'."""
    if error.status == "STREAM_ERROR":
        head = error.message.split(":", 1)[0].strip()
        if head.isupper() and head.replace("_", "").isalpha():
            return head
    return error.status


class StreamEngine:
    """Runs one job's chunks through a stream; `on_rows(start, outputs)` gets them in order."""

    MAX_AHEAD_FACTOR = 4

    def __init__(
        self,
        client: AsyncInferenceClient,
        model: str,
        chunks: Iterator[Chunk],
        on_rows: Callable[[int, dict[str, np.ndarray]], None],
        *,
        version: str = "",
        outputs: list[str] | None = None,
        in_flight: int = 4,
        timeout_us: int = 600_000_000,
        retry: RetryPolicy | None = None,
        on_progress: Callable[[int], None] | None = None,
        stall_timeout_s: float | None = None,
    ):
        self.client = client
        self.model = model
        self.version = version
        self.outputs = outputs
        self.in_flight = max(1, in_flight)
        self.parameters = {BATCH_CLASS_PARAMETER: "batch", "timeout": int(timeout_us)}
        # The server answers (or expires) every request by its timeout; silence well past
        # it means a hung server.
        self.stall_timeout_s = stall_timeout_s or timeout_us / 1e6 + 30.0
        self.retry = retry or RetryPolicy()
        self.on_rows = on_rows
        self.on_progress = on_progress
        self.stats = EngineStats()
        self._fresh = chunks
        self._exhausted = False
        self._ready: collections.deque[Chunk] = collections.deque()  # to (re)send
        self._waiting = 0  # chunks in backoff
        self._done: dict[int, dict[str, np.ndarray]] = {}
        self._starts: dict[int, int] = {}
        self._next_write = None  # first chunk index not yet written
        self._sent = 0  # chunks handed out (fresh)
        self._changed = asyncio.Event()
        self._failures = 0  # consecutive, reset by progress
        self._max_ahead = self.in_flight * self.MAX_AHEAD_FACTOR
        self.window = self.in_flight  # adaptive limit on outstanding requests (AIMD)
        self._outstanding = 0

    # -- chunk bookkeeping ------------------------------------------------------------

    def _take_fresh(self) -> Chunk | None:
        if self._exhausted:
            return None
        if self._next_write is not None and self._sent - self._next_write >= self._max_ahead:
            return None  # the reorder buffer is far enough ahead: wait for the writer
        chunk = next(self._fresh, None)
        if chunk is None:
            self._exhausted = True
            return None
        if self._next_write is None:
            self._next_write = chunk.index
        self._starts[chunk.index] = chunk.start
        self._sent += 1
        return chunk

    def _finished(self) -> bool:
        return self._exhausted and not self._ready and not self._waiting and not self._starts

    async def _next(self) -> Chunk | None:
        """The next chunk to send (a retry first), or None when every chunk is written."""
        while True:
            if self._outstanding < self.window:
                if self._ready:
                    return self._ready.popleft()
                chunk = self._take_fresh()
                if chunk is not None:
                    return chunk
                if self._finished():
                    return None
            self._changed.clear()
            await self._changed.wait()

    def _answered(self) -> None:
        self._outstanding -= 1
        self._changed.set()

    def _complete(self, chunk: Chunk, outputs: dict[str, np.ndarray]) -> None:
        self._answered()
        self.window = min(self.in_flight, self.window + 1)
        self._done[chunk.index] = outputs
        self._failures = 0
        while self._next_write in self._done:
            index = self._next_write
            result = self._done.pop(index)
            start = self._starts.pop(index)
            self.on_rows(start, result)
            rows = len(next(iter(result.values()))) if result else 0
            self.stats.rows += rows
            if self.on_progress is not None:
                self.on_progress(rows)
            self._next_write = index + 1
        self._changed.set()

    def _schedule_retry(self, chunk: Chunk, error: InferenceServerError) -> None:
        self._answered()
        status = status_of(error)
        self.stats.errors[status] += 1
        if status == "RESOURCE_EXHAUSTED":
            self.window = max(1, self.window // 2)
        if status not in RETRYABLE:
            raise BatchFailed(f"the server refused rows {chunk.start}+: {error.message or error}")
        self._failures += 1
        if self._failures > self.retry.max_retries:
            hint = (" (the server's queue is full: try a smaller --rows-per-request)"
                    if status == "RESOURCE_EXHAUSTED" else "")
            raise BatchFailed(f"giving up after {self.retry.max_retries} retries without "
                              f"progress; last error: {error.message or status}{hint}")
        self.stats.retries += 1
        chunk.attempts += 1
        self._waiting += 1
        delay = self.retry.delay(chunk.attempts)
        asyncio.get_running_loop().call_later(delay, self._release_retry, chunk)

    def _release_retry(self, chunk: Chunk) -> None:
        self._waiting -= 1
        self._ready.append(chunk)
        self._changed.set()

    # -- the stream -------------------------------------------------------------------

    async def run(self) -> EngineStats:
        """Send every chunk; returns when all are written, raises BatchFailed otherwise."""
        while True:
            outstanding: collections.deque[Chunk] = collections.deque()
            try:
                await self._one_stream(outstanding)
            except InferenceServerError as error:
                self._stream_broke(error, outstanding)
                await asyncio.sleep(self.retry.delay(self._failures))
                continue
            if self._finished():
                return self.stats
            # The stream ended cleanly but work remains (should not happen): go again.
            self._stream_broke(InferenceServerError("UNAVAILABLE", "stream ended early"), outstanding)

    def _stream_broke(self, error: InferenceServerError, outstanding: collections.deque) -> None:
        """Every chunk sent on the broken stream and not answered goes back to the front."""
        status = status_of(error)
        self.stats.errors[status] += 1
        if status not in RETRYABLE and not error.status == "STREAM_ERROR":
            raise BatchFailed(f"the stream failed: {error}")
        self._failures += 1
        if self._failures > self.retry.max_retries:
            raise BatchFailed(f"giving up after {self.retry.max_retries} retries without "
                              f"progress; last error: {error}")
        self.stats.reopened += 1
        self.stats.retries += len(outstanding)
        self._outstanding = 0
        self._ready.extendleft(reversed(outstanding))
        outstanding.clear()

    async def _one_stream(self, outstanding: collections.deque) -> None:
        async def requests() -> AsyncIterator[Mapping[str, np.ndarray]]:
            while True:
                chunk = await self._next()
                if chunk is None:
                    return
                outstanding.append(chunk)  # same order as the client numbers requests
                self._outstanding += 1
                self.stats.requests += 1
                yield chunk.inputs

        responses = self.client.stream_infer_responses(
            self.model,
            requests(),
            version=self.version,
            outputs=self.outputs,
            parameters=self.parameters,
            max_in_flight=self.in_flight,
        )
        iterator = responses.__aiter__()
        while True:
            try:
                result = await asyncio.wait_for(iterator.__anext__(), self.stall_timeout_s)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                # a server that stopped answering (hung, not gone): drop the stream, re-send
                await iterator.aclose()
                raise InferenceServerError(
                    "DEADLINE_EXCEEDED", f"no answer on the stream for {self.stall_timeout_s:g} s"
                ) from None
            chunk = outstanding.popleft()
            if isinstance(result, InferenceServerError):
                self._schedule_retry(chunk, result)
            else:
                self._complete(chunk, result.outputs)


def describe_stats(stats: EngineStats, rows_total: int, elapsed: float) -> dict[str, Any]:
    return {
        "rows": stats.rows,
        "rows_total": rows_total,
        "seconds": round(elapsed, 3),
        "rows_per_s": round(stats.rows / elapsed, 1) if elapsed > 0 else None,
        "requests": stats.requests,
        "retries": stats.retries,
        "streams_reopened": stats.reopened,
        "errors": dict(stats.errors),
    }


def monotonic() -> float:
    return time.monotonic()
