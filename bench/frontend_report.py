"""bench/frontend_compare.py's results as Markdown: the figures per server (medians over the
rounds), the issue's targets against them, the sweeps, and the BENCHMARKS.md section."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import frontend_stats as fs

NAMES = {
    "kairos": "Kairos (native)",
    "kairos-aio": "Kairos (grpc.aio)",
    "floor": "grpc.aio floor",
    "mlserver": "MLServer 1.7.1",
    "triton": "Triton 2.51",
    "heavy": "Kairos (native), mlp-heavy",
}
ORDER = ("kairos", "floor", "kairos-aio", "mlserver", "triton")
FAST_REFUSALS = {"RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}


def brief(point: Mapping[str, Any]) -> str:
    """One progress line for a point."""
    lat = point.get("latency_ms", {})
    errors = {k: v["count"] for k, v in point.get("errors", {}).items()}
    probe = point.get("probe", {})
    late = point.get("lateness_ms", {}).get("p99")
    split = probe.get("kairos", {})
    extra = f" b1 {split.get('batch1_share')} mb {split.get('mean_batch_rows')}" if split else ""
    return (f"good {point.get('goodput', 0):.0f}/s thr {point.get('throughput', 0):.0f}/s "
            f"p50 {lat.get('p50')} p99 {lat.get('p99')} ms err {errors} late99 {late} "
            f"srv {probe.get('server_cpu_util')} others {probe.get('others_cores')}{extra}")


# ---------------------------------------------------------------- figures


def _per(cpu_point: Mapping[str, Any] | None, answered: bool) -> float | None:
    """Server CPU µs per answered (OK) or per refused (non-OK) request of a point."""
    if not cpu_point:
        return None
    cpu = cpu_point.get("probe", {}).get("server_cpu_s")
    count = cpu_point.get("ok", 0) if answered else cpu_point.get("requests", 0) - cpu_point.get("ok", 0)
    if cpu is None or count <= 0:
        return None
    return round(cpu / count * 1e6, 1)


def figures(result: Mapping[str, Any]) -> dict[str, Any]:
    """The scalar figures of one server in one round."""
    sweep = result.get("sweep", {})
    peak = sweep.get("peak", {})
    double = sweep.get("double", {})
    cpu = result.get("cpu", {})
    out: dict[str, Any] = {
        "c1_p50_ms": result.get("c1", {}).get("latency_ms", {}).get("p50"),
        "peak_goodput": peak.get("goodput"),
        "peak_rate": peak.get("offered_rate"),
        "double_rate": double.get("offered_rate"),
        "double_goodput": double.get("goodput"),
        "cpu_us_answer": _per(cpu.get("answers"), answered=True),
        "cpu_us_refusal_not_found": _per(cpu.get("refusals_not_found"), answered=False),
        "cpu_us_refusal_deadline": _per(cpu.get("refusals_deadline"), answered=False),
    }
    if out["peak_goodput"] and out["double_goodput"] is not None:
        out["double_ratio"] = round(out["double_goodput"] / out["peak_goodput"], 3)
    half = result.get("half_peak")
    if half:
        out["half_rate"] = half.get("offered_rate")
        out["client_p99_ms"] = half.get("latency_ms", {}).get("p99")
        out["promql_p99_ms"] = half.get("probe", {}).get("kairos", {}).get("promql_p99_ms")
        if out["client_p99_ms"] and out["promql_p99_ms"] is not None:
            out["promql_over_client"] = round(out["promql_p99_ms"] / out["client_p99_ms"], 3)
    return out


def median_figures(rounds: list[Mapping[str, Any]], name: str) -> dict[str, Any]:
    """Each figure's median over the rounds that measured `name`."""
    per_round = [figures(r[name]) for r in rounds if name in r]
    keys = {k for f in per_round for k in f}
    return {k: fs.median(f.get(k) for f in per_round) for k in sorted(keys)}


def median_round(rounds: list[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    """The round whose peak goodput is the (lower) median: its sweep is the one shown."""
    measured = [r[name] for r in rounds if name in r]
    if not measured:
        return None
    ordered = sorted(measured, key=lambda r: r.get("sweep", {}).get("peak", {}).get("goodput", 0))
    return ordered[(len(ordered) - 1) // 2]


# ---------------------------------------------------------------- tables


def _refusals(point: Mapping[str, Any] | None) -> str:
    if (point or {}).get("failed"):
        return f"point failed: {point['failed'][:120]}"
    errors = (point or {}).get("errors", {})
    if not errors:
        return "none"
    return "; ".join(f"{k} {v['count']} (p50 {fs.fmt(v.get('p50_ms'))} / p99 {fs.fmt(v.get('p99_ms'))} ms)"
                     for k, v in sorted(errors.items()))


def summary_table(data: Mapping[str, Any]) -> str:
    rows = []
    for name in _present(data, ORDER):
        f = median_figures(data["rounds"], name)
        chosen = median_round(data["rounds"], name) or {}
        rows.append([
            NAMES[name], f.get("c1_p50_ms"), f.get("peak_goodput"), f.get("peak_rate"),
            f.get("double_rate"), f.get("double_goodput"), f.get("double_ratio"),
            _refusals(chosen.get("sweep", {}).get("double")),
        ])
    return fs.table(["server", "c=1 p50 ms", "peak goodput@10ms /s", "offered at peak /s",
                     "2x offered /s", "goodput at 2x /s", "2x / peak", "refusals at 2x (latency)"], rows)


def cpu_table(data: Mapping[str, Any]) -> str:
    floor = median_figures(data["rounds"], "floor").get("cpu_us_answer") if _has(data, "floor") else None
    rows = []
    for name in _present(data, ORDER):
        f = median_figures(data["rounds"], name)
        answer = f.get("cpu_us_answer")
        chosen = (median_round(data["rounds"], name) or {}).get("cpu", {})
        rows.append([
            NAMES[name], answer, round(answer / floor, 2) if answer and floor else None,
            f.get("cpu_us_refusal_not_found"), _refusals(chosen.get("refusals_not_found")),
            f.get("cpu_us_refusal_deadline"), _refusals(chosen.get("refusals_deadline")),
        ])
    return fs.table(["server", "CPU us / answer", "x floor's answer", "CPU us / refusal (unknown model)",
                     "its statuses", "CPU us / refusal (deadline passed)", "its statuses"], rows)


def sweep_table(result: Mapping[str, Any]) -> str:
    sweep = result.get("sweep", {})
    points = [result.get("c1"), *sweep.get("capacity_probes", []), *sweep.get("points", []), sweep.get("double")]
    if result.get("half_peak"):
        points.append(result["half_peak"])
    rows = []
    for p in (p for p in points if p):
        probe = p.get("probe", {})
        split = probe.get("kairos", {})
        rows.append([
            p.get("label"), p.get("send_rate"), p.get("throughput"), p.get("goodput"),
            p.get("latency_ms", {}).get("p50"), p.get("latency_ms", {}).get("p99"), _refusals(p),
            p.get("lateness_ms", {}).get("p99"), probe.get("server_cpu_util"),
            split.get("batch1_share"), split.get("mean_batch_rows"), probe.get("others_cores"),
        ])
    return fs.table(["point", "sent /s", "answered /s", "goodput /s", "p50 ms", "p99 ms", "refusals",
                     "gen. late p99 ms", "server CPU", "batch-1 share", "mean batch", "others' cores"], rows)


def promql_table(data: Mapping[str, Any]) -> str:
    rows = []
    for name in _present(data, ("kairos", "kairos-aio")):
        f = median_figures(data["rounds"], name)
        rows.append([NAMES[name], f.get("half_rate"), f.get("client_p99_ms"), f.get("promql_p99_ms"),
                     f.get("promql_over_client")])
    return fs.table(["server", "offered /s (half of peak)", "client p99 ms",
                     "histogram_quantile(0.99) ms", "PromQL / client"], rows)


def targets_table(data: Mapping[str, Any]) -> str:
    """The issue's 'must show' bounds, measured."""
    rounds = data["rounds"]
    k = median_figures(rounds, "kairos") if _has(data, "kairos") else {}
    rows: list[list[Any]] = []

    def peer(name: str) -> dict[str, Any]:
        return median_figures(rounds, name) if _has(data, name) else {}

    floor, mls, tri = peer("floor"), peer("mlserver"), peer("triton")
    ort = data.get("onnxruntime_batch1_ms")
    if k.get("c1_p50_ms") is not None and floor.get("c1_p50_ms") is not None and ort is not None:
        bound = floor["c1_p50_ms"] + ort + 0.05
        rows.append(["c=1 p50 <= floor p50 + onnxruntime batch-1 + 0.05 ms", f"<= {bound:.3f} ms",
                     f"{k['c1_p50_ms']:.3f} ms", k["c1_p50_ms"] <= bound])
    for label, other, factor in (("floor", floor, 3), ("MLServer", mls, 10), ("Triton", tri, 2)):
        if k.get("peak_goodput") and other.get("peak_goodput"):
            ratio = k["peak_goodput"] / other["peak_goodput"]
            rows.append([f"peak goodput >= {factor}x {label}'s", f">= {factor}x", f"{ratio:.2f}x",
                         ratio >= factor])
    if k.get("double_ratio") is not None:
        rows.append(["goodput at 2x peak rate >= 0.9x peak", ">= 0.9", fs.fmt(k["double_ratio"]),
                     k["double_ratio"] >= 0.9])
        rows.extend(_refusal_rows(median_round(rounds, "kairos")))
    heavy = peer("heavy")
    if heavy.get("double_ratio") is not None:
        rows.append(["mlp-heavy: goodput at 2x its peak rate >= 0.95x peak", ">= 0.95",
                     fs.fmt(heavy["double_ratio"]), heavy["double_ratio"] >= 0.95])
    if k.get("promql_over_client") is not None:
        ratio = k["promql_over_client"]
        rows.append(["histogram_quantile(0.99) within 20% of client p99 at half peak", "0.8 - 1.2",
                     fs.fmt(ratio), 0.8 <= ratio <= 1.2])
    return fs.table(["target", "bound", "measured", "met"], rows) if rows else "(no Kairos figures)"


def _refusal_rows(result: Mapping[str, Any] | None) -> list[list[Any]]:
    errors = (result or {}).get("sweep", {}).get("double", {}).get("errors", {})
    refused = {k: v for k, v in errors.items() if k != "UNFINISHED"}
    statuses = set(refused)
    slowest = max((v.get("p99_ms") or 0.0 for v in refused.values()), default=0.0)
    return [
        ["refusals at 2x are RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED", "only those",
         ", ".join(sorted(statuses)) or "none", statuses <= FAST_REFUSALS],
        ["refusals at 2x: p99 within 1 ms of sending", "<= 1 ms", f"{slowest:.3f} ms", slowest <= 1.0],
        ["no CANCELLED at 2x", "0", errors.get("CANCELLED", {}).get("count", 0), "CANCELLED" not in errors],
    ]


def heavy_table(data: Mapping[str, Any]) -> str:
    f = median_figures(data["rounds"], "heavy")
    return fs.table(["model", "deadline ms", "peak goodput /s", "offered at peak /s", "2x offered /s",
                     "goodput at 2x /s", "2x / peak"],
                    [["mlp-heavy", data.get("heavy_slo_ms"), f.get("peak_goodput"), f.get("peak_rate"),
                      f.get("double_rate"), f.get("double_goodput"), f.get("double_ratio")]])


def tuning_table(tuning: Mapping[str, Any]) -> str:
    rows = [[t["max_queue_delay_microseconds"], t["goodput"], t["p50_ms"], t["p99_ms"],
             t["max_queue_delay_microseconds"] == tuning["chosen"]] for t in tuning["tried"]]
    return fs.table(["max_queue_delay_microseconds", "goodput@10ms /s (c=16)", "p50 ms", "p99 ms", "chosen"], rows)


# ---------------------------------------------------------------- the section


def _has(data: Mapping[str, Any], name: str) -> bool:
    return any(name in r for r in data.get("rounds", []))


def _present(data: Mapping[str, Any], names: tuple[str, ...]) -> list[str]:
    return [n for n in names if _has(data, n)]


def generator_lines(data: Mapping[str, Any]) -> list[str]:
    gen = data.get("generator", {})
    named = [(name, p) for r in data.get("rounds", []) for name, res in r.items() for p in _points(res)]
    points = [p for _, p in named]
    open_points = [p for p in points if p.get("mode") == "open"]
    late = [p.get("lateness_ms", {}).get("p99") for p in open_points]
    late = [v for v in late if v is not None]
    behind = [f"{name} {p.get('label')}" for name, p in named
              if p.get("mode") == "open" and not p.get("kept_up", True)]
    if len(behind) > 8:
        behind = [*behind[:8], f"and {len(behind) - 8} more"]
    others = [p.get("probe", {}).get("others_cores") for p in points]
    others = [v for v in others if v is not None]
    if gen.get("engine") == "native":
        head = f"Generator: `{gen.get('version') or 'kairos-loadgen'}` (native, 1 worker thread, " \
               f"{gen.get('connections', 1)} HTTP/2 connection(s)), pinned to core 1."
    else:
        head = f"Generator: **Python engine of `kairos bench`. WARNING: {gen.get('warning', '')}.**"
    lines = [head]
    for name, extra in sorted(data.get("loadgen_args", {}).items()):
        lines.append(f"For {NAMES.get(name, name)} the generator ran with `{extra}`.")
    if late:
        lines.append(f"Its own lateness (sending after the scheduled time), p99 over open-loop points: "
                     f"median {fs.fmt(fs.median(late))} ms, worst {fs.fmt(max(late))} ms; points where it "
                     f"fell behind its schedule (sent < 97% of the rate, or p99 lateness over 2 ms): "
                     f"{', '.join(behind) or 'none'}.")
    if others:
        lines.append(f"Other processes' CPU during the measured windows: worst {fs.fmt(max(others))} cores "
                     f"(median {fs.fmt(fs.median(others))}).")
    return lines


def _points(result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    sweep = result.get("sweep", {})
    found = [result.get("c1"), *sweep.get("capacity_probes", []), *sweep.get("points", []), sweep.get("double"),
             result.get("half_peak"), *result.get("cpu", {}).values()]
    return [p for p in found if p]


DISTURBED_CORES = 0.15


def idle_server_failures(point: Mapping[str, Any]) -> bool:
    """Most requests failed while the server sat idle: the failures were not its work."""
    requests = point.get("requests", 0)
    refused = requests - point.get("ok", 0)
    return point.get("probe", {}).get("server_cpu_util", 1.0) < 0.05 and refused > max(50, 0.5 * requests)


def point_notes(data: Mapping[str, Any]) -> list[str]:
    """What makes points doubtful: failures, an idle server that 'refused', a disturbed machine."""
    notes = []
    for index, measured in enumerate(data.get("rounds", []), 1):
        for name, result in measured.items():
            points = _points(result)
            where = f"{NAMES.get(name, name)}, round {index}"
            for p in points:
                probe = p.get("probe", {})
                refused = p.get("requests", 0) - p.get("ok", 0)
                if p.get("failed"):
                    notes.append(f"{where}, {p.get('label')}: failed: {p['failed'][:200]}")
                elif idle_server_failures(p):
                    messages = "; ".join(f"{k}: {v[:100]}" for k, v in sorted(p.get("error_messages", {}).items()))
                    notes.append(f"{where}, {p.get('label')}: the server used {probe.get('server_cpu_util')} "
                                 f"of a core while {refused} requests failed: they did not come from its "
                                 f"work (client side, or the server stalled). First messages: {messages or '-'}"
                                 + (" (measured twice)" if p.get("first_attempt") else ""))
                elif p.get("first_attempt"):
                    first = p["first_attempt"]
                    messages = "; ".join(f"{k}: {v[:100]}" for k, v in sorted((first.get("error_messages") or {}).items()))
                    notes.append(f"{where}, {p.get('label')}: measured again, the first attempt's requests "
                                 f"failed while the server sat idle ({messages or '-'})")
            disturbed = [p for p in points if p.get("probe", {}).get("others_cores", 0.0) > DISTURBED_CORES]
            if disturbed:
                notes.append(f"{where}: {len(disturbed)} of {len(points)} points disturbed (other processes "
                             f"above {DISTURBED_CORES} cores): "
                             + ", ".join(str(p.get("label")) for p in disturbed[:12]))
    return notes


def check_line(data: Mapping[str, Any]) -> str:
    checks = []
    for name in _present(data, (*ORDER, "heavy")):
        for measured in data["rounds"][:1]:
            check = measured.get(name, {}).get("check", {})
            if "max_abs_difference" in check:
                checks.append(f"{NAMES[name]} max |difference| {check['max_abs_difference']:.2g}")
            elif check:
                checks.append(f"{NAMES[name]} {check.get('compared')}")
    return "Output checked against in-process onnxruntime on one request: " + "; ".join(checks) + "."


def render(data: Mapping[str, Any]) -> str:
    """The whole generated section body (Markdown)."""
    parts = [
        f"Measured {data.get('started_at', '?')} to {data.get('finished_at', '?')} "
        f"({fs.fmt(data.get('elapsed_s'))} s) by:",
        "", f"    {data.get('command', '')}", "",
        "Each server pinned to core 0 (`taskset -c 0`, started with its defaults except as noted), the "
        "generator on core 1; 1-row requests to `mlp256` (FP32 [1,256] -> 1024 -> 1024 -> 10); gRPC "
        f"deadline {fs.fmt(data.get('slo_ms'))} ms = the SLO for goodput; {fs.fmt(data.get('warmup_s'))} s "
        f"warm-up and {fs.fmt(data.get('duration_s'))} s measured per point; medians over "
        f"{data.get('repeats', 1)} round(s) (each figure its own median), servers alternating within each round. MLServer and Triton "
        "serve the same ONNX file through onnxruntime (1 intra-op thread, no spinning, as Kairos), each "
        "checked against in-process onnxruntime on one real request first. Peak = the highest goodput "
        "of the sweep's open-loop (Poisson) points; 2x = twice the offered rate of that point (its "
        "goodput can exceed the peak when batches grow under overload). Server CPU = "
        "utime+stime of the server's whole process tree (worker / stub processes included) over the window.",
        "", *generator_lines(data), "",
        f"Raw onnxruntime, `mlp256` batch 1, one thread on the generator's core: "
        f"{fs.fmt(data.get('onnxruntime_batch1_ms'))} ms.",
    ]
    if data.get("quick"):
        parts += ["", "**--quick run: points far too short to quote; a check of the script only.**"]
    settings = data.get("settings", {})
    m, t = settings.get("mlserver", {}), settings.get("triton", {})
    if _has(data, "mlserver"):
        parts += ["", f"MLServer: adaptive batching, max_batch_size {m.get('max_batch_size')}, "
                      f"max_batch_time {fs.fmt(m.get('max_batch_time_ms'))} ms, default workers."]
    if _has(data, "triton"):
        tuned = " (tuned: see below)" if data.get("triton_tuning", {}).get("tried") else ""
        parts += ["", f"Triton: dynamic batching, max_batch_size {t.get('max_batch_size')}, "
                      f"max_queue_delay_microseconds {t.get('max_queue_delay_microseconds')}{tuned}; "
                      "one python-backend instance."]
    for name, error in sorted(data.get("errors", {}).items()):
        parts += ["", f"**{NAMES.get(name, name)} not measured:** {error}"]
    for index, measured in enumerate(data.get("rounds", []), 1):
        for name, result in measured.items():
            if result.get("aborted"):
                parts += ["", f"**{NAMES.get(name, name)} stopped answering in round {index}** (its "
                              f"figures stop there): {result['aborted'][:300]}"]
    if data.get("rounds"):
        parts += ["", check_line(data)]
    parts += ["", "### Side by side", "", summary_table(data),
              "", "### Targets", "", targets_table(data),
              "", "### Server CPU at 1,000 req/s", "", cpu_table(data)]
    if _present(data, ("kairos", "kairos-aio")):
        parts += ["", "### Prometheus p99 against the client's, at half of peak", "",
                  "histogram_quantile(0.99, sum by (le) (increase(kairos_request_duration_seconds_bucket"
                  "{model=\"mlp256\"}[window]))), computed as Prometheus does, over the measured window.",
                  "", promql_table(data)]
    if _has(data, "heavy"):
        parts += ["", "### mlp-heavy (1024 -> 3x8192 -> 10), native Kairos", "", heavy_table(data)]
    if data.get("triton_tuning", {}).get("tried"):
        parts += ["", "### Triton: max_queue_delay_microseconds", "", tuning_table(data["triton_tuning"])]
    parts += ["", "### Sweeps (the median round; batch-1 share and mean batch from Kairos's /metrics)"]
    for name in _present(data, (*ORDER, "heavy")):
        chosen = median_round(data["rounds"], name)
        if chosen:
            parts += ["", f"**{NAMES[name]}**", "", sweep_table(chosen)]
    notes = point_notes(data)
    if notes:
        parts += ["", "### Notes on the points", "", *(f"- {n}" for n in notes)]
    return "\n".join(parts)


def write_section(path: Path, body: str) -> None:
    text = path.read_text() if path.exists() else ""
    path.write_text(fs.replace_section(text, body))
