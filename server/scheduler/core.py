"""The scheduler's pure core: one model version's queue, dispatch and admission.

No asyncio, no clock of its own: every call takes `now`, so the same code runs
under the asyncio dispatcher (real clock) and the discrete-event simulator
(virtual clock). SchedulerCore is assembled from one part per concern, each in
its own module and each driven by the simulator's tests:

- queue.py: tickets, lanes (one heap per shape, earliest deadline first within a
  class and priority), batches, queued-row bookkeeping, expiry and cancellation;
- admission.py: early refusal from the predicted finish, probes, the online budget;
- batching.py: the next batch under `slo` (greedy EDF, the overload cut, the cap
  for mixed deadline classes) and `fixed` (Triton-like); `none` runs one request;
- holding.py: holding a short queue while the event loop is busy;
- executors.py: whether executions side by side pay, and their overlap;
- background.py: batch-class pieces beside online work at the lowest priority;
- variants.py (a model group): which variant the next batch runs on.

Policies are evaluated whenever an executor is free (`next_batch`); the owner
reports each execution's end (`finish` / `fail`), and L(b) learns from it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Iterable
from typing import Any

from .admission import BUDGET_WINDOW, Admission
from .background import BackgroundPieces
from .batching import BatchForming
from .executors import Executors
from .holding import Holding
from .latency import LatencyModel
from .queue import (
    BATCH,
    CANCELLED,
    DONE,
    EXPIRED,
    FAILED,
    ONLINE,
    QUEUED,
    RUNNING,
    STATE_NAMES,
    Batch,
    CoreCounts,
    Lane,
    QueueBook,
    Ticket,
)
from .variants import VariantChooser

__all__ = [
    "BATCH", "CANCELLED", "DONE", "EXPIRED", "FAILED", "ONLINE", "POLICIES", "QUEUED", "RUNNING",
    "STATE_NAMES", "Batch", "CoreCounts", "SchedulerCore", "Ticket",
]

POLICIES = ("slo", "fixed", "none")

_INF = math.inf


class SchedulerCore(QueueBook, Admission, BatchForming, Holding, Executors, BackgroundPieces):
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
        miss_feedback: bool = True,
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
        self.lanes: dict[Hashable, Lane] = {}
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
        self.stretch = 1.0  # factor on predicted waits at admission, learned from misses
        self.miss_feedback = miss_feedback  # off: L(b) alone predicts (see admission.py)
        self._window_outcomes = 0
        self._window_misses = 0

    def next_batch(self, now: float) -> Batch | None:
        """The batch to run on a free executor now, or None (nothing or not yet).

        Requests found expired on the way are appended to `self.expired`.
        """
        self.wakeup = None
        if self.queued_requests <= 0:
            return None
        background = self._piece_room()
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
            return self._start_piece(lane, now) if background else None
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

    def _choose_variant(self, lane: Lane, now: float) -> int:
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

    def _start(self, lane: Lane, items: list, rows: int, now: float) -> Batch:
        """Start an execution on a free executor (background pieces: background.py)."""
        predicted = self.latency.predict(rows)
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
                if ticket.rank == ONLINE and not ticket.probe:
                    self._learn_outcome(now > ticket.deadline)
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
            # > 1 when admitted requests missed although L(b) said they would make it
            "admission_stretch": round(self.stretch, 3),
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
