"""What a variant costs and buys, measured against its fp32 original: report.json + report.md."""

from __future__ import annotations

import datetime as dt
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from kairos.optimize import outputs, runtime
from kairos.optimize.data import Dataset, feeds_for, synthetic_feeds
from kairos.optimize.errors import OptimizeError

# A variant no faster than this (variant time / original time) gets a warning.
NO_SPEEDUP_RATIO = 1.10
SLOW_MARK = "measured no real speed-up"
DYNAMIC_INT8_NOTE = (
    "Dynamic int8 picks the activation scale from the whole input tensor at run time, so a "
    "row's output depends on the other rows batched with it (see batch_dependence). A "
    "batching server should prefer the static QDQ variant, whose scales are fixed."
)


NO_EVAL_NOTE = ("No --eval-data: accuracy was not measured, and agreement and deviation were "
                "measured on random inputs, which need not resemble real data; pass --eval-data "
                "(and --eval-labels) to measure them.")


def output_metrics(base: np.ndarray, out: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    """Accuracy (when labelled), top-1 agreement and max |deviation| of `out` against `base`,
    by the output's role (scores, label, regression): see kairos.optimize.outputs."""
    return outputs.metrics(base, out, labels)


def batch_dependence(session, feeds: np.ndarray | dict[str, np.ndarray], rows: int = 64,
                     output: str | None = None) -> float | None:
    """Max |row computed alone - same row inside a batch| over the float outputs (or just
    `output`): nonzero means batching changes answers. None for a fixed-batch model."""
    if runtime.session_batch(session):
        return None
    if not isinstance(feeds, dict):
        feeds = {session.get_inputs()[0].name: feeds}
    feeds = {k: runtime.rows_for_batch(v, rows) for k, v in feeds.items()}
    alone = runtime.run_all(session, feeds, batch_size=1)
    together = runtime.run_all(session, feeds, batch_size=rows)
    names = [output] if output else list(alone)
    diffs = [float(np.max(np.abs(alone[n].astype(np.float64) - together[n]))) for n in names
             if np.issubdtype(alone[n].dtype, np.floating) and alone[n].size]
    return max(diffs, default=0.0)


def accuracy_block(base_acc: float | None, var_acc: float | None) -> dict[str, float] | None:
    if base_acc is None or var_acc is None:
        return None
    return {"baseline": base_acc, "variant": var_acc, "delta_points": (var_acc - base_acc) * 100}


def eval_feeds(baseline: Path, data: Dataset | None) -> dict[str, np.ndarray]:
    """The evaluation inputs for the model at `baseline` (random ones without data)."""
    model = onnx.load(str(baseline), load_external_data=False)
    return synthetic_feeds(model) if data is None else feeds_for(data, model)


def compare(baseline: Path, variant: Path, data: Dataset | None, repeats: int = 200,
            batch_sizes: tuple[int, ...] = (1, 64), threads: int = 1, block: int = 20,
            provider: str = runtime.PROVIDER, output: str | None = None) -> dict[str, Any]:
    """All report measurements for `variant` against `baseline` on `data` (random inputs
    when None: then nothing about accuracy can be said). `output` names the output to
    judge (default: picked by kairos.optimize.outputs.judged_output)."""
    base_s = runtime.make_session(baseline, threads, provider)
    var_s = runtime.make_session(variant, threads, provider)
    feeds = eval_feeds(baseline, data)
    base_all, var_all = runtime.run_all(base_s, feeds), runtime.run_all(var_s, feeds)
    name = outputs.judged_output(base_all, output)
    if name not in var_all:
        raise OptimizeError(f"the variant has no output '{name}' (it has {', '.join(var_all)})")
    labels = None if data is None else data.y
    judged = outputs.metrics(base_all[name], var_all[name], labels)
    base_acc = outputs.metrics(base_all[name], base_all[name], labels).get("accuracy")
    fixed = runtime.session_batch(base_s)
    batch_sizes = (fixed,) if fixed else batch_sizes
    latency = runtime.measure_latency({"baseline": baseline, "variant": variant}, feeds,
                                      batch_sizes, repeats, max(5, repeats // 10), threads, block, provider)
    size_b, size_v = baseline.stat().st_size, variant.stat().st_size
    rows = len(next(iter(feeds.values())))
    return {
        "baseline": {"path": str(baseline), "size_bytes": size_b},
        "model": {"path": str(variant), "size_bytes": size_v, "size_ratio": size_v / size_b},
        "eval": {"source": "random inputs (no --eval-data)" if data is None else data.source,
                 "rows": rows, "labelled": labels is not None, "synthetic": data is None},
        "judged_output": {"name": name, "role": judged["role"]},
        "accuracy": accuracy_block(base_acc, judged.get("accuracy")),
        "top1_agreement": judged.get("top1_agreement"),
        "max_abs_deviation": judged.get("max_abs_deviation"),
        "regression_error": {k: judged[k] for k in ("mean_abs_error", "rmse") if k in judged} or None,
        "outputs": {n: outputs.metrics(base_all[n], var_all[n], None) for n in base_all if n in var_all},
        "batch_dependence": {"baseline": None if fixed else batch_dependence(base_s, feeds, output=name),
                             "variant": None if fixed else batch_dependence(var_s, feeds, output=name)},
        "latency_ms": {str(b): _latency_row(latency, b) for b in batch_sizes},
        "latency_setup": {"provider": provider, "intra_op_threads": threads,
                          "graph_optimization": "ORT_ENABLE_ALL", "repeats": repeats,
                          "statistic": "median", "method": f"the two models alternate in turns of "
                          f"{min(block, repeats)} consecutive runs (warm caches)"
                          + (f"; fixed batch dimension: batch {fixed} only" if fixed else "")},
    }


def _latency_row(latency: dict[str, dict[int, float]], batch: int) -> dict[str, float]:
    base, var = latency["baseline"][batch], latency["variant"][batch]
    return {"baseline": base, "variant": var, "speedup": base / var}


def slow_warning(measured: dict[str, Any], what: str) -> str | None:
    """A warning quoting the measurement when `what` did not make inference faster."""
    rows = measured["latency_ms"]
    if all(row["speedup"] >= NO_SPEEDUP_RATIO for row in rows.values()):
        return None
    shown = "; ".join(f"batch {b}: {r['variant']:.3f} ms vs {r['baseline']:.3f} ms fp32 "
                      f"({r['speedup']:.2f}x)" for b, r in rows.items())
    return f"{what} {SLOW_MARK} on {measured['latency_setup']['provider']}: {shown}"


def make_report(variant_name: str, technique: str, settings: dict[str, Any],
                measured: dict[str, Any], warnings: list[str] | None = None,
                notes: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "format": "kairos-optimize-report/1",
        "variant": variant_name,
        "technique": technique,
        "settings": settings,
        **measured,
        **extra,
        "warnings": [w for w in (warnings or []) if w],
        "notes": notes or [],
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": {"machine": platform.machine(), "processor": platform.processor() or "unknown",
                 "python": platform.python_version()},
    }


def _pct(value: float) -> str:
    return f"{value * 100:.2f}%"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def render_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page: a summary table, latency table, warnings and notes."""
    acc = report.get("accuracy")
    lines = [f"# {report['variant']}: {report['technique']}", "",
             f"Settings: `{json.dumps(report['settings'], sort_keys=True)}`", "",
             "| metric | original (fp32) | variant |", "|---|---|---|",
             f"| file size | {report['baseline']['size_bytes']:,} B | {report['model']['size_bytes']:,} B "
             f"({report['model']['size_ratio']:.3f}x) |"]
    if acc:
        lines.append(f"| accuracy ({report['eval']['rows']} rows) | {_pct(acc['baseline'])} | "
                     f"{_pct(acc['variant'])} ({acc['delta_points']:+.2f} points) |")
    judged = report.get("judged_output") or {}
    if judged:
        lines.append(f"| judged output | - | `{judged['name']}` ({judged['role']}) |")
    if report.get("top1_agreement") is not None:
        what = "label agreement" if judged.get("role") == outputs.LABEL else "top-1 agreement"
        lines.append(f"| {what} with original | - | {_pct(report['top1_agreement'])} |")
    if report.get("max_abs_deviation") is not None:
        lines.append(f"| max abs output deviation | - | {report['max_abs_deviation']:.4g} |")
    for key, value in (report.get("regression_error") or {}).items():
        lines.append(f"| {key.replace('_', ' ')} against original | - | {value:.4g} |")
    dep = report["batch_dependence"]
    lines.append(f"| batch dependence (row alone vs in batch 64) | {_num(dep['baseline'])} "
                 f"| {_num(dep['variant'])} |")
    lines += ["", "| batch | original ms (median) | variant ms (median) | speed-up |", "|---|---|---|---|"]
    lines += [f"| {b} | {r['baseline']:.4f} | {r['variant']:.4f} | {r['speedup']:.2f}x |"
              for b, r in report["latency_ms"].items()]
    setup = report["latency_setup"]
    lines += ["", f"Latency: {setup['provider']}, {setup['intra_op_threads']} intra-op thread(s), "
              f"{setup['graph_optimization']}; {setup['statistic']} of {setup['repeats']} runs per "
              f"model; {setup.get('method', '')}."]
    lines += _students_table(report.get("students"))
    lines += [f"\n**Warning:** {w}" for w in report["warnings"]]
    lines += [f"\nNote: {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def _students_table(students: list[dict[str, Any]] | None) -> list[str]:
    if not students:
        return []
    lines = ["", "| student | hidden | accuracy | top-1 agreement with teacher | max abs deviation |",
             "|---|---|---|---|---|"]
    for s in students:
        acc = "-" if s.get("accuracy") is None else _pct(s["accuracy"])
        lines.append(f"| {s['name']} | {s['hidden']} | {acc} | {_pct(s['top1_agreement'])} | "
                     f"{s['max_abs_deviation']:.4g} |")
    return lines


def write_report(report: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "report.json", folder / "report.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(render_markdown(report))
    return json_path, md_path
