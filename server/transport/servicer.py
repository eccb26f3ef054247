"""The GRPCInferenceService implementation (grpc.aio).

Turns each request into numpy arrays plus a deadline and priority, hands it to
the model's dispatcher, and turns results or typed errors into responses and
gRPC status codes. Errors are answered with `set_code` + an empty message rather
than `abort` (which raises), because refusing must stay cheap under overload.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import grpc
from google.protobuf.message import DecodeError
from kairos.protos import codec
from kairos.protos import grpc_service_pb2 as pb
from kairos.protos import grpc_service_pb2_grpc as pb_grpc

from .. import __version__
from ..errors import (
    Cancelled,
    DeadlineExceeded,
    InternalError,
    InvalidInput,
    KairosError,
    LimitExceeded,
    ModelNotFound,
    ModelUnavailable,
    Refused,
    ShuttingDown,
    short,
)
from ..metrics import MetricsSink
from ..repository import ModelRepository, ServedVersion
from ..statistics import StatisticsRecorder
from ..types import InferenceRequest
from ..validation import validate_inputs, validate_outputs
from . import describe

log = logging.getLogger("kairos.transport")

STATUS_OF: dict[type[KairosError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    ModelUnavailable: grpc.StatusCode.UNAVAILABLE,
    ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    Refused: grpc.StatusCode.RESOURCE_EXHAUSTED,
    LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cancelled: grpc.StatusCode.CANCELLED,
    InternalError: grpc.StatusCode.INTERNAL,
}
EXTENSIONS = ["model_repository", "model_configuration", "statistics", "schedule_policy"]
# Request parameters Kairos reads; others are accepted and ignored, as V2 servers do.
BATCH_CLASS_PARAMETER = "kairos_class"
# A request's floor on the accuracy of the model-group variant that serves it, and the
# response parameter naming the variant that did.
MIN_ACCURACY_PARAMETER = "kairos_min_accuracy"
VARIANT_PARAMETER = "kairos_variant"
STREAM_WINDOW = 1024  # requests in flight per stream before reading pauses


class Undecodable:
    """Stands in for a request whose bytes are not a valid protobuf message, so the
    client gets INVALID_ARGUMENT with the parser's message instead of gRPC's UNKNOWN."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _tolerant(parse: Callable[[bytes], object], type_name: str) -> Callable[[bytes], object]:
    def deserialize(data: bytes) -> object:
        try:
            return parse(data)
        except DecodeError as exc:
            return Undecodable(f"request is not a valid {type_name} message: {exc}")

    return deserialize


def _guard_unary(behavior, empty_response):
    async def guarded(request, context):
        if isinstance(request, Undecodable):
            context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            context.set_details(request.message)
            return empty_response()
        return await behavior(request, context)

    return guarded


def add_to_server(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Register the service like the generated `add_..._to_server`, except that a
    request which does not parse is answered INVALID_ARGUMENT rather than UNKNOWN."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers = {}
    for method in service.methods:
        request_class = getattr(pb, method.input_type.name)
        response_class = getattr(pb, method.output_type.name)
        behavior = getattr(servicer, method.name)
        deserialize = _tolerant(request_class.FromString, method.input_type.full_name)
        serialize = response_class.SerializeToString
        if method.client_streaming and method.server_streaming:
            # Stream messages are checked one by one in `_stream_one`.
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                behavior, request_deserializer=deserialize, response_serializer=serialize
            )
        elif not method.client_streaming and not method.server_streaming:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _guard_unary(behavior, response_class),
                request_deserializer=deserialize,
                response_serializer=serialize,
            )
        else:  # pragma: no cover - the V2 service has no such methods
            raise TypeError(f"unsupported streaming shape for {method.full_name}")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def status_of(error: KairosError) -> grpc.StatusCode:
    return STATUS_OF.get(type(error), grpc.StatusCode.INTERNAL)


def grpc_code_of(error: KairosError) -> int:
    """The gRPC status number for an error (what the native front end sends)."""
    return status_of(error).value[0]


class ServingOptions:
    def __init__(
        self,
        *,
        default_slo_s: float = 1.0,
        max_rows_per_request: int = 100_000,
        repository_control: bool = True,
        max_streams: int = 0,
    ) -> None:
        self.default_slo_s = default_slo_s
        # Rows beyond this in one request: RESOURCE_EXHAUSTED, like the message-size limit.
        self.max_rows_per_request = max_rows_per_request
        self.repository_control = repository_control
        self.max_streams = max_streams  # concurrent ModelStreamInfer calls; 0 = no limit


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        repository: ModelRepository,
        metrics: MetricsSink,
        statistics: StatisticsRecorder,
        options: ServingOptions,
        is_ready: Callable[[], bool],
    ) -> None:
        self.repository = repository
        self.metrics = metrics
        self.statistics = statistics
        self.options = options
        self.is_ready = is_ready
        self.accepting = True
        self.streams: set[_Stream] = set()

    # ---- health and metadata -----------------------------------------------------------

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.is_ready())

    async def ModelReady(self, request, context):
        try:
            self.repository.resolve(request.name, request.version)
        except InvalidInput as exc:
            return self._fail(context, exc, pb.ModelReadyResponse())
        except KairosError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.accepting)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="kairos", version=__version__, extensions=EXTENSIONS)

    async def ModelMetadata(self, request, context):
        try:
            served = self.repository.resolve(request.name, request.version)
        except KairosError as exc:
            return self._fail(context, exc, pb.ModelMetadataResponse())
        return describe.model_metadata(served, self.repository.versions(request.name))

    async def ModelConfig(self, request, context):
        try:
            served = self.repository.resolve(request.name, request.version)
        except KairosError as exc:
            return self._fail(context, exc, pb.ModelConfigResponse())
        return pb.ModelConfigResponse(config=describe.model_config(served))

    async def ModelStatistics(self, request, context):
        try:
            versions = self._statistics_targets(request.name, request.version)
        except KairosError as exc:
            return self._fail(context, exc, pb.ModelStatisticsResponse())
        return pb.ModelStatisticsResponse(model_stats=[self._model_stats(v) for v in versions])

    def _statistics_targets(self, name: str, version: str) -> list[ServedVersion]:
        if not name:
            return self.repository.served_versions()
        if version:
            return [self.repository.resolve(name, version)]
        self.repository.resolve(name)  # NOT_FOUND / UNAVAILABLE as for inference
        return [v for v in self.repository.served_versions() if v.model == name]

    def _model_stats(self, served: ServedVersion) -> pb.ModelStatistics:
        snap = self.statistics.snapshot(served.model, served.version)

        def duration(d) -> pb.StatisticDuration:
            return pb.StatisticDuration(count=d.count, ns=d.ns)

        return pb.ModelStatistics(
            name=served.model,
            version=served.version,
            last_inference=snap.last_inference_ms,
            inference_count=snap.inference_count,
            execution_count=snap.execution_count,
            inference_stats=pb.InferStatistics(
                success=duration(snap.success),
                fail=duration(snap.fail),
                queue=duration(snap.queue),
                compute_infer=duration(snap.compute_infer),
                compute_input=pb.StatisticDuration(count=snap.compute_infer.count),
                compute_output=pb.StatisticDuration(count=snap.compute_infer.count),
            ),
            batch_stats=[
                pb.InferBatchStatistics(
                    batch_size=rows,
                    compute_infer=duration(d),
                    compute_input=pb.StatisticDuration(count=d.count),
                    compute_output=pb.StatisticDuration(count=d.count),
                )
                for rows, d in sorted(snap.batches.items())
            ],
        )

    # ---- repository ------------------------------------------------------------------

    async def RepositoryIndex(self, request, context):
        entries = self.repository.index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=e.name, version=e.version, state=e.state, reason=e.reason
                )
                for e in entries
            ]
        )

    async def RepositoryModelLoad(self, request, context):
        return await self._repository_control(
            request, context, self.repository.load, pb.RepositoryModelLoadResponse
        )

    async def RepositoryModelUnload(self, request, context):
        return await self._repository_control(
            request, context, self.repository.unload, pb.RepositoryModelUnloadResponse
        )

    async def _repository_control(self, request, context, action, response_type):
        """Load or unload one model, unless repository control is refused."""
        if error := self._repository_control_refusal(request):
            context.set_code(error[0])
            context.set_details(error[1])
            return response_type()
        try:
            await action(request.model_name)
        except KairosError as exc:
            return self._fail(context, exc, response_type())
        return response_type()

    def _repository_control_refusal(self, request) -> tuple[grpc.StatusCode, str] | None:
        if not self.options.repository_control:
            return grpc.StatusCode.PERMISSION_DENIED, "repository load/unload is disabled on this server"
        if request.repository_name:
            return grpc.StatusCode.NOT_FOUND, (
                f"unknown repository '{short(request.repository_name)}'; this server has one (use '')"
            )
        # Kairos models have no dependents, so `unload_dependents` has nothing to do.
        unsupported = sorted(set(request.parameters) - {"unload_dependents"})
        if unsupported:
            return grpc.StatusCode.INVALID_ARGUMENT, (
                f"repository parameter '{short(unsupported[0])}' is not supported"
            )
        return None

    # ---- inference -------------------------------------------------------------------

    async def ModelInfer(self, request, context):
        arrival = time.monotonic()
        remaining = context.time_remaining()
        try:
            return await self._infer(request, arrival, remaining)
        except KairosError as exc:
            # abort, not set_code + return: only abort sends a trailers-only response (the
            # status in the headers), the one form a proxy (Envoy) can retry elsewhere.
            await context.abort(status_of(exc), str(exc))

    async def ModelStreamInfer(self, request_iterator, context) -> AsyncIterator:
        """Requests are handled concurrently; each response carries its request's id.
        The stream ends once the client half-closes and every response is sent, or
        when the server shuts down (status UNAVAILABLE, after the requests it read
        are answered)."""
        limit = self.options.max_streams
        if limit and len(self.streams) >= limit:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{len(self.streams)} streams open; this server allows at most {limit} "
                "concurrent ModelStreamInfer calls",
            )
        stream = _Stream()
        self.streams.add(stream)
        try:
            async for item in self._serve_stream(request_iterator, stream):
                yield item
            if stream.closed_by_server:
                context.set_code(grpc.StatusCode.UNAVAILABLE)
                context.set_details(
                    "server is shutting down: the stream was closed after answering every "
                    "request it had read; resend the rest elsewhere"
                )
        finally:
            self.streams.discard(stream)

    @property
    def active_streams(self) -> int:
        return len(self.streams)

    async def close_streams(self) -> None:
        """Shutdown (after `accepting` turned False): let every open stream answer the
        requests it has read, then end it, so clients holding streams open need not
        wait out the grace period."""
        await asyncio.gather(*(stream.close() for stream in list(self.streams)))

    async def _serve_stream(self, request_iterator, stream: _Stream) -> AsyncIterator:
        if stream.closed_by_server:
            return
        results: asyncio.Queue = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)
        reader = stream.reader = asyncio.create_task(
            self._read_stream(request_iterator, results, window, stream.tasks)
        )
        try:
            while True:
                item = await results.get()
                if item is None:
                    break
                window.release()
                yield item
            if not stream.closed_by_server:
                await reader
        finally:
            reader.cancel()

    async def _read_stream(self, requests, results: asyncio.Queue, window, tasks: set) -> None:
        try:
            async for request in requests:
                await window.acquire()
                task = asyncio.create_task(self._stream_one(request, results))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await results.put(None)

    async def _stream_one(self, request, results: asyncio.Queue) -> None:
        arrival = time.monotonic()
        if isinstance(request, Undecodable):
            message = f"{grpc.StatusCode.INVALID_ARGUMENT.name}: {request.message}"
            await results.put(pb.ModelStreamInferResponse(error_message=message))
            return
        try:
            # A stream's gRPC deadline covers the whole stream, not each request.
            response = await self._infer(request, arrival, None)
            await results.put(pb.ModelStreamInferResponse(infer_response=response))
        except KairosError as exc:
            failed = pb.ModelInferResponse(
                model_name=request.model_name, model_version=request.model_version, id=request.id
            )
            message = f"{status_of(exc).name}: {exc}"
            await results.put(pb.ModelStreamInferResponse(error_message=message, infer_response=failed))

    async def _infer(self, request, arrival: float, remaining: float | None) -> pb.ModelInferResponse:
        metrics = self.metrics
        name = request.model_name
        served: ServedVersion | None = None
        rows, klass, outcome, deadline = 0, "online", "success", None
        metrics.request_started(name, request.model_version)
        try:
            if not self.accepting:
                raise ShuttingDown("server is shutting down")
            served = self.repository.resolve(name, request.model_version)
            if remaining is not None:
                self._refuse_hopeless(served, remaining)
            inference = self._decode(request, served, arrival, remaining)
            rows, klass, deadline = inference.rows, inference.klass, inference.deadline
            result = await served.dispatcher.submit(inference)
            response = pb.ModelInferResponse(
                model_name=name, model_version=served.version, id=request.id
            )
            codec.fill_response_outputs(response, result)
            if inference.served_by:
                response.parameters[VARIANT_PARAMETER].string_param = inference.served_by
            return response
        except KairosError as exc:
            outcome = exc.reason
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception as exc:  # noqa: BLE001 - never let a bug kill the server
            log.exception("unexpected error serving %s", name)
            outcome = "internal"
            raise InternalError(f"internal error: {type(exc).__name__}: {exc}") from None
        finally:
            done = time.monotonic()
            version = served.version if served else request.model_version
            met = None if deadline is None or outcome not in ("success", "deadline_exceeded") else (
                done <= deadline
            )
            metrics.request_finished(name, version, outcome, done - arrival, rows, klass, met)
            metrics.request_ended(name, request.model_version)

    @staticmethod
    def _refuse_hopeless(served: ServedVersion, remaining: float) -> None:
        """Refuse before decoding what cannot make its gRPC deadline: under overload
        requests reach the handler already late, and decoding them is wasted CPU."""
        hopeless = getattr(served.dispatcher, "hopeless", None)
        if hopeless is None or not hopeless(remaining):
            return
        if remaining <= 0:
            raise DeadlineExceeded("the deadline passed before the request was read")
        raise Refused(
            f"cannot meet deadline: {remaining * 1e3:.3f} ms left is less than one execution"
        )

    def _decode(
        self, request, served: ServedVersion, arrival: float, remaining: float | None
    ) -> InferenceRequest:
        try:
            inputs = codec.decode_request_inputs(request)
        except codec.TensorError as exc:
            raise InvalidInput(str(exc)) from None
        signature = served.signature
        rows, shape_key = validate_inputs(signature, inputs)
        _check_text(signature, inputs)
        limit = self.options.max_rows_per_request
        if limit and rows > limit:
            raise LimitExceeded(f"{rows} rows in one request; this server accepts at most {limit}")
        outputs = validate_outputs(signature, [o.name for o in request.outputs])
        timeout_us, priority, klass = _read_parameters(request.parameters)
        min_accuracy = _min_accuracy(request.parameters)
        return InferenceRequest(
            model=served.model,
            version=served.version,
            inputs=inputs,
            outputs=outputs,
            rows=rows,
            deadline=self._deadline(served, arrival, remaining, timeout_us),
            arrival=arrival,
            priority=priority,
            klass=klass,
            request_id=request.id,
            shape_key=shape_key,
            min_accuracy=min_accuracy,
        )

    def _deadline(
        self, served: ServedVersion, arrival: float, remaining: float | None, timeout_us: int | None
    ) -> float:
        """The gRPC deadline, then the `timeout` parameter, then the model's SLO, then the
        server default; when both a gRPC deadline and a timeout are given the earlier wins."""
        limits = []
        if remaining is not None:
            limits.append(remaining)
        if timeout_us is not None:
            limits.append(timeout_us / 1e6)
        if not limits:
            slo_ms = served.settings.slo_ms
            limits.append(slo_ms / 1000 if slo_ms else self.options.default_slo_s)
        return arrival + min(limits)

    def _fail(self, context, error: KairosError, empty):
        context.set_code(status_of(error))
        context.set_details(str(error))
        return empty


def _check_text(signature, inputs: dict) -> None:
    """BYTES inputs feed ONNX string tensors, which must be UTF-8. Checked here, per
    request, so that one bad request is refused alone instead of failing the batch
    it would have joined (the backend decodes whole batches)."""
    for spec in signature.inputs:
        if spec.datatype != "BYTES":
            continue
        for index, item in enumerate(inputs[spec.name].flat):
            try:
                item.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(
                    f"input '{spec.name}': BYTES element {index} is not valid UTF-8: {exc}"
                ) from None
            except AttributeError:  # already text (typed contents decode to bytes; be safe)
                continue


class _Stream:
    """One open ModelStreamInfer call: its reader task and the requests in progress."""

    def __init__(self) -> None:
        self.reader: asyncio.Task | None = None
        self.tasks: set[asyncio.Task] = set()
        self.closed_by_server = False

    async def close(self) -> None:
        # Every task was created before `accepting` turned False (and is answered) or
        # after (and refuses at once): waiting for this snapshot loses no accepted request.
        pending = list(self.tasks)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        self.closed_by_server = True
        if self.reader is not None:
            self.reader.cancel()


def _read_parameters(parameters) -> tuple[int | None, int, str]:
    """(timeout µs, priority, class) from request parameters, type-checked."""
    if not parameters:
        return None, 0, "online"
    timeout_us = None
    priority = 0
    klass = "online"
    if "timeout" in parameters:
        timeout_us = _int_parameter(parameters["timeout"], "timeout")
        if timeout_us <= 0:
            raise InvalidInput(f"parameter 'timeout' must be a positive number of microseconds, not {timeout_us}")
    if "priority" in parameters:
        priority = _int_parameter(parameters["priority"], "priority")
        if priority < 0:
            raise InvalidInput(f"parameter 'priority' must be >= 0, not {priority}")
    if BATCH_CLASS_PARAMETER in parameters:
        value = codec.parameter_value(parameters[BATCH_CLASS_PARAMETER])
        if value not in ("online", "batch"):
            raise InvalidInput(
                f"parameter '{BATCH_CLASS_PARAMETER}' must be the string 'online' or 'batch', not {short(repr(value))}"
            )
        klass = value
    return timeout_us, priority, klass


def _min_accuracy(parameters) -> float:
    """The `kairos_min_accuracy` floor (a number in [0, 1]); 0 when absent."""
    if not parameters or MIN_ACCURACY_PARAMETER not in parameters:
        return 0.0
    parameter = parameters[MIN_ACCURACY_PARAMETER]
    choice = parameter.WhichOneof("parameter_choice")
    value = getattr(parameter, choice) if choice in ("double_param", "int64_param", "uint64_param") else None
    if value is None or not 0.0 <= value <= 1.0:
        shown = choice or "unset" if value is None else repr(value)
        raise InvalidInput(
            f"parameter '{MIN_ACCURACY_PARAMETER}' must be a number in [0, 1] (double_param), not {shown}"
        )
    return float(value)


def _int_parameter(parameter: pb.InferParameter, name: str) -> int:
    choice = parameter.WhichOneof("parameter_choice")
    if choice not in ("int64_param", "uint64_param"):
        raise InvalidInput(f"parameter '{name}' must be an integer (int64_param), not {choice or 'unset'}")
    return int(getattr(parameter, choice))
