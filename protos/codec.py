"""Protobuf <-> numpy: the one place tensors cross between the wire and numpy.

Used by the server's transport (decode requests, encode responses) and by the
client (encode requests, decode responses). Every decoding problem raises
`TensorError` with a message naming the tensor, so the server can answer
INVALID_ARGUMENT and a client can show it.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import grpc_service_pb2 as pb

# Datatype strings of the protocol and the numpy dtypes they travel as.
# BYTES tensors are numpy object arrays of `bytes`.
DATATYPE_TO_DTYPE: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
ALL_DATATYPES = frozenset(DATATYPE_TO_DTYPE) | {"BF16"}
# dtype -> datatype, for O(1) lookups on the hot path.
DTYPE_TO_DATATYPE: dict[np.dtype, str] = {dtype: name for name, dtype in DATATYPE_TO_DTYPE.items()}

# Which typed `contents` field carries each datatype (FP16/BF16 have none).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

# A tensor larger than this many elements is refused before any allocation.
MAX_ELEMENTS = 1 << 31
MAX_RANK = 16


class TensorError(ValueError):
    """A tensor on the wire that cannot be turned into an array (INVALID_ARGUMENT)."""


def datatype_of(array: np.ndarray) -> str:
    """The protocol datatype string for a numpy array."""
    kind = array.dtype
    name = DTYPE_TO_DATATYPE.get(kind)
    if name is not None:
        return name
    if kind.kind in ("S", "U"):
        return "BYTES"
    raise TensorError(f"numpy dtype {kind} has no Open Inference Protocol datatype")


def _check_shape(name: str, shape: Sequence[int]) -> int:
    if len(shape) > MAX_RANK:
        raise TensorError(f"input '{name}': {len(shape)} dimensions, at most {MAX_RANK} allowed")
    count = 1
    nonzero = 1  # numpy refuses a shape like [0, 2**31, 2**31] ("array is too big") too
    for dim in shape:
        if dim < 0:
            raise TensorError(f"input '{name}': negative dimension {dim} in shape {list(shape)}")
        count *= dim
        nonzero *= max(dim, 1)
        # Each dim too: with a zero elsewhere the product stays 0, but numpy still
        # refuses a shape like [0, 2**62] (ValueError, which would surface as INTERNAL).
        if count > MAX_ELEMENTS or nonzero > MAX_ELEMENTS:
            raise TensorError(f"input '{name}': shape {list(shape)} is too large")
    return count


def serialize_bytes(array: np.ndarray) -> bytes:
    """BYTES elements, each prefixed with its length as a 4-byte little-endian int."""
    parts = []
    for item in array.reshape(-1):
        if isinstance(item, str):
            item = item.encode("utf-8")
        elif not isinstance(item, bytes | bytearray):
            item = str(item).encode("utf-8")
        parts.append(struct.pack("<I", len(item)))
        parts.append(bytes(item))
    return b"".join(parts)


def deserialize_bytes(name: str, buffer: bytes, count: int) -> np.ndarray:
    """Split a length-prefixed BYTES buffer into `count` elements."""
    items = []
    offset, end = 0, len(buffer)
    view = memoryview(buffer)
    for _ in range(count):
        if offset + 4 > end:
            raise TensorError(
                f"input '{name}': BYTES data holds fewer than the {count} elements its shape needs"
            )
        (length,) = struct.unpack_from("<I", buffer, offset)
        offset += 4
        if offset + length > end:
            raise TensorError(
                f"input '{name}': BYTES element length prefix {length} runs past the end of the data"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != end:
        raise TensorError(
            f"input '{name}': {end - offset} bytes left over after the {count} BYTES elements"
        )
    result = np.empty(count, dtype=np.object_)
    result[:] = items
    return result


def decode_tensor(
    name: str, datatype: str, shape: Sequence[int], raw: bytes | None, contents: Any = None
) -> np.ndarray:
    """One tensor from raw bytes or typed contents, validated against its shape."""
    if datatype == "BF16":
        raise TensorError(f"input '{name}': datatype BF16 is not supported by Kairos")
    dtype = DATATYPE_TO_DTYPE.get(datatype)
    if dtype is None:
        raise TensorError(f"input '{name}': unknown datatype '{datatype}'")
    shape = tuple(int(d) for d in shape)
    count = _check_shape(name, shape)
    if raw is not None:
        if datatype == "BYTES":
            return deserialize_bytes(name, raw, count).reshape(shape)
        expected = count * dtype.itemsize
        if len(raw) != expected:
            raise TensorError(
                f"input '{name}': {len(raw)} bytes of data, but shape {list(shape)} of {datatype} "
                f"needs {expected}"
            )
        if datatype == "BOOL" and count and np.frombuffer(raw, np.uint8).max() > 1:
            # numpy and onnxruntime would carry e.g. byte 2 as a "bool" that is neither
            # true nor false (Not(2) == 3): refuse it.
            raise TensorError(f"input '{name}': BOOL raw data must hold bytes 0 or 1")
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    if contents is None:
        raise TensorError(f"input '{name}': no data (neither raw_input_contents nor contents)")
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise TensorError(f"input '{name}': {datatype} data must be sent as raw_input_contents")
    values = getattr(contents, field)
    if len(values) != count:
        raise TensorError(
            f"input '{name}': {len(values)} values in contents.{field}, but shape {list(shape)} "
            f"needs {count}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = list(values)
        return array.reshape(shape)
    if dtype.kind in "iu" and dtype.itemsize < 8:
        # int_contents/uint_contents carry 32 bits; narrower types must be range-checked.
        wide = np.asarray(values, dtype=np.int64)
        limits = np.iinfo(dtype)
        if count and (wide.min() < limits.min or wide.max() > limits.max):
            raise TensorError(f"input '{name}': a value in contents does not fit {datatype}")
        return wide.astype(dtype).reshape(shape)
    return np.asarray(values, dtype=dtype).reshape(shape)


def _has_contents(tensor: pb.ModelInferRequest.InferInputTensor) -> bool:
    return tensor.HasField("contents") and tensor.contents.ByteSize() > 0


def decode_request_inputs(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """All input tensors of a ModelInferRequest, by name."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise TensorError(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: "
            "there must be exactly one per input"
        )
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        if not tensor.name:
            raise TensorError(f"input #{index} has no name")
        if tensor.name in arrays:
            raise TensorError(f"input '{tensor.name}' is given twice")
        if raw and _has_contents(tensor):
            raise TensorError(
                f"input '{tensor.name}': both raw_input_contents and contents were given"
            )
        arrays[tensor.name] = decode_tensor(
            tensor.name,
            tensor.datatype,
            tensor.shape,
            raw[index] if raw else None,
            tensor.contents if tensor.HasField("contents") else None,
        )
    return arrays


def encode_array(array: np.ndarray) -> tuple[str, bytes]:
    """(datatype, raw bytes) for an output or input array."""
    datatype = datatype_of(array)
    if datatype == "BYTES":
        return datatype, serialize_bytes(array)
    return datatype, np.ascontiguousarray(array).tobytes()


def fill_response_outputs(response: pb.ModelInferResponse, outputs: Mapping[str, np.ndarray]) -> None:
    """Append outputs to a response, each in `raw_output_contents` in the same order."""
    for name, array in outputs.items():
        datatype, raw = encode_array(array)
        tensor = response.outputs.add()
        tensor.name = name
        tensor.datatype = datatype
        tensor.shape.extend(array.shape)
        response.raw_output_contents.append(raw)


def decode_response_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """All output tensors of a ModelInferResponse, by name (raw or typed contents)."""
    raw = response.raw_output_contents
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(response.outputs):
        arrays[tensor.name] = decode_tensor(
            tensor.name,
            tensor.datatype,
            tensor.shape,
            raw[index] if index < len(raw) else None,
            tensor.contents if tensor.HasField("contents") else None,
        )
    return arrays


def build_request(
    model_name: str,
    inputs: Mapping[str, np.ndarray],
    *,
    model_version: str = "",
    request_id: str = "",
    outputs: Sequence[str] | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> pb.ModelInferRequest:
    """A ModelInferRequest carrying `inputs` as raw_input_contents."""
    request = pb.ModelInferRequest(model_name=model_name, model_version=model_version, id=request_id)
    for name, value in inputs.items():
        array = np.asarray(value)
        if array.dtype.kind in ("U", "S"):
            array = array.astype(np.object_)
        datatype, raw = encode_array(array)
        tensor = request.inputs.add()
        tensor.name = name
        tensor.datatype = datatype
        tensor.shape.extend(array.shape)
        request.raw_input_contents.append(raw)
    for name in outputs or ():
        request.outputs.add().name = name
    for key, value in (parameters or {}).items():
        set_parameter(request.parameters[key], value)
    return request


def set_parameter(parameter: pb.InferParameter, value: Any) -> None:
    """Store a Python bool, int, float or str in an InferParameter."""
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = str(value)


def parameter_value(parameter: pb.InferParameter) -> Any:
    """The Python value held by an InferParameter (None when unset)."""
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice else None
