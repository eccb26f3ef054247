"""Batch-class pieces side by side: the core's limit, the dispatcher's lowest-priority threads,
and how many the factory runs. Deterministic: pieces are held in flight with barriers and
events, never timed."""

from __future__ import annotations

import asyncio
import os
import threading

import numpy as np
import pytest
from kairos.server.metrics import MetricsSink
from kairos.server.repository.config import ConfigError, SchedulingSettings, parse_settings
from kairos.server.scheduler.core import SchedulerCore
from kairos.server.scheduler.factory import background_pieces, make_dispatcher
from kairos.server.scheduler.latency import LatencyModel


def linear_core(max_batch: int = 8, **kwargs) -> SchedulerCore:
    latency = LatencyModel(max_batch)
    for b in latency.buckets:
        for _ in range(5):
            latency.observe(b, 0.001 + 0.0001 * b)
    return SchedulerCore(latency=latency, max_batch_size=max_batch, background_batch=True, **kwargs)


def build(runner, clock, max_batch_size=4, **settings):
    return make_dispatcher(model="m", version="1", runner=runner,
                           settings=SchedulingSettings(profile=False, **settings),
                           max_batch_size=max_batch_size, metrics=MetricsSink(), clock=clock)


# -- the core -------------------------------------------------------------------------


def test_core_starts_up_to_background_pieces_side_by_side(clock, req):
    core = linear_core(max_batch=4, background_pieces=2)
    core.admit(req(request_id="bulk", rows=20, slo=60.0, klass="batch"), clock.now())
    first, second = core.next_batch(clock.now()), core.next_batch(clock.now())
    assert first.background and second.background and (first.rows, second.rows) == (4, 4)
    assert core.next_batch(clock.now()) is None  # two at a time
    assert core.free == 1 and not core.running  # pieces hold no executor
    info = core.describe()
    assert (info["background_pieces"], info["background_running"]) == (2, 2)
    core.finish(first, clock.now(), 0.004)
    third = core.next_batch(clock.now())
    assert third.background and [item[1] for item in third.items] == [8]  # the next rows, in order
    assert not core.idle()


def test_core_starts_no_piece_while_online_work_is_queued(clock, req):
    core = linear_core(max_batch=4, background_pieces=3)
    core.admit(req(request_id="bulk", rows=20, slo=60.0, klass="batch"), clock.now())
    piece = core.next_batch(clock.now())
    core.admit(req(request_id="online", slo=0.01), clock.now())
    online = core.next_batch(clock.now())
    assert not online.background and [t.request.request_id for t in online.tickets] == ["online"]
    core.admit(req(request_id="online-2", slo=0.01), clock.now())
    assert core.next_batch(clock.now()) is None  # executor busy, online queued: no new piece
    core.finish(online, clock.now(), 0.001)
    assert not core.next_batch(clock.now()).background  # online first
    assert core.next_batch(clock.now()).background  # then pieces again, beside the one running
    assert len(core.background) == 2 and piece in core.background


def test_a_failed_piece_frees_its_place(clock, req):
    core = linear_core(max_batch=4, background_pieces=1)
    core.admit(req(request_id="bulk", rows=8, slo=60.0, klass="batch"), clock.now())
    core.admit(req(request_id="other", rows=8, slo=60.0, klass="batch"), clock.now())
    piece = core.next_batch(clock.now())
    failed = core.fail(piece, clock.now())
    assert [t.request.request_id for t in failed] == ["bulk"]
    assert not core.background
    assert core.next_batch(clock.now()).tickets[0].request.request_id == "other"


def test_background_pieces_must_be_at_least_one():
    assert linear_core(background_pieces=0).background_pieces == 1


# -- the dispatcher -------------------------------------------------------------------


def test_pieces_run_side_by_side_on_lowest_priority_threads(clock, req, fake_runner_class):
    """With batch_threads 2, two pieces of one request are in the model at once (a barrier
    both must reach: run one at a time, the first would wait for ever), each on a
    SCHED_IDLE thread; the request's rows come back in order. (SCHED_IDLE threads run only
    on CPU nothing else wants: the timeout is long for a machine busy with other work.)"""
    both = threading.Barrier(2, timeout=120)

    class SideBySide(fake_runner_class):
        def __init__(self):
            super().__init__(None)
            self.policies: list[int] = []
            self.threads: set[str] = set()

        def run(self, inputs, outputs):
            name = threading.current_thread().name
            if "background" in name:
                self.threads.add(name)
                if hasattr(os, "sched_getscheduler"):
                    self.policies.append(os.sched_getscheduler(0))
                if len(self.threads) <= 2 and len(self.batches) < 2:
                    both.wait()
            return super().run(inputs, outputs)

    runner = SideBySide()

    async def main():
        dispatcher = build(runner, clock, max_batch_size=4, batch_threads=2)
        result = await dispatcher.submit(req(0, rows=16, slo=60.0, klass="batch"))
        info = dispatcher.describe()
        await dispatcher.close()
        return result, info

    result, info = asyncio.run(main())
    np.testing.assert_array_equal(result["y"][:, 0], np.arange(16, dtype=np.float32) * 2 + 1)
    assert info["background_pieces"] == 2 and info["background_batches"] == 4
    assert len(runner.threads) == 2
    if hasattr(os, "SCHED_IDLE"):
        assert set(runner.policies) == {os.SCHED_IDLE}


def test_one_batch_thread_runs_one_piece_at_a_time(clock, req, fake_runner_class):
    """batch_threads 1: the first piece waits (bounded) for a second to start beside it;
    none does."""
    second_started = threading.Event()

    class OneAtATime(fake_runner_class):
        def __init__(self):
            super().__init__(None)
            self.inside = 0
            self.most = 0
            self.lock = threading.Lock()

        def run(self, inputs, outputs):
            with self.lock:
                self.inside += 1
                self.most = max(self.most, self.inside)
                if self.inside > 1:
                    second_started.set()
            if len(self.batches) == 0:
                second_started.wait(0.2)
            try:
                return super().run(inputs, outputs)
            finally:
                with self.lock:
                    self.inside -= 1

    runner = OneAtATime()

    async def main():
        dispatcher = build(runner, clock, max_batch_size=4, batch_threads=1)
        result = await dispatcher.submit(req(0, rows=12, slo=60.0, klass="batch"))
        await dispatcher.close()
        return result

    result = asyncio.run(main())
    assert result["y"].shape == (12, 4) and runner.most == 1 and not second_started.is_set()


def test_a_piece_of_one_request_reaches_the_model_as_a_view_of_its_rows(clock, req, fake_runner_class):
    seen = []

    class Views(fake_runner_class):
        def run(self, inputs, outputs):
            seen.append(inputs["x"])
            return super().run(inputs, outputs)

    request = req(0, rows=8, slo=60.0, klass="batch")

    async def main():
        dispatcher = build(Views(None), clock, max_batch_size=4, batch_threads=1)
        result = await dispatcher.submit(request)
        await dispatcher.close()
        return result

    result = asyncio.run(main())
    assert len(seen) == 2 and all(np.shares_memory(part, request.inputs["x"]) for part in seen)
    np.testing.assert_array_equal(result["y"], request.inputs["x"] * 2 + 1)


# -- how many: the factory and the config ---------------------------------------------


class Runner:
    def __init__(self, threads_per_run=None):
        if threads_per_run is not None:
            self.threads_per_run = threads_per_run


@pytest.mark.parametrize(
    ("batch_threads", "threads_per_run", "cores", "expected"),
    [
        (3, 1, 8, 3),  # configured: as configured
        (0, None, 4, 4),  # a runner that does not say: one core per run
        (0, 1, 4, 4),
        (0, 2, 4, 2),  # two intra-op threads per run
        (0, 3, 2, 1),  # more threads per run than cores: still one piece
        (0, 0, 4, 1),  # 0 intra-op threads: onnxruntime's default, every core
    ],
)
def test_background_pieces_from_batch_threads_or_the_cores(monkeypatch, batch_threads,
                                                            threads_per_run, cores, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert background_pieces(batch_threads, Runner(threads_per_run)) == expected


def test_batch_threads_in_the_model_config():
    assert parse_settings({"scheduling": {"batch_threads": 2}}).scheduling.batch_threads == 2
    assert parse_settings({}).scheduling.batch_threads == 0
    with pytest.raises(ConfigError, match="batch_threads must be >= 0"):
        parse_settings({"scheduling": {"batch_threads": -1}})
