"""Inputs and labels from `.npy` / `.npz` files, checked against the model's input."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from kairos.optimize.errors import DataError

INPUT_KEYS = ("x", "X", "inputs", "input", "data", "features")
LABEL_KEYS = ("y", "Y", "labels", "label", "targets", "target")


@dataclass
class Dataset:
    x: np.ndarray
    y: np.ndarray | None = None
    source: str = ""

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _read_array(path: Path) -> np.ndarray | dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"cannot read {path} as .npy/.npz: {exc}") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            return {k: loaded[k] for k in loaded.files}
    return loaded


def _pick(arrays: dict[str, np.ndarray], keys: tuple[str, ...]) -> np.ndarray | None:
    for key in keys:
        if key in arrays:
            return arrays[key]
    return None


def load_dataset(path: Path | str, labels: Path | str | None = None,
                 input_name: str | None = None) -> Dataset:
    """Rows from `.npy` (inputs only) or `.npz` (inputs under x/inputs/<input name>, labels
    under y/labels); a separate labels `.npy` overrides labels found in the `.npz`."""
    path = Path(path)
    loaded = _read_array(path)
    if isinstance(loaded, dict):
        keys = ((input_name,) if input_name else ()) + INPUT_KEYS
        x = _pick(loaded, keys)
        if x is None:
            raise DataError(f"{path}: no input array; expected one of the keys {', '.join(keys)} "
                            f"(found {', '.join(loaded) or 'none'})")
        y = _pick(loaded, LABEL_KEYS)
    else:
        x, y = loaded, None
    if labels is not None:
        y = _read_array(Path(labels))
        if isinstance(y, dict):
            y = _pick(y, LABEL_KEYS)
            if y is None:
                raise DataError(f"{labels}: no labels array (keys {', '.join(LABEL_KEYS)})")
    return _checked(x, y, str(path))


def _checked(x: np.ndarray, y: np.ndarray | None, source: str) -> Dataset:
    if not np.issubdtype(x.dtype, np.number) or x.ndim < 2 or x.shape[0] == 0:
        raise DataError(f"{source}: inputs must be a non-empty numeric array [rows, ...], "
                        f"got dtype {x.dtype} shape {x.shape}")
    if y is not None:
        y = np.asarray(y)
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{source}: labels must be a 1-D integer array, got dtype {y.dtype} shape {y.shape}")
        if y.shape[0] != x.shape[0]:
            raise DataError(f"{source}: {x.shape[0]} input rows but {y.shape[0]} labels")
    return Dataset(x.astype(np.float32, copy=False), None if y is None else y.astype(np.int64), source)


def model_io(model: onnx.ModelProto) -> tuple[str, tuple[int | None, ...], int | None]:
    """(input name, per-row input dims with None for symbolic, output classes or None)."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise DataError(f"the model has {len(inputs)} inputs; `kairos optimize` data files feed exactly one")
    dims = tuple(d.dim_value if d.HasField("dim_value") else None
                 for d in inputs[0].type.tensor_type.shape.dim[1:])
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    classes = out_dims[-1].dim_value if len(out_dims) == 2 and out_dims[-1].HasField("dim_value") else None
    return inputs[0].name, dims, classes


def check_fits(data: Dataset, model: onnx.ModelProto, what: str = "data") -> None:
    """Raise DataError when `data` cannot feed `model` (row shape, label range)."""
    name, dims, classes = model_io(model)
    row = data.x.shape[1:]
    if len(row) != len(dims) or any(d is not None and d != r for d, r in zip(dims, row, strict=False)):
        shown = ["?" if d is None else d for d in dims]
        raise DataError(f"{what} {data.source}: rows have shape {list(row)} but model input "
                        f"'{name}' expects [batch, {', '.join(map(str, shown))}]")
    if data.y is not None and classes and (data.y.min() < 0 or data.y.max() >= classes):
        raise DataError(f"{what} {data.source}: labels must lie in [0, {classes - 1}] for a "
                        f"{classes}-class output, found {data.y.min()}..{data.y.max()}")
