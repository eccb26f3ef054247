"""Test doubles for the scheduler: a settable clock, a numpy runner, request makers."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np
import pytest
from kairos.server.types import InferenceRequest


class FakeClock:
    """A clock that moves only when told to (deterministic tests)."""

    def __init__(self, start: float = 100.0):
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class NumpyRunner:
    """A backend double: y = 2x + 1, s = row sums; advances a fake clock by a + c*rows.

    `gate`, when set, makes `run` wait for it (to hold an execution in flight).
    """

    def __init__(self, clock: FakeClock | None = None, a: float = 0.001, c: float = 0.0001):
        self.clock = clock
        self.a = a
        self.c = c
        self.batches: list[int] = []
        self.gate: threading.Event | None = None
        self.started = threading.Event()
        self.fail_next = False

    def run(self, inputs: Mapping[str, np.ndarray], outputs: list[str] | None) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.batches.append(int(x.shape[0]) if x.ndim > 1 else 1)
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.clock is not None:
            self.clock.advance(self.a + self.c * self.batches[-1])
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        result = {"y": x * 2 + 1, "s": x.sum(axis=-1, keepdims=True)}
        if outputs is not None:
            result = {name: result[name] for name in outputs}
        return result

    def example_inputs(self, rows: int, like: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        return {"x": np.zeros((rows, 4), np.float32)}


def make_request(
    clock: FakeClock,
    value: float = 0.0,
    rows: int = 1,
    slo: float = 0.010,
    outputs: list[str] | None = None,
    **fields,
) -> InferenceRequest:
    """A request whose row i holds value + i in every column (to check the split)."""
    x = (value + np.arange(rows, dtype=np.float32))[:, None].repeat(4, axis=1)
    now = clock.now()
    return InferenceRequest(
        model="m",
        version="1",
        inputs={"x": x},
        outputs=outputs,
        rows=rows,
        deadline=now + slo,
        arrival=now,
        **fields,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def runner(clock: FakeClock) -> NumpyRunner:
    return NumpyRunner(clock)


@pytest.fixture
def req(clock: FakeClock):
    """make_request bound to the test's clock."""

    def make(value: float = 0.0, rows: int = 1, slo: float = 0.010, **fields) -> InferenceRequest:
        return make_request(clock, value, rows, slo, **fields)

    return make


@pytest.fixture
def fake_runner_class() -> type[NumpyRunner]:
    return NumpyRunner


@pytest.fixture
def request_factory():
    """make_request(clock, value, rows, slo, ...) for a clock of the test's choosing."""
    return make_request
