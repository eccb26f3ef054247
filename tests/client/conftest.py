"""A minimal third-party-style V2 server: the test double for "the client works against any
V2 server", not only Kairos.

It implements the GRPCInferenceService stub directly and, unlike Kairos, can answer with typed
`contents` instead of `raw_output_contents` (as some V2 servers do), so the tests prove the
client decodes both. Models:

- `identity`: every input comes back as output `<name>_out`; a request parameter `sleep_ms`
  delays the answer (for deadline tests); `fail=true` answers INVALID_ARGUMENT naming the input.
- `broken`: listed in the repository as UNAVAILABLE with a reason; inference answers UNAVAILABLE.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from kairos.protos import codec
from kairos.protos import grpc_service_pb2 as pb
from kairos.protos import grpc_service_pb2_grpc as pb_grpc
from kairos.protos import model_config_pb2 as mc

_TYPE_OF = {
    "BOOL": mc.TYPE_BOOL,
    "INT64": mc.TYPE_INT64,
    "FP32": mc.TYPE_FP32,
    "BYTES": mc.TYPE_STRING,
}


@dataclass
class FakeState:
    typed_outputs: bool = False  # answer with typed `contents` instead of raw bytes
    loaded: dict[str, bool] = field(default_factory=lambda: {"identity": True, "broken": False})
    seen_metadata: list[dict[str, str]] = field(default_factory=list)
    # Each ModelStreamInfer call appends "open", then "half-closed" when the client half-closes.
    stream_events: list[str] = field(default_factory=list)
    # "in_order"; "swap_pairs": answers requests 0,1,2,3 as 1,0,3,2 (ids tell them apart);
    # "no_ids": in order but without echoing ids, as a non-compliant server might.
    stream_mode: str = "in_order"
    calls: int = 0


def _typed_output(tensor: pb.ModelInferResponse.InferOutputTensor, array: np.ndarray) -> None:
    flat = array.reshape(-1)
    if tensor.datatype == "FP32":
        tensor.contents.fp32_contents.extend(flat.tolist())
    elif tensor.datatype == "INT64":
        tensor.contents.int64_contents.extend(flat.tolist())
    elif tensor.datatype == "BOOL":
        tensor.contents.bool_contents.extend(flat.tolist())
    elif tensor.datatype == "BYTES":
        tensor.contents.bytes_contents.extend(bytes(item) for item in flat)
    else:
        raise ValueError(f"fake server cannot send {tensor.datatype} as typed contents")


class FakeV2Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state: FakeState) -> None:
        self.state = state

    def _note(self, context: grpc.ServicerContext) -> None:
        self.state.calls += 1
        self.state.seen_metadata.append(dict(context.invocation_metadata()))

    def _check_model(self, name: str, version: str, context: grpc.ServicerContext) -> None:
        if name not in self.state.loaded or version not in ("", "1"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"model '{name}' version '{version}' not found")
        if not self.state.loaded[name]:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"model '{name}' is not loaded")

    def ServerLive(self, request, context):
        self._note(context)
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        self._note(context)
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):
        self._note(context)
        return pb.ModelReadyResponse(ready=self.state.loaded.get(request.name, False))

    def ServerMetadata(self, request, context):
        self._note(context)
        return pb.ServerMetadataResponse(name="fake", version="0", extensions=["statistics"])

    def ModelMetadata(self, request, context):
        self._note(context)
        self._check_model(request.name, request.version, context)
        reply = pb.ModelMetadataResponse(name=request.name, versions=["1"], platform="fake")
        reply.inputs.add(name="x", datatype="FP32", shape=[-1, 2])
        reply.inputs.add(name="ids", datatype="INT64", shape=[-1])
        reply.outputs.add(name="x_out", datatype="FP32", shape=[-1, 2])
        reply.outputs.add(name="ids_out", datatype="INT64", shape=[-1])
        return reply

    def ModelConfig(self, request, context):
        self._note(context)
        self._check_model(request.name, request.version, context)
        config = mc.ModelConfig(name=request.name, platform="fake", max_batch_size=8)
        config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[2])
        config.output.add(name="x_out", data_type=mc.TYPE_FP32, dims=[2])
        # The layout a real Kairos server sends (server/transport/describe.py); the CLI's
        # describe test checks the same layout against a real server too.
        config.parameters["kairos.policy"].string_value = "slo"
        config.parameters["kairos.slo_ms"].string_value = "20"
        config.parameters["kairos.scheduler"].string_value = json.dumps({
            "policy": "slo",
            "latency_table": [
                {"batch_size": 1, "predicted_s": 0.0002, "observations": 40},
                {"batch_size": 8, "predicted_s": 0.0003, "observations": 40},
            ],
            "queue": {"requests": 0, "rows": 0},
        })
        return pb.ModelConfigResponse(config=config)

    def ModelStatistics(self, request, context):
        self._note(context)
        stats = pb.ModelStatisticsResponse()
        entry = stats.model_stats.add(name="identity", version="1", inference_count=3)
        entry.inference_stats.success.count = 3
        entry.inference_stats.success.ns = 3000
        return stats

    def RepositoryIndex(self, request, context):
        self._note(context)
        reply = pb.RepositoryIndexResponse()
        for name, loaded in sorted(self.state.loaded.items()):
            if request.ready and not loaded:
                continue
            reply.models.add(
                name=name,
                version="1",
                state="READY" if loaded else "UNAVAILABLE",
                reason="" if loaded else "corrupt model.onnx: protobuf parsing failed",
            )
        return reply

    def RepositoryModelLoad(self, request, context):
        self._note(context)
        if request.model_name not in self.state.loaded:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model '{request.model_name}' in the repository")
        if request.model_name == "broken":
            context.abort(grpc.StatusCode.UNAVAILABLE, "failed to load 'broken': protobuf parsing failed")
        self.state.loaded[request.model_name] = True
        return pb.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, request, context):
        self._note(context)
        if request.model_name not in self.state.loaded:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model '{request.model_name}' in the repository")
        self.state.loaded[request.model_name] = False
        return pb.RepositoryModelUnloadResponse()

    def _answer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        """The identity model's answer, or ValueError with the message to send back."""
        params = {k: codec.parameter_value(v) for k, v in request.parameters.items()}
        if params.get("sleep_ms"):
            time.sleep(params["sleep_ms"] / 1000)
        inputs = codec.decode_request_inputs(request)
        if params.get("fail"):
            raise ValueError(f"input '{next(iter(inputs))}': rejected on request")
        wanted = [o.name for o in request.outputs] or [f"{name}_out" for name in inputs]
        outputs = {f"{name}_out": array for name, array in inputs.items()}
        for name in wanted:
            if name not in outputs:
                raise ValueError(f"unknown output '{name}'")
        response = pb.ModelInferResponse(
            model_name=request.model_name, model_version="1", id=request.id
        )
        response.parameters["served_by"].string_param = "fake"
        selected = {name: outputs[name] for name in wanted}
        if self.state.typed_outputs:
            for name, array in selected.items():
                tensor = response.outputs.add(
                    name=name, datatype=codec.datatype_of(array), shape=array.shape
                )
                _typed_output(tensor, array)
        else:
            codec.fill_response_outputs(response, selected)
        return response

    def ModelInfer(self, request, context):
        self._note(context)
        self._check_model(request.model_name, request.model_version, context)
        try:
            return self._answer(request)
        except (ValueError, codec.TensorError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    def _stream_answer(self, request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
        if request.model_name not in self.state.loaded:
            return pb.ModelStreamInferResponse(
                error_message=f"NOT_FOUND: model '{request.model_name}' not found",
                infer_response=pb.ModelInferResponse(id=request.id),
            )
        try:
            response = pb.ModelStreamInferResponse(infer_response=self._answer(request))
        except (ValueError, codec.TensorError) as exc:
            response = pb.ModelStreamInferResponse(
                error_message=str(exc), infer_response=pb.ModelInferResponse(id=request.id)
            )
        if self.state.stream_mode == "no_ids":
            response.infer_response.id = ""
        return response

    def ModelStreamInfer(self, request_iterator, context):
        self._note(context)
        self.state.stream_events.append("open")
        held = []
        for request in request_iterator:
            held.append(self._stream_answer(request))
            if self.state.stream_mode != "swap_pairs" or len(held) == 2:
                yield from reversed(held)
                held.clear()
        yield from held
        # The request iterator ends when the client half-closes; so does the stream.
        self.state.stream_events.append("half-closed")


@dataclass
class FakeServer:
    address: str
    state: FakeState


@contextlib.contextmanager
def start_fake_server(
    credentials: grpc.ServerCredentials | None = None,
) -> Iterator[FakeServer]:
    """The fake V2 server on a free loopback port (TLS when `credentials` are given)."""
    state = FakeState()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(FakeV2Servicer(state), server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield FakeServer(f"127.0.0.1:{port}", state)
    finally:
        server.stop(grace=None)


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    """The fake V2 server, for one test."""
    with start_fake_server() as server:
        yield server


@pytest.fixture
def fake_server_factory():
    """`start_fake_server` itself, for tests that need a TLS fake server."""
    return start_fake_server


@pytest.fixture
def free_port() -> int:
    """A loopback port with nothing listening (for connection-refused tests)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- a real Kairos server ------------------------------------------------------------------


@pytest.fixture(scope="session")
def kairos_server(tmp_path_factory):
    """`python -m kairos.server` on free ports over the standard test repository (one per
    session: it starts in well under a second). Tests that unload a model load it back."""
    from kairos_testing.models import standard_repository
    from kairos_testing.server import running_server

    repo = standard_repository(tmp_path_factory.mktemp("client-repo") / "repo")
    with running_server(repo) as server:
        yield server
