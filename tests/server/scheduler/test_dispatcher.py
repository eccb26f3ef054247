"""The asyncio dispatcher with a numpy runner: exact splitting, modes, errors, lifecycle.

Deterministic: a fake clock that only the runner advances; executions held in
flight with an Event where a test needs a busy executor. No timing assertions.
"""

from __future__ import annotations

import asyncio
import os
import threading

import numpy as np
import pytest
from kairos.server.errors import (
    DeadlineExceeded,
    InternalBug,
    InternalError,
    Refused,
    ShuttingDown,
)
from kairos.server.metrics import MetricsSink
from kairos.server.repository.config import SchedulingSettings
from kairos.server.scheduler.factory import make_dispatcher
from kairos.server.scheduler.interface import MonotonicClock


def build(runner, clock, max_batch_size=16, metrics=None, **settings):
    settings.setdefault("profile", False)
    return make_dispatcher(
        model="m",
        version="1",
        runner=runner,
        settings=SchedulingSettings(**settings),
        max_batch_size=max_batch_size,
        metrics=metrics or MetricsSink(),
        clock=clock,
    )


def expected(request):
    x = request.inputs["x"]
    return {"y": x * 2 + 1, "s": x.sum(axis=-1, keepdims=True)}


async def wait_started(runner):
    assert await asyncio.to_thread(runner.started.wait, 5)


@pytest.mark.parametrize("execution", ["inline", "thread", "auto"])
def test_concurrent_requests_share_a_batch_and_get_exactly_their_rows(runner, clock, req, execution):
    async def main():
        dispatcher = build(runner, clock, execution=execution)
        await dispatcher.start()
        requests = [req(10 * i, rows=rows, slo=1.0) for i, rows in enumerate([1, 3, 2, 1, 4])]
        results = await asyncio.gather(*(dispatcher.submit(r) for r in requests))
        await dispatcher.close()
        return requests, results, dispatcher.describe()

    requests, results, info = asyncio.run(main())
    # The first finds the server idle after a quiet spell and runs at once; the
    # others were admitted meanwhile (or before the dispatch callback) and share one.
    assert runner.batches == [1, 10]
    for request, result in zip(requests, results, strict=True):
        want = expected(request)
        assert result.keys() == want.keys()
        for name in want:
            np.testing.assert_array_equal(result[name], want[name])
    assert info["counts"]["completed"] == 5 and info["batch_sizes"] == {1: 1, 10: 1}
    assert info["inline_batches"] + info["thread_batches"] == 2
    if execution != "auto":  # auto: by predicted time, here 1 inline then 1 on the thread
        assert info[f"{execution}_batches"] == 2


def test_each_request_gets_the_outputs_it_asked_for(runner, clock, req):
    async def main():
        dispatcher = build(runner, clock)
        requests = [req(1, outputs=["y"]), req(2, outputs=["s"]), req(3), req(4, outputs=["s", "y"])]
        return await asyncio.gather(*(dispatcher.submit(r) for r in requests))

    results = asyncio.run(main())
    assert [list(r) for r in results] == [["y"], ["s"], ["y", "s"], ["s", "y"]]
    np.testing.assert_array_equal(results[1]["s"], np.full((1, 1), 8.0, np.float32))


def test_a_lone_request_is_passed_through_without_copies(runner, clock, req):
    seen = []
    original = runner.run

    def run(inputs, outputs):
        seen.append(inputs)
        return original(inputs, outputs)

    runner.run = run

    async def main():
        dispatcher = build(runner, clock)
        request = req(5, rows=2)
        await dispatcher.submit(request)
        return request

    request = asyncio.run(main())
    assert seen[0] is request.inputs


def test_prepare_profiles_every_bucket(runner, clock):
    dispatcher = build(runner, clock, max_batch_size=8, profile=True)
    dispatcher.prepare()
    table = dispatcher.describe()["latency_table"]
    assert [row["batch_size"] for row in table] == [1, 2, 4, 8]
    for row in table:  # the runner takes exactly 1 ms + 0.1 ms * rows on the fake clock
        assert row["predicted_s"] == pytest.approx(0.001 + 0.0001 * row["batch_size"])
        assert row["observations"] >= 5


def test_describe_keys(runner, clock):
    info = build(runner, clock).describe()
    for key in ("policy", "execution", "latency_table", "queue", "counts", "batch_sizes",
                "max_batch_size", "executors", "latency_quantile", "model", "version"):
        assert key in info
    assert info["counts"]["batch1_dispatches"] == 0


def test_full_queue_is_refused_while_an_execution_runs(runner, clock, req):
    runner.gate = threading.Event()

    async def main():
        dispatcher = build(runner, clock, execution="thread", max_queued_rows=2)
        first = asyncio.create_task(dispatcher.submit(req(0, slo=10.0)))
        await wait_started(runner)
        queued = [asyncio.create_task(dispatcher.submit(req(i, slo=10.0))) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(Refused):
            await dispatcher.submit(req(3, slo=10.0))
        runner.gate.set()
        await asyncio.gather(first, *queued)

    asyncio.run(main())
    assert runner.batches == [1, 2]


def test_cancelled_request_leaves_the_queue(runner, clock, req):
    runner.gate = threading.Event()

    async def main():
        dispatcher = build(runner, clock, execution="thread")
        first = asyncio.create_task(dispatcher.submit(req(0, slo=10.0)))
        await wait_started(runner)
        doomed = asyncio.create_task(dispatcher.submit(req(1, slo=10.0)))
        kept = asyncio.create_task(dispatcher.submit(req(2, slo=10.0)))
        await asyncio.sleep(0)
        doomed.cancel()
        await asyncio.sleep(0)
        runner.gate.set()
        await asyncio.gather(first, kept)
        assert doomed.cancelled()
        return dispatcher.describe()

    info = asyncio.run(main())
    assert runner.batches == [1, 1]
    assert info["counts"]["cancelled"] == 1 and info["queue"]["requests"] == 0


def test_queued_request_that_cannot_make_it_gets_deadline_exceeded(runner, clock, req):
    async def main():
        dispatcher = build(runner, clock, execution="thread", profile=True)
        dispatcher.prepare()  # L(1) = 1.1 ms on the fake clock
        runner.started.clear()
        runner.gate = threading.Event()
        first = asyncio.create_task(dispatcher.submit(req(0, slo=1.0)))
        await wait_started(runner)
        late = asyncio.create_task(dispatcher.submit(req(1, slo=0.003)))
        await asyncio.sleep(0)
        clock.advance(0.002)  # the running batch overruns: 1 ms left < L(1)
        runner.gate.set()
        await first
        with pytest.raises(DeadlineExceeded):
            await late
        return dispatcher.describe()

    info = asyncio.run(main())
    assert info["counts"]["expired"] == 1 and info["counts"]["completed"] == 1


def test_unmeetable_deadline_is_refused_at_admission(runner, clock, req):
    async def main():
        dispatcher = build(runner, clock, profile=True)
        dispatcher.prepare()
        profiled = len(runner.batches)
        # Idle: one request predicted late runs now and then, to relearn L(1) ...
        await dispatcher.submit(req(0, slo=0.0005))  # L(1) = 1.1 ms
        assert dispatcher.describe()["counts"]["probes"] == 1
        # ... but not the next one, right after it.
        with pytest.raises(Refused, match="cannot meet deadline"):
            await dispatcher.submit(req(0, slo=0.0005))
        assert len(runner.batches) == profiled + 1

    asyncio.run(main())


def test_failed_execution_fails_its_requests_and_the_next_ones_still_run(runner, clock, req):
    runner.fail_next = True

    async def main():
        dispatcher = build(runner, clock)
        with pytest.raises(InternalError, match="boom"):
            await dispatcher.submit(req(0))
        return await dispatcher.submit(req(7))

    result = asyncio.run(main())
    np.testing.assert_array_equal(result["y"], np.full((1, 4), 15.0, np.float32))


def test_a_model_failure_is_the_models_not_a_kairos_bug(runner, clock, req, caplog):
    runner.fail_next = True

    async def main():
        dispatcher = build(runner, clock)
        with pytest.raises(InternalError, match="model execution failed: boom") as failure:
            await dispatcher.submit(req(0))
        return failure.value

    error = asyncio.run(main())
    assert not isinstance(error, InternalBug) and error.reason == "internal"
    assert not any(record.exc_info for record in caplog.records)


@pytest.mark.parametrize("execution", ["inline", "thread"])
def test_a_bug_gathering_inputs_surfaces_with_its_traceback(
    runner, clock, req, caplog, monkeypatch, execution
):
    from kairos.server.scheduler import dispatcher as module

    def broken_concatenate(*args, **kwargs):
        raise ValueError("planted gather bug")

    async def main():
        dispatcher = build(runner, clock, execution=execution)
        results = await asyncio.gather(
            *(dispatcher.submit(req(i, slo=1.0)) for i in range(3)), return_exceptions=True
        )
        return results, dispatcher.describe()

    monkeypatch.setattr(module.np, "concatenate", broken_concatenate)
    results, info = asyncio.run(main())
    monkeypatch.undo()
    bugs = [r for r in results if isinstance(r, InternalBug)]
    assert bugs, results  # the first request ran alone (no gather); the batch after it did not
    assert all(b.reason == "internal_bug" and "planted gather bug" in str(b) for b in bugs)
    assert runner.batches == [1]  # the model never saw the broken batch
    logged = [r for r in caplog.records if r.exc_info and "bug while gathering" in r.getMessage()]
    assert logged and "planted gather bug" in str(logged[0].exc_info[1])
    assert info["executors_busy"] == 0


def test_close_drains_then_refuses(runner, clock, req):
    runner.gate = threading.Event()

    async def main():
        dispatcher = build(runner, clock, execution="thread")
        tasks = [asyncio.create_task(dispatcher.submit(req(i, slo=10.0))) for i in range(3)]
        await wait_started(runner)
        closing = asyncio.create_task(dispatcher.close(drain=True))
        await asyncio.sleep(0)
        runner.gate.set()
        await closing
        results = await asyncio.gather(*tasks)
        with pytest.raises(ShuttingDown):
            await dispatcher.submit(req(9))
        return results

    assert len(asyncio.run(main())) == 3


def test_close_without_drain_rejects_what_is_queued(runner, clock, req):
    runner.gate = threading.Event()

    async def main():
        dispatcher = build(runner, clock, execution="thread")
        running = asyncio.create_task(dispatcher.submit(req(0, slo=10.0)))
        await wait_started(runner)
        queued = asyncio.create_task(dispatcher.submit(req(1, slo=10.0)))
        await asyncio.sleep(0)
        closing = asyncio.create_task(dispatcher.close(drain=False))
        await asyncio.sleep(0)
        runner.gate.set()
        await closing
        await running
        with pytest.raises(ShuttingDown):
            await queued

    asyncio.run(main())
    assert runner.batches == [1]


def test_model_without_batch_dimension_runs_one_request_each(runner, clock, req):
    async def main():
        dispatcher = build(runner, clock, max_batch_size=0)
        requests = []
        for i in range(3):
            request = req(i)
            request.inputs = {"x": np.full((4,), float(i), np.float32)}
            requests.append(request)
        return requests, await asyncio.gather(*(dispatcher.submit(r) for r in requests))

    requests, results = asyncio.run(main())
    assert runner.batches == [1, 1, 1]
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["y"], request.inputs["x"] * 2 + 1)


def test_request_larger_than_max_batch_is_split_and_reassembled_in_order(runner, clock, req):
    async def main():
        dispatcher = build(runner, clock, max_batch_size=4)
        request = req(100, rows=10, klass="batch", slo=10.0)
        return request, await dispatcher.submit(request)

    request, result = asyncio.run(main())
    assert runner.batches == [4, 4, 2]
    np.testing.assert_array_equal(result["y"], expected(request)["y"])


def test_fixed_policy_waits_then_dispatches(fake_runner_class, request_factory):
    clock = MonotonicClock()  # the queue delay is a real loop timer
    runner = fake_runner_class()

    async def main():
        dispatcher = build(runner, clock, policy="fixed", max_queue_delay_ms=1.0,
                           preferred_batch_sizes=[8])
        return await dispatcher.submit(request_factory(clock, 3, slo=10.0))

    result = asyncio.run(main())
    assert runner.batches == [1] and result["y"].shape == (1, 4)


def test_metrics_see_every_batch(runner, clock, req):
    class Recorder(MetricsSink):
        def __init__(self):
            self.batches = []

        def batch_executed(self, model, version, rows, queue_times_s, compute_s, predicted_s):
            self.batches.append((model, version, rows, len(queue_times_s), predicted_s))

    recorder = Recorder()

    async def main():
        dispatcher = build(runner, clock, metrics=recorder)
        await asyncio.gather(*(dispatcher.submit(req(i)) for i in range(3)))

    asyncio.run(main())
    # no profile: the first batch had no prediction; the second one learned from it
    assert [b[:4] for b in recorder.batches] == [("m", "1", 1, 1), ("m", "1", 2, 2)]
    assert recorder.batches[0][4] is None and recorder.batches[1][4] > 0


def test_outputs_that_do_not_match_the_batch_fail_it_cleanly(runner, clock, req):
    original = runner.run
    runner.run = lambda inputs, outputs: {"y": original(inputs, outputs)["y"][:1]}

    async def main():
        dispatcher = build(runner, clock)
        first = await dispatcher.submit(req(0))  # alone: passed through as is
        results = await asyncio.gather(
            *(dispatcher.submit(req(i, slo=1.0)) for i in range(3)), return_exceptions=True
        )
        return first, results, dispatcher.describe()

    first, results, info = asyncio.run(main())
    assert first["y"].shape == (1, 4)
    assert all(isinstance(r, InternalError) for r in results)
    assert info["counts"]["failed"] == 3 and info["executors_busy"] == 0


def test_hopeless_requests_are_judged_before_decoding(runner, clock, req):
    runner.gate = threading.Event()

    async def main():
        dispatcher = build(runner, clock, execution="thread")
        dispatcher.latency.observe(1, 0.002)
        assert dispatcher.hopeless(0.0)  # expired
        assert not dispatcher.hopeless(0.001)  # idle: worth a try, whatever L(1) says
        first = asyncio.create_task(dispatcher.submit(req(0, slo=10.0)))
        await wait_started(runner)
        queued = asyncio.create_task(dispatcher.submit(req(1, slo=10.0)))
        await asyncio.sleep(0)
        assert dispatcher.hopeless(0.001)  # busy and shorter than one execution
        assert not dispatcher.hopeless(1.0)
        runner.gate.set()
        await asyncio.gather(first, queued)

    asyncio.run(main())


def test_batch_class_pieces_run_in_the_background_and_online_work_does_not_wait(
    clock, req, fake_runner_class
):
    """A batch-class piece runs on its own lowest-priority thread holding no executor:
    an online request arriving while the piece runs is served before it ends."""

    class BackgroundGated(fake_runner_class):
        def __init__(self):
            super().__init__(clock)
            self.background_gate = threading.Event()
            self.background_started = threading.Event()
            self.policies: list[int] = []

        def run(self, inputs, outputs):
            if "background" in threading.current_thread().name:
                self.policies.append(os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else -1)
                self.background_started.set()
                assert self.background_gate.wait(10)
            return super().run(inputs, outputs)

    runner = BackgroundGated()

    async def main():
        dispatcher = build(runner, clock, max_batch_size=4)
        await dispatcher.start()
        job = asyncio.ensure_future(dispatcher.submit(req(0, rows=10, slo=60.0, klass="batch")))
        assert await asyncio.to_thread(runner.background_started.wait, 5)
        online = await dispatcher.submit(req(100, rows=1, slo=1.0))
        assert not job.done()  # the piece is still held: online did not wait for it
        runner.background_gate.set()
        result = await job
        await dispatcher.close()
        return online, result, dispatcher.describe()

    online, result, info = asyncio.run(main())
    np.testing.assert_array_equal(online["y"], np.full((1, 4), 201, np.float32))
    np.testing.assert_array_equal(result["y"][:, 0], np.arange(10, dtype=np.float32) * 2 + 1)
    assert info["background_batches"] == 3  # 10 rows in pieces of at most 4
    if hasattr(os, "SCHED_IDLE"):
        assert set(runner.policies) == {os.SCHED_IDLE}
