"""Data files: accepted layouts, and clear errors for bad files and mismatched shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from kairos.optimize.data import check_fits, load_dataset
from kairos.optimize.errors import DataError
from kairos.optimize.graph import load_onnx


def test_npz_with_inputs_and_labels(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, inputs=np.ones((5, 64), np.float64), labels=np.arange(5))
    data = load_dataset(path)
    assert data.x.dtype == np.float32 and data.x.shape == (5, 64) and list(data.y) == [0, 1, 2, 3, 4]


def test_npy_inputs_with_separate_labels(digits) -> None:
    data = load_dataset(digits.files["test_x"], digits.files["test_y"])
    assert len(data) == len(digits.test) and np.array_equal(data.y, digits.test.y)


def test_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npy"
    bad.write_text("not numpy")
    with pytest.raises(DataError, match="cannot read .*bad.npy"):
        load_dataset(bad)
    with pytest.raises(DataError, match="data file not found"):
        load_dataset(tmp_path / "nope.npz")


def test_npz_without_an_input_array(tmp_path: Path, teacher) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, something=np.ones((2, 2)))
    # Arrays may carry the model's input names, so the check comes against the model.
    with pytest.raises(DataError, match="no input array.*'pixels'.*found something"):
        check_fits(load_dataset(path), load_onnx(teacher.path))
    np.savez(path, labels=np.ones(2, np.int64))
    with pytest.raises(DataError, match="no input array.*found labels"):
        load_dataset(path)


def test_label_count_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((4, 64)), y=np.zeros(3, np.int64))
    with pytest.raises(DataError, match="4 input rows but 3 labels"):
        load_dataset(path)


def test_shape_mismatch_names_model_input(tmp_path: Path, teacher) -> None:
    path = tmp_path / "d.npy"
    np.save(path, np.ones((4, 63), np.float32))
    with pytest.raises(DataError, match=r"rows have shape \[63\].*'pixels' expects \[batch, 64\]"):
        check_fits(load_dataset(path), load_onnx(teacher.path))


def test_labels_outside_the_class_range(tmp_path: Path, teacher) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((2, 64)), y=np.array([3, 10]))
    with pytest.raises(DataError, match=r"labels must lie in \[0, 9\]"):
        check_fits(load_dataset(path), load_onnx(teacher.path))
