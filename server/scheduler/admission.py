"""Admission ("early refusal", on by default for `slo`).

A request whose predicted finish (wait for an executor + serving the queued rows
that outrank it and its own, in batches of the operating size) is after its deadline
is refused at once. Rows outrank it by class and priority, and at equal ones by
deadline: a 5 ms request waits for the 5 ms ones queued before it, not for the 50 ms
ones, unless those are due first. So is one that would overflow `max_queued_rows`
(online requests count queued online rows only). An idle server still admits one
predicted-late request per PROBE_INTERVAL_S, so a model whose L(1) rose above every
deadline relearns it.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable

from ..errors import DeadlineExceeded, Refused
from ..types import InferenceRequest
from .queue import BATCH, ONLINE, Lane, Ticket

_INF = math.inf
# The online budget is this quantile of the last BUDGET_WINDOW admitted online
# requests' deadline budgets, recomputed every BUDGET_EVERY of them.
BUDGET_WINDOW = 64
BUDGET_QUANTILE = 0.1
BUDGET_EVERY = 16
# An idle server admits one request it predicts too slow per this many seconds,
# to relearn L(1) (see Admission._probe).
PROBE_INTERVAL_S = 0.05
# Admission learns from its own misses. L(b) is the model's compute alone; work it
# cannot see (the front end and the event loop sharing the model's core, costs that
# grow with the queue) makes admitted requests finish later than predicted. Over each
# window of MISS_WINDOW admitted online outcomes, when more than MISS_TARGET of them
# missed (answered late or expired), admission stretches its predicted waits before
# a request's own run (by up to STRETCH_STEP per window, more for more misses; at most
# STRETCH_MAX); a window without a miss shrinks the stretch by STRETCH_RELAX, down to
# 1 (L(b) as learned).
MISS_WINDOW = 200
MISS_TARGET = 0.005
STRETCH_STEP = 0.5
STRETCH_RELAX = 0.95
STRETCH_MAX = 16.0


class Admission:
    """SchedulerCore's admission (its state: see SchedulerCore.__init__)."""

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
            if online:
                finish = self._stretched(now, finish, rows)
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

    def _stretched(self, now: float, finish: float, rows: int) -> float:
        """The predicted finish with the wait before the request's own run stretched.
        Its own run (L(rows)) is not: an idle server admits whatever L(b) says fits, so
        outcomes keep coming and a stretch left from a busy spell relaxes again."""
        if self.stretch == 1.0:
            return finish
        alone = now + self.latency.predict(min(rows, self.cap))
        return finish if finish <= alone else alone + (finish - alone) * self.stretch

    def _learn_outcome(self, missed: bool) -> None:
        """One admitted online request finished (in time or not) or expired: adjust
        the stretch of predicted waits once per window (see MISS_WINDOW)."""
        if not self.miss_feedback:
            return
        self._window_outcomes += 1
        self._window_misses += missed
        if self._window_outcomes < MISS_WINDOW:
            return
        rate = self._window_misses / self._window_outcomes
        self._window_outcomes = self._window_misses = 0
        if rate > MISS_TARGET:
            step = min(STRETCH_STEP, STRETCH_STEP * rate / (10 * MISS_TARGET))
            self.stretch = min(STRETCH_MAX, self.stretch * (1.0 + step))
        elif rate == 0.0 and self.stretch > 1.0:
            self.stretch = max(1.0, self.stretch * STRETCH_RELAX)

    def _executor_wait(self, now: float) -> float:
        if not self.running or (self.free > 0 and self._parallel()):
            return 0.0
        soonest = min(b.start + b.predicted for b in self.running)
        return soonest - now if soonest > now else 0.0

    def _admission_finish(
        self, now: float, ahead: int, rows: int, deadline: float, lane: Lane | None
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
        finish = self._admission_finish(now, ahead, rows, _INF, self.lanes.get(shape_key))
        return self._stretched(now, finish, rows) if online else finish
