"""Variant choice in a model group, in the discrete-event simulator (no network, no model).

The group: an fp32 reference (L(b) = 1 ms + 0.1 ms x b) and an int8 variant three times
faster, at 10 ms deadlines; fp32 alone peaks near 8,000 requests/s."""

from __future__ import annotations

import math

import pytest
from kairos.server.scheduler import variants as variant_policy
from kairos.server.scheduler.latency import LatencyModel
from kairos.server.scheduler.simulator import linear, merge, poisson, simulate
from kairos.server.scheduler.variants import Variant, VariantChooser

FP32 = linear(1e-3, 1e-4)
INT8 = linear(0.33e-3, 0.33e-4)
SLO = 0.010
DURATION = 1.0


def group(accuracy: float = 0.98) -> list:
    return [("fp32", 1.0, FP32), ("int8", accuracy, INT8)]


def run(rate: float, budget: float = 0.02, accuracy: float = 0.98, trace=None, **kw):
    trace = trace if trace is not None else poisson(rate, DURATION, SLO, seed=3)
    return simulate(trace, max_batch_size=64, variants=group(accuracy), accuracy_budget=budget,
                    duration=DURATION, **kw)


def served_by(result, name: str) -> int:
    return sum(1 for o in result.outcomes if o.status == "ok" and o.variant == name)


def test_below_saturation_everything_runs_on_the_reference():
    result = run(4000)  # half of fp32's capacity
    assert served_by(result, "int8") == 0
    assert served_by(result, "fp32") == result.count("ok") == len(result.outcomes)
    assert result.core.variants.switches == 0


def test_under_overload_the_group_keeps_deadlines_that_fp32_alone_misses():
    trace = poisson(16000, DURATION, SLO, seed=3)  # 2x fp32's capacity
    alone = simulate(trace, max_batch_size=64, service=FP32, duration=DURATION)
    mixed = run(16000, trace=trace)
    assert alone.attainment() < 0.6
    assert mixed.attainment() >= 0.99
    assert mixed.late() == 0
    # only the share the load needs moves: some batches still run on fp32
    assert 0 < served_by(mixed, "fp32") < served_by(mixed, "int8")


def test_the_shift_to_int8_grows_with_the_load():
    shares = []
    for rate in (9000, 12000, 16000):
        result = run(rate)
        shares.append(served_by(result, "int8") / result.count("ok"))
    assert shares == sorted(shares) and shares[0] < 0.8


def test_the_budget_caps_the_accuracy_given_up_and_then_it_refuses():
    # int8 gives up 3%, the budget 1%: at most about a third of rows may run on it
    result = run(16000, budget=0.01, accuracy=0.97)
    spent = 0.03 * served_by(result, "int8") / result.count("ok")
    assert spent <= 0.01 * 1.05
    assert result.core.variants.spent() <= 0.0105
    assert result.count("refused") > 0  # past what the budget allows, it refuses early
    assert result.late() == 0


def test_a_variant_within_the_budget_on_its_own_is_never_held_back():
    result = run(16000, budget=0.05, accuracy=0.97)
    assert result.attainment() >= 0.99


def test_per_request_floors_are_never_violated():
    loose = poisson(8000, DURATION, SLO, seed=5)
    strict = poisson(8000, DURATION, SLO, seed=6, min_accuracy=0.99)
    trace = merge(loose, strict)
    result = run(0, trace=trace)
    strict_at = {r.t for r in strict}
    floors = [o for o in result.outcomes if o.arrival in strict_at]
    assert floors and all(o.variant == "fp32" for o in floors if o.status == "ok")
    assert served_by(result, "int8") > 0  # the others still shifted
    assert result.late() == 0


def test_switches_are_bounded_by_the_dwell_time():
    result = run(9000)  # just past fp32's capacity: the choice goes back and forth
    switches = result.core.variants.switches
    assert 0 < switches <= 2 * DURATION / variant_policy.DWELL_S + 1


def test_the_same_trace_gives_the_same_choices():
    a, b = run(12000), run(12000)
    assert [o.variant for o in a.outcomes] == [o.variant for o in b.outcomes]


def _chooser(budget: float = 1.0) -> VariantChooser:
    models = []
    for service in (FP32, INT8):
        latency = LatencyModel(64)
        for rows in latency.buckets:
            for _ in range(10):
                latency.observe(rows, service(rows))
        models.append(latency)
    return VariantChooser([Variant("fp32", 1.0, models[0]), Variant("int8", 0.97, models[1])],
                          budget)


def choose(chooser: VariantChooser, rows: int, now: float, slack: float = SLO, tier: int = 1):
    return chooser.choose(tier=tier, queued_rows=rows, cap=64, head_slack=slack, wait=0.0,
                          budget=SLO, now=now)


def test_a_queue_fp32_cannot_drain_in_time_goes_to_int8_at_once():
    chooser = _chooser()
    assert choose(chooser, 10, 0.0) == 0
    assert choose(chooser, 200, 0.001) == 1  # fp32: 3 batches of 64 x 7.4 ms > 10 ms


def test_the_way_back_waits_for_the_dwell_and_a_margin():
    chooser = _chooser()
    choose(chooser, 200, 0.0)
    assert choose(chooser, 10, variant_policy.DWELL_S / 2) == 1  # too soon
    # fp32 would drain 60 rows in 7 ms: within the budget, but not within UP_MARGIN of it
    assert choose(chooser, 60, variant_policy.DWELL_S * 2) == 1
    assert choose(chooser, 10, variant_policy.DWELL_S * 2) == 0


def test_a_floor_restricts_the_lane_to_accurate_variants():
    chooser = _chooser()
    assert chooser.tier(0.0) == 1 and chooser.tier(0.97) == 1
    assert chooser.tier(0.99) == 0 and chooser.tier(1.0) == 0
    assert choose(chooser, 500, 0.0, tier=0) == 0  # even when fp32 cannot make it


def test_once_spent_the_budget_recovers_before_lossy_variants_run_again():
    chooser = _chooser(budget=0.01)
    chooser.served(1, 1000, 1000, True)  # 3% on everything so far
    assert chooser.spent() == pytest.approx(0.03)
    assert chooser.fastest(1, 64) == 0
    chooser.served(0, 1500, 1500, True)  # 1.2%: still over budget
    assert chooser.fastest(1, 64) == 0
    chooser.served(0, 300, 300, True)  # 0.97%: under the budget, not yet under 90% of it
    assert 0.009 < chooser.spent() < 0.01 and chooser.fastest(1, 64) == 0
    chooser.served(0, 200, 200, True)
    assert chooser.spent() < 0.009 and chooser.fastest(1, 64) == 1


def test_variants_must_be_ordered_most_accurate_first():
    latency = LatencyModel(8)
    with pytest.raises(ValueError, match="most accurate first"):
        VariantChooser([Variant("ref", 1.0, latency), Variant("a", 0.9, latency),
                        Variant("b", 0.95, latency)], 0.1)
    with pytest.raises(ValueError, match="budget"):
        VariantChooser([Variant("ref", 1.0, latency)], 1.5)
    assert math.isfinite(_chooser().admission_latency(1, 1).predict(1))
