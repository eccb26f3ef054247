"""Distillation: a small student from the teacher's soft targets, beside a hard-label twin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from kairos.optimize.distill import DistillSettings, transfer_set
from kairos.optimize.errors import DataError, OptimizeError
from kairos.optimize.pipeline import distill_model
from kairos.optimize.train import TrainConfig

CFG = TrainConfig(epochs=20, lr=3e-3, seed=0, temperature=4.0, alpha=0.7)


def test_report_holds_both_students(repo: Path, measure, digits) -> None:
    out = distill_model(repo / "mlp", DistillSettings(hidden=[32]), digits.train, measure, cfg=CFG)
    students = out.report["students"]
    assert [s["name"] for s in students] == ["distilled (soft + hard targets)", "hard labels only"]
    assert all(s["hidden"] == [32] for s in students)
    assert all(s["accuracy"] > 0.9 for s in students), students
    assert students[0]["size_bytes"] == out.model_path.stat().st_size
    assert out.report["model"]["size_ratio"] < 0.05  # 64-32-10 against 64-512-512-10
    # The served student keeps the teacher's tensor names.
    graph = onnx.load(str(out.model_path)).graph
    assert (graph.input[0].name, graph.output[0].name) == ("pixels", "logits")
    assert "hard labels only" in out.report_md.read_text()


def test_augmented_transfer_set(digits) -> None:
    x = digits.train.x[:50]
    for augment in ("noise", "mixup"):
        rows, labelled = transfer_set(x, DistillSettings(augment=augment, augment_factor=2), seed=0)
        assert rows.shape == (150, 64) and labelled.sum() == 50 and labelled[:50].all()
        assert not np.allclose(rows[50:100], x)


def test_distill_with_augmentation_runs(repo: Path, measure, digits) -> None:
    settings = DistillSettings(hidden=[16], augment="mixup", augment_factor=1)
    cfg = TrainConfig(epochs=3, seed=0)
    out = distill_model(repo / "mlp", settings, digits.train, measure, cfg=cfg)
    assert out.report["settings"]["augment"] == "mixup"


def test_bad_settings_and_unlabelled_data(repo: Path, measure, digits) -> None:
    with pytest.raises(OptimizeError, match="hidden sizes must be positive"):
        distill_model(repo / "mlp", DistillSettings(hidden=[0]), digits.train, measure, cfg=CFG)
    from kairos.optimize.data import Dataset

    with pytest.raises(DataError, match="needs labelled training data"):
        distill_model(repo / "mlp", DistillSettings(), Dataset(digits.train.x, None, "x.npy"), measure)
