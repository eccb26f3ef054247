"""bench/batch_mode.py's BENCHMARKS.md section: verdicts against the targets, every figure of
the run, and the section replaced between its markers (no servers)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bm():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("batch_mode")
    finally:
        sys.path.remove(str(BENCH))


def point(p99: float, goodput: float) -> dict:
    return {"latency_ms": {"p50": p99 / 2, "p99": p99}, "goodput": goodput}


def mixed_entry(rate: float, alone_p99: float, mixed_p99: float, batch: float) -> dict:
    return {
        "rate": rate, "online_alone_p99_ms": alone_p99, "online_alone_goodput": rate,
        "online_alone_idle_cores": 1.0, "mixed_p99_ms": mixed_p99, "mixed_goodput": rate,
        "mixed_idle_cores": 0.1, "mixed_batch_rows_per_s": batch, "batch_alone_rows_per_s": 100_000.0,
        "p99_ratio": mixed_p99 / alone_p99, "goodput_ratio": 1.0, "batch_share": batch / 100_000,
        "idle_capacity_rows_per_s": 52_000.0, "idle_capture": batch / 52_000,
        "online_alone": [point(alone_p99, rate)], "mixed": [{"online": point(mixed_p99, rate),
                                                             "batch_rows_per_s": batch}],
    }


def result(alone_ratio: float, give_p99_added: float) -> dict:
    give = {"batch_rows_per_s": 90_000.0}
    for key in ("p50", "p99", "p99.9"):
        give[f"wake_{key}_ms"] = {"idle": 0.1, "busy": 0.1 + give_p99_added, "added": give_p99_added}
    for key in ("p50", "p99"):
        give[f"online_{key}_ms"] = {"idle": 1.0, "busy": 1.0 + give_p99_added, "added": give_p99_added}
    half = mixed_entry(5000.0, 4.0, 4.2, 55_000.0)
    return {
        "config": {"max_batch_size": 256, "in_flight": 3, "repeats": 1, "warmup": 1.0,
                   "duration": 8.0, "alone_rows": 400_000, "peak_start": 2000.0, "peak_step": 1.25,
                   "fractions": "0.5,0.25", "sparse_rate": 50.0},
        "cpus": 2, "started": "2026-12-02T00:00:00Z", "commit": "abc1234",
        "raw": {"median": {"1 thread": {256: 60_000.0}, "2 threads": {512: 120_000.0},
                           "2 runs side by side": {256: 140_000.0}},
                "reference": "2 threads"},
        "batch_alone": {"best_rows_per_request": 4096,
                        "median_rows_per_s": {"1024": 90_000.0, "4096": 120_000.0 * alone_ratio},
                        "ratio_to_raw": alone_ratio, "ratio_to_side_by_side": alone_ratio * 6 / 7,
                        "busy_cores": 1.9},
        "online_peak": {"goodput": 9_500.0, "offered": 10_000.0},
        "mixed_by_fraction": {0.5: half, 0.25: mixed_entry(2500.0, 3.0, 3.9, 70_000.0)},
        "summary": half,
        "give_back": {"summary": give},
    }


def test_the_section_judges_each_target(bm):
    text = bm.render(result(alone_ratio=0.85, give_p99_added=0.4), "python bench/batch_mode.py")
    lines = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert "**0.85x** | >= 0.8x | **reached**" in lines["| batch alone / raw at its best thread count (2 threads)"]
    assert "4.00 -> 4.20 ms = **1.05x** | <= 1.10x | **reached**" in lines["| online p99, alone -> mixed"]
    assert "55,000 / 100,000 = **0.55**" in lines["| batch rows/s, mixed / alone"]
    assert "**reached**" in lines["| batch rows/s, mixed / alone"]
    assert "(+400 us) | <= 1 ms added | **reached**" in text
    assert "| 2,500/s (0.25 x peak rate) | 3.00 / 2,500 / 1.00 | 3.90 / 2,500 / 0.10 | 1.30x |" in text
    assert text.startswith(bm.BEGIN) and text.endswith(bm.END)
    assert "    python bench/batch_mode.py" in text and "code abc1234" in text


def test_missed_targets_say_so(bm):
    text = bm.render(result(alone_ratio=0.7, give_p99_added=1.5), "cmd")
    assert "**0.70x** | >= 0.8x | **not reached**" in text
    assert "(+1500 us) | <= 1 ms added | **not reached**" in text


def test_the_section_is_replaced_between_its_markers(bm, tmp_path, monkeypatch):
    page = tmp_path / "BENCHMARKS.md"
    page.write_text(f"# B\n\nbefore\n\n{bm.BEGIN}\nold figures\n{bm.END}\n\nafter\n")
    monkeypatch.setattr(bm, "ROOT", tmp_path)
    bm.write_section(f"{bm.BEGIN}\nnew figures\n{bm.END}")
    assert page.read_text() == f"# B\n\nbefore\n\n{bm.BEGIN}\nnew figures\n{bm.END}\n\nafter\n"
    page.write_text("# B\n")
    bm.write_section(f"{bm.BEGIN}\nfirst\n{bm.END}")
    assert page.read_text() == f"# B\n\n{bm.TITLE}\n\n{bm.BEGIN}\nfirst\n{bm.END}\n"
