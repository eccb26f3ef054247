"""Arrival schedules for open-loop load: when each request should be sent.

Schedules are computed up front (numpy, seeded) so that sending costs one
comparison per request and the same seed replays the same arrivals. Times are
seconds from the start of the run, sorted ascending.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BurstSpec:
    """A bursty arrival process with the same mean rate as the plain Poisson one.

    kind "batch": groups of `size` requests arrive together, groups are Poisson.
    kind "onoff": Poisson at rate * (on + off) / on during `on_s`, silence for `off_s`.
    """

    kind: str
    size: int = 1
    on_s: float = 0.0
    off_s: float = 0.0

    def describe(self) -> str:
        if self.kind == "batch":
            return f"batch:{self.size}"
        return f"onoff:{self.on_s * 1e3:g}:{self.off_s * 1e3:g}"


def parse_burst(text: str) -> BurstSpec:
    """`batch:K` (K requests at once) or `onoff:ON_MS:OFF_MS`."""
    parts = text.strip().split(":")
    try:
        if parts[0] == "batch" and len(parts) == 2 and int(parts[1]) >= 1:
            return BurstSpec("batch", size=int(parts[1]))
        if parts[0] == "onoff" and len(parts) == 3:
            on_ms, off_ms = float(parts[1]), float(parts[2])
            if on_ms > 0 and off_ms >= 0:
                return BurstSpec("onoff", on_s=on_ms / 1e3, off_s=off_ms / 1e3)
    except ValueError:
        pass
    raise ValueError(f"--burst must be 'batch:K' or 'onoff:ON_MS:OFF_MS', not {text!r}")


def poisson_times(rate: float, horizon_s: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson arrival times in [0, horizon_s) at `rate` per second."""
    if rate <= 0 or horizon_s <= 0:
        return np.empty(0)
    expected = rate * horizon_s
    # Draw a margin of extra gaps so one draw almost always covers the horizon.
    count = int(expected + 6 * np.sqrt(expected) + 16)
    times = np.cumsum(rng.exponential(1.0 / rate, count))
    while times[-1] < horizon_s:  # rare: extend until past the horizon
        more = times[-1] + np.cumsum(rng.exponential(1.0 / rate, count))
        times = np.concatenate([times, more])
    return times[times < horizon_s]


def burst_times(rate: float, horizon_s: float, spec: BurstSpec, rng: np.random.Generator) -> np.ndarray:
    """Arrival times of a bursty process whose long-run mean rate is `rate`."""
    if spec.kind == "batch":
        groups = poisson_times(rate / spec.size, horizon_s, rng)
        return np.repeat(groups, spec.size)
    period = spec.on_s + spec.off_s
    # Arrivals in "on time" only, then stretched back onto the wall clock.
    on_rate = rate * period / spec.on_s
    on_total = horizon_s * spec.on_s / period + spec.on_s
    on_times = poisson_times(on_rate, on_total, rng)
    cycle, offset = np.divmod(on_times, spec.on_s)
    times = cycle * period + offset
    return times[times < horizon_s]


def arrival_times(
    rate: float, horizon_s: float, burst: BurstSpec | None = None, seed: int = 0
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if burst is None:
        return poisson_times(rate, horizon_s, rng)
    return burst_times(rate, horizon_s, burst, rng)
