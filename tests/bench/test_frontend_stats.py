"""bench/frontend_stats.py and bench/frontend_report.py: Prometheus's histogram_quantile, the
GEMV/GEMM split from Kairos's counters, sweep steps, and the BENCHMARKS.md section (no servers)."""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def fs():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("frontend_stats")
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def fr(fs):
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("frontend_report")
    finally:
        sys.path.remove(str(BENCH))


# Cumulative buckets: 10 at <= 0.1, 30 at <= 0.2, 90 at <= 0.5, 100 in all.
BUCKETS = [(0.1, 10.0), (0.2, 30.0), (0.5, 90.0), (math.inf, 100.0)]


def test_histogram_quantile_interpolates_as_prometheus_does(fs):
    assert fs.histogram_quantile(0.5, BUCKETS) == pytest.approx(0.2 + 0.3 * 20 / 60)
    assert fs.histogram_quantile(0.05, BUCKETS) == pytest.approx(0.05)  # first bucket starts at 0
    assert fs.histogram_quantile(0.3, BUCKETS) == pytest.approx(0.2)  # rank on a bucket's edge
    assert fs.histogram_quantile(0.99, BUCKETS) == 0.5  # in +Inf: the highest finite bound
    assert fs.histogram_quantile(0.9, list(reversed(BUCKETS))) == pytest.approx(0.5)  # order-free


def test_histogram_quantile_edge_cases(fs):
    assert math.isnan(fs.histogram_quantile(0.99, [(0.1, 1.0), (0.2, 2.0)]))  # no +Inf bucket
    assert math.isnan(fs.histogram_quantile(0.99, [(math.inf, 3.0)]))  # fewer than two buckets
    assert math.isnan(fs.histogram_quantile(0.99, [(0.1, 0.0), (math.inf, 0.0)]))  # no observations
    assert fs.histogram_quantile(1.5, BUCKETS) == math.inf
    assert fs.histogram_quantile(-0.1, BUCKETS) == -math.inf
    torn = [(0.1, 10.0), (0.2, 8.0), (math.inf, 20.0)]  # a torn scrape: counts made monotonic
    assert fs.histogram_quantile(0.5, torn) == pytest.approx(0.1)


def _exposition(scale: int, gemv: int, gemm: int, rows: int) -> str:
    bounds = ("0.001", "0.005", "0.01", "+Inf")
    cumulative = [c * scale for c in (50, 90, 99, 100)]
    lines = ["# HELP kairos_request_duration_seconds End-to-end latency.",
             "# TYPE kairos_request_duration_seconds histogram"]
    for version, share in (("1", 1), ("2", 0)):  # a second version with nothing: sum by (le)
        for bound, count in zip(bounds, cumulative, strict=True):
            lines.append(f'kairos_request_duration_seconds_bucket{{model="mlp256",version="{version}",'
                         f'le="{bound}"}} {count * share}')
    lines.append('kairos_request_duration_seconds_bucket{model="other",version="1",le="+Inf"} 999')
    lines += [f'kairos_dispatches_total{{model="mlp256",version="1",path="gemv"}} {gemv}',
              f'kairos_dispatches_total{{model="mlp256",version="1",path="gemm"}} {gemm}',
              f'kairos_batch_rows_sum{{model="mlp256",version="1"}} {rows}',
              f'kairos_batch_rows_count{{model="mlp256",version="1"}} {gemv + gemm}']
    return "\n".join(lines) + "\n"


def test_promql_p99_and_split_over_a_window(fs):
    before = fs.parse_prometheus(_exposition(1, gemv=10, gemm=0, rows=10))
    after = fs.parse_prometheus(_exposition(3, gemv=40, gemm=30, rows=130))
    # The window's increase: 100, 80, 18, 2 per bucket (cumulative 100, 180, 198, 200);
    # rank 198 sits exactly at the 0.01 bound.
    assert fs.promql_p99_ms(before, after, "mlp256") == pytest.approx(10.0)
    split = fs.dispatch_split(before, after, "mlp256")
    assert split["executions"] == 60 and split["batch1_share"] == 0.5
    assert split["mean_batch_rows"] == pytest.approx(120 / 60)
    assert fs.promql_p99_ms(before, before, "mlp256") is None  # nothing observed in the window


def test_parse_prometheus_reads_labels_and_skips_comments(fs):
    samples = fs.parse_prometheus('# TYPE x counter\nx{a="q\\"uote",b="2"} 3.5\ny 4\nbroken line here\n')
    assert samples[("x", frozenset({("a", 'q"uote'), ("b", "2")}))] == 3.5
    assert samples[("y", frozenset())] == 4.0
    assert fs.series_sum(samples, "x", {"b": "2"}) == 3.5 and fs.series_sum(samples, "x", {"b": "9"}) == 0


def _open(rate: float, goodput: float) -> dict[str, Any]:
    return {"mode": "open", "offered_rate": rate, "goodput": goodput}


def test_peak_and_where_the_sweep_goes_next(fs):
    points = [_open(100, 99), _open(200, 190), _open(300, 150), {"mode": "closed", "goodput": 900}]
    assert fs.peak_point(points)["offered_rate"] == 200  # closed-loop points are not peaks
    assert fs.next_rate(points) is None  # the peak lies inside the rates tried
    assert fs.next_rate([_open(100, 99), _open(200, 199)]) == 260  # still keeping up: go higher
    assert fs.next_rate([_open(100, 40), _open(200, 10)]) == 60  # collapsed below the lowest rate
    assert fs.sweep_rates(1234, (0.5, 1.0, 1.0)) == [620, 1200]
    assert fs.median([3, None, 1, 2]) == 2 and fs.median([1, 2]) == 1.5 and fs.median([None]) is None


def test_section_is_appended_then_replaced_in_place(fs):
    document = "# Benchmarks\n\n## Other section\n\nkept as it is\n"
    first = fs.replace_section(document, "table one")
    assert first.startswith(document.rstrip("\n"))
    assert f"## {fs.SECTION_TITLE}\n\n{fs.BEGIN_MARK}\ntable one\n{fs.END_MARK}\n" in first
    later = first + "\n## Added after\n\ntext\n"
    second = fs.replace_section(later, "table two")
    assert "table one" not in second and "table two" in second
    assert second.count(fs.BEGIN_MARK) == 1 and second.endswith("## Added after\n\ntext\n")
    assert fs.replace_section(second, "table two") == second  # idempotent
    with pytest.raises(ValueError):
        fs.replace_section(f"x\n{fs.BEGIN_MARK}\nno end\n", "y")


def _point(label: str, rate: float | None, goodput: float, errors: dict | None = None,
           split: dict | None = None) -> dict[str, Any]:
    point: dict[str, Any] = {
        "label": label, "mode": "open" if rate else "closed", "goodput": goodput, "throughput": goodput,
        "requests": 1000, "ok": 1000 - sum(e["count"] for e in (errors or {}).values()),
        "send_rate": rate or goodput, "latency_ms": {"p50": 0.5, "p99": 2.0},
        "errors": errors or {}, "lateness_ms": {"p99": 0.1}, "kept_up": True,
        "probe": {"server_cpu_s": 0.2, "server_cpu_util": 0.9, "others_cores": 0.01},
    }
    if rate:
        point["offered_rate"] = rate
    if split:
        point["probe"]["kairos"] = split
    return point


def _server(peak: float, kairos: bool) -> dict[str, Any]:
    split = {"batch1_share": 0.3, "mean_batch_rows": 4.0, "promql_p99_ms": 2.1} if kairos else None
    refused = {"RESOURCE_EXHAUSTED": {"count": 400, "p50_ms": 0.1, "p99_ms": 0.3}}
    result = {
        "c1": _point("c=1", None, 1500),
        "sweep": {"capacity_probes": [_point("c=16", None, peak)],
                  "points": [_point("r=1", peak, peak * 0.99, split=split), _point("r=2", peak * 1.2, peak * 0.9)],
                  "peak": {"goodput": peak * 0.99, "offered_rate": peak, "p99_ms": 2.0},
                  "double": _point("2x peak", 2 * peak, peak * 0.95, errors=refused, split=split)},
        "cpu": {"answers": _point("cpu answers", 1000, 1000),
                "refusals_not_found": _point("cpu NOT_FOUND", 1000, 0, {"NOT_FOUND": {"count": 1000}})},
    }
    if kairos:
        result["half_peak"] = _point("half peak", peak / 2, peak / 2, split=split)
    return result


def test_report_renders_every_table_with_medians(fr):
    data = {"command": "python bench/frontend_compare.py", "started_at": "t0", "finished_at": "t1",
            "repeats": 2, "slo_ms": 10.0, "heavy_slo_ms": 250.0, "onnxruntime_batch1_ms": 0.19,
            "generator": {"engine": "native", "version": "kairos-loadgen 0.1.0", "connections": 1},
            "rounds": [{"kairos": _server(12000, True), "floor": _server(3000, False),
                        "mlserver": _server(800, False), "heavy": _server(40, True)},
                       {"kairos": _server(14000, True), "floor": _server(3400, False),
                        "mlserver": _server(900, False), "heavy": _server(44, True)}],
            "triton_tuning": {"chosen": 500, "tried": [
                {"max_queue_delay_microseconds": d, "goodput": g, "p50_ms": 1.0, "p99_ms": 5.0}
                for d, g in ((100, 3000), (500, 3500))]},
            "errors": {"triton": "PeerMissing: run bench/setup_peers.sh"}}
    text = fr.render(data)
    assert "| Kairos (native) | 0.5 | 12,870 | 13,000 |" in text  # medians of the two rounds
    assert "peak goodput >= 3x floor's | >= 3x | 4.06x | yes" in text
    assert "RESOURCE_EXHAUSTED 400" in text and "Triton 2.51 not measured:** PeerMissing" in text
    assert "| Kairos (native) | 200 | 1 | 200 | NOT_FOUND 1000" in text  # CPU us per answer/refusal
    assert "kairos-loadgen 0.1.0" in text and "WARNING" not in text
    assert "peak goodput >= 10x MLServer's | >= 10x | 15.29x | yes" in text
    assert "| 500 | 3,500 | 1 | 5 | yes |" in text  # Triton's tuning, the chosen delay marked
    assert "| mlp-heavy | 250 | 41.6 | 42 |" in text
    idle = _point("c=16", None, 0, {"UNAVAILABLE": {"count": 900}})
    idle["probe"]["server_cpu_util"] = 0.01
    idle["error_messages"] = {"UNAVAILABLE": "connection error"}
    assert fr.idle_server_failures(idle) and not fr.idle_server_failures(_point("c=16", None, 9))
    data["rounds"][0]["floor"]["sweep"]["capacity_probes"] = [idle]
    assert "c=16: the server used 0.01 of a core while 900 requests failed" in fr.render(data)
    python = {**data, "generator": {"engine": "python", "warning": "slow"}}
    assert "WARNING: slow" in fr.render(python)
