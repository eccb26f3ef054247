"""bench/scheduling_report.py renders figures and its BENCHMARKS.md block from results files,
and rewrites only its own block (synthetic results; no server)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from kairos_testing.dependencies import require_module

BENCH = Path(__file__).resolve().parents[3] / "bench"


def _point(rate: float | None, goodput: float, batch1: float = 1.0) -> dict[str, Any]:
    point: dict[str, Any] = {
        "mode": "open" if rate else "closed", "duration_s": 5.0, "requests": 100, "ok": 90,
        "throughput": goodput + 1, "goodput": goodput, "send_rate": rate or 0.0,
        "latency_ms": {"p50": 0.5, "p90": 0.8, "p99": 1.0, "p99.9": 2.0, "mean": 0.6, "max": 3.0},
        "latency_cdf_ms": [0.3 + i / 100 for i in range(101)],
        "errors": {"RESOURCE_EXHAUSTED": {"count": 10, "p50_ms": 0.4, "p99_ms": 0.9}},
        "server_cpu": {"cpu_util": 0.9, "cpu_us_per_request": 500.0},
        "server_batches": {"executions": 80, "rows": 90, "gemv_share_executions": batch1,
                           "gemv_share_rows": batch1, "mean_batch_rows": 1.1},
        "lateness_ms": {"p50": 0.1, "p99": 1.0, "max": 2.0}, "kept_up": True,
    }
    if rate:
        point["offered_rate"] = rate
    else:
        point["concurrency"] = 1
    return point


def _results() -> dict[str, dict[str, Any]]:
    rates = [100.0, 200.0]
    sweep = [_point(r, r * 0.9) for r in rates]
    floor = {
        "c1": {"points": {"floor": [_point(None, 10)], "kairos": [_point(None, 9)]},
               "p50_ms": {"floor": 0.5, "kairos": 0.7}, "delta_ms": 0.2},
        "floor_peak": {"peak_rps": 300.0}, "kairos_closed_peak": {"peak_rps": 250.0},
        "rates": rates, "kairos_sweep": sweep, "floor_sweep": sweep,
        "kairos_peak_goodput": 180.0, "kairos_peak_goodput_rate": 200.0,
        "ratio_peak_goodput_to_floor_peak": 0.6,
        "generator_capacity": {"offered_rate": 5000.0, "send_rate": 4990.0, "kept_up": True,
                               "lateness_ms": {"p50": 0.2, "p99": 1.5},
                               "generator": {"cpu_util": 0.9, "cpu_us_per_request": 180.0}},
    }
    part = {"sweep": sweep, "overload": _point(400.0, 150.0), "peak_goodput": 180.0, "peak_rate": 200.0,
            "ratio": 0.83}
    overload = {"model_bound": part, "front_end_bound": {**part, "floor_overload": _point(400.0, 300.0),
                                                         "refusal_cost": {"rate": 100.0, "floor_ok_us": 400,
                                                                          "kairos_ok_us": 700, "kairos_refused_us": 500,
                                                                          "refused_errors": {"RESOURCE_EXHAUSTED": {}}}}}
    policies = {"peak_used": 180.0, "policy_rates": rates, "split_rates": [20.0],
                "policies": {n: [_point(r, r * 0.8, 0.5) for r in rates]
                             for n in ("mlp256-slo", "mlp256-fixed1", "mlp256-fixed5", "mlp256-none")},
                "slo_low_load": [_point(20.0, 20.0)]}
    profile = {"rate": 200.0, "server_cpu_us_per_request": 700.0, "server_cpu_util": 0.9, "throughput": 190.0,
               "share": {"onnxruntime run": 0.25, "other": 0.75},
               "us_per_request": {"onnxruntime run": 175.0, "other": 525.0}}
    return {"scheduling_floor": floor, "scheduling_overload": overload, "scheduling_policies": policies,
            "scheduling_profile": profile}


@pytest.fixture
def report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCH))
    module = importlib.import_module("scheduling_report")
    results, docs = tmp_path / "results", tmp_path / "docs"
    results.mkdir()
    for name, data in _results().items():
        (results / f"{name}.json").write_text(json.dumps({**data, "command": f"bench/{name}.py"}))
    monkeypatch.setattr(module, "RESULTS", results)
    monkeypatch.setattr(module, "DOCS", docs)
    monkeypatch.setattr(module, "BENCHMARKS", tmp_path / "BENCHMARKS.md")
    yield module
    sys.modules.pop("scheduling_report", None)


def test_report_writes_figures_and_replaces_only_its_own_section(report, tmp_path: Path) -> None:
    require_module("matplotlib", "pip install -e '.[plot]'")
    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text("# Benchmarks\n\n## Someone else's section\n\nkept\n")
    report.main()
    report.main()  # a second run replaces the section instead of appending another
    text = benchmarks.read_text()
    assert text.count(report.START) == 1 and "## Someone else's section" in text and "kept" in text
    assert "| c=1 p50" in text and "**reached**" in text and "**not reached**" in text
    assert "slo best?" in text and "refusal 500 us" in text
    for name in ("floor_vs_kairos", "overload", "policies", "gemv_split"):
        assert (tmp_path / "docs" / f"bench_{name}.png").stat().st_size > 1000


def _block(text: str, report) -> str:
    return text.split(report.START, 1)[1].split(report.END, 1)[0]


def test_the_block_holds_only_generated_text_with_the_peak_definition(report, tmp_path: Path) -> None:
    require_module("matplotlib", "pip install -e '.[plot]'")
    (tmp_path / "BENCHMARKS.md").write_text("# Benchmarks\n")
    report.main()
    block = _block((tmp_path / "BENCHMARKS.md").read_text(), report)
    assert "## Scheduling: Kairos (grpc.aio) vs floor" in block
    assert "issue" not in block.lower()  # section names carry no issue numbers
    assert f"Definition used by every script and table here: {report.PEAK_DEFINITION}." in block
    # Old policies results (fractions of the peak goodput) say so; new ones name the peak rate.
    assert "rates are fractions of 180 req/s, the peak goodput then" in block


def test_policies_results_on_the_peak_rate_are_labelled_so(report, tmp_path: Path) -> None:
    require_module("matplotlib", "pip install -e '.[plot]'")
    path = report.RESULTS / "scheduling_policies.json"
    data = json.loads(path.read_text())
    data.pop("peak_used")
    path.write_text(json.dumps({**data, "peak_rate_used": 200.0}))
    (tmp_path / "BENCHMARKS.md").write_text("# Benchmarks\n")
    report.main()
    block = _block((tmp_path / "BENCHMARKS.md").read_text(), report)
    assert "rates are fractions of the peak rate, 200 req/s offered" in block


@pytest.mark.parametrize(("script", "flag", "argv"), [
    ("scheduling_profile", "--rate", []),
    ("scheduling_policies", "--peak-rate", []),
    ("scheduling_overload", "--light-rates", ["--skip-heavy"]),
])
def test_scripts_refuse_to_guess_the_peak_rate(script, flag, argv, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Without bench/results/scheduling_floor.json and without the flag, a script stops
    with a message naming both, before it pins itself or starts anything."""
    monkeypatch.syspath_prepend(str(BENCH))
    common = importlib.import_module("scheduling_common")
    module = importlib.import_module(script)
    monkeypatch.setattr(common, "RESULTS", tmp_path)  # no scheduling_floor.json there

    def started(*_args, **_kwargs):
        raise AssertionError("the script went on without a peak rate")

    monkeypatch.setattr(module, "pin_generator", started)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv])
    with pytest.raises(SystemExit) as stopped:
        module.main()
    message = str(stopped.value.code)
    assert "scheduling_floor.json is missing" in message and flag in message
    (tmp_path / "scheduling_floor.json").write_text(json.dumps({"kairos_peak_goodput_rate": 2890.0}))
    assert common.measured_peak_rate(flag) == 2890.0
