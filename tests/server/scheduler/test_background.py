"""Batch-class work in the core, driven by hand: it waits for online work, runs in pieces, background pieces hold no executor."""

from __future__ import annotations

from kairos.server.scheduler.core import DONE
from kairos_testing.scheduling import ids, make_core


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
