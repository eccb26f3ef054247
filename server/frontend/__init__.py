"""The native front end's Python face.

The Rust crate beside this file (`_native`, built by `pip install`) serves gRPC on
its own threads: it decodes and validates inference requests against the signatures
published here, stamps their arrival, computes their deadline, and refuses natively
what needs no Python. What it accepts waits in its arrival queue; it makes an
eventfd readable when the queue turns non-empty. `NativeTransport` registers that
descriptor with the asyncio loop, so one wake-up hands over every arrival since the
last (one GIL acquisition per drain, never one per request), and results go back
in bulk, once per loop iteration. Metadata, configuration, statistics and
repository RPCs arrive as encoded messages and are answered by the same
`InferenceServicer` methods the grpc.aio transport uses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from kairos.protos import grpc_service_pb2 as pb

from ..errors import InternalError, KairosError
from ..metrics import MetricsSink
from ..repository import ModelRepository
from ..transport.servicer import InferenceServicer, grpc_code_of
from ..types import InferenceRequest
from ..validation import validate_inputs
from ._native import Frontend

log = logging.getLogger("kairos.frontend")

__all__ = ["Frontend", "NativeTransport"]

# Forwarded RPCs: method name -> request message class.
CALLS = {
    name: getattr(pb, f"{name}Request")
    for name in ("ServerMetadata", "ModelMetadata", "ModelConfig", "ModelStatistics",
                 "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload")
}
_INTERNAL = 13
_INF = float("inf")


@dataclass(slots=True)
class _Reply:
    """What a queued request's batch resolves: answers go straight to the transport's
    next flush (no future, no extra loop iteration)."""

    transport: NativeTransport
    rid: int
    model: str
    requested: str
    version: str
    rows: int
    klass: str
    arrival: float
    deadline: float
    request: InferenceRequest | None = None
    finished: bool = False

    def done(self) -> bool:
        return self.finished

    def set_result(self, outputs: dict) -> None:
        self.finished = True
        self.transport._answered(self, outputs)

    def set_exception(self, error: BaseException) -> None:
        self.finished = True
        self.transport._failed(self, error)


class _CallContext:
    """What the servicer's unary methods use of a grpc.aio context."""

    __slots__ = ("code", "details")

    def __init__(self) -> None:
        self.code = None
        self.details = ""

    def set_code(self, code) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details


def _signature_tuple(served) -> tuple:
    signature = served.signature

    def specs(items) -> list[tuple[str, str, list[int]]]:
        return [(spec.name, spec.datatype, list(spec.shape)) for spec in items]

    return specs(signature.inputs), specs(signature.outputs), signature.max_batch_size


def _min_service_s(served) -> float:
    """L(1): a request with less time left cannot be served."""
    return float(served.dispatcher.single_latency())


def _bytes_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """BYTES inputs arrive as (list of bytes, shape): make them object arrays."""
    for name, value in inputs.items():
        if isinstance(value, tuple):
            items, shape = value
            array = np.empty(len(items), dtype=np.object_)
            array[:] = items
            inputs[name] = array.reshape(shape)
    return inputs


class NativeTransport:
    """Drives the native front end from the asyncio loop the scheduler runs on."""

    def __init__(
        self,
        frontend: Frontend,
        repository: ModelRepository,
        metrics: MetricsSink,
        servicer: InferenceServicer,
    ) -> None:
        self.frontend = frontend
        self.repository = repository
        self.metrics = metrics
        self.servicer = servicer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._results: list[tuple] = []
        self._flush_scheduled = False
        self._calls: set[asyncio.Task] = set()
        # Versions that ran since L(1) was last published: (model, version) -> served.
        self._touched: dict[tuple[str, str], Any] = {}
        # (deadline, shape key) of the last online request admitted, per version.
        self._tails: dict[tuple[str, str], tuple[float, tuple]] = {}

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.repository.listeners.append(self.publish)
        self.publish_all()
        self._loop.add_reader(self.frontend.wakeup_fd, self._on_arrivals)

    def publish_all(self) -> None:
        for name in self.repository.known_names():
            self.publish(name)

    def publish(self, name: str) -> None:
        """Tell the front end what `name` serves now (called on every state change)."""
        state = self.repository.model_state(name)
        # L(1) starts at 0: a model with no queue refuses nothing natively (see
        # `_publish_service_floors`).
        versions = [
            (version, _signature_tuple(served),
             served.settings.slo_ms / 1000 if served.settings.slo_ms else None, 0.0)
            for version, served in state.served.items()
        ]
        self.frontend.publish(name, versions, state.latest, list(state.failed.items()), state.reason)

    async def drain(self, grace_s: float, drain_delay_s: float) -> None:
        """Not ready at once; requests are still served for `drain_delay_s` (while load
        balancers notice the NOT_SERVING health and move away, nothing they still send
        is lost); then GOAWAY: every request a client sent before it saw the GOAWAY is
        served, later ones find the listener closed (UNAVAILABLE)."""
        deadline = time.monotonic() + grace_s
        self.frontend.begin_drain()
        if drain_delay_s > 0:
            await asyncio.sleep(drain_delay_s)
        self.frontend.close_streams()
        # stop() blocks (GIL released) until every connection has finished.
        await asyncio.to_thread(self.frontend.stop, max(0.0, deadline - time.monotonic()))
        while self.frontend.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if self.frontend.in_flight:
            log.warning("grace period over with %d requests unanswered", self.frontend.in_flight)
        self._flush()
        if self._loop is not None:
            self._loop.remove_reader(self.frontend.wakeup_fd)

    # ---- arrivals --------------------------------------------------------------------

    def _on_arrivals(self) -> None:
        infers, calls, refused = self.frontend.take()
        for item in infers:
            try:
                self._start(item)
            except Exception:  # a Kairos bug: answer this request, keep the others
                log.exception("unexpected error admitting a request")
                self.metrics.request_finished(item[1], item[3], "internal_bug", 0.0, 0, item[10])
                self._results.append((item[0], None, _INTERNAL, "internal error"))
                self._schedule_flush()
        for rid, method, payload in calls:
            task = asyncio.ensure_future(self._call(rid, method, payload))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
        if refused:
            self._count_refusals(refused)
        self._publish_service_floors()

    def _publish_service_floors(self) -> None:
        """Tell the front end what it needs to refuse natively while a model has a queue:
        L(1) (less time left cannot be served; `AsyncDispatcher.hopeless`) and the
        scheduler's predicted finish for a new 1-row request that queues last (deadline
        no earlier than the last one admitted), which is what admission would judge it
        on. An empty queue publishes zeros: an idle model admits anything, so the
        scheduler's probe can relearn a fast L(1)."""
        if not self._touched:
            return
        now = time.monotonic()
        states = []
        for key, served in list(self._touched.items()):
            core = served.dispatcher.core
            if core.queued_requests > 0:
                tail_deadline, tail_shape = self._tails.get(key, (_INF, ()))
                delay = core.predicted_finish(1, now, True, tail_shape) - now
                states.append((*key, _min_service_s(served), delay, tail_deadline))
            else:
                states.append((*key, 0.0, 0.0, _INF))
                del self._touched[key]
                self._tails.pop(key, None)
        self.frontend.set_min_service(states)

    def _count_refusals(self, refused: list[tuple]) -> None:
        for model, version, reason, klass, count in refused:
            self.metrics.requests_refused(model, version, reason, klass, count)

    def _start(self, item: tuple) -> None:
        (rid, model, requested, version, inputs, outputs, rows, arrival, deadline,
         priority, klass, request_id, shape_key, text, min_accuracy) = item
        metrics = self.metrics
        metrics.request_started(model, requested)
        try:
            served = self.repository.resolve(model, requested)
            if text:
                inputs = _bytes_inputs(inputs)
            if served.version != version:  # reloaded since the front end validated it
                rows, shape_key = validate_inputs(served.signature, inputs)
            request = InferenceRequest(
                model=model, version=served.version, inputs=inputs, outputs=outputs, rows=rows,
                deadline=deadline, arrival=arrival, priority=priority, klass=klass,
                request_id=request_id, shape_key=shape_key, min_accuracy=min_accuracy,
            )
            reply = _Reply(self, rid, model, requested, served.version, rows, klass, arrival,
                           deadline, request)
            served.dispatcher.enqueue(request, reply)
        except KairosError as exc:
            self._finish(model, requested, version, exc.reason, arrival, rows, klass, None)
            self._results.append((rid, None, grpc_code_of(exc), str(exc)))
            self._schedule_flush()
            return
        key = (model, served.version)
        self._touched[key] = served
        if klass == "online":
            self._tails[key] = (deadline, shape_key)

    def _answered(self, reply: _Reply, outputs: dict) -> None:
        served_by = reply.request.served_by if reply.request is not None else ""
        if served_by:
            self._results.append((reply.rid, list(outputs.items()), served_by))
        else:
            self._results.append((reply.rid, list(outputs.items())))
        self._finish(reply.model, reply.requested, reply.version, "success", reply.arrival,
                     reply.rows, reply.klass, time.monotonic() <= reply.deadline)
        self._schedule_flush()

    def _failed(self, reply: _Reply, error: BaseException) -> None:
        if not isinstance(error, KairosError):
            log.error("unexpected error serving %s: %r", reply.model, error)
            error = InternalError(f"internal error: {type(error).__name__}")
        met = (time.monotonic() <= reply.deadline) if error.reason == "deadline_exceeded" else None
        self._finish(reply.model, reply.requested, reply.version, error.reason, reply.arrival,
                     reply.rows, reply.klass, met)
        self._results.append((reply.rid, None, grpc_code_of(error), str(error)))
        self._schedule_flush()

    def _finish(self, model, requested, version, outcome, arrival, rows, klass, met) -> None:
        metrics = self.metrics
        metrics.request_finished(model, version, outcome, time.monotonic() - arrival, rows, klass, met)
        metrics.request_ended(model, requested)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        results, self._results = self._results, []
        if results:
            self.frontend.complete(results)
        self._publish_service_floors()

    # ---- forwarded calls -------------------------------------------------------------

    async def _call(self, rid: int, method: str, payload: bytes) -> None:
        try:
            request = CALLS[method].FromString(payload)
            context = _CallContext()
            response = await getattr(self.servicer, method)(request, context)
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the call hanging
            log.exception("unexpected error in %s", method)
            self.frontend.complete_call(rid, None, _INTERNAL, f"internal error: {type(exc).__name__}")
            return
        if context.code is not None and context.code.value[0] != 0:
            self.frontend.complete_call(rid, None, context.code.value[0], context.details)
        else:
            self.frontend.complete_call(rid, response.SerializeToString())


def make_frontend(args, tokens: list[str], tls: tuple[bytes, bytes, bytes | None] | None,
                  factory: Callable[..., Frontend] = Frontend) -> Frontend:
    """A started front end for `kairos serve`'s arguments (raises OSError if it cannot listen)."""
    cert, key, client_ca = tls if tls is not None else (None, None, None)
    return factory(
        args.host,
        args.grpc_port,
        default_slo_s=args.default_slo_ms / 1000,
        max_rows_per_request=args.max_rows_per_request,
        max_streams=args.max_streams,
        max_queued=args.max_pending_rpcs,
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        tokens=tokens,
        tls_cert=cert,
        tls_key=key,
        tls_client_ca=client_ca,
        worker_threads=args.frontend_threads,
        max_concurrent_streams=args.max_concurrent_streams,
    )
