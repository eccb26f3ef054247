"""The pure pieces shared by both clients: errors, URLs, metadata, stream ordering."""

from __future__ import annotations

import pickle
import random

import grpc
import pytest
from kairos.client._common import (
    InferenceServerError,
    StreamReorderer,
    call_metadata,
    channel_options,
    normalize_url,
    stream_error,
)
from kairos.protos import grpc_service_pb2 as pb


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("127.0.0.1:8001", "127.0.0.1:8001"),
        ("grpc://host:8001/", "host:8001"),
        ("http://host:9000", "host:9000"),
    ],
)
def test_normalize_url(url, expected):
    assert normalize_url(url) == expected


def test_call_metadata_and_message_limits():
    assert call_metadata("tok", {"X-A": "1"}) == (("x-a", "1"), ("authorization", "Bearer tok"))
    assert call_metadata(None, None) == ()
    assert dict(channel_options(0))["grpc.max_receive_message_length"] == -1
    assert dict(channel_options(2))["grpc.max_send_message_length"] == 2 * 1024 * 1024


def test_stream_error_keeps_a_leading_status_name():
    error = stream_error("RESOURCE_EXHAUSTED: queue full: retry elsewhere")
    assert (error.status, error.code) == ("RESOURCE_EXHAUSTED", grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert error.message == "queue full: retry elsewhere"
    plain = stream_error("in ensemble 'x': failed")
    assert plain.status == "UNKNOWN" and plain.message == "in ensemble 'x': failed"


def test_error_survives_pickling():
    error = InferenceServerError("UNAVAILABLE", "down", code=grpc.StatusCode.UNAVAILABLE,
                                 unreachable=True)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.status, copy.message, copy.code, copy.unreachable) == (
        "UNAVAILABLE", "down", grpc.StatusCode.UNAVAILABLE, True,
    )
    assert str(copy) == "UNAVAILABLE: down"


def _response(request_id: str, value: int, error: str = "") -> pb.ModelStreamInferResponse:
    response = pb.ModelStreamInferResponse(error_message=error)
    response.infer_response.id = request_id
    response.infer_response.outputs.add(name="y", datatype="INT64", shape=[1])
    response.infer_response.raw_output_contents.append(value.to_bytes(8, "little", signed=True))
    return response


@pytest.mark.parametrize("seed", range(5))
def test_reorderer_hands_out_results_in_request_order(seed):
    order = StreamReorderer()
    ids = [order.request_id() for _ in range(50)]
    shuffled = list(enumerate(ids))
    random.Random(seed).shuffle(shuffled)
    handed_out = []
    for index, request_id in shuffled:
        failed = index % 7 == 3
        order.add(_response(request_id, index, "INTERNAL: boom" if failed else ""))
        handed_out += order.pop_ready()
    assert order.pending == 0 and len(handed_out) == 50
    for index, result in enumerate(handed_out):
        if index % 7 == 3:
            assert isinstance(result, InferenceServerError) and result.status == "INTERNAL"
        else:
            assert int(result.outputs["y"][0]) == index


def test_reorderer_without_ids_assumes_arrival_order_and_refuses_extras():
    order = StreamReorderer()
    for _ in range(3):
        order.request_id()
    for value in range(3):
        order.add(_response("", value))
    assert [int(r.outputs["y"][0]) for r in order.pop_ready()] == [0, 1, 2]
    with pytest.raises(InferenceServerError, match="more stream responses than requests"):
        order.add(_response("", 9))
