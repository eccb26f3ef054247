"""The floor: a bare grpc.aio V2 server that answers ModelInfer without running a model.

It is what any Python gRPC inference server costs before doing any work, so Kairos's
latency and throughput are quoted against it. ModelInfer parses the request (a real
server must) and returns one pre-built response shaped like `mlp256`'s: output
"output", FP32, [rows, 10] of zeros, where rows is the request's first dim.
ModelMetadata, ServerLive/Ready, ModelReady, ServerMetadata, ModelStatistics (empty)
and grpc.health.v1 answer enough for `kairos bench` and other V2 clients.

    python bench/floor_server.py --port 8001 [--host 127.0.0.1] [--port-file F] [--raw]

A request parameter `delay_ms` delays the answer (for tests of deadlines).
`--raw` skips protobuf entirely on ModelInfer (bytes in, constant bytes out): the
cheapest possible unary handler, used to measure the load generator's own capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from kairos.protos import codec
from kairos.protos import grpc_service_pb2 as pb
from kairos.protos import grpc_service_pb2_grpc as pb_grpc

MODEL = "mlp256"
INPUT_WIDTH = 256
OUTPUT_WIDTH = 10
INFER_METHOD = "ModelInfer"
SERVICE = "inference.GRPCInferenceService"


def constant_response(rows: int, model: str = MODEL) -> pb.ModelInferResponse:
    """What mlp256 answers for `rows` rows, with zeros for values."""
    response = pb.ModelInferResponse(model_name=model, model_version="1")
    response.outputs.add(name="output", datatype="FP32", shape=[rows, OUTPUT_WIDTH])
    response.raw_output_contents.append(bytes(4 * rows * OUTPUT_WIDTH))
    return response


class FloorServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Constant answers; ModelInfer does no work beyond parsing its request."""

    def __init__(self) -> None:
        # Pre-serialized per row count (requests use few distinct sizes).
        self._responses: dict[int, pb.ModelInferResponse] = {1: constant_response(1)}

    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        if request.parameters:  # only tests set one: "delay_ms" holds the answer back
            delay = request.parameters.get("delay_ms")
            if delay is not None:
                await asyncio.sleep(codec.parameter_value(delay) / 1e3)
        rows = request.inputs[0].shape[0] if request.inputs and request.inputs[0].shape else 1
        response = self._responses.get(rows)
        if response is None:
            response = self._responses.setdefault(rows, constant_response(rows))
        if request.id:  # perf_analyzer-style clients match replies by id
            response = pb.ModelInferResponse.FromString(response.SerializeToString())
            response.id = request.id
        return response

    async def ServerLive(self, request, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=request.name == MODEL)

    async def ServerMetadata(self, request, context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="kairos-floor", version="0", extensions=[])

    async def ModelMetadata(self, request, context) -> pb.ModelMetadataResponse:
        if request.name != MODEL:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model '{request.name}' not found")
        return model_metadata()

    async def ModelStatistics(self, request, context) -> pb.ModelStatisticsResponse:
        return pb.ModelStatisticsResponse()


def model_metadata() -> pb.ModelMetadataResponse:
    meta = pb.ModelMetadataResponse(name=MODEL, versions=["1"], platform="floor")
    meta.inputs.add(name="input", datatype="FP32", shape=[-1, INPUT_WIDTH])
    meta.outputs.add(name="output", datatype="FP32", shape=[-1, OUTPUT_WIDTH])
    return meta


def raw_infer_handler() -> grpc.GenericRpcHandler:
    """ModelInfer with identity (de)serializers: bytes in, one constant reply out."""
    reply = constant_response(1).SerializeToString()

    async def infer(request: bytes, context) -> bytes:
        return reply

    handler = grpc.unary_unary_rpc_method_handler(infer)  # no (de)serializers: raw bytes
    return grpc.method_handlers_generic_handler(SERVICE, {INFER_METHOD: handler})


async def serve(host: str, port: int, port_file: Path | None, raw: bool) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", -1)])
    if raw:  # generic handlers are consulted first, so this shadows the typed ModelInfer
        server.add_generic_rpc_handlers((raw_infer_handler(),))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(FloorServicer(), server)
    health_servicer = health.aio.HealthServicer() if hasattr(health, "aio") else None
    if health_servicer is None:  # pragma: no cover - older grpcio-health-checking
        health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    result = health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    if asyncio.iscoroutine(result):
        await result
    if port_file is not None:  # written last: its presence means "serving"
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"grpc_port": bound, "pid": os.getpid()}))
        tmp.replace(port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="0 picks a free port")
    parser.add_argument("--port-file", type=Path, help="write {grpc_port, pid} JSON here once serving")
    parser.add_argument("--raw", action="store_true", help="ModelInfer without protobuf parsing")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.port_file, args.raw))


if __name__ == "__main__":
    main()
