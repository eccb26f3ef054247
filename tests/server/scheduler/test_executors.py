"""Several executors, driven by hand: concurrent smaller batches when L(b) says it pays."""

from __future__ import annotations

from kairos.server.scheduler.core import SchedulerCore
from kairos_testing.scheduling import linear_model


def test_two_free_executors_split_when_the_model_says_it_pays(clock, req):
    # Two executors that really run in parallel: two batches of 4 finish sooner than one of 8.
    core = SchedulerCore(latency=linear_model(8, a=0.002, c=0.00001), max_batch_size=8, executors=2)
    for _ in range(8):
        core.admit(req(slo=1.0), clock.now())
    first, second = core.next_batch(clock.now()), core.next_batch(clock.now())
    assert (first.rows, second.rows) == (4, 4)
    assert first.concurrent and second.concurrent
    # Executors that share a core (runs overlapping took 1.9x as long, learned online):
    # a GEMV-bound model is better off with one batch of 8.
    core = SchedulerCore(latency=linear_model(8, a=0.002, c=0.00001), max_batch_size=8, executors=2)
    for _ in range(100):
        core.latency.observe(4, 0.0019 * 2.04, overlap=1.0)
    for _ in range(8):
        core.admit(req(slo=1.0), clock.now())
    assert core.next_batch(clock.now()).rows == 8
