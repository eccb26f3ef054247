"""Every zoo model served by a real Kairos process through Kairos's own client, with
batching on: concurrent requests share batches and each gets back exactly what
onnxruntime computes for it alone (every output rank and dtype, labels included)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from kairos.client import InferenceClient
from kairos_testing import zoo
from kairos_testing.server import running_server

BATCHING = "scheduling:\n  policy: fixed\n  max_queue_delay_ms: 30\n  profile: false\nwarmup_runs: 1\n"
REQUESTS = 12


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = zoo.repository(tmp_path_factory.mktemp("zoo"), config=BATCHING)
    with running_server(repo) as process:
        yield process


def _executions(client: InferenceClient, name: str) -> int:
    return client.model_statistics(name).model_stats[0].execution_count


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_zoo_model_served_batched_equals_onnxruntime(server, name):
    model = zoo.MODELS[name]
    requests = zoo.requests(model, REQUESTS, seed=len(name) + 1)
    with InferenceClient(server.address) as client, ThreadPoolExecutor(REQUESTS) as pool:
        client.wait_until_ready(60, models=[name])
        before = _executions(client, name)
        answers = list(pool.map(lambda feeds: client.infer(name, feeds, timeout=60), requests))
        executions = _executions(client, name) - before
    path = model.path()
    for i, (feeds, got) in enumerate(zip(requests, answers, strict=True)):
        expected = zoo.reference(path, feeds)
        assert list(got) == list(expected), name
        for output, want in expected.items():
            what = f"{name} request {i} output {output}"
            assert got[output].dtype == want.dtype and got[output].shape == want.shape, what
            if np.issubdtype(want.dtype, np.floating):
                np.testing.assert_allclose(got[output], want, rtol=1e-4, atol=1e-5, err_msg=what)
            else:
                np.testing.assert_array_equal(got[output], want, err_msg=what)
    if model.fixed_batch is None:
        assert executions < len(requests), f"{name}: {executions} executions, no batching happened"


PADDED = ("scheduling:\n  policy: fixed\n  max_queue_delay_ms: 30\n  profile: false\n"
          "  padding: {input_ids: {dim: 1, value: 0}, attention_mask: {dim: 1, value: 0}}\n"
          "warmup_runs: 1\n")


def test_encoder_requests_of_mixed_lengths_batch_padded_and_equal_unbatched_runs(tmp_path):
    """With `padding` declared, requests of 12 different lengths merge into few batches
    padded to the longest, and each answer equals onnxruntime on the unpadded request."""
    repo = zoo.repository(tmp_path / "repo", ["encoder"], config=PADDED)
    model = zoo.MODELS["encoder"]
    requests = zoo.requests(model, REQUESTS, seed=3)
    lengths = {feeds["input_ids"].shape[1] for feeds in requests}
    assert len(lengths) > 4
    with running_server(repo) as server, InferenceClient(server.address) as client, \
            ThreadPoolExecutor(REQUESTS) as pool:
        client.wait_until_ready(60, models=["encoder"])
        answers = list(pool.map(lambda feeds: client.infer("encoder", feeds, timeout=60), requests))
        executions = _executions(client, "encoder")
    assert executions < len(lengths)  # different lengths shared batches
    for feeds, got in zip(requests, answers, strict=True):
        np.testing.assert_allclose(got["logits"], zoo.reference(model.path(), feeds)["logits"],
                                   rtol=0, atol=1e-5)
