"""Unmodified tritonclient[grpc] against a real Kairos server process.

Runs in its own pytest session (`pytest --thirdparty-clients`): this process
must never import Kairos's generated stubs (DESIGN.md, descriptor pool).
"""

from __future__ import annotations

import queue
import shutil
import threading
from functools import partial

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from kairos_testing.models import add_sub, identity, standard_repository, write_model
from kairos_testing.server import running_server
from onnx import TensorProto
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return standard_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def server(repo):
    with running_server(repo) as process:
        yield process


@pytest.fixture
def client(server):
    with grpcclient.InferenceServerClient(server.address) as triton:
        yield triton


def reference(repo, model: str, feeds: dict) -> list:
    """What onnxruntime in this process answers for the same inputs."""
    session = ort.InferenceSession(str(repo / model / "1" / "model.onnx"))
    return session.run(None, feeds)


def triton_input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def test_live_ready_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata.name == "kairos"
    assert {"model_repository", "model_configuration", "statistics"} <= set(metadata.extensions)


def test_model_metadata_and_config(client):
    assert client.is_model_ready("add_sub")
    metadata = client.get_model_metadata("add_sub")
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("a", "FP32", [-1, 4]),
        ("b", "FP32", [-1, 4]),
    ]
    assert [t.name for t in metadata.outputs] == ["sum", "difference"]
    config = client.get_model_config("add_sub").config
    assert config.max_batch_size == 64
    assert [list(i.dims) for i in config.input] == [[4], [4]]  # batch dim left out
    assert [o.name for o in config.output] == ["sum", "difference"]


@pytest.mark.parametrize(
    ("model", "datatype", "array"),
    [
        ("identity_fp32", "FP32", np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)),
        ("identity_fp16", "FP16", np.random.default_rng(2).standard_normal((2, 4)).astype(np.float16)),
        ("identity_fp64", "FP64", np.random.default_rng(3).standard_normal((2, 4))),
        ("identity_int64", "INT64", np.arange(-8, 8, dtype=np.int64).reshape(4, 4)),
        ("identity_uint8", "UINT8", np.arange(8, dtype=np.uint8).reshape(2, 4)),
        ("cast_int64_fp32", "INT64", np.array([[1, -2, 3 << 40]], dtype=np.int64)),
        ("not_bool", "BOOL", np.array([[True, False, True], [False, False, True]])),
    ],
)
def test_infer_matches_onnxruntime_exactly(client, repo, model, datatype, array):
    result = client.infer(model, [triton_input("input", array, datatype)])
    (expected,) = reference(repo, model, {"input": array})
    got = result.as_numpy("output")
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


def test_bytes_tensors_round_trip(client, repo):
    array = np.array([[b"kairos", b""], ["καιρός".encode(), b"x" * 300]], dtype=np.object_)
    result = client.infer("identity_bytes", [triton_input("input", array, "BYTES")])
    got = result.as_numpy("output")
    as_text = np.vectorize(lambda item: item.decode(), otypes=[object])(array)
    (expected,) = reference(repo, "identity_bytes", {"input": as_text})
    assert [item.decode() for item in got.reshape(-1)] == list(expected.reshape(-1))


def test_multi_input_requested_output_subset_and_id(client, repo):
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 4), dtype=np.float32)
    inputs = [triton_input("a", a, "FP32"), triton_input("b", b, "FP32")]
    outputs = [grpcclient.InferRequestedOutput("difference")]
    result = client.infer("add_sub", inputs, outputs=outputs, request_id="req-42")
    response = result.get_response()
    assert response.id == "req-42"
    assert [o.name for o in response.outputs] == ["difference"]
    assert result.as_numpy("sum") is None
    np.testing.assert_array_equal(result.as_numpy("difference"), reference(repo, "add_sub", {"a": a, "b": b})[1])


def test_async_infer(client, repo):
    done: queue.Queue = queue.Queue()
    arrays = [np.full((1, 4), i, dtype=np.float32) for i in range(8)]
    for i, array in enumerate(arrays):
        client.async_infer(
            "identity_fp32",
            [triton_input("input", array, "FP32")],
            callback=partial(lambda i, result, error: done.put((i, result, error)), i),
            request_id=str(i),
        )
    results = [done.get(timeout=30) for _ in arrays]
    for i, result, error in results:
        assert error is None
        assert result.get_response().id == str(i)
        np.testing.assert_array_equal(result.as_numpy("output"), arrays[i])


def test_stream_infer(client):
    received: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: received.put((result, error)))
    arrays = {str(i): np.full((2, 4), i, dtype=np.float32) for i in range(10)}
    for request_id, array in arrays.items():
        client.async_stream_infer("identity_fp32", [triton_input("input", array, "FP32")], request_id=request_id)
    got = {}
    for _ in arrays:
        result, error = received.get(timeout=30)
        assert error is None
        got[result.get_response().id] = result.as_numpy("output")
    client.stop_stream()  # must return: the server ends the stream on half-close
    assert set(got) == set(arrays)
    for request_id, array in arrays.items():
        np.testing.assert_array_equal(got[request_id], array)


def test_stream_reports_errors_and_keeps_going(client):
    received: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: received.put((result, error)))
    good = np.zeros((1, 4), dtype=np.float32)
    client.async_stream_infer("no_such_model", [triton_input("input", good, "FP32")], request_id="bad")
    client.async_stream_infer("identity_fp32", [triton_input("input", good, "FP32")], request_id="good")
    outcomes = [received.get(timeout=30) for _ in range(2)]
    client.stop_stream()
    errors = [error for _, error in outcomes if error is not None]
    results = [result for result, error in outcomes if error is None]
    assert len(errors) == 1 and "no_such_model" in str(errors[0])
    assert [r.get_response().id for r in results] == ["good"]


def test_statistics_grow_with_every_request(client):
    before = client.get_inference_statistics("identity_int64").model_stats[0]
    array = np.ones((3, 4), dtype=np.int64)
    for _ in range(4):
        client.infer("identity_int64", [triton_input("input", array, "INT64")])
    after = client.get_inference_statistics("identity_int64").model_stats[0]
    assert after.inference_stats.success.count == before.inference_stats.success.count + 4
    assert after.inference_count == before.inference_count + 12
    stats = after.inference_stats
    assert stats.queue.count == stats.compute_infer.count == stats.success.count
    assert after.execution_count >= before.execution_count + 1


def test_errors_map_to_status_codes(client):
    good = np.zeros((1, 4), dtype=np.float32)
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("no_such_model", [triton_input("input", good, "FP32")])
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as version:
        client.infer("identity_fp32", [triton_input("input", good, "FP32")], model_version="7")
    assert version.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as dtype:
        client.infer("identity_fp32", [triton_input("input", good.astype(np.float64), "FP64")])
    assert dtype.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "'input'" in dtype.value.message()


def test_corrupt_model_is_unavailable_with_reason_while_others_serve(client):
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index["broken"].state == "UNAVAILABLE"
    assert "onnxruntime cannot load" in index["broken"].reason
    assert not client.is_model_ready("broken")
    with pytest.raises(InferenceServerException) as error:
        client.infer("broken", [triton_input("input", np.zeros((1, 4), np.float32), "FP32")])
    assert error.value.status() == "StatusCode.UNAVAILABLE"
    assert client.is_model_ready("identity_fp32")


def test_load_unload_and_reload(client, repo):
    write_model(repo, "late", identity(TensorProto.FLOAT))
    assert not client.is_model_ready("late")
    client.load_model("late")
    assert client.is_model_ready("late")
    array = np.ones((1, 4), dtype=np.float32)
    np.testing.assert_array_equal(
        client.infer("late", [triton_input("input", array, "FP32")]).as_numpy("output"), array
    )
    # Reload with different content: a model that adds its input to itself.
    shutil.rmtree(repo / "late")
    write_model(repo, "late", add_sub())
    client.load_model("late")
    assert [t.name for t in client.get_model_metadata("late").inputs] == ["a", "b"]
    client.unload_model("late")
    assert not client.is_model_ready("late")
    states = {m.name: m.state for m in client.get_model_repository_index().models}
    assert states["late"] == "UNAVAILABLE"
    with pytest.raises(InferenceServerException) as error:
        client.load_model("never_existed")
    assert error.value.status() == "StatusCode.NOT_FOUND"


def test_server_survived_everything(server, client):
    assert server.alive()
    assert client.is_server_ready()


def test_concurrent_clients(server):
    errors: list = []

    def worker(seed: int) -> None:
        with grpcclient.InferenceServerClient(server.address) as triton:
            array = np.random.default_rng(seed).standard_normal((4, 4)).astype(np.float32)
            for _ in range(20):
                result = triton.infer("identity_fp32", [triton_input("input", array, "FP32")])
                if not np.array_equal(result.as_numpy("output"), array):
                    errors.append(seed)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
