"""The queue: tickets, lanes and batches, and the bookkeeping of queued rows.

One *lane* per `shape_key` (requests merge only within a lane; with a model group,
per (shape_key, accuracy tier)). A lane is a heap ordered by (class, priority,
deadline, arrival order): online before batch-class work, then lower priority value,
then earliest deadline first. Cancelled requests are marked and dropped lazily when
they reach the top. Hot paths are O(log n) heap operations per request.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from ..types import InferenceRequest
from .latency import LatencyModel

# Ticket states.
QUEUED, RUNNING, DONE, CANCELLED, EXPIRED, FAILED = range(6)
STATE_NAMES = ("queued", "running", "done", "cancelled", "expired", "failed")
# Class ranks: heap order puts online work first.
ONLINE, BATCH = 0, 1

_INF = math.inf


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
        self.lane: Lane | None = None
        self.waiter: Any = None  # the dispatcher's future
        self.parts: list | None = None  # (start, outputs) of a split request
        self.admitted = now
        self.probe = False  # admitted to relearn L(b): runs even if predicted late
        # what it is counted under in the queue (see SchedulerCore._rows_ahead): online
        # work by (priority, deadline class), batch-class work by priority
        self.queue_class = (request.priority, deadline_class(request.deadline - request.arrival)) if (
            rank == ONLINE) else request.priority

    def __repr__(self) -> str:
        rid = self.request.request_id
        return f"Ticket({rid!r}, rows={self.rows}, {STATE_NAMES[self.state]})"


def deadline_class(budget: float) -> int:
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


class Lane:
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


class QueueBook:
    """SchedulerCore's queue operations (its state: see SchedulerCore.__init__)."""

    def _count(self, ticket: Ticket, lane: Lane, rows: int) -> None:
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
        mine = deadline_class(deadline - arrival)
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

    def _new_lane(self, key: Hashable) -> Lane:
        if len(self.lanes) >= 64:  # forget idle lanes of shapes no longer sent
            for old in [k for k, lane in self.lanes.items() if lane.live == 0]:
                del self.lanes[old]
        lane = self.lanes[key] = Lane(key)
        return lane

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

    def _pick_lane(self, now: float) -> Lane | None:
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

    def _clean_head(self, lane: Lane, now: float) -> tuple | None:
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
        if ticket.rank == ONLINE and not ticket.probe:
            self._learn_outcome(True)
        self._unqueue(ticket)
        ticket.state = EXPIRED
        self.counts.expired += 1
        self.expired.append(ticket)

    def _take(self, lane: Lane, max_rows: int, max_requests: int) -> tuple[list, int]:
        """Take up to max_rows rows / max_requests requests in queue order, no deadline test."""
        heap = lane.heap
        items: list = []
        rows = 0
        rank = heap[0][0]
        while rows < max_rows and len(items) < max_requests:
            entry = self._pending_head(heap, rank)
            if entry is None:
                break
            ticket = entry[4]
            remaining = ticket.rows - ticket.taken
            take = min(remaining, max_rows - rows)
            if take < remaining and not ticket.splittable:
                break
            self._give(lane, ticket, items, take)
            rows += take
            if ticket.taken < ticket.rows:
                break
        return items, rows

    def _pending_head(self, heap: list, rank: int) -> tuple | None:
        """The heap's top entry once finished and cancelled ones are dropped, or None
        when the heap is empty or its top is of another class than `rank`."""
        while heap:
            entry = heap[0]
            if self._pending(entry[4]):
                return entry if entry[0] == rank else None
            heapq.heappop(heap)
        return None

    @staticmethod
    def _pending(ticket: Ticket) -> bool:
        return ticket.state == QUEUED or (ticket.state == RUNNING and ticket.taken < ticket.rows)

    def _give(self, lane: Lane, ticket: Ticket, items: list, take: int) -> None:
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

    def _undo(self, lane: Lane, items: list) -> None:
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

    def _drop_tight(self, lane: Lane, now: float, rank: int, need: float) -> None:
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
