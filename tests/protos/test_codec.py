"""The one protobuf <-> numpy converter, in both directions."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from kairos.protos import codec
from kairos.protos import grpc_service_pb2 as pb

DTYPES = [np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32,
          np.int64, np.float16, np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_raw_round_trip_every_numeric_datatype(dtype):
    array = (np.arange(12) % 5).astype(dtype).reshape(3, 4)
    request = codec.build_request("m", {"x": array})
    assert request.inputs[0].datatype == codec.datatype_of(array)
    decoded = codec.decode_request_inputs(request)["x"]
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)


def test_bytes_round_trip_with_length_prefixes():
    array = np.array([b"", b"ab", "ü".encode()], dtype=object)
    raw = codec.serialize_bytes(array)
    assert raw[:4] == struct.pack("<I", 0)
    np.testing.assert_array_equal(codec.deserialize_bytes("x", raw, 3), array)


def test_str_arrays_travel_as_bytes():
    request = codec.build_request("m", {"s": np.array(["a", "bc"])})
    assert request.inputs[0].datatype == "BYTES"
    assert list(codec.decode_request_inputs(request)["s"]) == [b"a", b"bc"]


def test_typed_contents_decode():
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="INT16", shape=[2])
    tensor.contents.int_contents.extend([3, -4])
    array = codec.decode_tensor("x", "INT16", [2], None, tensor.contents)
    assert array.dtype == np.int16 and list(array) == [3, -4]


def test_typed_contents_overflow_is_an_error():
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="INT8", shape=[1])
    tensor.contents.int_contents.append(1000)
    with pytest.raises(codec.TensorError, match="does not fit INT8"):
        codec.decode_tensor("x", "INT8", [1], None, tensor.contents)


@pytest.mark.parametrize(
    ("shape", "raw", "message"),
    [
        ([2, 2], b"\0" * 12, "needs 16"),
        ([-1, 4], b"", "negative dimension"),
        ([1] * 17, b"\0" * 4, "at most 16"),
        ([1 << 20, 1 << 20], b"", "too large"),
    ],
)
def test_malformed_raw_tensors(shape, raw, message):
    with pytest.raises(codec.TensorError, match=message):
        codec.decode_tensor("x", "FP32", shape, raw)


def test_fp16_needs_raw_contents():
    with pytest.raises(codec.TensorError, match="raw_input_contents"):
        codec.decode_tensor("x", "FP16", [1], None, pb.InferTensorContents())


def test_response_outputs_keep_order_and_decode():
    response = pb.ModelInferResponse()
    outputs = {"b": np.ones(2, np.float32), "a": np.array([b"x"], dtype=object)}
    codec.fill_response_outputs(response, outputs)
    assert [o.name for o in response.outputs] == ["b", "a"]
    assert len(response.raw_output_contents) == 2
    decoded = codec.decode_response_outputs(response)
    np.testing.assert_array_equal(decoded["b"], outputs["b"])
    assert list(decoded["a"]) == [b"x"]


def test_parameters():
    request = codec.build_request(
        "m", {}, parameters={"flag": True, "n": 5, "x": 0.5, "s": "batch"}
    )
    values = {k: codec.parameter_value(v) for k, v in request.parameters.items()}
    assert values == {"flag": True, "n": 5, "x": 0.5, "s": "batch"}
