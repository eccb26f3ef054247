"""The KServe runtime's own container args, run for real: `kairos serve` with the args of
deploy/kubernetes/kserve/clusterservingruntime.yaml ({{.Name}} filled in, /mnt/models
pointing at a folder laid out as KServe's storage initializer leaves a single ONNX file)
serves that model under the InferenceService's name."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
from kairos.protos import codec
from kairos.protos import grpc_service_pb2 as pb
from kairos.protos import grpc_service_pb2_grpc as pb_grpc
from kairos_testing.kubernetes import KSERVE, documents
from kairos_testing.reliability import mlp, mlp_reference
from kairos_testing.server import running_server

WIDTH = 32


def runtime_args(model_dir: Path, name: str) -> list[str]:
    (runtime,) = documents(KSERVE / "clusterservingruntime.yaml")
    (container,) = runtime["spec"]["containers"]
    args = []
    for arg in container["args"]:
        arg = arg.replace("{{.Name}}", name).replace("/mnt/models", str(model_dir))
        if arg.startswith(("--grpc-port=", "--metrics-port=")):
            arg = arg.split("=")[0] + "=0"  # free ports here; 8001/8002 in the pod
        args.append(arg)
    return args


def test_the_runtime_args_serve_a_single_onnx_file(tmp_path: Path) -> None:
    mounted = tmp_path / "mnt-models"
    mounted.mkdir()
    model = mlp(WIDTH, 2, seed=5)
    (mounted / "model.onnx").write_bytes(model.SerializeToString())
    args = runtime_args(mounted, "my-model")
    assert f"--model-dir={mounted}" in args and "--model-name=my-model" in args
    with running_server(None, *args) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30)
        assert [(m.name, m.version, m.state) for m in index.models] == [("my-model", "1", "READY")]
        x = np.random.default_rng(0).standard_normal((3, WIDTH)).astype(np.float32)
        reply = stub.ModelInfer(codec.build_request("my-model", {"input": x}), timeout=30)
        out = codec.decode_response_outputs(reply)["output"]
        assert np.allclose(out, mlp_reference(model, x), rtol=1e-4, atol=1e-4)
