"""Bursty arrivals (gamma gaps) and mixed deadline classes, in the deterministic simulator.

Service time L_true(b) = 1 ms + 0.1 ms * b, 5% lognormal noise (as test_simulation.py).
Capacity at 10 ms: about 7800 requests/s (the slo policy's peak goodput, measured below).
With 5 ms requests in the mix no batch may run longer than 2.5 ms (a 5 ms request waits
for one and runs in the next): L(15), so the mix cannot exceed 15 rows / 2.5 ms = 6000/s.
"""

from __future__ import annotations

import statistics

import pytest
from kairos.server.scheduler.simulator import gamma, merge, mix_deadlines, poisson, simulate

SLO = 0.010
TIGHT, LOOSE = 0.005, 0.050
NOISE = 0.05
DURATION = 1.0
MIXED_CAPACITY = 6000.0


def sim(trace, policy="slo", **kwargs):
    return simulate(trace, policy=policy, duration=DURATION, noise=NOISE, **kwargs)


def test_gamma_gaps_have_the_mean_rate_and_coefficient_of_variation():
    for cv in (0.5, 1.0, 4.0):
        trace = gamma(5000, cv, 40.0, SLO, seed=2)
        gaps = [b.t - a.t for a, b in zip(trace, trace[1:], strict=False)]
        mean = statistics.fmean(gaps)
        assert mean * 5000 == pytest.approx(1.0, rel=0.05), cv
        assert statistics.pstdev(gaps) / mean == pytest.approx(cv, rel=0.1), cv
    assert gamma(100, 4, 1.0, SLO, seed=3) == gamma(100, 4, 1.0, SLO, seed=3)
    assert gamma(100, 4, 1.0, SLO, seed=3) != gamma(100, 4, 1.0, SLO, seed=4)
    with pytest.raises(ValueError):
        gamma(100, 0, 1.0, SLO)


def test_mixed_deadlines_keep_the_arrivals_and_split_by_share():
    base = poisson(4000, 2.0, SLO, seed=1)
    mixed = mix_deadlines(base, [(TIGHT, 0.25), (LOOSE, 0.75)], seed=2)
    assert [r.t for r in mixed] == [r.t for r in base]
    tight = sum(r.slo == TIGHT for r in mixed) / len(mixed)
    assert tight == pytest.approx(0.25, abs=0.02)
    assert mixed == mix_deadlines(base, [(TIGHT, 0.25), (LOOSE, 0.75)], seed=2)
    with pytest.raises(ValueError):
        mix_deadlines(base, [(TIGHT, 0.0)])


def test_results_split_by_deadline_class():
    trace = mix_deadlines(poisson(2000, DURATION, SLO, seed=1), [(TIGHT, 0.5), (LOOSE, 0.5)], seed=2)
    result = sim(trace)
    classes = result.by_deadline()
    assert set(classes) == {TIGHT, LOOSE}
    assert sum(c.requests for c in classes.values()) == len(trace)
    assert sum(c.good for c in classes.values()) == result.good()
    for c in classes.values():
        assert c.admitted == c.requests - c.refused
        assert c.attainment == pytest.approx(1.0, abs=0.005)
        assert c.p99 is not None and c.p99 <= c.slo


def peak_goodput() -> float:
    return max(sim(poisson(rate, DURATION, SLO, seed=1)).goodput() for rate in range(6000, 11001, 1000))


def test_bursty_arrivals_at_70_percent_of_capacity_meet_deadlines_once_admitted():
    """CV 4: bursts far above capacity between silences. The slo policy refuses what a
    burst cannot serve in time and keeps its promise to what it admits; its goodput is
    at least that of fixed (1 ms) and none on the same trace."""
    peak = peak_goodput()
    assert 7000 < peak < 8600
    trace = gamma(0.7 * peak, 4.0, DURATION, SLO, seed=5)
    slo = sim(trace)
    assert slo.admitted_attainment() >= 0.99
    assert slo.late() == 0
    assert slo.count("refused") > 0  # the bursts overflow
    assert slo.goodput() >= sim(trace, "fixed", max_queue_delay_s=0.001).goodput()
    assert slo.goodput() >= sim(trace, "none").goodput()


@pytest.mark.parametrize("fraction", [0.5, 0.7, 0.9])
def test_tight_class_meets_its_deadlines_beside_a_loose_one(fraction):
    """5 ms and 50 ms requests, half each, up to 90% of what the mix can be served at:
    the 5 ms class makes its deadline (it is admitted past the 50 ms requests queued
    before it, and their batches leave it room), and the 50 ms class keeps >= 90% of the
    goodput the same 50 ms requests get alone."""
    rate = fraction * MIXED_CAPACITY
    trace = mix_deadlines(poisson(rate, DURATION, SLO, seed=1), [(TIGHT, 0.5), (LOOSE, 0.5)], seed=2)
    classes = sim(trace).by_deadline()
    tight, loose = classes[TIGHT], classes[LOOSE]
    assert tight.attainment >= 0.99
    assert tight.admitted_attainment >= 0.995
    alone = sim([r for r in trace if r.slo == LOOSE]).by_deadline()[LOOSE]
    assert loose.goodput >= 0.9 * alone.goodput


def test_tight_requests_are_not_refused_for_loose_ones_queued_before_them():
    """A burst of 50 ms requests fills the queue in the middle of steady 5 ms traffic; the
    5 ms requests after it jump it (earliest deadline first), so admission must not count
    the burst ahead of them (counted, it would refuse every one for ~17 ms)."""
    tight = poisson(500, 0.1, TIGHT, seed=4)
    burst = poisson(100000, 0.001, LOOSE, seed=3, start=0.03)  # ~100 requests in 1 ms
    classes = sim(merge(tight, burst)).by_deadline()
    assert classes[TIGHT].refused == 0
    assert classes[TIGHT].attainment == 1.0
    assert classes[LOOSE].attainment == 1.0


def test_over_the_mix_capacity_admitted_tight_requests_still_make_it():
    """Past 6000/s the 5 ms class cannot all be served: the excess is refused at once,
    and what is admitted is answered in time."""
    trace = mix_deadlines(poisson(1.2 * MIXED_CAPACITY, DURATION, SLO, seed=1),
                          [(TIGHT, 0.5), (LOOSE, 0.5)], seed=2)
    tight = sim(trace).by_deadline()[TIGHT]
    assert tight.refused > 0
    assert tight.admitted_attainment >= 0.99
