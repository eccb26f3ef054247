"""Checks a decoded request against the model's signature, before it is queued.

Catching every mismatch here (not in onnxruntime) means one bad request is
refused with a message naming the input, and can never fail the batch it would
have joined.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from kairos.protos.codec import DTYPE_TO_DATATYPE

from .errors import InvalidInput, short
from .types import ModelSignature


def datatype_name(array: np.ndarray) -> str:
    return DTYPE_TO_DATATYPE.get(array.dtype, str(array.dtype))


def validate_inputs(
    signature: ModelSignature, inputs: Mapping[str, np.ndarray], max_rows: int | None = None
) -> tuple[int, tuple]:
    """(rows, shape_key) of a valid request; raises InvalidInput naming the problem."""
    expected = {spec.name for spec in signature.inputs}
    unknown = [name for name in inputs if name not in expected]
    if unknown:
        raise InvalidInput(
            f"unknown input '{short(unknown[0])}'; the model takes {', '.join(sorted(expected))}"
        )
    missing = [name for name in expected if name not in inputs]
    if missing:
        raise InvalidInput(f"missing input '{sorted(missing)[0]}'")
    batching = signature.max_batch_size > 0
    rows: int | None = None
    key = []
    for spec in signature.inputs:
        array = inputs[spec.name]
        got = datatype_name(array)
        if got != spec.datatype:
            raise InvalidInput(f"input '{spec.name}': datatype {got}, but the model expects {spec.datatype}")
        if array.ndim != len(spec.shape):
            raise InvalidInput(
                f"input '{spec.name}': {array.ndim} dimensions (shape {list(array.shape)}), "
                f"but the model expects {len(spec.shape)} (shape {list(spec.shape)})"
            )
        for axis, (want, have) in enumerate(zip(spec.shape, array.shape, strict=True)):
            if want >= 0 and want != have:
                raise InvalidInput(
                    f"input '{spec.name}': dimension {axis} is {have}, but the model expects {want} "
                    f"(shape {list(spec.shape)}, -1 = any)"
                )
        if batching:
            if array.shape[0] < 1:
                raise InvalidInput(f"input '{spec.name}': batch dimension is 0; send at least one row")
            if rows is None:
                rows = array.shape[0]
            elif array.shape[0] != rows:
                raise InvalidInput(
                    f"input '{spec.name}': {array.shape[0]} rows, but other inputs have {rows}; "
                    "every input needs the same batch size"
                )
            key.append((spec.name, array.shape[1:]))
        else:
            key.append((spec.name, array.shape))
    rows = rows or 1
    if max_rows is not None and rows > max_rows:
        raise InvalidInput(f"{rows} rows in one request; this server accepts at most {max_rows}")
    # NaN and Inf are legal float values: they pass through, the model decides what they mean.
    return rows, tuple(key)


def validate_outputs(signature: ModelSignature, requested: list[str]) -> list[str] | None:
    if not requested:
        return None
    known = {spec.name for spec in signature.outputs}
    seen = set()
    for name in requested:
        if name not in known:
            raise InvalidInput(
                f"unknown output '{short(name)}' requested; the model produces {', '.join(sorted(known))}"
            )
        if name in seen:
            raise InvalidInput(f"output '{short(name)}' requested twice")
        seen.add(name)
    return list(requested)
