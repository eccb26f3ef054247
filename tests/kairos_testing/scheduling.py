"""Scheduler-core test helpers: a core with a linear learned L(b), batch ids, a busy executor."""

from __future__ import annotations

from kairos.server.scheduler.core import SchedulerCore
from kairos.server.scheduler.latency import LatencyModel


def linear_model(max_batch: int, a: float = 0.001, c: float = 0.0001) -> LatencyModel:
    model = LatencyModel(max_batch)
    for b in model.buckets:
        for _ in range(5):
            model.observe(b, a + c * b)
    return model


def make_core(max_batch: int = 8, **kwargs) -> SchedulerCore:
    return SchedulerCore(latency=linear_model(max(1, max_batch)), max_batch_size=max_batch, **kwargs)


def ids(batch) -> list[str]:
    return [t.request.request_id for t in batch.tickets]


def occupy(core, req, clock):
    """Start a batch so the only executor is busy; returns it."""
    core.admit(req(-1, request_id="busy"), clock.now())
    batch = core.next_batch(clock.now())
    assert batch is not None and ids(batch) == ["busy"]
    return batch
