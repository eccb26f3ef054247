"""Forming the next batch under the `slo` and `fixed` policies.

- `slo`: take requests in queue order while the batch, predicted by L(b), still
  finishes before every included deadline. An idle server runs a lone request at
  once (GEMV); while an execution runs the queue grows, so the next batch is larger
  (GEMM). Under overload a nearly-late head would cut every batch short and spiral
  into small, slow batches; when the request behind it would miss its next batch
  too, the tight heads expire instead and the batch takes the size the load needs
  (`b_slo`: the largest b with L(b) <= half the online deadline budget: wait one
  batch, run in the next). With mixed deadline classes queued (e.g. 5 ms and 50 ms
  requests), batches are capped at b_slo, so a request of the tightest class
  arriving during one can wait it out.
- `fixed`: as Triton's dynamic batcher: dispatch as soon as the largest preferred
  batch size (or the max batch size) is queued, otherwise when the oldest request
  has waited `max_queue_delay`.
"""

from __future__ import annotations

import bisect
import heapq
import math

from .queue import BATCH, ONLINE, Lane, deadline_class

_INF = math.inf


class BatchForming:
    """SchedulerCore's batch forming (its state: see SchedulerCore.__init__)."""

    def _take_slo(self, lane: Lane, now: float) -> tuple[list, int]:
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
        limit = deadline_class(self.online_budget) + 4  # 4 classes: twice the budget
        return any(c > limit for _, c in self._rows_by_priority[ONLINE])

    def _greedy(self, lane: Lane, now: float, cap: int) -> tuple[list, int, bool]:
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
        while rows < cap:
            entry = self._pending_head(heap, rank)
            if entry is None:
                break
            ticket = entry[4]
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

    def _take_fixed(self, lane: Lane, now: float) -> tuple[list, int]:
        target = self.target_rows
        if lane.rows >= target:
            return self._take(lane, target, 1 << 30)
        head = lane.heap[0][4]
        due = head.arrival + self.max_queue_delay_s
        if now >= due:
            return self._take(lane, self.cap, 1 << 30)
        self.wakeup = due
        return [], 0
