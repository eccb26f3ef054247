"""Holding a short queue while the event loop is busy, driven by hand."""

from __future__ import annotations

import pytest
from kairos.server.scheduler.holding import HOLD_PROBE
from kairos_testing.scheduling import ids, make_core


def busy_core(**kwargs):
    core = make_core(max_batch=8, busy_hold_s=0.001, **kwargs)
    core.pressure = 1.0  # the event loop is busy: the front end is the bottleneck
    return core


def test_busy_loop_holds_a_short_queue_to_gather_a_batch(clock, req):
    core = busy_core()
    first = req(request_id="a", slo=0.010)
    core.admit(first, clock.now())
    assert core.next_batch(clock.now()) is None
    assert core.wakeup == pytest.approx(first.arrival + 0.001)
    clock.advance(0.0005)
    for name in "bcd":
        core.admit(req(request_id=name, slo=0.010), clock.now())
        assert core.next_batch(clock.now()) is None
    clock.advance(0.0005)
    batch = core.next_batch(clock.now())
    assert ids(batch) == ["a", "b", "c", "d"] and core.counts.holds == 1
    assert core.hold_gain > 1.0  # it gathered 3 rows


def test_no_hold_when_idle_full_or_short_of_slack(clock, req):
    idle = make_core(max_batch=8, busy_hold_s=0.001)  # pressure 0: a lone request runs at once
    idle.admit(req(), clock.now())
    assert idle.next_batch(clock.now()).rows == 1
    full = busy_core()
    for _ in range(8):  # the highest-throughput size is already queued
        full.admit(req(slo=0.010), clock.now())
    assert full.next_batch(clock.now()).rows == 8
    tight = busy_core()
    tight.admit(req(slo=0.002), clock.now())  # 2 ms < L(1 queued + 1 more) + L(1) = 2.3 ms
    assert tight.next_batch(clock.now()).rows == 1
    fixed = busy_core(policy="fixed", preferred_batch_sizes=[1])
    fixed.admit(req(), clock.now())
    assert fixed.next_batch(clock.now()).rows == 1 and fixed.counts.holds == 0


def test_holds_that_gather_nothing_stop_then_probe_again(clock, req):
    core = busy_core()
    held = 0
    for _ in range(HOLD_PROBE + 20):  # a closed-loop client: the next request waits for this one
        core.admit(req(slo=0.010), clock.now())
        batch = core.next_batch(clock.now())
        if batch is None:
            held += 1
            clock.advance(0.001)
            batch = core.next_batch(clock.now())
        core.finish(batch, clock.now(), batch.predicted)
        clock.advance(0.0001)
    assert core.hold_gain < 0.5
    assert 3 <= held <= 12  # a few holds to learn, then one probe per HOLD_PROBE dispatches
