"""What a variant costs and buys, measured against its fp32 original: report.json + report.md."""

from __future__ import annotations

import datetime as dt
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
from kairos.optimize import runtime
from kairos.optimize.data import Dataset

# A variant no faster than this (variant time / original time) gets a warning.
NO_SPEEDUP_RATIO = 1.10
SLOW_MARK = "measured no real speed-up"
DYNAMIC_INT8_NOTE = (
    "Dynamic int8 picks the activation scale from the whole input tensor at run time, so a "
    "row's output depends on the other rows batched with it (see batch_dependence). A "
    "batching server should prefer the static QDQ variant, whose scales are fixed."
)


def output_metrics(base: np.ndarray, out: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    """Accuracy (when labelled), top-1 agreement and max |deviation| of `out` against `base`."""
    metrics: dict[str, Any] = {
        "top1_agreement": float(np.mean(base.argmax(1) == out.argmax(1))),
        "max_abs_deviation": float(np.max(np.abs(base - out))),
    }
    if labels is not None:
        metrics["accuracy"] = float(np.mean(out.argmax(1) == labels))
    return metrics


def batch_dependence(session, x: np.ndarray, rows: int = 64) -> float:
    """Max |row computed alone - same row inside a batch|: nonzero means batching changes answers."""
    x = runtime.rows_for_batch(x, rows)
    alone = runtime.run(session, x, batch_size=1)
    together = runtime.run(session, x, batch_size=rows)
    return float(np.max(np.abs(alone - together)))


def accuracy_block(base_acc: float | None, var_acc: float | None) -> dict[str, float] | None:
    if base_acc is None or var_acc is None:
        return None
    return {"baseline": base_acc, "variant": var_acc, "delta_points": (var_acc - base_acc) * 100}


def compare(baseline: Path, variant: Path, data: Dataset, repeats: int = 200,
            batch_sizes: tuple[int, ...] = (1, 64), threads: int = 1, block: int = 20,
            provider: str = runtime.PROVIDER) -> dict[str, Any]:
    """All report measurements for `variant` against `baseline` on `data`."""
    base_s = runtime.make_session(baseline, threads, provider)
    var_s = runtime.make_session(variant, threads, provider)
    base_out, var_out = runtime.run(base_s, data.x), runtime.run(var_s, data.x)
    metrics = output_metrics(base_out, var_out, data.y)
    base_acc = output_metrics(base_out, base_out, data.y).get("accuracy")
    latency = runtime.measure_latency({"baseline": baseline, "variant": variant}, data.x,
                                      batch_sizes, repeats, max(5, repeats // 10), threads, block, provider)
    size_b, size_v = baseline.stat().st_size, variant.stat().st_size
    return {
        "baseline": {"path": str(baseline), "size_bytes": size_b},
        "model": {"path": str(variant), "size_bytes": size_v, "size_ratio": size_v / size_b},
        "eval": {"source": data.source, "rows": len(data), "labelled": data.y is not None},
        "accuracy": accuracy_block(base_acc, metrics.get("accuracy")),
        "top1_agreement": metrics["top1_agreement"],
        "max_abs_deviation": metrics["max_abs_deviation"],
        "batch_dependence": {"baseline": batch_dependence(base_s, data.x),
                             "variant": batch_dependence(var_s, data.x)},
        "latency_ms": {str(b): _latency_row(latency, b) for b in batch_sizes},
        "latency_setup": {"provider": provider, "intra_op_threads": threads,
                          "graph_optimization": "ORT_ENABLE_ALL", "repeats": repeats,
                          "statistic": "median", "method": f"the two models alternate in turns of "
                          f"{min(block, repeats)} consecutive runs (warm caches)"},
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
    lines += [f"| top-1 agreement with original | - | {_pct(report['top1_agreement'])} |",
              f"| max abs output deviation | - | {report['max_abs_deviation']:.4g} |",
              f"| batch dependence (row alone vs in batch 64) | {report['batch_dependence']['baseline']:.3g} "
              f"| {report['batch_dependence']['variant']:.3g} |"]
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
