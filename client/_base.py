"""The one implementation behind `InferenceClient` and `AsyncInferenceClient`.

Everything that does not depend on blocking vs awaiting lives here: channel set-up, each
RPC's request and how its reply is read (`Rpc`), the readiness wait's bookkeeping
(`ReadinessWait`) and a stream's request numbering and reordering (`StreamSession`). The
two clients only send (`_call`: blocking or awaited) and sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from kairos.protos import grpc_service_pb2 as pb
from kairos.protos import grpc_service_pb2_grpc as pb_grpc

from ._common import (
    DEFAULT_MAX_MESSAGE_MB,
    DEFAULT_URL,
    InferenceServerError,
    InferResult,
    StreamReorderer,
    call_metadata,
    channel_credentials,
    channel_options,
    make_request,
    normalize_url,
)

PemSource = str | bytes | Path | None
# How long each readiness probe may take.
PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Rpc:
    """One unary call: the stub method's name, its request, and what the caller gets back."""

    method: str
    request: Any
    result: Callable[[Any], Any]


def _same(reply: Any) -> Any:
    return reply


def server_live() -> Rpc:
    return Rpc("ServerLive", pb.ServerLiveRequest(), lambda reply: reply.live)


def server_ready() -> Rpc:
    return Rpc("ServerReady", pb.ServerReadyRequest(), lambda reply: reply.ready)


def model_ready(model: str, version: str = "") -> Rpc:
    request = pb.ModelReadyRequest(name=model, version=version)
    return Rpc("ModelReady", request, lambda reply: reply.ready)


def server_metadata() -> Rpc:
    return Rpc("ServerMetadata", pb.ServerMetadataRequest(), _same)


def model_metadata(model: str, version: str = "") -> Rpc:
    return Rpc("ModelMetadata", pb.ModelMetadataRequest(name=model, version=version), _same)


def model_config(model: str, version: str = "") -> Rpc:
    request = pb.ModelConfigRequest(name=model, version=version)
    return Rpc("ModelConfig", request, lambda reply: reply.config)


def model_statistics(model: str = "", version: str = "") -> Rpc:
    return Rpc("ModelStatistics", pb.ModelStatisticsRequest(name=model, version=version), _same)


def repository_index(ready: bool = False) -> Rpc:
    request = pb.RepositoryIndexRequest(ready=ready)
    return Rpc("RepositoryIndex", request, lambda reply: list(reply.models))


def load_model(model: str) -> Rpc:
    request = pb.RepositoryModelLoadRequest(model_name=model)
    return Rpc("RepositoryModelLoad", request, lambda reply: None)


def unload_model(model: str) -> Rpc:
    request = pb.RepositoryModelUnloadRequest(model_name=model)
    return Rpc("RepositoryModelUnload", request, lambda reply: None)


def infer(
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    version: str = "",
    outputs: Sequence[str] | None = None,
    request_id: str = "",
    parameters: Mapping[str, Any] | None = None,
) -> Rpc:
    request = make_request(
        model, inputs, version=version, outputs=outputs, request_id=request_id,
        parameters=parameters,
    )
    return Rpc("ModelInfer", request, InferResult.from_response)


class ClientBase:
    """Channel, stub and per-call metadata; the subclass's channel constructors make the
    channel (sync or aio)."""

    # The channel constructors (grpc's, or grpc.aio's), set by each client class.
    _insecure_channel: Callable[..., Any]
    _secure_channel: Callable[..., Any]

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        max_message_mb: int = DEFAULT_MAX_MESSAGE_MB,
        ssl: bool = False,
        ssl_root_cert: PemSource = None,
        ssl_client_cert: PemSource = None,
        ssl_client_key: PemSource = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        channel_args: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.url = normalize_url(url)
        options = channel_options(max_message_mb) + list(channel_args)
        ssl = ssl or url.startswith(("grpcs://", "https://"))
        credentials = channel_credentials(ssl, ssl_root_cert, ssl_client_cert, ssl_client_key)
        if credentials is None:
            self._channel = self._insecure_channel(self.url, options=options)
        else:
            self._channel = self._secure_channel(self.url, credentials, options=options)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._metadata = call_metadata(token, headers)

    def _invoke(self, rpc: Rpc, timeout: float | None) -> Any:
        """Start the call (a reply, or an awaitable of one, as the channel gives)."""
        method = getattr(self._stub, rpc.method)
        return method(rpc.request, timeout=timeout, metadata=self._metadata)


class ReadinessWait:
    """The readiness wait's bookkeeping: which probes to send, the deadline, the last error."""

    def __init__(self, url: str, timeout: float, models: Sequence[str]) -> None:
        self.url, self.timeout, self.models = url, timeout, tuple(models)
        self.end = time.monotonic() + timeout
        self.last: Exception | None = None

    def probes(self) -> list[Rpc]:
        """Sent in order; ready when every one answers true (stop at the first false)."""
        return [server_ready(), *(model_ready(name) for name in self.models)]

    def failed(self, error: InferenceServerError) -> None:
        self.last = error

    def check_deadline(self) -> None:
        """Raise DEADLINE_EXCEEDED once the wait is over (called after a probe round failed)."""
        if time.monotonic() < self.end:
            return
        what = f"models {', '.join(self.models)}" if self.models else "the server"
        detail = f" (last error: {self.last})" if self.last else ""
        raise InferenceServerError(
            "DEADLINE_EXCEEDED", f"{what} not ready at {self.url} after {self.timeout}s{detail}"
        )


class StreamSession:
    """One ModelStreamInfer call's requests (numbered) and answers (back in request order)."""

    def __init__(
        self,
        model: str,
        *,
        version: str,
        outputs: Sequence[str] | None,
        parameters: Mapping[str, Any] | None,
    ) -> None:
        self.model, self.version, self.outputs, self.parameters = model, version, outputs, parameters
        self.order = StreamReorderer()

    def request(self, inputs: Mapping[str, np.ndarray]) -> pb.ModelInferRequest:
        return make_request(
            self.model,
            inputs,
            version=self.version,
            outputs=self.outputs,
            request_id=self.order.request_id(),
            parameters=self.parameters,
        )

    def received(self, response: pb.ModelStreamInferResponse) -> list[InferResult | InferenceServerError]:
        """File one answer; the results now ready, in request order."""
        self.order.add(response)
        return self.order.pop_ready()

    def check_complete(self) -> None:
        """After the stream ended: every request must have had its answer."""
        if self.order.pending:
            raise InferenceServerError(
                "UNKNOWN",
                f"the server ended the stream with {self.order.pending} requests unanswered",
            )


__all__ = [
    "DEFAULT_MAX_MESSAGE_MB",
    "DEFAULT_URL",
    "PROBE_TIMEOUT_S",
    "ClientBase",
    "PemSource",
    "ReadinessWait",
    "Rpc",
    "StreamSession",
]
