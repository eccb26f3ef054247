"""Arrival schedules and the statistics of `kairos bench`, on synthetic data (no server)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from kairos.client.bench.schedule import (
    BurstSpec,
    arrival_times,
    class_of_requests,
    describe_mix,
    parse_burst,
    parse_deadline_mix,
)
from kairos.client.bench.stats import UNFINISHED, Records, kept_up, summarize

OK = grpc.StatusCode.OK.value[0]
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


def test_poisson_schedule_has_the_asked_rate_and_is_reproducible() -> None:
    times = arrival_times(1000.0, 20.0, seed=3)
    assert np.all(np.diff(times) >= 0) and times[-1] < 20.0
    assert len(times) == pytest.approx(20_000, rel=0.03)
    assert np.array_equal(times, arrival_times(1000.0, 20.0, seed=3))
    gaps = np.diff(times)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential gaps


def test_batch_bursts_arrive_in_groups_at_the_same_mean_rate() -> None:
    times = arrival_times(1000.0, 20.0, BurstSpec("batch", size=8), seed=1)
    assert len(times) == pytest.approx(20_000, rel=0.05)
    _, counts = np.unique(times, return_counts=True)
    assert set(counts) == {8}


def test_on_off_bursts_are_silent_in_the_off_phase() -> None:
    spec = parse_burst("onoff:10:30")
    times = arrival_times(500.0, 20.0, spec, seed=2)
    assert len(times) == pytest.approx(10_000, rel=0.05)
    phase = np.mod(times, 0.040)
    assert phase.max() < 0.010 + 1e-9


@pytest.mark.parametrize("text", ["batch:0", "onoff:10", "poisson", "batch:x", "onoff:0:5"])
def test_bad_burst_specs_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--burst"):
        parse_burst(text)


def _records(rows: list[tuple[float, float, float, int]]) -> Records:
    records = Records()
    for scheduled, sent, ended, code in rows:
        records.scheduled.append(scheduled)
        records.sent.append(sent)
        records.ended.append(ended)
        records.codes.append(code)
    return records


def test_summary_counts_only_the_window_and_splits_goodput_from_throughput() -> None:
    records = _records([
        (0.5, 0.5, 0.501, OK),  # warm-up: ignored
        (1.0, 1.0, 1.002, OK),  # 2 ms: good
        (1.1, 1.1, 1.120, OK),  # 20 ms: OK but late
        (1.2, 1.201, 1.2015, EXHAUSTED),  # fast refusal
        (1.3, 1.3, 0.0, UNFINISHED),
        (2.5, 2.5, 2.501, OK),  # after the window: ignored
    ])
    summary = summarize(records, (1.0, 2.0), slo_s=0.010, rows=4, open_loop=True)
    assert summary["requests"] == 4
    assert summary["throughput"] == 2.0 and summary["goodput"] == 1.0
    assert summary["rows_per_s"] == 8.0
    assert summary["slo_attainment"] == 0.25
    assert summary["errors"]["RESOURCE_EXHAUSTED"]["count"] == 1
    assert summary["errors"]["RESOURCE_EXHAUSTED"]["p50_ms"] == pytest.approx(0.5)
    assert summary["errors"]["UNFINISHED"] == {"count": 1, "p50_ms": None, "p99_ms": None}
    assert summary["latency_ms"]["max"] == pytest.approx(20.0)
    assert summary["lateness_ms"]["max"] == pytest.approx(1.0)
    assert len(summary["latency_cdf_ms"]) == 101


def test_a_generator_that_sends_late_is_flagged() -> None:
    on_time = {"send_rate": 1000.0, "lateness_ms": {"p50": 0.1, "p99": 1.0, "max": 2.0}}
    late = {"send_rate": 1000.0, "lateness_ms": {"p50": 1.0, "p99": 8.0, "max": 20.0}}
    slow = {"send_rate": 900.0, "lateness_ms": {"p50": 0.1, "p99": 1.0, "max": 2.0}}
    assert kept_up(on_time, 1000.0, 0.010)
    assert not kept_up(late, 1000.0, 0.010)
    assert not kept_up(slow, 1000.0, 0.010)


@pytest.mark.parametrize("cv", [0.5, 2.0, 4.0])
def test_gamma_schedule_has_the_mean_rate_and_the_asked_variation(cv: float) -> None:
    times = arrival_times(5000.0, 100.0, seed=4, arrival="gamma", cv=cv)
    assert np.all(np.diff(times) >= 0) and times[-1] < 100.0
    assert len(times) == pytest.approx(500_000, rel=0.05)
    gaps = np.diff(times)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)
    assert np.array_equal(times, arrival_times(5000.0, 100.0, seed=4, arrival="gamma", cv=cv))


def test_constant_schedule_and_unknown_arrivals() -> None:
    times = arrival_times(1000.0, 2.0, arrival="constant")
    assert len(times) == 2000 and np.allclose(np.diff(times), 0.001)
    with pytest.raises(ValueError, match="--cv"):
        arrival_times(1000.0, 2.0, arrival="gamma")
    with pytest.raises(ValueError, match="arrival"):
        arrival_times(1000.0, 2.0, arrival="weibull")


def test_deadline_mixes_parse_normalize_and_assign_classes_by_share() -> None:
    mix = parse_deadline_mix("5:1,50:3")
    assert [(c.deadline_ms, c.share) for c in mix] == [(5.0, 0.25), (50.0, 0.75)]
    assert describe_mix(mix) == "5:0.25,50:0.75"
    classes = class_of_requests(100_000, mix, seed=1)
    assert set(np.unique(classes)) == {0, 1}
    assert (classes == 0).mean() == pytest.approx(0.25, abs=0.01)
    assert np.array_equal(classes, class_of_requests(100_000, mix, seed=1))
    for bad in ("", "5:0.5,5:0.5", "0:1", "5:-1", "x:1", "5:0"):
        with pytest.raises(ValueError, match="--deadline-mix"):
            parse_deadline_mix(bad)


def test_summary_splits_a_deadline_mix_by_class_and_counts_the_admitted() -> None:
    records = _records([
        (1.0, 1.0, 1.004, OK),  # 4 ms: a 5 ms request in time
        (1.1, 1.1, 1.107, OK),  # 7 ms: a 5 ms request late (a 50 ms one below is in time)
        (1.2, 1.2, 1.2002, EXHAUSTED),  # 5 ms request refused at admission
        (1.3, 1.3, 1.307, OK),  # 7 ms: 50 ms class, in time
        (1.4, 1.4, 1.450, grpc.StatusCode.DEADLINE_EXCEEDED.value[0]),  # 50 ms class, admitted, missed
    ])
    records.classes = [0, 0, 0, 1, 1]
    mix = parse_deadline_mix("5:0.5,50:0.5")
    summary = summarize(records, (1.0, 2.0), 0.010, 1, open_loop=True, mix=mix)
    assert summary["requests"] == 5 and summary["goodput"] == 2.0
    assert summary["admitted"] == 4 and summary["admitted_attainment"] == 0.5
    tight, loose = summary["classes"]
    assert (tight["deadline_ms"], tight["requests"], tight["admitted"], tight["goodput"]) == (5.0, 3, 2, 1.0)
    assert tight["slo_attainment"] == pytest.approx(1 / 3, abs=1e-4) and tight["admitted_attainment"] == 0.5
    assert (loose["requests"], loose["admitted"], loose["goodput"]) == (2, 2, 1.0)
    assert loose["errors"]["DEADLINE_EXCEEDED"]["count"] == 1
    plain = summarize(records, (1.0, 2.0), 0.010, 1, open_loop=True)  # one 10 ms class
    assert "classes" not in plain and plain["goodput"] == 3.0 and plain["admitted"] == 4
