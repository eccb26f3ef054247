"""Several executors: whether running executions side by side pays.

With several free executors, L(b) decides whether to cut the queue into concurrent
smaller batches, and learns what running side by side costs (`concurrency_factor`:
the slowdown of overlapping runs, from the overlap credited to each execution).
"""

from __future__ import annotations

import math

from .queue import Lane

# Executions start beside running ones only while overlapping runs slow down by
# less than this fraction of their number (else one at a time; see _side_by_side),
# trying anyway once per SIDE_BY_SIDE_PROBE executions to keep learning.
CONCURRENCY_PAYS = 0.7
SIDE_BY_SIDE_PROBE = 256


class Executors:
    """SchedulerCore's executor concurrency (its state: see SchedulerCore.__init__)."""

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

    def _slo_cap(self, lane: Lane) -> int:
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

    def _advance_overlap(self, now: float) -> None:
        """Credit the time since the last start/finish to every running execution
        as overlap, if more than one was running."""
        if len(self.running) > 1:
            elapsed = now - self._overlap_mark
            for batch in self.running:
                batch.overlap += elapsed
        self._overlap_mark = now
