"""The native decode and encode equal the Python codec (protos/codec.py), the one
other place that converts wire <-> tensors, on random tensors of every datatype."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kairos.protos import codec
from kairos.protos import grpc_service_pb2 as pb
from kairos.server.frontend import _native

NUMERIC = [name for name in codec.DATATYPE_TO_DTYPE if name != "BYTES"]


def _native_inputs(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    decoded = _native.decode_request(request.SerializeToString())
    for name, value in decoded.items():
        if isinstance(value, tuple):  # BYTES: (elements, shape)
            items, shape = value
            array = np.empty(len(items), dtype=np.object_)
            array[:] = items
            decoded[name] = array.reshape(shape)
    return decoded


@st.composite
def arrays(draw) -> np.ndarray:
    datatype = draw(st.sampled_from([*NUMERIC, "BYTES"]))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
    count = int(np.prod(shape)) if shape else 1
    if datatype == "BYTES":
        items = draw(st.lists(st.binary(max_size=12), min_size=count, max_size=count))
        array = np.empty(count, dtype=np.object_)
        array[:] = items
        return array.reshape(shape)
    dtype = codec.DATATYPE_TO_DTYPE[datatype]
    raw = draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
    array = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    if datatype == "BOOL":
        array = np.frombuffer(raw, np.uint8).reshape(shape).astype(bool)
    return array


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == np.object_:
        return list(a.flat) == list(b.flat)
    return a.tobytes() == b.tobytes()  # bitwise: NaNs compare equal


@settings(max_examples=200, deadline=None)
@given(st.lists(arrays(), min_size=1, max_size=4))
def test_native_decode_equals_the_python_codec(values):
    inputs = {f"in{i}": value for i, value in enumerate(values)}
    request = codec.build_request("m", inputs)
    python = codec.decode_request_inputs(request)
    native = _native_inputs(request)
    assert list(native) == list(python)
    for name in python:
        assert _equal(native[name], python[name]), name


@settings(max_examples=200, deadline=None)
@given(st.lists(arrays(), min_size=1, max_size=4))
def test_native_encode_equals_the_python_codec(values):
    outputs = [(f"out{i}", value) for i, value in enumerate(values)]
    native = pb.ModelInferResponse.FromString(_native.encode_response(outputs))
    python = pb.ModelInferResponse()
    codec.fill_response_outputs(python, dict(outputs))
    assert native == python


def test_typed_contents_decode_as_the_python_codec_does():
    request = pb.ModelInferRequest(model_name="m")
    for name, datatype, field, values in [
        ("a", "INT8", "int_contents", [-128, 0, 127]),
        ("b", "UINT16", "uint_contents", [0, 65535, 7]),
        ("c", "FP64", "fp64_contents", [1.5, -2.25, 0.0]),
        ("d", "BOOL", "bool_contents", [True, False, True]),
        ("e", "BYTES", "bytes_contents", [b"x", b"", b"yz"]),
    ]:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=[3])
        getattr(tensor.contents, field).extend(values)
    python = codec.decode_request_inputs(request)
    native = _native_inputs(request)
    for name in python:
        assert _equal(native[name], python[name]), name


@pytest.mark.parametrize("datatype,shape,raw,message", [
    ("FP32", [2], b"\0" * 7, "7 bytes of data"),
    ("BF16", [1], b"\0\0", "BF16 is not supported"),
    ("Q" * 10_000, [1], b"\0", "unknown datatype"),
    ("BYTES", [2], b"\1\0\0\0a", "fewer than the 2 elements"),
    ("FP32", [-1], b"", "negative dimension"),
])
def test_malformed_tensors_are_refused_like_the_python_codec(datatype, shape, raw, message):
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    with pytest.raises(codec.TensorError):
        codec.decode_request_inputs(request)
    with pytest.raises(ValueError, match=message) as caught:
        _native.decode_request(request.SerializeToString())
    assert len(str(caught.value)) < 300
