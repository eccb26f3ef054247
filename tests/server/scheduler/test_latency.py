"""L(b): quantiles, interpolation, extrapolation, online correction."""

from __future__ import annotations

import random

import pytest
from kairos.server.scheduler.latency import LatencyModel, bucket_sizes


def test_buckets_are_powers_of_two_up_to_max():
    assert bucket_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert bucket_sizes(48) == [1, 2, 4, 8, 16, 32, 48]
    assert bucket_sizes(0) == [1]


def test_unknown_model_predicts_zero():
    model = LatencyModel(8)
    assert model.predict(1) == 0.0 and model.predict(8) == 0.0
    assert not model.known()


def test_upper_quantile_ignores_rare_outliers():
    model = LatencyModel(1, quantile=0.95)
    for _ in range(60):
        model.observe(1, 0.001)
    model.observe(1, 0.050)  # a GC pause
    for _ in range(10):
        model.observe(1, 0.001)
    model.rebuild()
    assert model.predict(1) == pytest.approx(0.001)


def test_quantile_follows_the_tail():
    model = LatencyModel(1, quantile=0.9, window=20)
    for i in range(60):
        model.observe(1, 0.001 * (1 + i % 10))  # 1..10 ms; the window holds two of each
    model.rebuild()
    assert model.predict(1) == pytest.approx(0.009)


def test_interpolates_between_and_extrapolates_beyond_profiled_sizes():
    model = LatencyModel(64)
    for b in (1, 2, 4, 8, 16, 32):  # 64 never profiled
        for _ in range(5):
            model.observe(b, 0.001 + 0.0001 * b)
    model.rebuild()
    assert model.predict(3) == pytest.approx(0.0013)
    assert model.predict(24) == pytest.approx(0.0034)
    assert model.predict(64) == pytest.approx(0.0074)  # linear from 16 and 32
    assert model.predict(100) == pytest.approx(0.011)  # beyond max batch: same slope


def test_table_is_non_decreasing():
    model = LatencyModel(8)
    for b, t in ((1, 0.003), (2, 0.001), (4, 0.002), (8, 0.004)):
        for _ in range(5):
            model.observe(b, t)
    model.rebuild()
    values = [model.predict(b) for b in range(9)]
    assert values == sorted(values)


def test_a_slowdown_shows_within_a_few_runs():
    model = LatencyModel(1)
    for _ in range(32):
        model.observe(1, 0.001)
    model.observe(1, 0.003)
    model.observe(1, 0.003)
    assert model.predict(1) == pytest.approx(0.003)


def test_online_executions_correct_the_nearest_bucket():
    model = LatencyModel(64)
    for b in model.buckets:
        for _ in range(20):
            model.observe(b, 0.001 + 0.0001 * b)
    assert model.predict(5) == pytest.approx(0.0015)
    # The machine got twice as slow; only odd sizes run now.
    for _ in range(200):
        model.observe(5, 2 * (0.001 + 0.0001 * 5))
    model.rebuild()
    assert model.predict(5) == pytest.approx(0.003, rel=0.05)
    assert 0.0014 < model.predict(4) <= model.predict(5)


def test_best_rows_and_drain_time():
    model = LatencyModel(64)
    for b in model.buckets:
        for _ in range(5):
            model.observe(b, 0.001 + 0.0001 * b)
    model.rebuild()
    assert model.best_rows == 64
    assert model.drain_time(0) == 0.0
    assert model.drain_time(130) == pytest.approx(2 * 0.0074 + 0.0012)
    assert model.drain_time(10, best=4) == pytest.approx(2 * 0.0014 + 0.0012)


def test_concurrent_runs_only_teach_the_concurrency_factor():
    model = LatencyModel(4)
    for b in model.buckets:
        for _ in range(5):
            model.observe(b, 0.001)
    before = model.predict(4)
    for _ in range(200):
        model.observe(4, 0.002, overlap=1.0)
    assert model.predict(4) == before
    assert model.concurrency_factor == pytest.approx(2.0, rel=0.01)
    for _ in range(200):  # half overlapped, 1.5x as long: the full-overlap slowdown is 2x
        model.observe(4, 0.0015, overlap=0.5)
    assert model.concurrency_factor == pytest.approx(2.0, rel=0.01)


def test_operator_table():
    model = LatencyModel(4)
    model.observe(2, 0.002)
    rows = model.table()
    assert [r["batch_size"] for r in rows] == [1, 2, 4]
    assert rows[1]["observations"] == 1
    assert rows[1]["predicted_s"] == pytest.approx(0.002)


def test_preemption_outliers_are_clamped_so_they_cannot_wedge_admission():
    model = LatencyModel(1)
    for _ in range(20):
        model.observe(1, 0.0002)
    for _ in range(5):  # the process was descheduled for 50 ms, five times
        model.observe(1, 0.050)
    assert model.predict(1) == pytest.approx(0.0008)  # 4x the median at most
    assert model.clamped == 5


def test_a_real_slowdown_still_shows_through_the_clamp():
    model = LatencyModel(1)
    for _ in range(20):
        model.observe(1, 0.001)
    for _ in range(40):
        model.observe(1, 0.010)
    assert model.predict(1) == pytest.approx(0.010)


def test_spreading_slow_runs_to_neighbours_does_not_compound():
    """Slow batch-1 runs carry their ratio to neighbours; a neighbour that rarely runs
    itself must stay near its own measurements, not grow by ratio upon ratio (it once
    reached hours: admission then refused everything that would batch)."""
    model = LatencyModel(64)
    rng = random.Random(1)
    truth = {b: 0.0002 + 0.00005 * b for b in model.buckets}
    for b in model.buckets:
        for _ in range(20):
            model.observe(b, truth[b] * rng.uniform(0.9, 1.1))
    for i in range(20_000):  # noisy machine: runs take 0.8-3x their quiet time
        rows = 2 if i % 5 == 0 else 3 if i % 50 == 1 else 1
        model.observe(rows, (0.0003 if rows == 1 else 0.0004) * rng.uniform(0.8, 3))
    assert model.predict(16) < 3 * 3 * truth[16]
    assert model.predict(8) < 3 * 3 * truth[8]
