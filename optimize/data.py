"""Inputs and labels from `.npy` / `.npz` files, checked against the model's input."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from kairos.optimize.errors import DataError
from onnx import helper

INPUT_KEYS = ("x", "X", "inputs", "input", "data", "features")
LABEL_KEYS = ("y", "Y", "labels", "label", "targets", "target")


@dataclass
class Dataset:
    x: np.ndarray
    y: np.ndarray | None = None
    source: str = ""
    # Every input array of an .npz by key: models with several inputs take theirs by name.
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    # No x/inputs/... key: the arrays must carry the model's input names.
    by_name: bool = False

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
        named = {k: v for k, v in loaded.items() if k not in LABEL_KEYS}
        x = _pick(loaded, keys)
        by_name = x is None
        if x is None and named:
            x = next(iter(named.values()))  # inputs under the model's own names, matched later
        if x is None:
            raise DataError(f"{path}: no input array; expected one of the keys {', '.join(keys)} "
                            f"or the model's input names (found {', '.join(loaded) or 'none'})")
        y = _pick(loaded, LABEL_KEYS)
    else:
        x, y, named, by_name = loaded, None, {}, False
    if labels is not None:
        y = _read_array(Path(labels))
        if isinstance(y, dict):
            y = _pick(y, LABEL_KEYS)
            if y is None:
                raise DataError(f"{labels}: no labels array (keys {', '.join(LABEL_KEYS)})")
    data = _checked(x, y, str(path), named)
    data.by_name = by_name
    return data


def _checked(x: np.ndarray, y: np.ndarray | None, source: str,
             named: dict[str, np.ndarray] | None = None) -> Dataset:
    for key, array in {"inputs": x, **(named or {})}.items():
        if not np.issubdtype(array.dtype, np.number) or array.ndim < 2 or array.shape[0] != x.shape[0] \
                or x.shape[0] == 0:
            raise DataError(f"{source}: {key} must be a non-empty numeric array [rows, ...] with "
                            f"{x.shape[0]} rows, got dtype {array.dtype} shape {array.shape}")
    if y is not None:
        y = np.asarray(y)
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{source}: labels must be a 1-D integer array, got dtype {y.dtype} shape {y.shape}")
        if y.shape[0] != x.shape[0]:
            raise DataError(f"{source}: {x.shape[0]} input rows but {y.shape[0]} labels")
    return Dataset(x.astype(np.float32, copy=False), None if y is None else y.astype(np.int64), source,
                   dict(named or {}))


@dataclass
class InputSpec:
    name: str
    dtype: np.dtype
    dims: tuple[int | str | None, ...]  # with the batch dim; int fixed, str/None symbolic


def model_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs a caller feeds (initializers excluded), with numpy dtypes."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                     for d in tensor.shape.dim)
        specs.append(InputSpec(value.name, np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)), dims))
    return specs


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The batch size a model with a fixed first dimension takes (None: dynamic)."""
    dims = [spec.dims[0] for spec in model_inputs(model) if spec.dims]
    return dims[0] if dims and all(isinstance(d, int) and d > 0 for d in dims) and len(set(dims)) == 1 \
        else None


def feeds_for(data: Dataset, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The model's inputs from `data`, each in the dtype the model declares: a one-input
    model takes the data's inputs; several inputs are taken by name from the .npz."""
    specs = model_inputs(model)
    if len(specs) == 1 and data.by_name and specs[0].name not in data.inputs:
        raise DataError(f"{data.source}: no input array; expected one of the keys {', '.join(INPUT_KEYS)} "
                        f"or the model's input name '{specs[0].name}' (found {', '.join(data.inputs)})")
    if len(specs) == 1:
        arrays = {specs[0].name: data.inputs.get(specs[0].name, data.x)}
    else:
        missing = [s.name for s in specs if s.name not in data.inputs]
        if missing:
            raise DataError(f"{data.source}: the model has inputs {', '.join(s.name for s in specs)}; "
                            f"pass an .npz with one array per input name (missing: {', '.join(missing)})")
        arrays = {s.name: data.inputs[s.name] for s in specs}
    return {s.name: np.ascontiguousarray(arrays[s.name].astype(s.dtype, copy=False)) for s in specs}


def synthetic_feeds(model: onnx.ModelProto, rows: int = 64, length: int = 16,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs fitting the model (floats N(0,1), integers 1..3, other free dims
    `length`), for measuring size and speed when no evaluation data is given."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in model_inputs(model):
        shape = [d if isinstance(d, int) and d > 0 else length for d in spec.dims]
        if shape and not (isinstance(spec.dims[0], int) and spec.dims[0] > 0):
            shape[0] = rows
        if np.issubdtype(spec.dtype, np.floating):
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype == np.bool_:
            feeds[spec.name] = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            feeds[spec.name] = rng.integers(1, 4, shape).astype(spec.dtype)
    return feeds


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
    feeds = feeds_for(data, model)
    for spec in model_inputs(model):
        row, dims = feeds[spec.name].shape[1:], spec.dims[1:]
        if len(row) != len(dims) or any(isinstance(d, int) and d > 0 and d != r
                                        for d, r in zip(dims, row, strict=False)):
            shown = [d if isinstance(d, int) and d > 0 else "?" for d in dims]
            raise DataError(f"{what} {data.source}: rows have shape {list(row)} but model input "
                            f"'{spec.name}' expects [batch, {', '.join(map(str, shown))}]")
    classes = _classes(model)
    if data.y is not None and classes and (data.y.min() < 0 or data.y.max() >= classes):
        raise DataError(f"{what} {data.source}: labels must lie in [0, {classes - 1}] for a "
                        f"{classes}-class output, found {data.y.min()}..{data.y.max()}")


def _classes(model: onnx.ModelProto) -> int | None:
    """Classes of the first float [batch, classes] output with a fixed class count."""
    for out in model.graph.output:
        dims = out.type.tensor_type.shape.dim
        is_float = np.issubdtype(helper.tensor_dtype_to_np_dtype(out.type.tensor_type.elem_type), np.floating)
        if is_float and len(dims) == 2 and dims[-1].HasField("dim_value") and dims[-1].dim_value > 1:
            return dims[-1].dim_value
    return None
