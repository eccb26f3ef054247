"""Structured pruning of convolution output channels on digits as 1x8x8 images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from kairos.optimize import runtime
from kairos.optimize.data import Dataset
from kairos.optimize.graph import (
    Activation,
    Conv,
    Dense,
    Flatten,
    Mlp,
    build_model,
    read_mlp_file,
    save_model,
)
from kairos.optimize.pipeline import Measure, accuracy_of, prune_model
from kairos.optimize.prune import PruneSettings, remove_units, unit_masks, zero_units
from kairos.optimize.train import TrainConfig, train_mlp


def _cnn(seed: int, channels: int = 8) -> Mlp:
    rng = np.random.default_rng(seed)

    def conv(cin: int, cout: int) -> Conv:
        w = rng.normal(0, np.sqrt(2 / (cin * 9)), (cout, cin, 3, 3)).astype(np.float32)
        return Conv(w, rng.normal(0, 0.1, cout).astype(np.float32), pads=(1, 1))

    dense = Dense(rng.normal(0, np.sqrt(2 / (channels * 64)), (channels * 64, 10)).astype(np.float32),
                  np.zeros(10, np.float32))
    layers = [conv(1, channels), Activation("relu"), conv(channels, channels), Activation("relu"),
              Flatten(), dense]
    return Mlp(layers, "image", "logits", (1, 8, 8))


@pytest.fixture(scope="module")
def images(digits) -> tuple[Dataset, Dataset]:
    return (Dataset(digits.train.x.reshape(-1, 1, 8, 8), digits.train.y, "train-images"),
            Dataset(digits.test.x.reshape(-1, 1, 8, 8), digits.test.y, "test-images"))


@pytest.fixture(scope="module")
def cnn_repo(images, tmp_path_factory) -> Path:
    train, _ = images
    trained = train_mlp(_cnn(0), train.x, train.y, TrainConfig(epochs=4, lr=3e-3, batch_size=128, seed=0))
    repo = tmp_path_factory.mktemp("cnn-repo")
    save_model(build_model(trained), repo / "cnn" / "1" / "model.onnx")
    return repo


def test_conv_round_trip_is_exact(tmp_path: Path, cnn_repo: Path, images) -> None:
    original = cnn_repo / "cnn" / "1" / "model.onnx"
    rebuilt = save_model(build_model(read_mlp_file(original)), tmp_path / "again.onnx")
    x = images[1].x[:20]
    np.testing.assert_array_equal(runtime.run(runtime.make_session(original), x),
                                  runtime.run(runtime.make_session(rebuilt), x))


def test_removing_silenced_channels_is_exact(tmp_path: Path) -> None:
    cnn = _cnn(3, channels=8)
    masks = unit_masks(cnn, 0.5)
    zero_units(cnn, masks)
    small = remove_units(cnn, masks)
    assert [tuple(p.weight.shape) for p in small.param_layers()] == [(4, 1, 3, 3), (4, 4, 3, 3), (256, 10)]
    x = np.random.default_rng(0).random((6, 1, 8, 8), dtype=np.float32)
    before = runtime.run(runtime.make_session(save_model(build_model(cnn), tmp_path / "a.onnx")), x)
    after = runtime.run(runtime.make_session(save_model(build_model(small), tmp_path / "b.onnx")), x)
    np.testing.assert_allclose(before, after, rtol=1e-5, atol=1e-5)


def test_structured_channel_pruning_with_fine_tuning(cnn_repo: Path, images) -> None:
    train, test = images
    base_acc = accuracy_of(cnn_repo / "cnn" / "1" / "model.onnx", test)
    assert base_acc > 0.9
    out = prune_model(cnn_repo / "cnn", PruneSettings("structured", 0.5), Measure(test, repeats=3),
                      train_data=train, cfg=TrainConfig(epochs=3, lr=3e-3, batch_size=128, seed=0))
    inits = {t.name: tuple(t.dims) for t in onnx.load(str(out.model_path)).graph.initializer}
    assert sorted(v for k, v in inits.items() if k.endswith(".weight")) == [
        (4, 1, 3, 3), (4, 4, 3, 3), (256, 10)]
    assert out.report["accuracy"]["delta_points"] >= -2.0, out.report["accuracy"]
