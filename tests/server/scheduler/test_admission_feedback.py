"""Admission's miss feedback: when admitted requests miss although L(b) said they would
make it (work L(b) never sees), admission stretches its predicted waits; without misses
it changes nothing. In the simulator (`host_overhead_s`: per-request work on the model's
core after each execution, which the runner's compute time leaves out) and on the core."""

from __future__ import annotations

import pytest
from kairos.server.errors import Refused
from kairos.server.scheduler.admission import MISS_WINDOW, STRETCH_MAX
from kairos.server.scheduler.simulator import gamma, poisson, simulate
from kairos_testing.scheduling import make_core

SLO = 0.010


def outcomes(result) -> list[str]:
    return [o.status for o in result.outcomes]


def test_without_misses_the_feedback_changes_nothing():
    trace = gamma(2000, 2.0, 1.0, SLO, seed=4)
    on = simulate(trace, duration=1.0, noise=0.05)
    off = simulate(trace, duration=1.0, noise=0.05, miss_feedback=False)
    assert on.core.stretch == 1.0
    assert outcomes(on) == outcomes(off) and on.goodput() == off.goodput()


def test_hidden_per_request_work_is_learned_from_misses_and_refused_early():
    """0.1 ms per request that L(b) never sees, 6000/s offered (more than the ~4000/s
    the model and that work allow): L(b) alone admits what then misses and collapses."""
    trace = poisson(6000, 2.0, SLO, seed=3)
    blind = simulate(trace, duration=2.0, noise=0.05, host_overhead_s=1e-4, miss_feedback=False)
    learned = simulate(trace, duration=2.0, noise=0.05, host_overhead_s=1e-4)
    assert blind.admitted_attainment() < 0.5
    assert learned.admitted_attainment() > 0.95
    assert learned.goodput() > 1.3 * blind.goodput()
    assert 1.0 < learned.core.stretch <= STRETCH_MAX
    assert learned.core.counts.refused_deadline > blind.core.counts.refused_deadline


def test_bursts_with_hidden_work_keep_more_goodput_with_the_feedback():
    trace = gamma(4000, 4.0, 2.0, SLO, seed=3)
    blind = simulate(trace, duration=2.0, noise=0.05, host_overhead_s=1e-4, miss_feedback=False)
    learned = simulate(trace, duration=2.0, noise=0.05, host_overhead_s=1e-4)
    assert learned.admitted_attainment() > blind.admitted_attainment() + 0.3
    assert learned.goodput() > blind.goodput()


def test_stretch_grows_per_window_with_misses_and_relaxes_without():
    core = make_core()
    for _ in range(MISS_WINDOW - 1):
        core._learn_outcome(True)
    assert core.stretch == 1.0  # judged once per window
    core._learn_outcome(True)
    assert core.stretch == 1.5  # a window of misses: the largest step
    for _ in range(MISS_WINDOW):
        core._learn_outcome(_ % 100 == 0)  # 1%: a small step
    assert 1.5 < core.stretch < 1.5 * 1.5
    for _ in range(40 * MISS_WINDOW):
        core._learn_outcome(True)
    assert core.stretch == STRETCH_MAX
    for _ in range(200 * MISS_WINDOW):
        core._learn_outcome(False)
    assert core.stretch == 1.0


def test_a_stretched_admission_refuses_what_plain_l_of_b_would_admit(req, clock):
    core = make_core(max_batch=8)
    for _ in range(6):  # 6 rows queued: a new one joins them, L(7) = 1.7 ms
        core.admit(req(slo=0.004), clock.now())
    assert core.predicted_finish(1, clock.now()) - clock.now() < 0.002
    core.stretch = 6.0  # L(1) + (L(7) - L(1)) x 6 = 4.7 ms
    assert core.predicted_finish(1, clock.now()) - clock.now() > 0.0045
    with pytest.raises(Refused, match="cannot meet deadline"):
        core.admit(req(slo=0.004), clock.now())
    core.stretch = 1.0
    core.admit(req(slo=0.004), clock.now())


def test_feedback_off_keeps_the_stretch_at_one():
    core = make_core(miss_feedback=False)
    for _ in range(3 * MISS_WINDOW):
        core._learn_outcome(True)
    assert core.stretch == 1.0


def test_an_idle_server_admits_what_fits_alone_whatever_the_stretch(req, clock):
    """The stretch covers the wait for others, not a request's own run: with it at its
    largest an idle server still admits (outcomes keep coming, and it relaxes)."""
    core = make_core(max_batch=8)
    core.stretch = STRETCH_MAX
    core.admit(req(slo=0.0012), clock.now())  # L(1) = 1.1 ms
    assert core.predicted_finish(1, clock.now()) - clock.now() > 0.0012 * 2
