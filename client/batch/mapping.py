"""Which dataset column feeds which model input, checked against the model's metadata.

Rules (documented in `kairos batch --help`):
- A column feeds the model input of the same name; a `.npy` file feeds the model's only
  input (or the one `--input-name` names).
- The column's dtype must be the input's datatype exactly (no silent casts).
- A row's shape must match the input's dims after the batch dim (-1 matches any size).
  A column with one dimension fewer than the input gets a trailing 1 when the input's
  last dim is 1 or -1 (a scalar Parquet column feeds a [-1, 1] input).
- Columns no input uses are left out (and listed as a note).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from kairos.protos import codec

from .datasets import Column, DatasetError


class MappingError(DatasetError):
    """The dataset does not fit the model's inputs."""


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as ModelMetadata describes it (shape includes the batch dim)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class InputPlan:
    """How to turn a chunk of dataset columns into the request's input tensors."""

    columns: dict[str, str]  # model input -> dataset column
    expand: frozenset[str]  # inputs that get a trailing dim of 1
    unused: tuple[str, ...]  # dataset columns no input takes

    def apply(self, chunk: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = {}
        for name, column in self.columns.items():
            array = chunk[column]
            inputs[name] = array.reshape((*array.shape, 1)) if name in self.expand else array
        return inputs


def plan_inputs(columns: Mapping[str, Column], inputs: Sequence[TensorSpec]) -> InputPlan:
    """Match columns to inputs, or raise MappingError naming every problem found."""
    problems: list[str] = []
    mapping: dict[str, str] = {}
    expand: set[str] = set()
    for spec in inputs:
        column = columns.get(spec.name)
        if column is None:
            problems.append(
                f"model input '{spec.name}' ({spec.datatype} {list(spec.shape)}) has no column "
                f"in the dataset (columns: {', '.join(columns) or 'none'})"
            )
            continue
        mapping[spec.name] = column.name
        problem, needs_expand = _check_column(column, spec)
        if problem:
            problems.append(problem)
        elif needs_expand:
            expand.add(spec.name)
    if problems:
        raise MappingError("; ".join(problems))
    unused = tuple(name for name in columns if name not in mapping.values())
    return InputPlan(mapping, frozenset(expand), unused)


def _check_column(column: Column, spec: TensorSpec) -> tuple[str | None, bool]:
    """(problem or None, whether a trailing 1 is added) for one column and input."""
    if not spec.shape or spec.shape[0] != -1:
        return (
            f"model input '{spec.name}' has shape {list(spec.shape)} without a variable batch "
            "dimension; batch mode needs a model that batches (max_batch_size > 0)",
            False,
        )
    wanted = codec.DATATYPE_TO_DTYPE.get(spec.datatype)
    if wanted is None:
        return f"model input '{spec.name}' has datatype {spec.datatype}, which Kairos cannot send", False
    if column.dtype != wanted:
        return (
            f"column '{column.name}' is {column.dtype} but model input '{spec.name}' takes "
            f"{spec.datatype} ({wanted}); convert the data first",
            False,
        )
    dims = tuple(spec.shape[1:])
    row = column.row_shape
    expand = len(row) + 1 == len(dims) and dims[-1] in (1, -1)
    if expand:
        row = (*row, 1)
    if len(row) != len(dims) or any(
        want != -1 and have is not None and have != want for have, want in zip(row, dims, strict=True)
    ):
        shown = ["rows", *("?" if d is None else d for d in column.row_shape)]
        return (
            f"column '{column.name}' has rows of shape {shown} but model input '{spec.name}' "
            f"takes {list(spec.shape)}",
            False,
        )
    return None, expand
