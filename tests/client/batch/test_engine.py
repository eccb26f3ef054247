"""The streaming engine against a scripted fake client: order, retries, re-opened streams."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest
from kairos.client import InferenceServerError, InferResult
from kairos.client.batch.engine import BatchFailed, Chunk, RetryPolicy, StreamEngine


class ScriptedClient:
    """Answers x -> 2x. `refuse[(first_row, attempt)]` answers a stream error instead;
    `break_after` ends the n-th stream with UNAVAILABLE after that many answers."""

    def __init__(self, refuse=None, break_after=None, hang_first_stream=False):
        self.hang_first_stream = hang_first_stream
        self.refuse = dict(refuse or {})
        self.break_after = list(break_after or [])
        self.attempts: dict[int, int] = {}
        self.streams = 0
        self.parameters = None

    async def stream_infer_responses(self, model, inputs, *, version, outputs, parameters,
                                     max_in_flight):
        self.streams += 1
        self.parameters = parameters
        limit = self.break_after.pop(0) if self.break_after else None
        answered = 0
        async for item in inputs:
            if self.hang_first_stream and self.streams == 1:
                await asyncio.sleep(3600)  # a server that stopped answering
            if limit is not None and answered >= limit:
                raise InferenceServerError("UNAVAILABLE", "connection reset")
            x = item["x"]
            first = int(x[0, 0])
            attempt = self.attempts.get(first, 0)
            self.attempts[first] = attempt + 1
            answered += 1
            status = self.refuse.get((first, attempt))
            if status:
                yield InferenceServerError("STREAM_ERROR", f"{status}: no room")
                continue
            yield InferResult("m", "1", "", {"y": x * 2})
            await asyncio.sleep(0)


def _chunks(x: np.ndarray, size: int):
    for index, start in enumerate(range(0, len(x), size)):
        yield Chunk(index, start, {"x": x[start : start + size]})


def _run(client, x, size=10, **kwargs):
    written: list[tuple[int, np.ndarray]] = []
    engine = StreamEngine(
        client, "m", _chunks(x, size), lambda start, out: written.append((start, out["y"])),
        retry=RetryPolicy(base_s=0.001, cap_s=0.002, rng=random.Random(0)), **kwargs,
    )
    stats = asyncio.run(engine.run())
    return stats, written


X = np.arange(100, dtype=np.float32).reshape(100, 1)


def test_all_rows_in_order_with_batch_class_and_timeout() -> None:
    client = ScriptedClient()
    stats, written = _run(client, X, in_flight=3, timeout_us=5_000_000)
    assert [start for start, _ in written] == list(range(0, 100, 10))
    np.testing.assert_array_equal(np.concatenate([y for _, y in written]), X * 2)
    assert stats.rows == 100 and stats.retries == 0 and stats.requests == 10
    assert client.parameters == {"kairos_class": "batch", "timeout": 5_000_000}


def test_refused_chunks_are_resent_and_still_written_in_order() -> None:
    refuse = {(20, 0): "RESOURCE_EXHAUSTED", (20, 1): "UNAVAILABLE", (50, 0): "RESOURCE_EXHAUSTED"}
    stats, written = _run(ScriptedClient(refuse=refuse), X)
    np.testing.assert_array_equal(np.concatenate([y for _, y in written]), X * 2)
    assert [start for start, _ in written] == list(range(0, 100, 10))
    assert stats.retries == 3 and stats.errors["RESOURCE_EXHAUSTED"] == 2


def test_broken_stream_is_reopened_and_unanswered_chunks_resent() -> None:
    client = ScriptedClient(break_after=[3, 2])
    stats, written = _run(client, X)
    assert client.streams == 3 and stats.reopened == 2
    np.testing.assert_array_equal(np.concatenate([y for _, y in written]), X * 2)


def test_non_retryable_error_fails_the_run() -> None:
    with pytest.raises(BatchFailed, match="rows 30"):
        _run(ScriptedClient(refuse={(30, 0): "INVALID_ARGUMENT"}), X)


def test_gives_up_after_max_retries_without_progress() -> None:
    refuse = {(0, n): "UNAVAILABLE" for n in range(20)}
    with pytest.raises(BatchFailed, match="giving up"):
        _run(ScriptedClient(refuse=refuse), X)


def test_silent_stream_is_dropped_and_chunks_resent() -> None:
    client = ScriptedClient(hang_first_stream=True)
    stats, written = _run(client, X, stall_timeout_s=0.2)
    assert client.streams == 2 and stats.errors["DEADLINE_EXCEEDED"] == 1
    np.testing.assert_array_equal(np.concatenate([y for _, y in written]), X * 2)
