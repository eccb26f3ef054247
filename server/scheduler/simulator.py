"""A deterministic discrete-event simulator of one model's scheduler.

It drives the same `SchedulerCore` the server runs, on a virtual clock, with a
synthetic service time L_true(b) (default: a + c*b, optionally with seeded
multiplicative noise) and synthetic request traces (Poisson, bursts, a step in
rate, gamma inter-arrivals of a chosen coefficient of variation, and deadline
classes mixed into one trace). The core learns L(b) exactly as in the server: a profiling sweep at
start, then every execution. Same inputs and seed, same result.

    trace = poisson(rate=2000, duration=2.0, slo=0.010, seed=1)
    result = simulate(trace, policy="slo", max_batch_size=64, service=linear(1e-3, 1e-4))
    result.goodput(), result.attainment(), result.batch_sizes()

    bursty = gamma(rate=5600, cv=4, duration=2.0, slo=0.010, seed=1)
    mixed = mix_deadlines(poisson(7000, 2.0, slo=0.010, seed=2), [(0.005, 0.5), (0.050, 0.5)], seed=3)
    simulate(mixed, ...).by_deadline()   # {0.005: ClassStats, 0.05: ClassStats}
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import DeadlineExceeded, Refused
from ..types import InferenceRequest
from .core import CANCELLED, Batch, SchedulerCore
from .latency import LatencyModel
from .variants import Variant, VariantChooser

ServiceTime = Callable[[int], float]

# Event kinds, in the order they are handled at equal times: a finishing batch
# frees its executor before arrivals at the same instant look at the queue.
_DONE, _CANCEL, _ARRIVAL, _WAKE = range(4)


@dataclass(frozen=True)
class SimRequest:
    """One request in a trace: arrival time and relative deadline (seconds)."""

    t: float
    slo: float
    rows: int = 1
    shape_key: Hashable = ()
    klass: str = "online"
    priority: int = 0
    cancel_at: float | None = None  # the client gives up at this time
    min_accuracy: float = 0.0  # floor on the serving variant's accuracy (model groups)


@dataclass
class Outcome:
    index: int
    arrival: float
    deadline: float
    rows: int
    klass: str
    shape_key: Hashable
    priority: int
    status: str = "pending"  # ok | refused | expired | cancelled | failed | pending
    finish: float | None = None
    dispatch: float | None = None  # start of the batch that carried its (last) rows
    variant: str = ""  # the model-group variant that served it
    slo: float = 0.0  # its relative deadline (the deadline class it belongs to)

    @property
    def latency(self) -> float | None:
        return None if self.finish is None else self.finish - self.arrival

    @property
    def met(self) -> bool:
        return self.status == "ok" and self.finish is not None and self.finish <= self.deadline + 1e-12


@dataclass
class BatchRecord:
    start: float
    end: float
    rows: int
    shape_key: Hashable
    predicted: float
    online: bool
    requests: list[int]  # trace indices, in batch order
    variant: int = 0  # index into the model group's variants (0: the reference)


@dataclass(frozen=True)
class ClassStats:
    """One deadline class of a run: counts, attainment (of all and of the admitted) and
    goodput (answered within the deadline, per second of trace)."""

    slo: float
    requests: int
    admitted: int  # not refused at admission
    good: int
    refused: int
    expired: int
    late: int  # answered after the deadline
    goodput: float
    p99: float | None  # latency of the answered, seconds

    @property
    def attainment(self) -> float:
        return self.good / self.requests if self.requests else 1.0

    @property
    def admitted_attainment(self) -> float:
        return self.good / self.admitted if self.admitted else 1.0


@dataclass
class SimResult:
    outcomes: list[Outcome]
    batches: list[BatchRecord]
    duration: float
    core: SchedulerCore = field(repr=False)

    def count(self, status: str, klass: str | None = None) -> int:
        return sum(1 for o in self.outcomes if o.status == status and klass in (None, o.klass))

    def good(self, klass: str | None = "online") -> int:
        return sum(1 for o in self.outcomes if o.met and klass in (None, o.klass))

    def goodput(self, klass: str | None = "online") -> float:
        """Requests answered within their deadline, per second of trace."""
        return self.good(klass) / self.duration

    def attainment(self, klass: str | None = "online") -> float:
        """Share of all requests of the class answered within their deadline."""
        total = sum(1 for o in self.outcomes if klass in (None, o.klass))
        return self.good(klass) / total if total else 1.0

    def late(self) -> int:
        """Answered, but after the deadline: what admission control should prevent."""
        return sum(1 for o in self.outcomes if o.status == "ok" and not o.met)

    def admitted_attainment(self, klass: str | None = "online") -> float:
        """Share of the requests admitted (not refused) answered within their deadline."""
        admitted = sum(1 for o in self.outcomes if o.status != "refused" and klass in (None, o.klass))
        return self.good(klass) / admitted if admitted else 1.0

    def by_deadline(self, klass: str | None = "online") -> dict[float, ClassStats]:
        """Per deadline class (the requests' relative deadline, SimRequest.slo)."""
        groups: dict[float, list[Outcome]] = {}
        for o in self.outcomes:
            if klass in (None, o.klass):
                groups.setdefault(o.slo, []).append(o)
        out = {}
        for slo, group in sorted(groups.items()):
            answered = sorted(o.latency for o in group if o.status == "ok")
            good = sum(1 for o in group if o.met)
            refused = sum(1 for o in group if o.status == "refused")
            p99 = float(np.percentile(answered, 99)) if answered else None
            out[slo] = ClassStats(
                slo=slo, requests=len(group), admitted=len(group) - refused, good=good,
                refused=refused, expired=sum(1 for o in group if o.status == "expired"),
                late=sum(1 for o in group if o.status == "ok" and not o.met),
                goodput=good / self.duration, p99=p99,
            )
        return out

    def batch_sizes(self) -> Counter:
        return Counter(b.rows for b in self.batches)

    def mean_batch_rows(self) -> float:
        return sum(b.rows for b in self.batches) / len(self.batches) if self.batches else 0.0


# -- service times and traces ----------------------------------------------


def linear(a: float, c: float) -> ServiceTime:
    """L_true(b) = a + c*b: a fixed cost (reading weights) plus a per-row cost."""
    return lambda rows: a + c * rows


def poisson(
    rate: float,
    duration: float,
    slo: float,
    seed: int = 0,
    start: float = 0.0,
    **fields,
) -> list[SimRequest]:
    """Poisson arrivals at `rate` per second over [start, start + duration)."""
    rng = random.Random(seed)
    out = []
    t = start
    end = start + duration
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            return out
        out.append(SimRequest(t=t, slo=slo, **fields))


def bursts(
    base_rate: float,
    burst_rate: float,
    period: float,
    burst: float,
    duration: float,
    slo: float,
    seed: int = 0,
    **fields,
) -> list[SimRequest]:
    """Poisson at base_rate, plus burst_rate during the first `burst` s of every period."""
    out = poisson(base_rate, duration, slo, seed, **fields)
    t = 0.0
    n = 0
    while t < duration:
        out += poisson(burst_rate, min(burst, duration - t), slo, seed + 1000 + n, start=t, **fields)
        t += period
        n += 1
    return merge(out)


def step(
    rate: float, high_rate: float, at: float, duration: float, slo: float, seed: int = 0, **fields
) -> list[SimRequest]:
    """Poisson at `rate` until `at`, then at `high_rate` (e.g. a step to 2x overload)."""
    return poisson(rate, at, slo, seed, **fields) + poisson(
        high_rate, duration - at, slo, seed + 1, start=at, **fields
    )


def gamma(
    rate: float,
    cv: float,
    duration: float,
    slo: float,
    seed: int = 0,
    start: float = 0.0,
    **fields,
) -> list[SimRequest]:
    """Arrivals whose gaps are gamma-distributed with mean 1/rate and coefficient of
    variation `cv` (shape 1/cv^2): cv 1 is Poisson; cv 4 sends most requests in tight
    clusters separated by long silences, at the same mean rate."""
    if rate <= 0 or cv <= 0:
        raise ValueError("gamma arrivals need rate > 0 and cv > 0")
    rng = random.Random(seed)
    shape = 1.0 / (cv * cv)
    scale = 1.0 / (rate * shape)
    out = []
    t = start
    end = start + duration
    while True:
        t += rng.gammavariate(shape, scale)
        if t >= end:
            return out
        out.append(SimRequest(t=t, slo=slo, **fields))


def mix_deadlines(
    trace: Iterable[SimRequest], classes: Sequence[tuple[float, float]], seed: int = 0
) -> list[SimRequest]:
    """The same arrivals, each given a relative deadline drawn from `classes`:
    (slo seconds, share) pairs, shares normalized (e.g. [(0.005, 0.5), (0.050, 0.5)])."""
    if not classes or any(share < 0 for _, share in classes) or sum(s for _, s in classes) <= 0:
        raise ValueError("deadline classes need non-negative shares that add up to more than 0")
    rng = random.Random(seed)
    slos = [slo for slo, _ in classes]
    weights = [share for _, share in classes]
    return [replace(r, slo=rng.choices(slos, weights)[0]) for r in trace]


def merge(*traces: Iterable[SimRequest]) -> list[SimRequest]:
    return sorted((r for trace in traces for r in trace), key=lambda r: r.t)


# -- the simulation ---------------------------------------------------------

# 1 ms fixed + 0.1 ms per row: batch 1 costs 1.1 ms, batch 64 costs 7.4 ms.
DEFAULT_SERVICE = linear(1e-3, 1e-4)


def simulate(
    trace: Sequence[SimRequest],
    *,
    policy: str = "slo",
    max_batch_size: int = 64,
    service: ServiceTime | None = None,
    executors: int = 1,
    max_queued_rows: int = 1 << 20,
    max_queue_delay_s: float = 0.001,
    preferred_batch_sizes: Iterable[int] = (),
    early_refusal: bool | None = None,
    quantile: float = 0.95,
    noise: float = 0.0,
    concurrency_slowdown: float = 1.0,
    profile_runs: int = 10,
    seed: int = 0,
    duration: float | None = None,
    variants: Sequence[tuple[str, float, ServiceTime]] | None = None,
    accuracy_budget: float = 1.0,
    host_overhead_s: float = 0.0,
    miss_feedback: bool = True,
) -> SimResult:
    """Run the trace through a fresh core; see module docstring.

    noise: sigma of a lognormal factor on every execution time (seeded).
    concurrency_slowdown: while executions overlap, each runs this much slower
    (executors sharing cores): a run started beside others is slowed, and so is
    the rest of each run it joins.
    variants: a model group, (name, accuracy against the reference, L_true) each,
    the reference first (`service` is then ignored); accuracy_budget: the group's.
    host_overhead_s: per request, work that holds the executor after each execution
    but that L(b) never sees (the server's front end and event loop on the model's
    core): an execution of b rows frees its executor after L_true(b) + b x this, and
    reports L_true(b) as its compute time.
    """
    rng = np.random.default_rng(seed)
    service = service or DEFAULT_SERVICE

    services = [service] if not variants else [v[2] for v in variants]

    def actual(rows: int, concurrent: bool = False, variant: int = 0) -> float:
        t = services[variant](rows)
        if noise:
            t *= float(math.exp(rng.normal(0.0, noise)))
        return t * (concurrency_slowdown if concurrent else 1.0)

    latencies = []
    for index in range(len(services)):
        latency = LatencyModel(max_batch_size, quantile=quantile)
        for rows in latency.buckets:
            for _ in range(profile_runs):
                latency.observe(rows, actual(rows, variant=index))
        latencies.append(latency)
    latency = latencies[0]
    chooser = None
    if variants:
        chooser = VariantChooser(
            [Variant(name, accuracy, lat) for (name, accuracy, _), lat in zip(variants, latencies, strict=True)],
            accuracy_budget,
        )
    core = SchedulerCore(
        latency=latency,
        max_batch_size=max_batch_size,
        policy=policy,
        executors=executors,
        max_queued_rows=max_queued_rows,
        max_queue_delay_s=max_queue_delay_s,
        preferred_batch_sizes=preferred_batch_sizes,
        early_refusal=early_refusal,
        miss_feedback=miss_feedback,
        variants=chooser,
    )
    sim = _Simulation(trace, core, actual, concurrency_slowdown, host_overhead_s)
    sim.run()
    end = duration if duration is not None else (trace[-1].t if trace else 0.0)
    return SimResult(sim.outcomes, sim.records, max(end, 1e-9), core)


class _Simulation:
    def __init__(
        self, trace: Sequence[SimRequest], core: SchedulerCore, actual: Callable, slowdown: float,
        host_overhead: float = 0.0,
    ):
        self.trace = trace
        self.host_overhead = host_overhead
        self.core = core
        self.actual = actual
        self.slowdown = slowdown
        self.running: dict[int, list] = {}  # id(batch) -> [end, version, slowed]
        self.batches: dict[int, Batch] = {}
        self.events: list[tuple] = []
        self.seq = 0
        self.outcomes: list[Outcome] = []
        self.records: list[BatchRecord] = []
        self.tickets: dict[int, object] = {}
        self.wake_at: float | None = None
        for i, req in enumerate(trace):
            self.push(req.t, _ARRIVAL, i)
            if req.cancel_at is not None:
                self.push(req.cancel_at, _CANCEL, i)

    def push(self, t: float, kind: int, payload: object) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, kind, self.seq, payload))

    def run(self) -> None:
        while self.events:
            now, kind, _, payload = heapq.heappop(self.events)
            if kind == _ARRIVAL:
                self.arrive(payload, now)
            elif kind == _DONE:
                self.complete(payload, now)
            elif kind == _CANCEL:
                self.cancel(payload, now)
            elif kind == _WAKE and self.wake_at != now:
                continue  # superseded timer
            self.dispatch(now)

    def arrive(self, index: int, now: float) -> None:
        spec = self.trace[index]
        outcome = Outcome(
            index, now, now + spec.slo, spec.rows, spec.klass, spec.shape_key, spec.priority,
            slo=spec.slo,
        )
        self.outcomes.append(outcome)
        request = InferenceRequest(
            model="sim",
            version="1",
            inputs={},
            outputs=None,
            rows=spec.rows,
            deadline=now + spec.slo,
            arrival=now,
            priority=spec.priority,
            klass=spec.klass,
            request_id=str(index),
            shape_key=spec.shape_key,
            min_accuracy=spec.min_accuracy,
        )
        try:
            ticket = self.core.admit(request, now)
        except Refused:
            outcome.status = "refused"
            return
        except DeadlineExceeded:
            outcome.status = "expired"
            return
        ticket.waiter = outcome
        self.tickets[index] = ticket

    def cancel(self, index: int, now: float) -> None:
        ticket = self.tickets.get(index)
        if ticket is not None:
            self.core.cancel(ticket)  # queued: leaves the queue; running: result dropped
            if ticket.state == CANCELLED:
                ticket.waiter.status = "cancelled"

    def dispatch(self, now: float) -> None:
        core = self.core
        while True:
            batch = core.next_batch(now)
            for ticket in core.expired:
                ticket.waiter.status = "expired"
            core.expired.clear()
            if batch is None:
                break
            if batch.concurrent:
                self.slow_down_running(now)
            end = now + self.actual(batch.rows, batch.concurrent, batch.variant) + batch.rows * self.host_overhead
            self.running[id(batch)] = [end, 0, batch.concurrent]
            self.batches[id(batch)] = batch
            self.push(end, _DONE, (batch, 0))
        if core.wakeup is not None and self.wake_at != core.wakeup:
            self.wake_at = core.wakeup
            self.push(core.wakeup, _WAKE, None)

    def slow_down_running(self, now: float) -> None:
        """A run starting beside others slows them too (once): push their ends back."""
        for batch_id, state in self.running.items():
            end, version, slowed = state
            if slowed:
                continue
            state[0] = now + (end - now) * self.slowdown
            state[1] = version + 1
            state[2] = True
            self.push(state[0], _DONE, (self.batches[batch_id], state[1]))

    def complete(self, payload: tuple[Batch, int], now: float) -> None:
        batch, version = payload
        state = self.running.get(id(batch))
        if state is None or state[1] != version:
            return  # superseded: the run was slowed down by a later one
        del self.running[id(batch)]
        del self.batches[id(batch)]
        took = now - batch.start - batch.rows * self.host_overhead  # what the runner measures
        self.records.append(
            BatchRecord(
                batch.start,
                now,
                batch.rows,
                batch.key,
                batch.predicted,
                batch.online,
                [int(t.request.request_id) for t, _, _ in batch.items],
                batch.variant,
            )
        )
        chooser = self.core.variants
        name = chooser.variants[batch.variant].name if chooser is not None else ""
        for ticket, _, _ in batch.items:
            ticket.waiter.dispatch = batch.start
            ticket.waiter.variant = name
        for ticket in self.core.finish(batch, now, took):
            ticket.waiter.status = "ok"
            ticket.waiter.finish = now
