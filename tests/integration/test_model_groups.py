"""A model group served by a real `kairos serve` (native and grpc.aio transports): the
response names the variant, floors are checked, and the group shows in the model's
description, `kairos models describe` and the metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from kairos.protos import codec
from kairos.protos import grpc_service_pb2 as pb
from kairos.protos import grpc_service_pb2_grpc as pb_grpc
from kairos_testing.models import model_group_repository
from kairos_testing.server import running_server

X = np.random.default_rng(1).standard_normal((3, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return model_group_repository(tmp_path_factory.mktemp("group"))


@pytest.fixture(scope="module", params=["native", "aio"])
def server(request, repo):
    with running_server(repo, "--transport", request.param) as server:
        yield server


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def infer(stub, model: str = "mlp", **parameters) -> pb.ModelInferResponse:
    request = codec.build_request(model, {"input": X})
    for key, value in parameters.items():
        request.parameters[key].double_param = value
    return stub.ModelInfer(request, timeout=10)


def reference(repo, model: str) -> np.ndarray:
    session = ort.InferenceSession(str(repo / model / "1" / "model.onnx"))
    return session.run(None, {"input": X})[0]


def test_an_idle_group_answers_from_its_reference_and_says_so(stub, repo):
    response = infer(stub)
    assert response.parameters["kairos_variant"].string_param == "fp32"
    out = codec.decode_response_outputs(response)
    np.testing.assert_allclose(next(iter(out.values())), reference(repo, "mlp"), rtol=1e-5)


def test_a_member_is_still_served_on_its_own(stub, repo):
    response = infer(stub, "mlp-int8")
    assert "kairos_variant" not in response.parameters
    out = next(iter(codec.decode_response_outputs(response).values()))
    np.testing.assert_allclose(out, reference(repo, "mlp-int8"), rtol=1e-5)


def test_a_floor_is_accepted_and_a_bad_one_named(stub):
    assert infer(stub, kairos_min_accuracy=0.999).parameters["kairos_variant"].string_param == "fp32"
    for bad in (1.5, -0.1):
        with pytest.raises(grpc.RpcError) as caught:
            infer(stub, kairos_min_accuracy=bad)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "kairos_min_accuracy" in caught.value.details()
    request = codec.build_request("mlp", {"input": X})
    request.parameters["kairos_min_accuracy"].string_param = "high"
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "string_param" in caught.value.details()


def test_the_description_lists_the_variants_with_accuracy_and_latency(stub, server):
    infer(stub)
    config = stub.ModelConfig(pb.ModelConfigRequest(name="mlp"), timeout=10)
    scheduler = json.loads(config.config.parameters["kairos.scheduler"].string_value)
    group = scheduler["variants"]
    assert [(v["name"], v["accuracy"]) for v in group["variants"]] == [
        ("fp32", 1.0), ("int8", 0.99), ("pruned", 0.9)]
    assert group["accuracy_budget"] == 0.02
    assert all(v["latency_table"][0]["predicted_s"] > 0 for v in group["variants"])
    shown = subprocess.run(
        [str(Path(sys.executable).parent / "kairos"), "models", "describe", "mlp", "--url", server.address],
        capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "accuracy spent" in shown.stdout
    lines = [line.split() for line in shown.stdout.splitlines()]
    assert ["int8", "0.9900"] in [line[:2] for line in lines]


def test_metrics_count_rows_per_variant_and_the_budget(stub, server):
    infer(stub)
    page = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    assert 'kairos_variant_rows_total{model="mlp",variant="fp32",version="1"}' in page or (
        'kairos_variant_rows_total{model="mlp",version="1",variant="fp32"}' in page)
    assert 'kairos_variant_accuracy_budget{model="mlp",version="1"} 0.02' in page
