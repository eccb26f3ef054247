"""Every zoo model served by a real Kairos process, through unmodified tritonclient,
with batching on: concurrent requests merge into batches (equal shapes only) and every
request's outputs (each rank and dtype, labels included) equal onnxruntime's."""

from __future__ import annotations

import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from kairos_testing import zoo
from kairos_testing.server import running_server
from tritonclient.utils import np_to_triton_dtype

# Hold requests up to 30 ms so that concurrent ones share a batch.
BATCHING = "scheduling:\n  policy: fixed\n  max_queue_delay_ms: 30\n  profile: false\nwarmup_runs: 1\n"
REQUESTS = 12


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = zoo.repository(tmp_path_factory.mktemp("zoo"), config=BATCHING)
    with running_server(repo) as process:
        yield process


def _inputs(feeds: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    tensors = []
    for name, array in feeds.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def assert_same(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert got is not None, what
    assert got.dtype == expected.dtype and got.shape == expected.shape, what
    if np.issubdtype(expected.dtype, np.floating):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=what)
    else:
        np.testing.assert_array_equal(got, expected, err_msg=what)


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_zoo_model_served_batched_equals_onnxruntime(server, name):
    model = zoo.MODELS[name]
    requests = zoo.requests(model, REQUESTS, seed=len(name))
    done: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(server.address) as client:
        assert client.is_model_ready(name)
        before = client.get_inference_statistics(name).model_stats[0].execution_count
        for i, feeds in enumerate(requests):
            client.async_infer(name, _inputs(feeds), request_id=str(i),
                               callback=lambda result, error: done.put((result, error)))
        results = [done.get(timeout=60) for _ in requests]
        executions = client.get_inference_statistics(name).model_stats[0].execution_count - before
    path = model.path()
    for result, error in results:
        assert error is None, error
        i = int(result.get_response().id)
        for output, expected in zoo.reference(path, requests[i]).items():
            assert_same(result.as_numpy(output), expected, f"{name} request {i} output {output}")
    if model.fixed_batch is None:
        assert executions < len(requests), f"{name}: {executions} executions, no batching happened"
