"""The scheduler's pure core: queue, dispatch policies and admission control.

No asyncio, no clock of its own: every call takes `now`, so the same code runs
under the asyncio dispatcher (real clock) and the discrete-event simulator
(virtual clock). Hot paths are O(log n) heap operations per request.

Queue. One *lane* per `shape_key` (requests merge only within a lane). A lane is
a heap ordered by (class, priority, deadline, arrival order): online before
batch-class work, then lower priority value, then earliest deadline first.
Cancelled requests are marked and dropped lazily when they reach the top.

Policies, evaluated whenever an executor is free:
- `slo`: take requests in queue order while the batch, predicted by L(b), still
  finishes before every included deadline. An idle server runs a lone request
  at once (GEMV); while an execution runs the queue grows, so the next batch is
  larger (GEMM). Under overload a nearly-late head would cut every batch short
  and spiral into small, slow batches; when the request behind it would miss
  its next batch too, the tight heads expire instead and the batch takes the
  size the load needs (`b_slo`: the largest b with L(b) <= half the online
  deadline budget: wait one batch, run in the next). With several free
  executors, L(b) decides whether to cut the queue into concurrent smaller
  batches (and learns what running side by side costs). With mixed deadline
  classes queued (e.g. 5 ms and 50 ms requests), batches are capped at b_slo,
  so a request of the tightest class arriving during one can wait it out.
- `fixed`: as Triton's dynamic batcher: dispatch as soon as the largest
  preferred batch size (or the max batch size) is queued, otherwise when the
  oldest request has waited `max_queue_delay`.
- `none`: one request per execution.

Admission ("early refusal", on by default for `slo`): a request whose predicted
finish (wait for an executor + serving the queued rows that outrank it and its
own, in batches of the operating size) is after its deadline is refused at once.
Rows outrank it by class and priority, and at equal ones by deadline: a 5 ms
request waits for the 5 ms ones queued before it, not for the 50 ms ones, unless
those are due first. So is one that would overflow `max_queued_rows` (online
requests count queued online rows only). A queued request that can no longer finish in time (under
`slo`: now + L(its rows) > deadline; otherwise: deadline passed) expires
without running. An idle server still admits one predicted-late request per
PROBE_INTERVAL_S, so a model whose L(1) rose above every deadline relearns it.

Holding (`slo`, online work, `busy_hold_s` > 0). When the server's event loop is
busy (`pressure`: its recent busy fraction, fed by the owner), the front end and
the model share one scarce core, and each batch-1 run spends on one request what a
batch spends on many. So an idle executor does not take a short queue at once: it
holds it until the queue reaches the highest-throughput batch size or for at most
`busy_hold_s` after the head arrived, and never past the head's latest start
(deadline - L(queued rows + 1) - L(1), re-judged at every arrival). Whether holds
gather anything is learned (EWMA of rows gained per hold): closed-loop clients that
wait for their answers bring nothing during a hold, and holding then stops, probing
again now and then.

Batch-class requests run only when no online request is queued, and in pieces;
requests larger than one piece (or than max_batch_size) are split and the
dispatcher reassembles the parts in order. Two ways to keep pieces from hurting
online requests:
- `background_batch` (the asyncio dispatcher's default): up to `background_pieces`
  pieces at a time (the dispatcher's default: one per core, so that batch work can
  use the whole machine) run in the *background*, beside whatever online execution
  runs, each on a thread the operating system runs at the lowest priority. They
  hold no executor, so online work never waits for a piece to end; the OS gives
  the pieces only the CPU online work leaves idle. Pieces take up to
  BACKGROUND_PIECE_S (few, cheap hand-offs) and teach L(b) nothing (their times
  include preemption).
- otherwise a piece holds the executor, so its L(b) is kept under half the online
  budget (a low quantile of recent admitted online requests' deadline - arrival)
  and an online request arriving meanwhile still makes its deadline.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import DeadlineExceeded, Refused
from ..types import InferenceRequest
from .latency import LatencyModel
from .variants import VariantChooser

POLICIES = ("slo", "fixed", "none")

# Ticket states.
QUEUED, RUNNING, DONE, CANCELLED, EXPIRED, FAILED = range(6)
STATE_NAMES = ("queued", "running", "done", "cancelled", "expired", "failed")
# Class ranks: heap order puts online work first.
ONLINE, BATCH = 0, 1

_INF = math.inf
# The online budget is this quantile of the last BUDGET_WINDOW admitted online
# requests' deadline budgets, recomputed every BUDGET_EVERY of them.
BUDGET_WINDOW = 64
BUDGET_QUANTILE = 0.1
BUDGET_EVERY = 16
# An idle server admits one request it predicts too slow per this many seconds,
# to relearn L(1) (see SchedulerCore._probe).
PROBE_INTERVAL_S = 0.05
# Executions start beside running ones only while overlapping runs slow down by
# less than this fraction of their number (else one at a time; see _side_by_side),
# trying anyway once per SIDE_BY_SIDE_PROBE executions to keep learning.
CONCURRENCY_PAYS = 0.7
SIDE_BY_SIDE_PROBE = 256
# Predicted length of one background batch-class piece (see `background_batch`).
BACKGROUND_PIECE_S = 0.025
# Holding (module docstring): only while the event loop is at least this busy, and
# only while holds gather at least HOLD_MIN_GAIN rows on average (EWMA weight
# HOLD_GAIN_WEIGHT), trying once per HOLD_PROBE dispatches otherwise.
HOLD_PRESSURE = 0.5
HOLD_MIN_GAIN = 0.5
HOLD_GAIN_WEIGHT = 0.2
HOLD_PROBE = 256


class Ticket:
    """One admitted request as the queue tracks it."""

    __slots__ = (
        "request",
        "rows",
        "deadline",
        "arrival",
        "rank",
        "entry",
        "state",
        "taken",
        "done",
        "splittable",
        "lane",
        "waiter",
        "parts",
        "admitted",
        "probe",
        "queue_class",
    )

    def __init__(self, request: InferenceRequest, rows: int, rank: int, seq: int, now: float):
        self.request = request
        self.rows = rows
        self.deadline = request.deadline
        self.arrival = request.arrival
        self.rank = rank
        self.entry = (rank, request.priority, request.deadline, seq, self)
        self.state = QUEUED
        self.taken = 0  # rows handed to batches
        self.done = 0  # rows whose batch finished
        self.splittable = rank == BATCH
        self.lane: _Lane | None = None
        self.waiter: Any = None  # the dispatcher's future
        self.parts: list | None = None  # (start, outputs) of a split request
        self.admitted = now
        self.probe = False  # admitted to relearn L(b): runs even if predicted late
        # what it is counted under in the queue (see SchedulerCore._rows_ahead): online
        # work by (priority, deadline class), batch-class work by priority
        self.queue_class = (request.priority, _deadline_class(request.deadline - request.arrival)) if (
            rank == ONLINE) else request.priority

    def __repr__(self) -> str:
        rid = self.request.request_id
        return f"Ticket({rid!r}, rows={self.rows}, {STATE_NAMES[self.state]})"


def _deadline_class(budget: float) -> int:
    """Deadline budgets (deadline - arrival) grouped in classes about 19% wide (a log
    scale): a request is queued behind the rows of its own and tighter classes."""
    if budget <= 0:
        return -(1 << 30)
    return math.floor(math.log2(budget) * 4) if budget < _INF else 1 << 30


class Batch:
    """One execution: slices (ticket, start row, stop row) of queued requests."""

    __slots__ = (
        "key", "items", "rows", "predicted", "start", "online", "concurrent", "deadline", "overlap",
        "background", "latency", "variant",
    )

    def __init__(self, key: Hashable, items: list, rows: int, predicted: float, start: float):
        self.key = key
        self.items = items
        self.rows = rows
        self.predicted = predicted
        self.start = start
        self.online = True
        self.concurrent = False
        self.deadline = _INF  # earliest deadline in it (set when several executors run)
        self.overlap = 0.0  # seconds during which another execution ran too
        self.background = False  # a low-priority batch-class piece holding no executor
        self.latency: LatencyModel | None = None  # the L(b) that predicted it (learns from it)
        self.variant = 0  # which variant of a model group runs it (0: the reference)

    @property
    def tickets(self) -> list[Ticket]:
        return [item[0] for item in self.items]

    def __repr__(self) -> str:
        return f"Batch(rows={self.rows}, requests={len(self.items)}, predicted={self.predicted:.6f})"


class _Lane:
    __slots__ = ("key", "heap", "rows", "online_rows", "live")

    def __init__(self, key: Hashable):
        self.key = key
        self.heap: list[tuple] = []
        self.rows = 0
        self.online_rows = 0
        self.live = 0


@dataclass
class CoreCounts:
    admitted: int = 0
    refused_deadline: int = 0
    refused_queue_full: int = 0
    expired: int = 0
    cancelled: int = 0
    completed: int = 0
    failed: int = 0
    probes: int = 0  # admitted although predicted late, to relearn L(b) when idle
    holds: int = 0  # short queues held back to gather a batch (slo, busy event loop)
    batches: int = 0
    rows: int = 0
    # dispatches by rows in the execution: the GEMV/GEMM split
    batch_sizes: dict[int, int] = field(default_factory=dict)


class SchedulerCore:
    """Queue + policy + admission for one model version. Not thread-safe: one owner."""

    def __init__(
        self,
        *,
        latency: LatencyModel,
        max_batch_size: int,
        policy: str = "slo",
        executors: int = 1,
        max_queued_rows: int = 4096,
        max_queue_delay_s: float = 0.001,
        preferred_batch_sizes: Iterable[int] = (),
        early_refusal: bool | None = None,
        background_batch: bool = False,
        background_pieces: int = 1,
        busy_hold_s: float = 0.0,
        variants: VariantChooser | None = None,
    ):
        if policy not in POLICIES:
            raise ValueError(f"unknown scheduling policy {policy!r} (known: {', '.join(POLICIES)})")
        self.latency = latency
        # A model group: `latency` is the reference's L(b); the one in use (admission,
        # dispatch) is set from `variants` as each decision is made (see variants.py).
        self.variants = variants
        self.reference_latency = latency
        self.policy = policy
        self.batching = max_batch_size > 0
        # Rows per execution; a model that does not batch runs one request each.
        self.cap = max_batch_size if max_batch_size > 0 else 1
        self.executors = max(1, executors)
        self.max_queued_rows = max_queued_rows
        self.max_queue_delay_s = max_queue_delay_s
        prefs = sorted({p for p in preferred_batch_sizes if 0 < p <= self.cap})
        self.target_rows = prefs[-1] if prefs else self.cap
        self.predictive = policy == "slo" if early_refusal is None else early_refusal
        self.background_batch = background_batch
        self.background_pieces = max(1, background_pieces)  # at most this many side by side
        self.background: list[Batch] = []  # the running background pieces
        self.busy_hold_s = busy_hold_s if policy == "slo" else 0.0
        self.pressure = 0.0  # recent busy fraction of the event loop, fed by the owner
        self.hold_gain = 1.0  # EWMA of rows a hold gathered
        self._hold: tuple[Hashable, int] | None = None  # (lane key, rows) when a hold began
        self._hold_probe = 0  # counts.batches when a hold was last tried without gain
        self.lanes: dict[Hashable, _Lane] = {}
        self.queued_rows = 0
        self.queued_online_rows = 0
        self.queued_requests = 0
        # queued rows by Ticket.queue_class: online by (priority, deadline class), batch by priority
        self._rows_by_priority: tuple[dict, dict] = ({}, {})
        self._last_probe = -_INF
        self._side_by_side_probe = 0  # counts.batches at the last try
        self._overlap_mark = 0.0  # time of the last start/finish (executors > 1)
        self._budgets: deque[float] = deque(maxlen=BUDGET_WINDOW)
        self._budget_seen = 0
        self.free = self.executors
        self.running: list[Batch] = []
        self.expired: list[Ticket] = []  # drained by the owner after next_batch
        self.wakeup: float | None = None  # fixed policy: when to look again
        self.online_budget = _INF  # low quantile of recent online deadline budgets
        self.counts = CoreCounts()
        self._seq = 0
        self._op: tuple[int, int] = (self.cap, self.cap)
        self._op_table: list[float] | None = None
        self._op_budget = _INF

    # -- admission --------------------------------------------------------

    def admit(self, request: InferenceRequest, now: float) -> Ticket:
        """Queue a request or raise `Refused` / `DeadlineExceeded` at once."""
        rows = request.rows if request.rows > 0 else 1
        online = request.klass != "batch"
        # Online requests are bounded by queued online rows only: queued batch-class
        # work (bounded by all rows) must never make an online request "queue full".
        queued = self.queued_online_rows if online else self.queued_rows
        if queued + rows > self.max_queued_rows:
            self.counts.refused_queue_full += 1
            raise Refused(f"queue full: {queued} rows queued, limit {self.max_queued_rows}")
        deadline = request.deadline
        key = request.shape_key
        if self.variants is not None:
            tier = self.variants.tier(request.min_accuracy)
            key = (key, tier)
            self.latency = self.variants.admission_latency(tier, min(rows, self.cap))
        lane = self.lanes.get(key)
        probe = False
        if self.predictive:
            if online:
                ahead = self._online_rows_ahead(request.priority, deadline, request.arrival)
            else:
                ahead = self._rows_ahead(BATCH, request.priority)
            finish = self._admission_finish(now, ahead, rows, deadline, lane)
            probe = finish > deadline and self._probe(now, deadline)
            if finish > deadline and not probe:
                self.counts.refused_deadline += 1
                raise Refused(
                    f"cannot meet deadline: predicted finish in {(finish - now) * 1e3:.3f} ms, "
                    f"deadline in {(deadline - now) * 1e3:.3f} ms"
                )
        elif deadline <= now:
            self.counts.expired += 1
            raise DeadlineExceeded("deadline passed before the request was queued")
        if online:
            self._track_budget(deadline - request.arrival)
        self._seq += 1
        ticket = Ticket(request, rows, ONLINE if online else BATCH, self._seq, now)
        ticket.probe = probe
        if rows > self.cap:
            ticket.splittable = True
        if lane is None:
            lane = self._new_lane(key)
        ticket.lane = lane
        heapq.heappush(lane.heap, ticket.entry)
        lane.live += 1
        self._count(ticket, lane, rows)
        self.queued_requests += 1
        self.counts.admitted += 1
        return ticket

    def _probe(self, now: float, deadline: float) -> bool:
        """Admit a request that L(b) says is too late, now and then, when the server is
        idle: otherwise a model whose L(1) rose above the deadlines (a slow spell)
        would refuse everything, never run, and never learn that it is fast again."""
        if self.running or self.queued_requests or now - self._last_probe < PROBE_INTERVAL_S:
            return False
        if deadline <= now:
            return False
        self._last_probe = now
        self.counts.probes += 1
        return True

    def _count(self, ticket: Ticket, lane: _Lane, rows: int) -> None:
        """Queued-row bookkeeping: `rows` (+/-) of this ticket enter/leave the queue."""
        lane.rows += rows
        self.queued_rows += rows
        if ticket.rank == ONLINE:
            lane.online_rows += rows
            self.queued_online_rows += rows
        by_class = self._rows_by_priority[ticket.rank]
        key = ticket.queue_class
        left = by_class.get(key, 0) + rows
        if left:
            by_class[key] = left
        else:
            by_class.pop(key, None)

    def _rows_ahead(self, rank: int, priority: int) -> int:
        """Queued rows that a new request of this class and priority would wait for if
        it queued last at its priority (its deadline no earlier than any queued)."""
        online = self._rows_by_priority[ONLINE]
        if rank == ONLINE:
            if len(online) == 1:  # the common case: one priority level
                (p, _), = online
                return self.queued_online_rows if p <= priority else 0
            return sum(rows for (p, _), rows in online.items() if p <= priority)
        ahead = self.queued_online_rows
        return ahead + sum(rows for p, rows in self._rows_by_priority[BATCH].items() if p <= priority)

    def _online_rows_ahead(self, priority: int, deadline: float, arrival: float) -> int:
        """Queued rows a new online request waits for: the queue is earliest deadline
        first, so those of higher priority and, at its own, those due no later than it.
        When no looser deadline class than its own is queued at its priority, that is
        every row counted by `_rows_ahead` (O(classes)); otherwise (mixed deadlines: a
        5 ms request jumps the 50 ms ones queued before it, but not one of them due
        first) the lanes' heaps are searched below its own entry (O(rows due first))."""
        mine = _deadline_class(deadline - arrival)
        looser = False
        for p, c in self._rows_by_priority[ONLINE]:
            if p == priority and c > mine:
                looser = True
                break
        if not looser:
            return self._rows_ahead(ONLINE, priority)
        bound = (ONLINE, priority, deadline, _INF)
        ahead = 0
        for lane in self.lanes.values():
            heap = lane.heap
            if not lane.online_rows or not heap or heap[0][:4] > bound:
                continue
            stack = [0]
            size = len(heap)
            while stack:
                i = stack.pop()
                entry = heap[i]
                if entry[:4] > bound:
                    continue  # a heap: everything below is later still
                ticket = entry[4]
                if ticket.state == QUEUED or (ticket.state == RUNNING and ticket.taken < ticket.rows):
                    ahead += ticket.rows - ticket.taken
                child = 2 * i + 1
                if child < size:
                    stack.append(child)
                    if child + 1 < size:
                        stack.append(child + 1)
        return ahead

    def _track_budget(self, budget: float) -> None:
        """Follow the deadline budget (deadline - arrival) of admitted online requests
        with a low quantile of the recent ones: a tight class of traffic (a tenth of
        requests or more) sizes batch-class pieces and the SLO batch size; one odd or
        already late request does not (refused ones never get here)."""
        if budget <= 0:
            return
        recent = self._budgets
        recent.append(budget)
        self._budget_seen += 1
        if len(recent) < BUDGET_WINDOW // 4:
            self.online_budget = min(recent)
        elif self._budget_seen % BUDGET_EVERY == 0:
            self.online_budget = sorted(recent)[int(len(recent) * BUDGET_QUANTILE)]

    def _new_lane(self, key: Hashable) -> _Lane:
        if len(self.lanes) >= 64:  # forget idle lanes of shapes no longer sent
            for old in [k for k, lane in self.lanes.items() if lane.live == 0]:
                del self.lanes[old]
        lane = self.lanes[key] = _Lane(key)
        return lane

    def _executor_wait(self, now: float) -> float:
        if not self.running or (self.free > 0 and self._parallel()):
            return 0.0
        soonest = min(b.start + b.predicted for b in self.running)
        return soonest - now if soonest > now else 0.0

    def _admission_finish(
        self, now: float, ahead: int, rows: int, deadline: float, lane: _Lane | None
    ) -> float:
        """Predicted finish of a new request behind `ahead` queued rows.

        When everything fits one batch, the request either joins the next batch
        (only if that batch still meets the earliest queued deadline: a join must
        not make an admitted request late) or runs in the batch after it.
        """
        wait = self._executor_wait(now)
        n = ahead + rows
        if not self.batching or self._parallel():
            return now + wait + self._serve_time(n)
        table = self.latency.table_list
        start = now + wait
        best = self._operating_point()[1]
        if n > best:
            # Behind a full batch: under load, later arrivals fill every batch to the
            # operating size, so count whole batches (a partial last batch would be an
            # optimistic promise that dispatch then breaks by expiring requests).
            return start + -(-n // best) * table[best]
        join = start + table[n]
        head = lane.heap[0][2] if lane is not None and lane.heap else _INF
        if join <= deadline and join <= head:
            return join
        return start + table[ahead] + table[rows]

    def _serve_time(self, rows: int) -> float:
        """Predicted time to serve `rows` rows queued on the executors."""
        latency = self.latency
        if self.batching:
            total = latency.drain_time(rows, self._operating_point()[1])
        else:
            total = rows * latency.predict(1)
        if self._parallel() and rows > 1:
            single = latency.predict(min(rows, self.cap))
            total = max(single, total * latency.concurrency_factor / self.executors)
        return total

    def predicted_finish(
        self, rows: int, now: float, online: bool = True, shape_key: Hashable = (), priority: int = 0
    ) -> float:
        """When a new request of `rows` rows would finish if admitted now."""
        ahead = self._rows_ahead(ONLINE if online else BATCH, priority)
        if self.variants is not None:
            tier = len(self.variants.variants) - 1
            shape_key = (shape_key, tier)
            self.latency = self.variants.admission_latency(tier, min(rows, self.cap))
        return self._admission_finish(now, ahead, rows, _INF, self.lanes.get(shape_key))

    # -- cancellation -----------------------------------------------------

    def cancel(self, ticket: Ticket) -> bool:
        """The client gave up: drop what of it is still queued. True if it was pending."""
        if ticket.state not in (QUEUED, RUNNING):
            return False
        pending = ticket.state == QUEUED or ticket.taken < ticket.rows
        if pending:
            self._unqueue(ticket)
        ticket.state = CANCELLED
        self.counts.cancelled += 1
        return pending

    def _unqueue(self, ticket: Ticket) -> None:
        """Remove the untaken rows of a ticket from the counters (heap entry goes lazily)."""
        lane = ticket.lane
        lane.live -= 1
        self.queued_requests -= 1
        self._count(ticket, lane, ticket.taken - ticket.rows)

    def drain_queue(self) -> list[Ticket]:
        """Remove every queued request (shutdown without drain); returns them."""
        out = []
        for lane in self.lanes.values():
            for entry in lane.heap:
                ticket = entry[4]
                if ticket.state == QUEUED or (ticket.state == RUNNING and ticket.taken < ticket.rows):
                    self._unqueue(ticket)
                    ticket.state = CANCELLED
                    out.append(ticket)
            lane.heap.clear()
        return out

    # -- dispatch ---------------------------------------------------------

    def next_batch(self, now: float) -> Batch | None:
        """The batch to run on a free executor now, or None (nothing or not yet).

        Requests found expired on the way are appended to `self.expired`.
        """
        self.wakeup = None
        if self.queued_requests <= 0:
            return None
        background = (
            self.background_batch and len(self.background) < self.background_pieces
            and self.queued_online_rows == 0
        )
        if not background and (self.free <= 0 or (self.running and not self._side_by_side(now))):
            return None
        variants = self.variants
        if variants is not None:  # heads expire only if the fastest allowed variant is too slow
            self.latency = variants.admission_latency(len(variants.variants) - 1, 1)
        lane = self._pick_lane(now)
        if lane is None:
            return None
        variant = 0
        if variants is not None:
            variant = self._choose_variant(lane, now)
        if self.background_batch and lane.heap[0][0] == BATCH:
            if not background:
                return None
            items, rows = self._take(lane, self._piece_rows(), 1 << 30)
            return self._start(lane, items, rows, now, background=True) if items else None
        # here the head is online work, so `background` was False and the executor
        # checks above applied
        if self.policy == "slo":
            items, rows = self._take_slo(lane, now)
        elif self.policy == "fixed":
            items, rows = self._take_fixed(lane, now)
        else:
            items, rows = self._take(lane, self.cap, 1)
        if not items:
            return None
        batch = self._start(lane, items, rows, now)
        if variants is not None:
            batch.variant = variant
            variants.served(variant, rows, len(items), batch.online)
        return batch

    def _choose_variant(self, lane: _Lane, now: float) -> int:
        """Set `self.latency` to the variant the lane's next batch runs on (slo policy,
        online work; otherwise the reference) and return its index."""
        variants = self.variants
        tier = lane.key[1]
        head = lane.heap[0]
        if self.policy != "slo" or head[0] != ONLINE:
            self.latency = self.reference_latency
            return 0
        index = variants.choose(
            tier=tier, queued_rows=lane.online_rows, cap=self.cap, head_slack=head[2] - now,
            wait=self._executor_wait(now), budget=self.online_budget, now=now,
        )
        self.latency = variants.variants[index].latency
        return index

    def _piece_rows(self) -> int:
        """Rows of a background piece: the most that L(b) says fit BACKGROUND_PIECE_S."""
        table = self.latency.table_list
        rows = bisect.bisect_right(table, BACKGROUND_PIECE_S, 1, self.cap + 1) - 1
        return max(1, rows)

    def _side_by_side(self, now: float) -> bool:
        """Whether to start an execution beside the running ones: only when runs side
        by side have been faster in total (the learned slowdown of overlapping runs is
        well below the number of them), plus one try per SIDE_BY_SIDE_PROBE runs to keep
        learning (cores may free up); and never when slowing the running ones down
        would make them late."""
        factor = self.latency.concurrency_factor
        if factor > 1.0:
            for batch in self.running:
                left = batch.start + batch.predicted - now
                if left > 0 and now + left * factor > batch.deadline:
                    return False
        if factor < CONCURRENCY_PAYS * (len(self.running) + 1):
            return True
        if self.counts.batches - self._side_by_side_probe < SIDE_BY_SIDE_PROBE:
            return False
        self._side_by_side_probe = self.counts.batches
        return True

    def _parallel(self) -> bool:
        """Several executors that really add throughput (see `_side_by_side`)."""
        return self.executors > 1 and self.latency.concurrency_factor < CONCURRENCY_PAYS * 2

    def _start(
        self, lane: _Lane, items: list, rows: int, now: float, background: bool = False
    ) -> Batch:
        predicted = self.latency.predict(rows)
        if background:
            batch = Batch(lane.key, items, rows, predicted, now)
            batch.latency = self.latency
            batch.online = False
            batch.background = True
            self.background.append(batch)
            self._count_batch(rows)
            return batch
        if self.running:
            predicted *= max(1.0, self.latency.concurrency_factor)
        batch = Batch(lane.key, items, rows, predicted, now)
        batch.latency = self.latency
        batch.online = items[0][0].rank == ONLINE
        if self.executors > 1:
            batch.deadline = min(item[0].deadline for item in items)
            self._advance_overlap(now)
        if self.running:
            batch.concurrent = True
            for other in self.running:
                other.concurrent = True
        self.running.append(batch)
        self.free -= 1
        self._count_batch(rows)
        return batch

    def _count_batch(self, rows: int) -> None:
        counts = self.counts
        counts.batches += 1
        counts.rows += rows
        sizes = counts.batch_sizes
        sizes[rows] = sizes.get(rows, 0) + 1

    def _pick_lane(self, now: float) -> _Lane | None:
        """The lane whose head is most urgent, after dropping dead and expired heads."""
        best = None
        best_head = None
        for lane in self.lanes.values():
            if lane.live <= 0:
                continue
            head = self._clean_head(lane, now)
            if head is not None and (best_head is None or head[:4] < best_head[:4]):
                best, best_head = lane, head
        return best

    def _clean_head(self, lane: _Lane, now: float) -> tuple | None:
        heap = lane.heap
        table = self.latency.table_list
        cap = self.cap
        while heap:
            entry = heap[0]
            ticket = entry[4]
            state = ticket.state
            if state == QUEUED or (state == RUNNING and ticket.taken < ticket.rows):
                remaining = ticket.rows - ticket.taken
                predicted = self.predictive and not ticket.probe
                need = table[remaining if remaining < cap else cap] if predicted else 0.0
                if now + need <= entry[2]:
                    return entry
                self._expire(ticket)
            heapq.heappop(heap)
        return None

    def _expire(self, ticket: Ticket) -> None:
        self._unqueue(ticket)
        ticket.state = EXPIRED
        self.counts.expired += 1
        self.expired.append(ticket)

    def _take(self, lane: _Lane, max_rows: int, max_requests: int) -> tuple[list, int]:
        """Take up to max_rows rows / max_requests requests in queue order, no deadline test."""
        heap = lane.heap
        items: list = []
        rows = 0
        rank = heap[0][0]
        while heap and rows < max_rows and len(items) < max_requests:
            entry = heap[0]
            ticket = entry[4]
            if not self._pending(ticket):
                heapq.heappop(heap)
                continue
            if entry[0] != rank:
                break
            remaining = ticket.rows - ticket.taken
            take = min(remaining, max_rows - rows)
            if take < remaining and not ticket.splittable:
                break
            self._give(lane, ticket, items, take)
            rows += take
            if ticket.taken < ticket.rows:
                break
        return items, rows

    @staticmethod
    def _pending(ticket: Ticket) -> bool:
        return ticket.state == QUEUED or (ticket.state == RUNNING and ticket.taken < ticket.rows)

    def _give(self, lane: _Lane, ticket: Ticket, items: list, take: int) -> None:
        """Move `take` rows of the ticket at the lane's head into the batch."""
        start = ticket.taken
        items.append((ticket, start, start + take))
        ticket.taken = start + take
        self._count(ticket, lane, -take)
        if ticket.taken >= ticket.rows:
            heapq.heappop(lane.heap)
            lane.live -= 1
            self.queued_requests -= 1
        ticket.state = RUNNING

    def _take_slo(self, lane: _Lane, now: float) -> tuple[list, int]:
        """Greedy EDF batch; if a tight head would cut it so short that the requests
        behind it miss their next batch too (the overload spiral of small batches),
        expire the tight heads and take a batch of the size the load needs."""
        rank = lane.heap[0][0]
        if self.busy_hold_s > 0 and self._held(lane, now, rank):
            return [], 0
        cap = self._slo_cap(lane)
        if rank == ONLINE and self.predictive and self._looser_queued():
            # Mixed deadlines: looser requests could fill batches longer than a tight one
            # arriving meanwhile can wait for. Cap them at b_slo (L(b) <= half the tightest
            # online budget: wait one batch, run in the next) as batch-class pieces are,
            # unless even L(1) is longer than that (then no cap lets a tight one wait).
            b_slo = self._operating_point()[0]
            if self.latency.table_list[b_slo] <= self.online_budget / 2:
                head = lane.heap[0][4]
                cap = min(cap, max(b_slo, head.rows - head.taken))
        items, rows, cut = self._greedy(lane, now, cap)
        if not cut or not self.predictive:
            return items, rows
        head = self._clean_head(lane, now)
        if head is None or head[0] != rank:
            return items, rows
        table = self.latency.table_list
        b_slo, _ = self._operating_point()
        pending = lane.online_rows if rank == ONLINE else lane.rows - lane.online_rows
        follow = min(pending, cap, b_slo)
        if head[2] - now - table[rows] >= table[follow]:
            return items, rows  # serving the tight head first harms nobody
        self._undo(lane, items)
        self._drop_tight(lane, now, rank, table[min(pending + rows, cap, b_slo)])
        if not lane.heap or lane.live <= 0:
            return [], 0
        items, rows, _ = self._greedy(lane, now, cap)
        return items, rows

    def _looser_queued(self) -> bool:
        """Whether online rows of a deadline class looser than twice the online budget
        (the tightest recent class) are queued, e.g. 50 ms requests beside 5 ms ones."""
        if self.online_budget == _INF:
            return False
        limit = _deadline_class(self.online_budget) + 4  # 4 classes: twice the budget
        return any(c > limit for _, c in self._rows_by_priority[ONLINE])

    def _held(self, lane: _Lane, now: float, rank: int) -> bool:
        """Whether to hold the lane's short queue to gather a batch (sets `wakeup`)."""
        hold = self._hold
        if hold is not None and hold[0] != lane.key:
            hold = self._hold = None
        target = self.latency.best_rows
        if (rank != ONLINE or not self.batching or self.running or self.pressure < HOLD_PRESSURE
                or lane.online_rows >= target):
            self._end_hold(lane)
            return False
        if hold is None and self.hold_gain < HOLD_MIN_GAIN:
            if self.counts.batches - self._hold_probe < HOLD_PROBE:
                return False
            self._hold_probe = self.counts.batches
        table = self.latency.table_list
        head = lane.heap[0]
        # latest start: the queue so far plus one more arrival must still make the
        # head's deadline (re-judged at every arrival, as the queue grows)
        rows = min(lane.online_rows + 1, self.cap)
        until = min(head[4].arrival + self.busy_hold_s, head[2] - table[rows] - table[1])
        if now >= until:
            self._end_hold(lane)
            return False
        if hold is None:
            self._hold = (lane.key, lane.online_rows)
            self.counts.holds += 1
        self.wakeup = until
        return True

    def _end_hold(self, lane: _Lane) -> None:
        """A held queue is dispatched: learn how many rows the hold gathered."""
        hold = self._hold
        if hold is not None:
            self._hold = None
            self.hold_gain += HOLD_GAIN_WEIGHT * (lane.online_rows - hold[1] - self.hold_gain)

    def _greedy(self, lane: _Lane, now: float, cap: int) -> tuple[list, int, bool]:
        """Take requests in queue order while the batch still finishes before every
        included deadline. Returns (items, rows, cut): cut when a deadline, not the
        cap or the queue, ended the batch."""
        heap = lane.heap
        table = self.latency.table_list
        rank = heap[0][0]
        budget = _INF  # latest allowed finish, minus now
        if rank == BATCH:
            if self.queued_online_rows > 0:
                return [], 0, False
            budget = self.online_budget / 2
        # Beside a running execution this one runs slower (learned): deadlines are
        # checked against L(b) x that factor, and rather than start a run that
        # would be late, wait for the running one to finish.
        factor = self.latency.concurrency_factor
        scale = factor if self.running and factor > 1.0 else 1.0
        budget /= scale
        items: list = []
        rows = 0
        while heap and rows < cap:
            entry = heap[0]
            ticket = entry[4]
            if not self._pending(ticket):
                heapq.heappop(heap)
                continue
            if entry[0] != rank:
                break
            slack = entry[2] - now
            remaining = ticket.rows - ticket.taken
            if items and self.predictive and table[min(remaining, cap)] > slack:
                # could not make it even alone: expire instead of blocking the batch
                self._expire(ticket)
                heapq.heappop(heap)
                continue
            slack /= scale
            limit = slack if slack < budget else budget
            take = min(remaining, cap - rows)
            if take < remaining and not ticket.splittable:
                break
            if table[rows + take] > limit:
                if items:
                    if not ticket.splittable:
                        return items, rows, True
                    take = self._fit(table, rows, take, limit)
                elif scale > 1.0:
                    return [], 0, False  # not beside the running execution: wait for it
                elif ticket.splittable:
                    # a lone piece runs even when over budget: work must progress
                    take = max(1, self._fit(table, rows, take, limit))
                # else: a lone request that cannot fit runs anyway (admission is off)
                if take <= 0:
                    return items, rows, True
            self._give(lane, ticket, items, take)
            rows += take
            if limit < budget:
                budget = limit
            if ticket.taken < ticket.rows:
                break
        return items, rows, False

    def _undo(self, lane: _Lane, items: list) -> None:
        """Put a batch that will not run back in the queue."""
        for ticket, start, stop in reversed(items):
            take = stop - start
            if ticket.taken >= ticket.rows:  # was popped: back on the heap
                heapq.heappush(lane.heap, ticket.entry)
                lane.live += 1
                self.queued_requests += 1
            ticket.taken -= take
            if ticket.taken == 0:
                ticket.state = QUEUED
            self._count(ticket, lane, take)

    def _drop_tight(self, lane: _Lane, now: float, rank: int, need: float) -> None:
        """Expire head requests with less than `need` seconds of slack."""
        heap = lane.heap
        while heap:
            entry = heap[0]
            ticket = entry[4]
            if self._pending(ticket):
                if entry[0] != rank or entry[2] - now >= need:
                    return
                self._expire(ticket)
            heapq.heappop(heap)

    def _operating_point(self) -> tuple[int, int]:
        """(b_slo, best): the largest batch whose L(b) fits half the tightest online
        budget (a request waits for one batch, then runs in the next), and the
        highest-throughput size up to it. Cached until the table or budget changes."""
        table = self.latency.table_list
        budget = self.online_budget
        cached = self._op_budget
        if table is self._op_table and (budget == cached or abs(budget - cached) < 0.01 * cached):
            return self._op
        b_slo = max(1, bisect.bisect_right(table, budget / 2, 1, self.cap + 1) - 1)
        prefix = self.latency.prefix_best
        best = prefix[b_slo] if b_slo < len(prefix) else b_slo
        self._op = (b_slo, best)
        self._op_table = table
        self._op_budget = budget
        return self._op

    @staticmethod
    def _fit(table: list[float], rows: int, take: int, limit: float) -> int:
        """Largest t <= take with table[rows + t] <= limit (table is non-decreasing)."""
        low, high = 0, take
        while low < high:
            mid = (low + high + 1) // 2
            if table[rows + mid] <= limit:
                low = mid
            else:
                high = mid - 1
        return low

    def _slo_cap(self, lane: _Lane) -> int:
        """Rows for this execution: the max batch, or a share of the queue when L(b)
        says concurrent smaller runs on the free executors finish sooner."""
        cap = self.cap
        free = self.free
        if free < 2 or not self._parallel():
            return cap
        queued = min(lane.rows, cap * free)
        latency = self.latency
        factor = latency.concurrency_factor
        best_time = latency.predict(min(queued, cap)) * max(1, math.ceil(queued / cap))
        best_cap = cap
        for parts in range(2, min(free, queued) + 1):
            share = math.ceil(queued / parts)
            if share > cap:
                continue
            t = latency.predict(share) * factor
            if t < best_time:
                best_time, best_cap = t, share
        return best_cap

    def _take_fixed(self, lane: _Lane, now: float) -> tuple[list, int]:
        target = self.target_rows
        if lane.rows >= target:
            return self._take(lane, target, 1 << 30)
        head = lane.heap[0][4]
        due = head.arrival + self.max_queue_delay_s
        if now >= due:
            return self._take(lane, self.cap, 1 << 30)
        self.wakeup = due
        return [], 0

    # -- completion -------------------------------------------------------

    def finish(self, batch: Batch, now: float, compute_s: float) -> list[Ticket]:
        """An execution finished: free its executor, learn from it, and return
        the tickets now complete (every row done, not cancelled)."""
        self._release(batch, now)
        if not batch.background:  # a background piece's time includes preemption
            elapsed = now - batch.start
            overlap = batch.overlap / elapsed if batch.overlap > 0 and elapsed > 0 else 0.0
            (batch.latency or self.latency).observe(batch.rows, compute_s, overlap=overlap)
        complete = []
        for ticket, start, stop in batch.items:
            ticket.done += stop - start
            if ticket.state == RUNNING and ticket.done >= ticket.rows:
                ticket.state = DONE
                self.counts.completed += 1
                complete.append(ticket)
        return complete

    def fail(self, batch: Batch, now: float) -> list[Ticket]:
        """An execution raised: its requests fail (queued parts of them too)."""
        self._release(batch, now)
        failed = []
        for ticket, _start, _stop in batch.items:
            if ticket.state in (QUEUED, RUNNING):
                if ticket.taken < ticket.rows:
                    self._unqueue(ticket)
                ticket.state = FAILED
                self.counts.failed += 1
                failed.append(ticket)
        return failed

    def _release(self, batch: Batch, now: float) -> None:
        if batch.background:
            self.background.remove(batch)
            return
        if self.executors > 1:
            self._advance_overlap(now)
        self.running.remove(batch)
        self.free += 1

    def _advance_overlap(self, now: float) -> None:
        """Credit the time since the last start/finish to every running execution
        as overlap, if more than one was running."""
        if len(self.running) > 1:
            elapsed = now - self._overlap_mark
            for batch in self.running:
                batch.overlap += elapsed
        self._overlap_mark = now

    # -- state ------------------------------------------------------------

    def idle(self) -> bool:
        return self.queued_requests == 0 and not self.running and not self.background

    def describe(self) -> dict[str, Any]:
        counts = self.counts
        single = counts.batch_sizes.get(1, 0)
        return {
            "policy": self.policy,
            "early_refusal": self.predictive,
            "executors": self.executors,
            "executors_busy": len(self.running),
            "background_batch": self.background_batch,
            "background_piece_rows": self._piece_rows() if self.background_batch else None,
            "background_pieces": self.background_pieces if self.background_batch else 0,
            "background_running": len(self.background),
            "max_batch_size": self.cap if self.batching else 0,
            "latency_quantile": self.latency.quantile,
            "latency_table": self.latency.table(),
            "slo_batch_size": self._operating_point()[0],
            "best_batch_size": self._operating_point()[1],
            "concurrency_factor": self.latency.concurrency_factor,
            "busy_hold_ms": self.busy_hold_s * 1e3,
            "pressure": round(self.pressure, 3),
            "hold_gain": round(self.hold_gain, 3),
            # tightest recent online deadline budget: caps batch-class pieces
            "online_budget_ms": None if self.online_budget == _INF else self.online_budget * 1e3,
            "outliers_clamped": self.latency.clamped,
            "queue": {"requests": self.queued_requests, "rows": self.queued_rows},
            "counts": {
                "admitted": counts.admitted,
                "refused_deadline": counts.refused_deadline,
                "refused_queue_full": counts.refused_queue_full,
                "expired": counts.expired,
                "cancelled": counts.cancelled,
                "completed": counts.completed,
                "failed": counts.failed,
                "probes": counts.probes,
                "holds": counts.holds,
                "batches": counts.batches,
                "rows": counts.rows,
                "batch1_dispatches": single,
                "batched_dispatches": counts.batches - single,
            },
            "batch_sizes": dict(sorted(counts.batch_sizes.items())),
            "variants": self.variants.describe() if self.variants is not None else None,
        }
