"""The queue, driven by hand: EDF order and classes, shape lanes, expiry, cancellation, splitting."""

from __future__ import annotations

import pytest
from kairos.server.errors import DeadlineExceeded
from kairos.server.scheduler.core import CANCELLED, DONE, EXPIRED
from kairos_testing.scheduling import ids, make_core, occupy


def test_queue_is_edf_within_priority_and_online_before_batch(clock, req):
    core = make_core(max_batch=1, early_refusal=False)
    now = clock.now()
    specs = [
        ("late", dict(slo=0.009)),
        ("early", dict(slo=0.004)),
        ("mid", dict(slo=0.006)),
        ("urgent-priority", dict(slo=0.008, priority=-1)),
        ("batch-class", dict(slo=0.002, klass="batch")),
        ("low-priority", dict(slo=0.003, priority=5)),
    ]
    for name, fields in specs:
        core.admit(req(request_id=name, **fields), now)
    order = []
    while (batch := core.next_batch(now)) is not None:
        order += ids(batch)
        core.finish(batch, now, 0.0)
    assert order == ["urgent-priority", "early", "mid", "late", "low-priority", "batch-class"]


def test_never_merges_different_shape_keys(clock, req):
    core = make_core(max_batch=8)
    busy = occupy(core, req, clock)
    for i in range(6):
        core.admit(req(request_id=f"{i}", shape_key=(i % 2,), slo=0.05), clock.now())
    core.finish(busy, clock.now(), 0.0)
    first = core.next_batch(clock.now())
    core.finish(first, clock.now(), 0.0)
    second = core.next_batch(clock.now())
    assert {t.request.shape_key for t in first.tickets} == {(0,)}
    assert {t.request.shape_key for t in second.tickets} == {(1,)}
    assert first.rows == second.rows == 3


def test_queued_request_that_became_unreachable_expires_without_running(clock, req):
    core = make_core(max_batch=8)
    busy = occupy(core, req, clock)
    doomed = core.admit(req(request_id="doomed", slo=0.003), clock.now())
    fine = core.admit(req(request_id="fine", slo=0.050), clock.now())
    clock.advance(0.002)  # the busy batch overran: doomed now needs 1.1 ms with 1 ms left
    core.finish(busy, clock.now(), 0.002)
    batch = core.next_batch(clock.now())
    assert ids(batch) == ["fine"]
    assert core.expired == [doomed] and doomed.state == EXPIRED
    assert fine.state != EXPIRED and core.counts.expired == 1


def test_without_early_refusal_only_past_deadlines_expire(clock, req):
    core = make_core(max_batch=8, policy="fixed", max_queue_delay_s=0.0)
    assert not core.predictive
    busy = occupy(core, req, clock)
    late = core.admit(req(request_id="late", slo=0.003), clock.now())
    clock.advance(0.0025)
    core.finish(busy, clock.now(), 0.0025)
    assert ids(core.next_batch(clock.now())) == ["late"]  # will be late, but runs
    assert late.state != EXPIRED
    with pytest.raises(DeadlineExceeded):
        core.admit(req(slo=0.0), clock.now())


def test_cancelled_request_leaves_the_queue(clock, req):
    core = make_core(max_batch=8)
    busy = occupy(core, req, clock)
    gone = core.admit(req(request_id="gone", slo=0.05), clock.now())
    core.admit(req(request_id="kept", slo=0.05), clock.now())
    assert core.cancel(gone)
    assert gone.state == CANCELLED and core.queued_rows == 1 and core.queued_requests == 1
    assert not core.cancel(gone)  # idempotent
    core.finish(busy, clock.now(), 0.001)
    assert ids(core.next_batch(clock.now())) == ["kept"]


def test_online_request_larger_than_max_batch_is_split(clock, req):
    core = make_core(max_batch=4)
    ticket = core.admit(req(rows=10, slo=1.0), clock.now())
    sizes = []
    while (batch := core.next_batch(clock.now())) is not None:
        sizes.append(batch.rows)
        core.finish(batch, clock.now(), 0.0)
    assert sizes == [4, 4, 2] and ticket.state == DONE
