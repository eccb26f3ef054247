"""int8 and fp16 variants of the digits teacher: the issue's accuracy, agreement and size bars."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from kairos.optimize import quantize as q
from kairos.optimize.data import Dataset
from kairos.optimize.graph import load_onnx
from kairos.optimize.pipeline import quantize_model


def _assert_int8_bars(report: dict) -> None:
    assert report["accuracy"]["delta_points"] >= -1.0, report["accuracy"]
    assert report["top1_agreement"] >= 0.99
    assert report["model"]["size_ratio"] <= 0.3


@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_int8(repo: Path, measure, per_channel: bool) -> None:
    out = quantize_model(repo / "mlp", "dynamic", measure, per_channel=per_channel)
    assert out.model_path == repo / "mlp-int8-dynamic" / "1" / "model.onnx"
    _assert_int8_bars(out.report)
    ops = {n.op_type for n in onnx.load(str(out.model_path)).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    # Dynamic scales depend on the batch: the report must show it, and say so.
    assert out.report["batch_dependence"]["variant"] > 0
    assert any("static QDQ" in note for note in out.report["notes"])


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_static_qdq_with_ragged_calibration(repo: Path, measure, digits, method: str) -> None:
    calibration = Dataset(np.load(digits.files["calib"]), source="calib.npy")
    assert len(calibration) % 64 != 0  # the last calibration batch is ragged
    out = quantize_model(repo / "mlp", "static", measure, calibration=calibration, method=method,
                         calibration_batch_size=64)
    _assert_int8_bars(out.report)
    ops = [n.op_type for n in onnx.load(str(out.model_path)).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops  # QDQ format, not QOperator
    assert out.report["batch_dependence"]["variant"] == 0.0  # fixed scales: rows are independent
    assert out.report["settings"]["calibration"] == method


def test_entropy_and_percentile_ranges_differ_from_minmax(teacher, digits) -> None:
    model, x = load_onnx(teacher.path), digits.train.x[:300]
    minmax = q.range_summary(q.calibrate(model, x, "minmax"))
    for method in ("entropy", "percentile"):
        other = q.range_summary(q.calibrate(model, x, method))
        narrower = [t for t in minmax if other[t][1] - other[t][0] < 0.99 * (minmax[t][1] - minmax[t][0])]
        assert narrower, f"{method} calibration returned the MinMax ranges"


def test_ragged_last_batch_counts_every_row(teacher, digits) -> None:
    """Feeding the remainder separately must equal calibrating on all rows at once."""
    # An all-ones row (brighter than any digit) last, alone in the ragged batch.
    x = np.concatenate([digits.train.x[:129], np.ones((1, 64), np.float32)])
    model = load_onnx(teacher.path)
    whole = q.range_summary(q.calibrate(model, x, "minmax", batch_size=130))
    ragged = q.range_summary(q.calibrate(model, x, "minmax", batch_size=64))  # 64 + 64 + 2
    dropped = q.range_summary(q.calibrate(model, x[:128], "minmax", batch_size=64))
    assert ragged == whole
    assert dropped != whole  # so the two ragged rows did matter
    full, rest = q.split_batches(x, 64)
    assert [len(b) for b in full] == [64, 64] and len(rest) == 2


def test_fp16_keeps_fp32_io_and_warns(repo: Path, measure) -> None:
    out = quantize_model(repo / "mlp", "fp16", measure)
    model = onnx.load(str(out.model_path))
    onnx.checker.check_model(model)  # a valid graph for other tools too (nodes in order)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.report["model"]["size_ratio"] < 0.6
    assert out.report["top1_agreement"] >= 0.99
    assert any("fp16" in w and "CPUExecutionProvider" in w for w in out.report["warnings"])


def test_gemm_models_are_quantized_dynamically_too(tmp_path: Path, teacher, measure) -> None:
    """onnxruntime's dynamic quantizer skips Gemm; the tool rewrites it as MatMul+Add first."""
    model = load_onnx(teacher.path)
    assert q.canonical_model(model) is model  # already MatMul+Add: left alone
    gemm = onnx.helper.make_node("Gemm", ["pixels", "dense0.weight", "dense0.bias"], ["dense0.out"])
    nodes = [gemm, *[n for n in model.graph.node if not n.name.startswith("dense0/")]]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    path = tmp_path / "gemm.onnx"
    onnx.save(model, str(path))
    out = quantize_model(path, "dynamic", measure, dest=_dest(tmp_path))
    assert out.report["model"]["size_ratio"] <= 0.3
    assert not out.report["warnings"]


def _dest(tmp_path: Path):
    from kairos.optimize.pipeline import Destination

    return Destination(repository=tmp_path / "out")


def test_static_needs_calibration_data(repo: Path, measure) -> None:
    from kairos.optimize.errors import DataError

    with pytest.raises(DataError, match="needs calibration data"):
        quantize_model(repo / "mlp", "static", measure)


def test_static_warns_when_the_served_config_disables_graph_fusion(repo: Path, measure, digits) -> None:
    (repo / "mlp" / "config.yaml").write_text("graph_optimization: basic\n")
    calibration = Dataset(digits.train.x[:100], source="calib")
    out = quantize_model(repo / "mlp", "static", measure, calibration=calibration)
    assert any("graph_optimization: basic" in w for w in out.report["warnings"])
