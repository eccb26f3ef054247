"""Shared fixtures: the digits data set (fixed stratified split) and a teacher MLP
(64 -> 512 -> 512 -> 10) trained once per session, saved in a model repository."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from kairos.optimize.data import Dataset
from kairos.optimize.graph import build_model, random_mlp, save_model
from kairos.optimize.pipeline import Measure, accuracy_of
from kairos.optimize.train import TrainConfig, train_mlp
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

# Fast enough for the suite: report latency on few runs (accuracy checks do not depend on it).
REPEATS = 5


@dataclass
class Digits:
    train: Dataset
    test: Dataset
    files: dict[str, Path]


@dataclass
class Teacher:
    repo: Path
    path: Path
    accuracy: float


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    folder = tmp_path_factory.mktemp("digits")
    files = {"train": folder / "train.npz", "test": folder / "test.npz",
             "calib": folder / "calib.npy", "test_x": folder / "test_x.npy", "test_y": folder / "test_y.npy"}
    np.savez(files["train"], x=x_tr, y=y_tr)
    np.savez(files["test"], x=x_te, y=y_te)
    np.save(files["calib"], x_tr[:300])  # 300 = 4 x 64 + 44: a ragged last calibration batch
    np.save(files["test_x"], x_te)
    np.save(files["test_y"], y_te)
    return Digits(Dataset(x_tr, y_tr.astype(np.int64), str(files["train"])),
                  Dataset(x_te, y_te.astype(np.int64), str(files["test"])), files)


@pytest.fixture(scope="session")
def teacher(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> Teacher:
    torch.set_num_threads(1)  # the suite shares 2 cores; 2 threads only add contention here
    mlp = random_mlp([64, 512, 512, 10], seed=0)
    mlp.input_name, mlp.output_name = "pixels", "logits"
    trained = train_mlp(mlp, digits.train.x, digits.train.y, TrainConfig(epochs=15, lr=1e-3, seed=0))
    repo = tmp_path_factory.mktemp("teacher-repo")
    path = save_model(build_model(trained), repo / "mlp" / "1" / "model.onnx")
    (repo / "mlp" / "config.yaml").write_text("max_batch_size: 64\nslo_ms: 20\n")
    return Teacher(repo, path, accuracy_of(path, digits.test))


@pytest.fixture
def repo(teacher: Teacher, tmp_path: Path) -> Path:
    """A fresh repository holding only the teacher as model `mlp`."""
    target = tmp_path / "repo"
    shutil.copytree(teacher.repo, target)
    return target


@pytest.fixture
def measure(digits: Digits) -> Measure:
    return Measure(digits.test, repeats=REPEATS)
