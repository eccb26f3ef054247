"""L(b): the predicted service time of a batch of b rows, learned from observations.

Observations live in a few *buckets* (batch sizes 1, 2, 4, ... and the max batch
size). An execution of b rows is credited to the nearest bucket after scaling by
the current prediction ratio L(bucket)/L(b), so every execution corrects the
model, whatever its size, and each bucket's window fills quickly. Its
observed/predicted ratio also moves the neighbouring buckets (see `_spread`), so
a machine-wide slowdown reaches the batch sizes that load will drift to next. A bucket
predicts an upper quantile of its sliding window (the promise is about tails,
and one slow outlier in a window of 32 does not move a 0.95 quantile); sizes
between buckets are interpolated linearly, sizes above the largest known bucket
are extrapolated linearly. The table is non-decreasing in b.

`predict` is a list lookup: the scheduler calls it several times per request.
Rebuilding the table is throttled (every few observations once warm).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

# Observations kept per bucket: a 0.95 quantile of 32 ignores the 1 worst, and a
# slowdown shows after 2 slow runs.
WINDOW = 32
# Once a bucket holds this many observations, rebuild the table only every
# REBUILD_EVERY observations (a rebuild costs ~10-30 µs).
WARM = 16
REBUILD_EVERY = 32
# An observation this much above its bucket's prediction rebuilds the table at once.
SLOWER = 1.05
# A bucket with this many observations of its own predicts well enough that the
# observed/predicted ratio of its runs can correct its neighbours too.
GROUNDED = 3
# Observations above OUTLIER x their bucket's median (known from MEDIAN_MIN runs
# on) are clamped to it.
OUTLIER = 4.0
MEDIAN_MIN = 8
# What spreading may credit a bucket: at most this many times its own runs' median.
SPREAD_CAP = 4.0
# Ordinary (not slow) runs are spread to neighbours one in this many.
SPREAD_EVERY = 4
# Smoothing of the slowdown of runs beside another, and the least overlap worth
# learning from.
CONCURRENCY_ALPHA = 0.1
MIN_OVERLAP = 0.25


def bucket_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... up to max_batch_size, which is always included."""
    top = max(1, max_batch_size)
    sizes = []
    b = 1
    while b < top:
        sizes.append(b)
        b *= 2
    sizes.append(top)
    return sizes


class LatencyModel:
    """Per-batch-size service time predictions for one model version."""

    def __init__(self, max_batch_size: int, quantile: float = 0.95, window: int = WINDOW):
        self.max_rows = max(1, max_batch_size)
        self.quantile = quantile
        self.buckets = bucket_sizes(self.max_rows)
        self._windows: dict[int, deque[float]] = {b: deque(maxlen=window) for b in self.buckets}
        # each bucket's own runs only (no spread values): their median caps what spreading
        # may credit the bucket, so spreads cannot compound without bound
        self._own: dict[int, deque[float]] = {b: deque(maxlen=window) for b in self.buckets}
        self._own_median: dict[int, float] = {}
        self._counts: dict[int, int] = dict.fromkeys(self.buckets, 0)
        self._bucket_q: dict[int, float] = {}
        self._bucket_median: dict[int, float] = {}
        self.clamped = 0  # observations clamped as outliers
        self._dirty: set[int] = set()
        self._since_rebuild = 0
        # _table[b] for b in 0..max_rows; _table[0] = 0.
        self._table: list[float] = [0.0] * (self.max_rows + 1)
        self._slope = 0.0  # seconds per row beyond max_rows
        self.best_rows = self.max_rows  # rows with the highest predicted throughput
        self.prefix_best = list(range(self.max_rows + 1))
        # observed/predicted for runs that overlapped another execution (executors > 1).
        self.concurrency_factor = 1.0
        self.observations = 0

    # -- prediction -------------------------------------------------------

    def predict(self, rows: int) -> float:
        """Predicted seconds to run `rows` rows in one execution (0 when nothing is known)."""
        if rows <= self.max_rows:
            return self._table[rows]
        return self._table[self.max_rows] + (rows - self.max_rows) * self._slope

    @property
    def table_list(self) -> list[float]:
        """The raw table, index = rows (for hot loops that want to skip the call)."""
        return self._table

    def known(self) -> bool:
        return bool(self._bucket_q)

    def drain_time(self, rows: int, best: int | None = None) -> float:
        """Predicted time to serve `rows` queued rows in batches of `best` rows
        (default: the highest-throughput size)."""
        if rows <= 0:
            return 0.0
        best = best or self.best_rows
        full, rest = divmod(rows, best)
        table = self._table
        return full * table[best] + (table[rest] if rest else 0.0)

    # -- learning ---------------------------------------------------------

    def observe(self, rows: int, seconds: float, overlap: float = 0.0) -> None:
        """Record one execution of `rows` rows that took `seconds`.

        `overlap`: the fraction of the run during which another execution ran too.
        Such a run only teaches the concurrency factor (how much slower a run is
        while another runs beside it: ~1 on free cores, ~2 when two share one),
        scaled up from its overlap; it says nothing about L(b) alone.
        """
        if rows <= 0 or seconds < 0 or not math.isfinite(seconds):
            return
        self.observations += 1
        predicted = self.predict(rows)
        if overlap > 0:
            if overlap >= MIN_OVERLAP and predicted > 0:
                slowdown = 1.0 + (seconds / predicted - 1.0) / min(1.0, overlap)
                slowdown = min(max(slowdown, 0.5), 8.0)
                self.concurrency_factor += CONCURRENCY_ALPHA * (slowdown - self.concurrency_factor)
            return
        bucket = self._nearest_bucket(rows)
        grounded = predicted > 0 and self._counts[bucket] >= GROUNDED
        if bucket != rows:
            target = self.predict(bucket)
            if predicted > 0 and target > 0:
                seconds *= target / predicted
            else:
                seconds *= bucket / rows  # nothing learned yet: assume linear
        median = self._bucket_median.get(bucket)
        if median is not None and seconds > OUTLIER * median:
            # A run many times its bucket's median is the process being preempted
            # or a GC pause, not the model: keep it, clamped, so that a few of them
            # cannot push L(1) over every deadline and wedge admission (a real
            # slowdown still shows: the median follows within half a window).
            seconds = OUTLIER * median
            self.clamped += 1
        self._counts[bucket] += 1
        self._since_rebuild += 1
        self._own[bucket].append(seconds)
        self._own_median.pop(bucket, None)
        surprise = self._credit(bucket, seconds)
        if grounded and (surprise or self.observations % SPREAD_EVERY == 0):
            # every slow run, and an unbiased sample of the others (cheaper)
            self._spread(bucket, seconds / self.predict(bucket))
        if surprise or len(self._windows[bucket]) < WARM or self._since_rebuild >= REBUILD_EVERY:
            # a run slower than predicted rebuilds at once: tails are the promise
            self.rebuild()

    def _credit(self, bucket: int, seconds: float) -> bool:
        """Append to a bucket's window; True when it is slower than the bucket predicts."""
        self._windows[bucket].append(seconds)
        self._dirty.add(bucket)
        return seconds > self._bucket_q.get(bucket, 0.0) * SLOWER

    def _spread(self, bucket: int, ratio: float) -> None:
        """Carry a run's observed/predicted ratio to the neighbouring buckets (fully to
        adjacent ones, half as strongly two away): a machine that slows down (a
        noisy neighbour, frequency scaling) slows every batch size, and batch sizes
        drift with load, so a bucket not run lately must not keep promising the old
        speed. Scaled predictions compound (a neighbour's prediction is scaled up
        again by the next slow run), so the result is capped at SPREAD_CAP x the
        median of the neighbour's *own* runs: uncapped, a bucket that rarely ran
        itself grew without bound (L(2..64) reached hours under a mix of batch-1
        and batch-2 runs on a busy core). Buckets without their own data are left
        to interpolation."""
        buckets = self.buckets
        index = buckets.index(bucket)
        for j in range(max(0, index - 2), min(len(buckets), index + 3)):
            other = buckets[j]
            if j == index or self._counts[other] == 0:
                continue
            scale = ratio if abs(j - index) == 1 else math.sqrt(ratio)
            self._credit(other, min(self.predict(other) * scale, self._own_level(other) * SPREAD_CAP))

    def _own_level(self, bucket: int) -> float:
        """Median of a bucket's own recent runs (cached until it runs again)."""
        level = self._own_median.get(bucket)
        if level is None:
            own = sorted(self._own[bucket])
            level = self._own_median[bucket] = own[len(own) // 2]
        return level

    def _nearest_bucket(self, rows: int) -> int:
        if rows >= self.max_rows:
            return self.max_rows
        low = 1 << (rows.bit_length() - 1)
        if low == rows:
            return rows
        high = min(low * 2, self.max_rows)
        # nearer in ratio terms: geometric midpoint
        return low if rows * rows < low * high else high

    def rebuild(self) -> None:
        """Recompute bucket quantiles that changed and the interpolated table."""
        q = self.quantile
        for bucket in self._dirty:
            window = sorted(self._windows[bucket])
            if window:
                index = min(len(window) - 1, max(0, math.ceil(q * len(window)) - 1))
                self._bucket_q[bucket] = window[index]
                if len(window) >= MEDIAN_MIN:
                    self._bucket_median[bucket] = window[len(window) // 2]
        self._dirty.clear()
        self._since_rebuild = 0
        if not self._bucket_q:
            return
        xs = sorted(self._bucket_q)
        ys = np.maximum.accumulate(np.array([self._bucket_q[x] for x in xs]))
        sizes = np.arange(self.max_rows + 1, dtype=np.float64)
        if len(xs) == 1:
            # One known size: flat below it, proportional above it (pessimistic).
            x0, y0 = xs[0], float(ys[0])
            table = np.where(sizes <= x0, y0, y0 * sizes / x0)
            slope = y0 / x0
        else:
            table = np.interp(sizes, xs, ys)
            slope = max(0.0, float(ys[-1] - ys[-2]) / (xs[-1] - xs[-2]))
            above = sizes > xs[-1]
            table[above] = ys[-1] + (sizes[above] - xs[-1]) * slope
        table[0] = 0.0
        self._table = table.tolist()
        self._slope = slope
        rates = sizes[1:] / np.maximum(table[1:], 1e-12)
        self.best_rows = int(np.argmax(rates)) + 1
        # prefix_best[b]: the highest-throughput size among 1..b (for an SLO-capped batch)
        running = np.maximum.accumulate(rates)
        firsts = np.flatnonzero(np.r_[True, running[1:] > running[:-1]]) + 1
        self.prefix_best = [0] + np.repeat(firsts, np.diff(np.r_[firsts, self.max_rows + 1])).tolist()

    def table(self) -> list[dict[str, Any]]:
        """Operator view: each bucket size, its prediction, and how many runs taught it."""
        return [
            {
                "batch_size": b,
                "predicted_s": self.predict(b),
                "observations": self._counts[b],
            }
            for b in self.buckets
        ]
