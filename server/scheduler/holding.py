"""Holding (`slo`, online work, `busy_hold_s` > 0).

When the server's event loop is busy (`pressure`: its recent busy fraction, fed by
the owner), the front end and the model share one scarce core, and each batch-1 run
spends on one request what a batch spends on many. So an idle executor does not take
a short queue at once: it holds it until the queue reaches the highest-throughput
batch size or for at most `busy_hold_s` after the head arrived, and never past the
head's latest start (deadline - L(queued rows + 1) - L(1), re-judged at every
arrival). Whether holds gather anything is learned (EWMA of rows gained per hold):
closed-loop clients that wait for their answers bring nothing during a hold, and
holding then stops, probing again now and then.
"""

from __future__ import annotations

from .queue import ONLINE, Lane

# Only while the event loop is at least this busy, and only while holds gather at
# least HOLD_MIN_GAIN rows on average (EWMA weight HOLD_GAIN_WEIGHT), trying once per
# HOLD_PROBE dispatches otherwise.
HOLD_PRESSURE = 0.5
HOLD_MIN_GAIN = 0.5
HOLD_GAIN_WEIGHT = 0.2
HOLD_PROBE = 256


class Holding:
    """SchedulerCore's holding (its state: see SchedulerCore.__init__)."""

    def _held(self, lane: Lane, now: float, rank: int) -> bool:
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

    def _end_hold(self, lane: Lane) -> None:
        """A held queue is dispatched: learn how many rows the hold gathered."""
        hold = self._hold
        if hold is not None:
            self._hold = None
            self.hold_gain += HOLD_GAIN_WEIGHT * (lane.online_rows - hold[1] - self.hold_gain)
