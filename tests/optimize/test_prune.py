"""Pruning: structured removal shrinks the graph and keeps accuracy; unstructured does neither."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from kairos.optimize import runtime
from kairos.optimize.errors import UnsupportedGraphError
from kairos.optimize.graph import Activation, build_model, random_mlp, read_mlp_file, save_model
from kairos.optimize.pipeline import prune_model
from kairos.optimize.prune import (
    PruneSettings,
    remove_units,
    sparsity_at,
    unit_masks,
    weight_masks,
    weight_sparsity,
    zero_units,
)
from kairos.optimize.train import TrainConfig

FINE_TUNE = TrainConfig(epochs=6, lr=1e-3, seed=0)


def _weight_shapes(path: Path) -> list[tuple[int, ...]]:
    inits = onnx.load(str(path)).graph.initializer
    return [tuple(t.dims) for t in inits if t.name.endswith(".weight")]


def test_structured_half_units_with_fine_tuning(repo: Path, measure, digits, teacher) -> None:
    settings = PruneSettings("structured", 0.5, schedule="cubic")
    out = prune_model(repo / "mlp", settings, measure, train_data=digits.train, cfg=FINE_TUNE)
    assert out.model_path == repo / "mlp-pruned50" / "1" / "model.onnx"
    assert out.report["accuracy"]["delta_points"] >= -1.5, out.report["accuracy"]
    # The exported graph really is smaller: 512 -> 256 units in both hidden layers.
    assert _weight_shapes(out.model_path) == [(64, 256), (256, 256), (256, 10)]
    assert out.report["pruning"]["hidden_sizes_after"] == [256, 256]
    assert out.report["model"]["size_ratio"] < 0.35
    # Cubic: units masked rise over the first two thirds of the epochs, then hold at 50%.
    per_epoch = out.report["settings"]["fine_tuning"]["sparsity_per_epoch"]
    assert len(per_epoch) == FINE_TUNE.epochs and per_epoch == sorted(per_epoch)
    assert per_epoch[0] < 0.5 and per_epoch[-1] == 0.5 and per_epoch[3:] == [0.5] * 3


def test_unstructured_keeps_shapes_and_reports_no_speedup(repo: Path, measure, digits) -> None:
    settings = PruneSettings("unstructured", 0.8, scope="global", schedule="linear")
    out = prune_model(repo / "mlp", settings, measure, train_data=digits.train, cfg=FINE_TUNE)
    assert _weight_shapes(out.model_path) == [(64, 512), (512, 512), (512, 10)]
    assert out.report["pruning"]["weight_sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert out.report["accuracy"]["delta_points"] >= -3.0
    assert any("no speed-up" in n for n in out.report["notes"])


def test_oneshot_structured_needs_no_training_data(repo: Path, measure) -> None:
    out = prune_model(repo / "mlp", PruneSettings("structured", 0.25), measure)
    assert _weight_shapes(out.model_path) == [(64, 384), (384, 384), (384, 10)]
    assert out.report["settings"]["fine_tuning"] is None


def test_per_layer_and_global_masks() -> None:
    mlp = random_mlp([20, 30, 5], seed=3)
    mlp.dense_layers()[1].weight *= 10  # global threshold should spare the larger layer
    per_layer = weight_masks(mlp, 0.5, "layer")
    assert [1 - m.mean() for m in per_layer] == [0.5, 0.5]
    global_ = weight_masks(mlp, 0.5, "global")
    total = sum(m.size for m in global_)
    assert sum((~m).sum() for m in global_) == total // 2
    assert (~global_[0]).mean() > 0.6 and (~global_[1]).mean() < 0.1


def test_cubic_schedule_rises_fast_then_holds() -> None:
    values = [sparsity_at(e, 9, 0.5, "cubic") for e in range(1, 10)]
    assert values == sorted(values) and values[5:] == [0.5] * 4
    assert values[0] > 0.5 / 6  # cubic front-loads pruning compared with linear
    assert sparsity_at(1, 9, 0.5, "oneshot") == 0.5


@pytest.mark.parametrize("kind", ["relu", "sigmoid", "tanh"])
def test_removing_silenced_units_is_exact(tmp_path: Path, kind: str) -> None:
    mlp = random_mlp([12, 16, 8, 3], seed=1)
    for layer in mlp.layers:
        if isinstance(layer, Activation):
            layer.kind = kind
    for dense in mlp.dense_layers():
        dense.bias[:] = np.random.default_rng(2).normal(size=dense.bias.shape)
    masks = unit_masks(mlp, 0.5)
    zero_units(mlp, masks)  # what fine-tuning leaves behind
    small = remove_units(mlp, masks)
    assert small.hidden_sizes() == [8, 4]
    x = np.random.default_rng(0).normal(size=(10, 12)).astype(np.float32)
    before = runtime.run(runtime.make_session(save_model(build_model(mlp), tmp_path / "a.onnx")), x)
    after = runtime.run(runtime.make_session(save_model(build_model(small), tmp_path / "b.onnx")), x)
    np.testing.assert_allclose(before, after, rtol=1e-5, atol=1e-5)


def test_structured_needs_a_hidden_layer() -> None:
    with pytest.raises(UnsupportedGraphError, match="at least one hidden layer"):
        unit_masks(random_mlp([4, 3], seed=0), 0.5)


def test_weight_sparsity_of_teacher_is_zero(teacher) -> None:
    assert weight_sparsity(read_mlp_file(teacher.path)) == 0.0
