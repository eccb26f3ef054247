"""Forming batches, driven by hand: slo (largest batch in time, the mixed-deadline cap), fixed and none."""

from __future__ import annotations

import pytest
from kairos_testing.scheduling import ids, make_core, occupy


def test_batch_is_largest_that_meets_every_deadline(clock, req):
    core = make_core(max_batch=8)  # L(b) = 1 ms + 0.1 ms * b
    now = clock.now()
    core.admit(req(request_id="tight", slo=0.0013), now)  # fits a batch of <= 3
    for i in range(5):
        core.admit(req(request_id=f"r{i}", slo=0.010), now)
    batch = core.next_batch(now)
    assert ids(batch) == ["tight", "r0", "r1"]
    assert batch.predicted == pytest.approx(0.0013)


def test_batch_never_exceeds_max_batch_size(clock, req):
    core = make_core(max_batch=4)
    busy = occupy(core, req, clock)
    for i in range(10):
        core.admit(req(i, request_id=str(i), slo=1.0), clock.now())
    core.finish(busy, clock.now(), 0.0)
    assert core.next_batch(clock.now()).rows == 4


def test_looser_requests_fill_batches_only_up_to_the_tight_class_batch_size(clock, req):
    """With 3 ms requests about, a batch of 1 s requests is capped at b_slo (L(b) <= 1.5 ms:
    5 rows), so a 3 ms request arriving meanwhile can wait for it and still make it."""
    core = make_core(max_batch=8)
    core.admit(req(slo=0.003, request_id="tight"), clock.now())
    tight = core.next_batch(clock.now())
    for i in range(8):
        core.admit(req(slo=1.0, request_id=f"loose{i}"), clock.now())
    core.finish(tight, clock.now(), 0.0011)
    assert core.next_batch(clock.now()).rows == 5
    # without tight requests among the recent ones the batch takes all 8 (see
    # test_batch_never_exceeds_max_batch_size): one class, no cap
    alone = make_core(max_batch=8)
    for _ in range(8):
        alone.admit(req(slo=1.0), clock.now())
    assert alone.next_batch(clock.now()).rows == 8


def test_policy_none_runs_one_request_per_execution(clock, req):
    core = make_core(max_batch=8, policy="none")
    busy = occupy(core, req, clock)
    for _ in range(3):
        core.admit(req(rows=2, slo=1.0), clock.now())
    core.finish(busy, clock.now(), 0.0)
    assert core.next_batch(clock.now()).rows == 2


def test_model_without_batch_dim_runs_one_request_each(clock, req):
    core = make_core(max_batch=0)
    busy = occupy(core, req, clock)
    for _ in range(3):
        core.admit(req(slo=1.0), clock.now())
    core.finish(busy, clock.now(), 0.0)
    batch = core.next_batch(clock.now())
    assert batch.rows == 1 and len(batch.items) == 1


def test_fixed_policy_waits_for_preferred_size_or_delay(clock, req):
    core = make_core(max_batch=8, policy="fixed", max_queue_delay_s=0.001, preferred_batch_sizes=[4])
    core.admit(req(slo=1.0), clock.now())
    assert core.next_batch(clock.now()) is None
    assert core.wakeup == pytest.approx(clock.now() + 0.001)
    clock.advance(0.0005)
    for _ in range(3):
        core.admit(req(slo=1.0), clock.now())
    batch = core.next_batch(clock.now())  # preferred size reached: go now
    assert batch.rows == 4
    core.finish(batch, clock.now(), 0.0)
    core.admit(req(slo=1.0), clock.now())
    assert core.next_batch(clock.now()) is None
    clock.advance(0.001)
    assert core.next_batch(clock.now()).rows == 1  # waited max_queue_delay
