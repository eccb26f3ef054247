"""The asyncio dispatcher: the pure core driven by the event loop and executors.

`submit` admits the request into the core (or raises at once), then awaits a
future that the completion of its batch resolves. Dispatch runs as one
`call_soon` callback after the current burst of ready handlers, so requests that
arrived together are admitted together and can share a batch — except for a
lone request after a quiet spell on an idle server, which is dispatched from
`submit` itself (one loop iteration less at low load).

Execution modes (`SchedulingSettings.execution`):
- `inline`: run the batch on the event-loop thread. No thread hand-off (which
  costs tens of µs and two context switches per batch); on a server pinned to one
  core there is no parallelism to lose. The loop does not read new requests while
  a batch runs, so it suits short batches.
- `thread`: run it on a pool of `executors` threads; the loop keeps admitting
  and refusing requests meanwhile (onnxruntime releases the GIL).
- `auto` (default): with one executor, an online batch runs inline when its
  predicted time is at most `inline_max_ms`, otherwise on the thread; with
  several executors, always threads.

Batch-class pieces (except under `inline`) run in the core's *background*: on
threads of their own that the OS runs at the lowest priority (SCHED_IDLE, else
nice 19), beside online executions, holding no executor; up to the core's
`background_pieces` side by side, one thread each (`SchedulingSettings.batch_threads`;
by default one per core, factory.background_pieces), all on the model's one session
(its runs are thread-safe). Online work then never waits for a piece, and the
pieces get only the CPU online work leaves idle: with no online work, every core.
A piece that is one slice of one request reaches the model as a view of its rows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import DeadlineExceeded, InternalBug, InternalError, KairosError, ShuttingDown
from ..metrics import NULL_METRICS, MetricsSink
from ..types import InferenceRequest
from .core import Batch, SchedulerCore, Ticket
from .interface import BatchRunner, Clock, MonotonicClock
from .latency import LatencyModel
from .padding import Padding

log = logging.getLogger("kairos.scheduler")

EXECUTION_MODES = ("auto", "inline", "thread")
# Profiling sweep: runs per batch size, and time budgets.
PROFILE_MIN_RUNS = 5
PROFILE_MAX_RUNS = 40
PROFILE_SIZE_BUDGET_S = 0.25
# Eager dispatch of a lone request needs at least this much quiet before it.
EAGER_MIN_GAP_S = 100e-6
# The event loop's busy fraction (the core's `pressure`) is sampled at most this
# often and smoothed with this weight.
PRESSURE_WINDOW_S = 0.01
PRESSURE_WEIGHT = 0.5


class ModelFailed(Exception):
    """The runner (the model) raised `error` while running a batch."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class AsyncDispatcher:
    """One model version's scheduler on the event loop (implements `Dispatcher`)."""

    def __init__(
        self,
        *,
        model: str,
        version: str,
        runner: BatchRunner,
        core: SchedulerCore,
        metrics: MetricsSink = NULL_METRICS,
        clock: Clock | None = None,
        execution: str = "auto",
        inline_max_s: float = 0.002,
        profile: bool = True,
        profile_budget_s: float = 2.0,
        padding: Padding | None = None,
        variant_runners: list[BatchRunner] | None = None,
    ):
        if execution not in EXECUTION_MODES:
            raise ValueError(f"execution must be one of {', '.join(EXECUTION_MODES)}, not {execution!r}")
        self.model = model
        self.version = version
        self.runner = runner
        # A model group: the runner of each variant, the reference (`runner`) first.
        self.runners = [runner, *(variant_runners or [])]
        self.core = core
        self.latency: LatencyModel = core.latency
        self.metrics = metrics
        self.clock = clock or MonotonicClock()
        self.execution = execution
        self.inline_max_s = inline_max_s
        self.profile = profile
        self.profile_budget_s = profile_budget_s
        # Variable-length batching: requests differing only in a padded dim share a lane.
        self.padding = padding
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._background_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._closing = False
        self._idle: asyncio.Event | None = None
        self._last_activity = -1e9
        self._pressure_at = (-1.0, 0.0)  # (clock, event-loop thread CPU) at the last sample
        self.inline_batches = 0
        self.thread_batches = 0
        self.background_batches = 0
        self.profile_s = 0.0

    # -- lifecycle --------------------------------------------------------

    def prepare(self) -> None:
        """Blocking profiling sweep over batch sizes 1, 2, 4, ... max (loader thread)."""
        if not self.profile:
            return
        started = time.perf_counter()
        variants = self.core.variants
        latencies = [v.latency for v in variants.variants] if variants else [self.latency]
        # each variant gets its share of the budget
        budget = self.profile_budget_s / len(latencies)
        for runner, latency in zip(self.runners, latencies, strict=True):
            begun = time.perf_counter()
            for rows in latency.buckets:
                self._profile_size(rows, runner, latency)
                if time.perf_counter() - begun > budget:
                    log.info("%s/%s: profiling budget spent at batch %d", self.model, self.version, rows)
                    break
        self.profile_s = time.perf_counter() - started

    def single_latency(self) -> float:
        """L(1) of the fastest variant (of the model itself when it is no group): a
        request with less time left cannot be served."""
        variants = self.core.variants
        if variants is None:
            return self.latency.predict(1)
        return min(v.latency.predict(1) for v in variants.variants)

    def _profile_size(self, rows: int, runner: BatchRunner, latency: LatencyModel) -> None:
        inputs = runner.example_inputs(rows)
        runner.run(inputs, None)  # first run of a shape allocates; not a sample
        spent = 0.0
        for run in range(PROFILE_MAX_RUNS):
            if run >= PROFILE_MIN_RUNS and spent > PROFILE_SIZE_BUDGET_S:
                break
            t0 = self.clock.now()
            runner.run(inputs, None)
            elapsed = self.clock.now() - t0
            spent += elapsed
            latency.observe(rows, elapsed)

    async def start(self) -> None:
        """Bind to the running loop (optional: `submit` binds lazily too)."""
        self._loop = asyncio.get_running_loop()

    async def close(self, drain: bool = True) -> None:
        """Stop accepting; with drain, run what is queued first; then stop executors."""
        self._closing = True
        if not drain:
            # Accepted, then dropped: a message of its own, never mistaken for the refusal
            # of a request that arrived after the unload began.
            for ticket in self.core.drain_queue():
                self._reject(ticket, ShuttingDown("queued request dropped: model closed without drain"))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.core.idle() and self._loop is not None:
            self._idle = asyncio.Event()
            self._schedule()  # fixed policy: do not wait out the queue delay
            await self._idle.wait()
        for pool in (self._pool, self._background_pool):
            if pool is not None:
                pool.shutdown(wait=False)
        self._pool = self._background_pool = None

    # -- requests ---------------------------------------------------------

    async def submit(self, request: InferenceRequest) -> dict[str, np.ndarray]:
        ticket = self.enqueue(request)
        try:
            return await ticket.waiter
        except asyncio.CancelledError:
            if self.core.cancel(ticket):
                self._maybe_idle()
            raise

    def enqueue(self, request: InferenceRequest, waiter: Any = None) -> Ticket:
        """Admit a request (or raise at once); `ticket.waiter` is what its batch's
        completion resolves: a new future, or `waiter` (anything with `done()`,
        `set_result()` and `set_exception()`, called on the loop) for callers that
        handle many requests without a coroutine or future each (the native front end)."""
        if self._closing:
            raise ShuttingDown("model is unloading")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        core = self.core
        now = self.clock.now()
        if self.padding is not None:
            request.shape_key = self.padding.lane_key(request.shape_key)
        ticket = core.admit(request, now)  # raises Refused / DeadlineExceeded
        ticket.waiter = waiter if waiter is not None else loop.create_future()
        self.metrics.queue_depth(self.model, self.version, core.queued_requests, core.queued_rows)
        gap = now - self._last_activity
        self._last_activity = now
        if core.busy_hold_s > 0 and now - self._pressure_at[0] >= PRESSURE_WINDOW_S:
            self._sample_pressure(now)
        if not self._scheduled and core.free > 0:
            if core.queued_requests == 1 and not core.running and gap > self._eager_gap():
                # A lone request on an idle server after a quiet spell: dispatch now,
                # saving a loop iteration (the future is done before we await it).
                # Requests arriving together (gap ~0) take the deferred path below,
                # so that the ones the loop has ready are admitted into one batch.
                self._pump()
            else:
                self._scheduled = True
                loop.call_soon(self._pump)
        return ticket

    def _sample_pressure(self, now: float) -> None:
        """Feed the core the event loop's recent busy fraction: this thread's CPU time
        (gRPC's front end, the scheduler, inline runs) over wall time."""
        cpu = time.thread_time()
        then, cpu_then = self._pressure_at
        self._pressure_at = (now, cpu)
        if then < 0:
            return
        wall = now - then
        busy = min(1.0, (cpu - cpu_then) / wall) if wall < 10 * PRESSURE_WINDOW_S else 0.0
        core = self.core
        core.pressure += PRESSURE_WEIGHT * (busy - core.pressure)

    def _eager_gap(self) -> float:
        """Quiet time after which a lone request is dispatched without deferring."""
        single = self.latency.predict(1)
        return single if single > EAGER_MIN_GAP_S else EAGER_MIN_GAP_S

    def _schedule(self) -> None:
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        """Dispatch batches while executors are free (one inline batch per callback)."""
        self._scheduled = False
        core = self.core
        while True:
            now = self.clock.now()
            batch = core.next_batch(now)
            if core.expired:
                self._expire()
            if batch is None:
                break
            self.metrics.queue_depth(self.model, self.version, core.queued_requests, core.queued_rows)
            if batch.background:
                self._run_background(batch)
                continue
            if self._inline(batch):
                self._run_inline(batch)
                # let the loop admit what arrived meanwhile before the next batch
                if core.queued_requests:
                    self._schedule()
                self._maybe_idle()
                return
            self._run_thread(batch)
        if core.wakeup is not None:
            self._arm_timer(core.wakeup - now)
        self._maybe_idle()

    def _inline(self, batch: Batch) -> bool:
        mode = self.execution
        if mode == "auto":
            return self.core.executors == 1 and batch.predicted <= self.inline_max_s
        return mode == "inline"

    def _arm_timer(self, delay: float) -> None:
        loop = self._loop
        at = loop.time() + max(0.0, delay)
        if self._timer is not None:
            if self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._pump()

    # -- execution --------------------------------------------------------

    def _run_inline(self, batch: Batch) -> None:
        self.inline_batches += 1
        try:
            outputs, compute = self._execute(batch)
        except ModelFailed as exc:  # the model failed: its requests fail, the server lives
            self._failed(batch, exc.error)
            return
        except Exception as exc:  # a bug of ours (gathering inputs): surface it
            self._bug(batch, exc, "gathering a batch's inputs")
            return
        self._finish(batch, outputs, compute)

    def _finish(self, batch: Batch, outputs: dict, compute: float) -> None:
        try:
            self._done(batch, outputs, compute)
        except Exception as exc:  # a bug of ours: never leave requests waiting forever
            self._bug(batch, exc, "completing a batch")

    def _bug(self, batch: Batch, exc: Exception, doing: str) -> None:
        """Kairos's own failure: logged with its traceback, the batch's requests fail
        as INTERNAL with reason `internal_bug` (counted by the failure metrics)."""
        log.error("%s/%s: bug while %s", self.model, self.version, doing, exc_info=exc)
        if batch in self.core.running:
            self.core.fail(batch, self.clock.now())
        error = InternalBug(f"internal error while {doing}: {type(exc).__name__}: {exc}")
        for ticket, _, _ in batch.items:
            self._reject(ticket, error)

    def _run_thread(self, batch: Batch) -> None:
        self.thread_batches += 1
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.core.executors, thread_name_prefix=f"kairos-{self.model}"
            )
        self._pool.submit(self._execute_threaded, batch)

    def _run_background(self, batch: Batch) -> None:
        self.background_batches += 1
        if self._background_pool is None:
            self._background_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.core.background_pieces,
                thread_name_prefix=f"kairos-{self.model}-background",
                initializer=_lowest_priority,
            )
        self._background_pool.submit(self._execute_threaded, batch)

    def _execute_threaded(self, batch: Batch) -> None:
        loop = self._loop
        try:
            outputs, compute = self._execute(batch)
        except ModelFailed as exc:
            loop.call_soon_threadsafe(self._after_failure, batch, exc.error)
            return
        except Exception as exc:  # a bug of ours (gathering inputs)
            loop.call_soon_threadsafe(self._after_bug, batch, exc)
            return
        loop.call_soon_threadsafe(self._after_thread, batch, outputs, compute)

    def _after_thread(self, batch: Batch, outputs: dict, compute: float) -> None:
        self._finish(batch, outputs, compute)
        self._pump()

    def _after_failure(self, batch: Batch, exc: Exception) -> None:
        self._failed(batch, exc)
        self._pump()

    def _after_bug(self, batch: Batch, exc: Exception) -> None:
        self._bug(batch, exc, "gathering a batch's inputs")
        self._pump()

    def _execute(self, batch: Batch) -> tuple[dict[str, np.ndarray], float]:
        """Gather inputs, run the model, time it (gather included: it is service time).
        Only the model's own failure is caught here (as `ModelFailed`); a failure
        gathering the inputs is a bug of Kairos and propagates as it is."""
        t0 = self.clock.now()
        items = batch.items
        first = items[0][0].request
        if len(items) == 1 and items[0][1] == 0 and items[0][2] == items[0][0].rows:
            inputs: Mapping[str, np.ndarray] = first.inputs
        elif len(items) == 1 and self.padding is None:
            # one piece of a split request: a view of its rows, no copy
            _, start, stop = items[0]
            inputs = {name: value[start:stop] for name, value in first.inputs.items()}
        else:
            join = self.padding.gather if self.padding is not None else _concatenate
            inputs = {
                name: join(name, [t.request.inputs[name][start:stop] for t, start, stop in items])
                for name in first.inputs
            }
        names = first.outputs
        if names is not None:
            for ticket, _, _ in items:
                if ticket.request.outputs != names:
                    names = None  # mixed requests: run every output, filter per request
                    break
        try:
            outputs = self.runners[batch.variant].run(inputs, names)
        except Exception as exc:  # noqa: BLE001 - whatever the model raises is the model's failure
            raise ModelFailed(exc) from exc
        return outputs, self.clock.now() - t0

    def _done(self, batch: Batch, outputs: dict[str, np.ndarray], compute: float) -> None:
        try:
            self._split(batch, outputs, self.padding)
        except InternalError as exc:  # the model's outputs do not fit the batch: its failure
            self._failed(batch, exc)
            return
        now = self.clock.now()
        self._last_activity = now  # a loop blocked by an inline run is not quiet
        complete = self.core.finish(batch, now, compute)
        variants = self.core.variants
        served_by = variants.variants[batch.variant].name if variants is not None else ""
        for ticket in complete:
            ticket.request.served_by = served_by
            future = ticket.waiter
            if future is not None and not future.done():
                future.set_result(_assemble(ticket.parts))
            ticket.parts = None
        self.metrics.batch_executed(
            self.model,
            self.version,
            batch.rows,
            [batch.start - t.arrival for t, _, _ in batch.items],
            compute,
            batch.predicted if batch.predicted > 0 else None,  # 0: nothing learned yet
        )
        if variants is not None:
            self.metrics.variant_served(
                self.model, self.version, served_by, len(complete), batch.rows,
                variants.spent(), variants.budget, variants.switches,
            )

    @staticmethod
    def _split(batch: Batch, outputs: dict[str, np.ndarray], padding: Padding | None = None) -> None:
        """Each request's rows of the outputs, kept on its ticket (views, no copies); with
        padding, declared padded output dims are cut back to each request's length."""
        items = batch.items
        if len(items) == 1 and items[0][1] == 0 and items[0][2] == items[0][0].rows:
            ticket = items[0][0]
            ticket.parts = [(0, _select(outputs, ticket.request.outputs))]
            return
        for name, value in outputs.items():
            if value.ndim == 0 or value.shape[0] != batch.rows:
                raise InternalError(
                    f"output {name!r} has shape {value.shape}, expected {batch.rows} rows"
                )
        offset = 0
        for ticket, start, stop in items:
            rows = stop - start
            part = {
                name: value[offset : offset + rows]
                for name, value in _select(outputs, ticket.request.outputs).items()
            }
            offset += rows
            if padding is not None:
                part = padding.trim(part, padding.length(ticket.request.inputs))
            if ticket.parts is None:
                ticket.parts = [(start, part)]
            else:
                ticket.parts.append((start, part))

    def _failed(self, batch: Batch, exc: Exception) -> None:
        log.error("%s/%s: batch of %d rows failed: %s", self.model, self.version, batch.rows, exc)
        error = exc if isinstance(exc, KairosError) else InternalError(f"model execution failed: {exc}")
        for ticket in self.core.fail(batch, self.clock.now()):
            self._reject(ticket, error)

    def _expire(self) -> None:
        expired = self.core.expired
        self.core.expired = []
        for ticket in expired:
            self._reject(ticket, DeadlineExceeded("deadline unreachable while queued"))

    @staticmethod
    def _reject(ticket: Ticket, error: Exception) -> None:
        future = ticket.waiter
        ticket.parts = None
        if future is not None and not future.done():
            future.set_exception(error)

    def _maybe_idle(self) -> None:
        if self._idle is not None and self.core.idle():
            self._idle.set()

    # -- operators --------------------------------------------------------

    def hopeless(self, budget_s: float) -> bool:
        """Whether a request with `budget_s` left cannot be served in time, judged
        before it is even decoded: it has expired, or it is shorter than a lone
        execution while other requests are queued. The transport refuses such a
        request without decoding it, which keeps refusals cheap under overload. An
        idle server never calls a request hopeless (the core's probe relearns L(1))."""
        if budget_s <= 0:
            return True
        return self.core.queued_requests > 0 and budget_s < self.single_latency()

    def describe(self) -> dict[str, Any]:
        info = self.core.describe()
        info.update(
            model=self.model,
            version=self.version,
            execution=self.execution,
            inline_max_ms=self.inline_max_s * 1e3,
            inline_batches=self.inline_batches,
            thread_batches=self.thread_batches,
            background_batches=self.background_batches,
            profile_s=self.profile_s,
        )
        return info


def _lowest_priority() -> None:
    """Make the calling thread the OS's last choice: SCHED_IDLE runs it only when no
    other thread wants the CPU (Linux); elsewhere, nice 19 if the OS allows."""
    tid = threading.get_native_id()
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        return
    except (AttributeError, OSError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, tid, 19)
    except (AttributeError, OSError):
        log.warning("cannot lower the priority of the batch-class thread")


def _concatenate(name: str, parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts, axis=0)


def _select(outputs: dict[str, np.ndarray], wanted: list[str] | None) -> dict[str, np.ndarray]:
    """The outputs a request asked for, in its order (the runner's dict when it matches)."""
    if wanted is None or list(outputs) == wanted:
        return outputs
    return {name: outputs[name] for name in wanted}


def _assemble(parts: list[tuple[int, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """One request's outputs from its pieces, in row order."""
    if len(parts) == 1:
        return parts[0][1]
    parts.sort(key=lambda part: part[0])
    names = parts[0][1].keys()
    return {name: np.concatenate([part[name] for _, part in parts], axis=0) for name in names}

