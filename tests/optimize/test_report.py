"""The report: its numbers against independent recomputation, its warnings, its Markdown."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from kairos.optimize import report as rp
from kairos.optimize import runtime
from kairos.optimize.pipeline import quantize_model


def test_report_numbers_match_a_recomputation(repo: Path, measure, digits, teacher) -> None:
    out = quantize_model(repo / "mlp", "dynamic", measure)
    saved = json.loads(out.report_json.read_text())
    base = runtime.run(runtime.make_session(teacher.path), digits.test.x)
    var = runtime.run(runtime.make_session(out.model_path), digits.test.x)
    assert saved["accuracy"]["baseline"] == teacher.accuracy
    assert saved["accuracy"]["variant"] == float(np.mean(var.argmax(1) == digits.test.y))
    assert saved["top1_agreement"] == float(np.mean(var.argmax(1) == base.argmax(1)))
    assert saved["max_abs_deviation"] == float(np.abs(var - base).max())
    assert saved["model"]["size_bytes"] == out.model_path.stat().st_size
    assert saved["baseline"]["size_bytes"] == teacher.path.stat().st_size
    assert set(saved["latency_ms"]) == {"1", "64"}
    for row in saved["latency_ms"].values():
        assert row["speedup"] == row["baseline"] / row["variant"] and row["variant"] > 0


def test_identical_model_has_no_deviation_and_gets_a_no_speedup_warning(repo: Path, measure) -> None:
    copy = repo / "copy.onnx"
    shutil.copy(repo / "mlp" / "1" / "model.onnx", copy)
    measured = rp.compare(repo / "mlp" / "1" / "model.onnx", copy, measure.eval_data, repeats=5)
    assert measured["max_abs_deviation"] == 0.0 and measured["top1_agreement"] == 1.0
    assert measured["accuracy"]["delta_points"] == 0.0
    measured["latency_ms"] = {"1": {"baseline": 1.0, "variant": 1.0, "speedup": 1.0},
                              "64": {"baseline": 4.0, "variant": 1.0, "speedup": 4.0}}
    warning = rp.slow_warning(measured, "fp16")
    assert warning and "batch 1: 1.000 ms vs 1.000 ms fp32 (1.00x)" in warning
    measured["latency_ms"]["1"] = {"baseline": 2.0, "variant": 1.0, "speedup": 2.0}
    assert rp.slow_warning(measured, "fp16") is None


def test_markdown_has_the_tables(repo: Path, measure) -> None:
    out = quantize_model(repo / "mlp", "fp16", measure)
    text = out.report_md.read_text()
    assert text.startswith("# mlp-fp16: quantize-fp16")
    for row in ("| file size |", "| accuracy (540 rows) |", "| top-1 agreement", "| max abs output",
                "| 1 |", "| 64 |", "**Warning:** fp16"):
        assert row in text
