"""The pure core, driven by hand: EDF order, classes, admission, expiry, cancel, policies."""

from __future__ import annotations

import pytest
from kairos.server.errors import DeadlineExceeded, KairosError, Refused
from kairos.server.scheduler.core import CANCELLED, DONE, EXPIRED, SchedulerCore
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


def test_idle_server_runs_a_lone_request_at_once(clock, req):
    core = make_core()
    core.admit(req(request_id="a"), clock.now())
    batch = core.next_batch(clock.now())
    assert ids(batch) == ["a"] and batch.rows == 1
    assert core.next_batch(clock.now()) is None  # the one executor is busy


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


def test_full_queue_is_refused(clock, req):
    core = make_core(max_batch=8, max_queued_rows=4)
    core.admit(req(rows=3, slo=1.0), clock.now())
    core.admit(req(rows=1, slo=1.0), clock.now())
    with pytest.raises(Refused, match="queue full"):
        core.admit(req(slo=1.0), clock.now())
    assert core.counts.refused_queue_full == 1


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


def test_finish_completes_tickets_and_teaches_latency(clock, req):
    core = make_core(max_batch=8)
    ticket = core.admit(req(), clock.now())
    batch = core.next_batch(clock.now())
    before = core.latency.observations
    assert core.finish(batch, clock.now(), 0.0011) == [ticket]
    assert ticket.state == DONE and core.idle()
    assert core.latency.observations == before + 1


def test_failed_batch_fails_its_requests_and_frees_the_executor(clock, req):
    core = make_core(max_batch=8)
    ticket = core.admit(req(), clock.now())
    batch = core.next_batch(clock.now())
    assert core.fail(batch, clock.now()) == [ticket]
    assert core.free == 1 and core.counts.failed == 1


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


def test_batch_class_waits_for_online_and_is_split_into_pieces(clock, req):
    core = make_core(max_batch=64)
    core.admit(req(request_id="online", slo=0.004), clock.now())  # online budget 4 ms
    big = core.admit(req(request_id="bulk", rows=100, slo=60.0, klass="batch"), clock.now())
    first = core.next_batch(clock.now())
    assert ids(first) == ["online"]
    core.finish(first, clock.now(), 0.0011)
    pieces = []
    while (batch := core.next_batch(clock.now())) is not None:
        # a piece takes at most half the tightest online budget: 1 ms + 0.1 ms * 10
        assert batch.predicted <= 0.002 + 1e-12
        pieces.append((batch.items[0][1], batch.items[0][2]))
        core.finish(batch, clock.now(), batch.predicted)
    assert pieces[0] == (0, 10) and pieces[-1][1] == 100 and len(pieces) == 10
    assert big.state == DONE


def test_batch_class_yields_when_online_work_arrives(clock, req):
    core = make_core(max_batch=64)
    core.admit(req(request_id="bulk", rows=40, slo=60.0, klass="batch"), clock.now())
    piece = core.next_batch(clock.now())
    core.admit(req(request_id="online", slo=0.01), clock.now())
    core.finish(piece, clock.now(), piece.predicted)
    assert ids(core.next_batch(clock.now())) == ["online"]


def test_background_pieces_hold_no_executor_and_teach_no_latency(clock, req):
    """background_batch: one batch-class piece at a time runs beside online work, sized
    to BACKGROUND_PIECE_S, started only while no online request is queued."""
    core = make_core(max_batch=512, background_batch=True)
    bulk = core.admit(req(request_id="bulk", rows=1000, slo=60.0, klass="batch"), clock.now())
    piece = core.next_batch(clock.now())
    # L(b) = 1 ms + 0.1 ms x b: 240 rows fit 25 ms
    assert piece.background and piece.rows == 240 and core.free == 1
    assert core.next_batch(clock.now()) is None  # one piece at a time
    core.admit(req(request_id="online", slo=0.01), clock.now())
    online = core.next_batch(clock.now())
    assert ids(online) == ["online"] and not online.background  # did not wait for the piece
    observations = core.latency.observations
    core.finish(piece, clock.now(), 5.0)  # preempted for seconds: not a model time
    assert core.latency.observations == observations and core.latency.predict(240) < 0.03
    assert core.next_batch(clock.now()).background  # online running, none queued: next piece
    assert not core.idle() and bulk.taken == 480


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
    from kairos.server.scheduler.core import HOLD_PROBE

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


def test_online_request_larger_than_max_batch_is_split(clock, req):
    core = make_core(max_batch=4)
    ticket = core.admit(req(rows=10, slo=1.0), clock.now())
    sizes = []
    while (batch := core.next_batch(clock.now())) is not None:
        sizes.append(batch.rows)
        core.finish(batch, clock.now(), 0.0)
    assert sizes == [4, 4, 2] and ticket.state == DONE


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


def test_describe_reports_policy_table_queue_and_counts(clock, req):
    core = make_core(max_batch=8)
    core.admit(req(), clock.now())
    info = core.describe()
    assert info["policy"] == "slo" and info["max_batch_size"] == 8
    assert [row["batch_size"] for row in info["latency_table"]] == [1, 2, 4, 8]
    assert info["queue"] == {"requests": 1, "rows": 1}
    assert info["counts"]["admitted"] == 1


def test_unknown_policy_is_rejected():
    with pytest.raises(ValueError, match="policy"):
        make_core(policy="magic")


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
