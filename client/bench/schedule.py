"""Arrival schedules for open-loop load: when each request should be sent.

Schedules are computed up front (numpy, seeded) so that sending costs one
comparison per request and the same seed replays the same arrivals. Times are
seconds from the start of the run, sorted ascending.

Besides Poisson (and the bursts below): `constant` (evenly spaced) and `gamma`
(gamma-distributed gaps of mean 1/rate and a chosen coefficient of variation: cv 1
is Poisson, cv 4 sends most requests in tight clusters between long silences).
A deadline mix (`5:0.5,50:0.5`: deadline ms : share) gives each request one of
several deadlines, drawn per request from its own seeded stream, so the same seed
replays the same arrivals and the same classes.
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


def gamma_times(rate: float, cv: float, horizon_s: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times in [0, horizon_s) whose gaps are gamma(shape 1/cv^2), mean 1/rate."""
    if rate <= 0 or horizon_s <= 0:
        return np.empty(0)
    if cv <= 0:
        raise ValueError("the coefficient of variation must be > 0")
    shape = 1.0 / (cv * cv)
    scale = 1.0 / (rate * shape)
    expected = rate * horizon_s
    # the count over the horizon varies with cv: draw in chunks until past it
    chunk = int(expected + 6 * cv * np.sqrt(expected) + 16)
    times = np.cumsum(rng.gamma(shape, scale, chunk))
    while times[-1] < horizon_s:
        times = np.concatenate([times, times[-1] + np.cumsum(rng.gamma(shape, scale, chunk))])
    return times[times < horizon_s]


def constant_times(rate: float, horizon_s: float) -> np.ndarray:
    """Evenly spaced sends, 1/rate apart, from 0."""
    if rate <= 0 or horizon_s <= 0:
        return np.empty(0)
    times = np.arange(int(np.ceil(rate * horizon_s))) / rate
    return times[times < horizon_s]


ARRIVALS = ("poisson", "constant", "gamma")


def arrival_times(
    rate: float,
    horizon_s: float,
    burst: BurstSpec | None = None,
    seed: int = 0,
    arrival: str = "poisson",
    cv: float | None = None,
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if burst is not None:
        return burst_times(rate, horizon_s, burst, rng)
    if arrival == "gamma":
        if cv is None:
            raise ValueError("gamma arrivals need a coefficient of variation (--cv)")
        return gamma_times(rate, cv, horizon_s, rng)
    if arrival == "constant":
        return constant_times(rate, horizon_s)
    if arrival != "poisson":
        raise ValueError(f"arrival must be one of {', '.join(ARRIVALS)}, not {arrival!r}")
    return poisson_times(rate, horizon_s, rng)


@dataclass(frozen=True)
class DeadlineClass:
    deadline_ms: float
    share: float  # normalized: the shares of a mix add up to 1


def parse_deadline_mix(text: str) -> tuple[DeadlineClass, ...]:
    """`5:0.5,50:0.5`: deadline ms : share, comma-separated; shares are normalized."""
    classes = []
    try:
        for part in text.split(","):
            if not part.strip():
                continue
            ms, sep, share = part.partition(":")
            classes.append((float(ms), float(share) if sep else 1.0))
    except ValueError:
        classes = []
    total = sum(share for _, share in classes)
    deadlines = [ms for ms, _ in classes]
    if (not classes or any(ms <= 0 or share < 0 for ms, share in classes) or total <= 0
            or len(set(deadlines)) != len(deadlines)):
        raise ValueError(
            f"--deadline-mix must be DEADLINE_MS:SHARE,... with distinct positive deadlines "
            f"and shares >= 0 (e.g. 5:0.5,50:0.5), not {text!r}"
        )
    return tuple(DeadlineClass(ms, share / total) for ms, share in classes)


def describe_mix(mix: tuple[DeadlineClass, ...]) -> str:
    return ",".join(f"{c.deadline_ms:g}:{c.share:g}" for c in mix)


def class_of_requests(count: int, mix: tuple[DeadlineClass, ...], seed: int = 0) -> np.ndarray:
    """The deadline class (an index into `mix`) of each of `count` requests in send
    order, from a stream of its own (the arrival times do not depend on the mix)."""
    rng = np.random.default_rng([seed, 0x6D6978])  # "mix"
    bounds = np.cumsum([c.share for c in mix])
    bounds[-1] = 1.0
    return np.searchsorted(bounds, rng.random(count), side="right").clip(0, len(mix) - 1)
