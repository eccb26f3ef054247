"""Admission, driven by hand: early refusal, rows ahead by class and deadline, queue limits, probes, the online budget."""

from __future__ import annotations

import pytest
from kairos.server.errors import KairosError, Refused
from kairos.server.scheduler.core import SchedulerCore
from kairos_testing.scheduling import linear_model, make_core, occupy


def test_admission_refuses_what_cannot_make_its_deadline(clock, req):
    core = make_core(max_batch=8)
    occupy(core, req, clock)  # busy for L(1) = 1.1 ms
    with pytest.raises(Refused, match="cannot meet deadline"):
        core.admit(req(slo=0.002), clock.now())  # 1.1 ms wait + 1.1 ms run > 2 ms
    core.admit(req(slo=0.0023), clock.now())
    assert core.counts.refused_deadline == 1


def test_admission_counts_queued_work_ahead(clock, req):
    core = make_core(max_batch=4)
    occupy(core, req, clock)
    for _ in range(8):  # 5.4 ms: the deadline class of the requests below
        core.admit(req(slo=0.0054), clock.now())
    # 1.1 ms wait + three batches of 4 (1.4 ms each): under load the ninth request's
    # batch fills up with later arrivals, so it is counted whole.
    assert core.predicted_finish(1, clock.now()) - clock.now() == pytest.approx(0.0053)
    with pytest.raises(Refused):
        core.admit(req(slo=0.0052), clock.now())
    core.admit(req(slo=0.0054), clock.now())


def test_a_tight_request_waits_only_for_rows_due_before_it(clock, req):
    """Earliest deadline first: a 5 ms request queued after 50 ms ones runs before them,
    so admission does not count them ahead of it (it would refuse it, wrongly)."""
    core = make_core(max_batch=4)
    occupy(core, req, clock)
    for i in range(8):
        core.admit(req(slo=0.050, request_id=f"loose{i}"), clock.now())
    # queueing last (a 50 ms request): behind all 8, 5.3 ms as above
    assert core.predicted_finish(1, clock.now()) - clock.now() == pytest.approx(0.0053)
    tight = core.admit(req(slo=0.0030, request_id="tight"), clock.now())  # 1.1 + 1.1 ms
    # tight requests do queue behind each other: the n-th 4 ms one after `tight` is
    # predicted at 1.1 ms + L(n + 1) (n + 1 <= 4), then 1.1 + 2 x 1.4 = 3.9 ms up to
    # n + 1 = 8 rows, then 5.3 ms: refused (with the 8 loose rows counted, at once)
    for _ in range(7):
        core.admit(req(slo=0.0040), clock.now())
    with pytest.raises(Refused):
        core.admit(req(slo=0.0040), clock.now())
    core.finish(core.running[0], clock.now(), 0.0)
    batch = core.next_batch(clock.now())
    assert batch.tickets[0] is tight


def test_a_looser_request_due_first_is_counted_ahead(clock, req):
    """50 ms requests queued 47 ms ago are due before a new 3.2 ms one: they run first."""
    core = make_core(max_batch=4)
    occupy(core, req, clock)
    for i in range(8):
        core.admit(req(slo=0.050, request_id=f"old{i}"), clock.now())
    clock.advance(0.047)  # the old ones have 3 ms left
    # behind the 8 old rows: three batches of 4 (1.4 ms each) = 4.2 ms > 3.2
    with pytest.raises(Refused):
        core.admit(req(slo=0.0032), clock.now())
    core.admit(req(slo=0.0015, request_id="tighter"), clock.now())  # due before them: 1.1 ms


def test_full_queue_is_refused(clock, req):
    core = make_core(max_batch=8, max_queued_rows=4)
    core.admit(req(rows=3, slo=1.0), clock.now())
    core.admit(req(rows=1, slo=1.0), clock.now())
    with pytest.raises(Refused, match="queue full"):
        core.admit(req(slo=1.0), clock.now())
    assert core.counts.refused_queue_full == 1


def test_admission_counts_only_work_that_outranks_the_request(clock, req):
    core = make_core(max_batch=4)
    occupy(core, req, clock)
    for _ in range(8):  # default priority 0; 4.5 and 4 ms are one deadline class
        core.admit(req(slo=0.0045), clock.now())
    with pytest.raises(Refused):
        core.admit(req(slo=0.004), clock.now())  # behind 8 rows: 1.1 + 3 x 1.4 ms
    core.admit(req(slo=0.003, priority=-1), clock.now())  # jumps the queue: 1.1 + 1.1 ms
    assert core.predicted_finish(1, clock.now(), priority=5) - clock.now() > 0.005
    batch_ahead = core.predicted_finish(1, clock.now(), online=False) - clock.now()
    assert batch_ahead > 0.005  # batch-class work waits for all online work


def test_queued_batch_rows_do_not_make_online_requests_queue_full(clock, req):
    """What batch mode needs (moved here from tests/integration/test_batch_mode.py): a
    batch client keeping thousands of rows queued, the natural way to keep the executor
    busy, must not cost online traffic its admission (admission once compared all queued
    rows, batch included, with max_queued_rows); batch-class work stays bounded."""
    core = make_core(max_batch=64, max_queued_rows=4096)
    for _ in range(4):
        core.admit(req(rows=1024, slo=600.0, klass="batch"), clock.now())
    core.admit(req(slo=0.050), clock.now())
    with pytest.raises(Refused, match="queue full"):
        core.admit(req(rows=1, slo=600.0, klass="batch"), clock.now())


def test_idle_server_probes_now_and_then_when_l1_exceeds_the_deadline(clock, req):
    """After a slow spell taught L(1) = 5 ms, 2 ms requests would all be refused and
    the model would never run again; an idle server lets one through per interval."""
    core = SchedulerCore(latency=linear_model(8, a=0.005, c=0.0), max_batch_size=8)
    probe = core.admit(req(slo=0.002), clock.now())
    assert probe.probe
    with pytest.raises(Refused):
        core.admit(req(slo=0.002), clock.now())  # not idle any more
    batch = core.next_batch(clock.now())
    assert batch.tickets == [probe]  # runs although predicted late
    core.finish(batch, clock.now(), 0.0011)
    with pytest.raises(Refused):
        core.admit(req(slo=0.002), clock.now())  # idle, but within the probe interval
    clock.advance(0.06)
    assert core.admit(req(slo=0.002), clock.now()).probe
    assert core.counts.probes == 2


def test_one_tight_deadline_does_not_cap_batches_for_good(clock, req):
    core = make_core(max_batch=64)
    core.admit(req(slo=0.010), clock.now())
    core.admit(req(slo=0.002), clock.now())  # while the budget has few samples: min
    assert core.online_budget == pytest.approx(0.002)
    for _ in range(64):
        core.cancel(core.admit(req(slo=0.010), clock.now()))
    core.cancel(core.admit(req(slo=0.0025), clock.now()))  # one odd request: ignored
    for _ in range(31):
        core.cancel(core.admit(req(slo=0.010), clock.now()))
    assert core.online_budget == pytest.approx(0.010)
    assert core.describe()["slo_batch_size"] in (39, 40)  # L(40) = 5 ms = half the budget


def test_refused_or_late_online_requests_do_not_shrink_batch_pieces(clock, req):
    """What batch mode needs (moved here from tests/integration/test_batch_mode.py, which
    drove this core in process): batch-class pieces are sized from the online budget
    (L(piece) <= budget / 2). Once the budget was the tightest `deadline - now` of any
    online request, refused ones included: one request arriving with its deadline spent
    cut every batch piece to 1 row, and batch mode ran at ~0.2x its alone throughput.
    The budget is a low quantile of *admitted* online budgets: a straggler does not
    shrink the pieces."""
    core = make_core(max_batch=64)
    core.admit(req(slo=0.050), clock.now())
    core.finish(core.next_batch(clock.now()), clock.now(), 0.0011)
    core.admit(req(slo=0.050), clock.now())
    running = core.next_batch(clock.now())  # a busy executor: no idle probe admits stragglers
    with pytest.raises(KairosError):  # arrived with its deadline already spent
        core.admit(req(slo=-0.001), clock.now())
    with pytest.raises(Refused, match="cannot meet deadline"):  # 0.2 ms left, L(1) = 1.1 ms
        core.admit(req(slo=0.0002), clock.now())
    core.finish(running, clock.now(), 0.0011)
    core.admit(req(rows=1000, slo=600.0, klass="batch"), clock.now())
    assert core.next_batch(clock.now()).rows == 64  # L(64) = 7.4 ms < 50 ms / 2
