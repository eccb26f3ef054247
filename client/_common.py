"""What the sync and asyncio clients share: channel set-up, errors, request and result types.

Nothing here opens a connection; `InferenceClient` and `AsyncInferenceClient` do.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from kairos.protos import codec
from kairos.protos import grpc_service_pb2 as pb

DEFAULT_URL = "127.0.0.1:8001"
# gRPC's own default (4 MB) is too small for batched requests; the server's default is larger too.
DEFAULT_MAX_MESSAGE_MB = 256

# Substrings gRPC core puts in UNAVAILABLE when no connection could be made at all, as opposed
# to a server that answered UNAVAILABLE itself (e.g. a model that failed to load).
_UNREACHABLE_HINTS = (
    "failed to connect",
    "connection refused",
    "dns resolution failed",
    "errors resolving",
    "lookup failed",
    "name resolution",
    "connections to all backends failing",
    "connect failed",
    "no route to host",
)


class InferenceServerError(Exception):
    """A failed call: the gRPC status (`code`, `status` as its name) and the server's message.

    `status` is a gRPC status name, or INVALID_RESPONSE when the server's answer cannot be
    decoded (then `code` is None).

    `unreachable` is true when no server answered at all (nothing listening, bad host),
    so a caller can tell "is the server running?" apart from an answer the server gave.
    """

    def __init__(
        self,
        status: str,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        unreachable: bool = False,
    ) -> None:
        super().__init__(f"{status}: {message}" if message else status)
        self.status = status
        self.message = message
        self.code = code
        self.unreachable = unreachable

    def __reduce__(self) -> tuple:
        # Picklable (e.g. across a multiprocessing load generator) despite keyword arguments.
        return (_rebuild_error, (self.status, self.message, self.code, self.unreachable))

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> InferenceServerError:
        code = error.code() if hasattr(error, "code") else None
        details = (error.details() if hasattr(error, "details") else None) or str(error)
        status = code.name if code is not None else "UNKNOWN"
        unreachable = code == grpc.StatusCode.UNAVAILABLE and any(
            hint in details.lower() for hint in _UNREACHABLE_HINTS
        )
        return cls(status, details, code=code, unreachable=unreachable)


def _rebuild_error(
    status: str, message: str, code: grpc.StatusCode | None, unreachable: bool
) -> InferenceServerError:
    return InferenceServerError(status, message, code=code, unreachable=unreachable)


@dataclass
class InferResult:
    """One inference answer: decoded outputs plus the response's identity fields.

    Arrays decoded from `raw_output_contents` are read-only views of the response bytes
    (no copy); call `.copy()` on one to modify it.
    """

    model_name: str
    model_version: str
    id: str
    outputs: dict[str, np.ndarray]
    parameters: dict[str, Any] = field(default_factory=dict)
    # The protobuf ModelInferResponse as received.
    response: pb.ModelInferResponse | None = None

    @classmethod
    def from_response(cls, response: pb.ModelInferResponse) -> InferResult:
        try:
            outputs = codec.decode_response_outputs(response)
        except codec.TensorError as exc:
            # The server sent a tensor we cannot decode: report it like a failed call.
            raise InferenceServerError("INVALID_RESPONSE", str(exc)) from None
        return cls(
            model_name=response.model_name,
            model_version=response.model_version,
            id=response.id,
            outputs=outputs,
            parameters={k: codec.parameter_value(v) for k, v in response.parameters.items()},
            response=response,
        )


def normalize_url(url: str) -> str:
    """`host:port` for gRPC: a scheme (grpc://, http://) and trailing slash are dropped."""
    for scheme in ("grpc://", "grpcs://", "http://", "https://"):
        if url.startswith(scheme):
            url = url[len(scheme) :]
            break
    return url.rstrip("/")


def _read_pem(value: str | bytes | Path | None) -> bytes | None:
    """PEM bytes from bytes, or from a file path."""
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def channel_options(max_message_mb: int) -> list[tuple[str, int]]:
    size = -1 if max_message_mb <= 0 else max_message_mb * 1024 * 1024
    return [
        ("grpc.max_send_message_length", size),
        ("grpc.max_receive_message_length", size),
    ]


def channel_credentials(
    ssl: bool,
    root_cert: str | bytes | Path | None,
    client_cert: str | bytes | Path | None,
    client_key: str | bytes | Path | None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials, or None for a plaintext channel.

    Any certificate argument implies TLS; `ssl=True` alone uses the system's root CAs.
    """
    if not (ssl or root_cert or client_cert or client_key):
        return None
    if bool(client_cert) != bool(client_key):
        raise ValueError("ssl_client_cert and ssl_client_key must be given together")
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(root_cert),
        private_key=_read_pem(client_key),
        certificate_chain=_read_pem(client_cert),
    )


def call_metadata(token: str | None, headers: Mapping[str, str] | None) -> tuple:
    """Per-call metadata: the bearer token (sent as metadata so it also works in plaintext,
    where gRPC refuses call credentials) plus any extra headers."""
    items = [(key.lower(), value) for key, value in (headers or {}).items()]
    if token:
        items.append(("authorization", f"Bearer {token}"))
    return tuple(items)


def make_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    version: str = "",
    outputs: Sequence[str] | None = None,
    request_id: str = "",
    parameters: Mapping[str, Any] | None = None,
) -> pb.ModelInferRequest:
    try:
        return codec.build_request(
            model,
            inputs,
            model_version=version,
            request_id=request_id,
            outputs=outputs,
            parameters=parameters,
        )
    except codec.TensorError as exc:
        # Caught before sending: an array numpy cannot put on the wire (e.g. complex).
        raise ValueError(str(exc)) from None


def stream_error(message: str) -> InferenceServerError:
    """The error of one streamed request. A stream response carries only a message; Kairos and
    Triton start it with the status name ("NOT_FOUND: ..."), which is kept as the status."""
    name, sep, rest = message.partition(":")
    code = grpc.StatusCode.__members__.get(name.strip()) if sep else None
    if code is not None and code != grpc.StatusCode.OK:
        return InferenceServerError(code.name, rest.strip(), code=code)
    return InferenceServerError("UNKNOWN", message, code=grpc.StatusCode.UNKNOWN)


class StreamReorderer:
    """Puts stream responses back into request order.

    Each streamed request carries id "<prefix><index>". A compliant server echoes it; for one
    that does not (or for an error without an id) the earliest outstanding request is assumed,
    which is right for any server that answers in order.
    """

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.next_index = 0  # next result to hand out, in request order
        self.sent = 0
        self._ready: dict[int, InferResult | InferenceServerError] = {}
        self._outstanding: set[int] = set()
        # The sync client numbers requests on gRPC's sending thread and files answers on the
        # caller's thread.
        self._lock = threading.Lock()

    def request_id(self) -> str:
        with self._lock:
            index = self.sent
            self.sent += 1
            self._outstanding.add(index)
        return f"{self.prefix}{index}"

    def add(self, response: pb.ModelStreamInferResponse) -> None:
        with self._lock:
            index = self._index_of(response.infer_response.id)
            self._outstanding.discard(index)
        if response.error_message:
            self._ready[index] = stream_error(response.error_message)
        else:
            self._ready[index] = InferResult.from_response(response.infer_response)

    def pop_ready(self) -> list[InferResult | InferenceServerError]:
        results = []
        while self.next_index in self._ready:
            results.append(self._ready.pop(self.next_index))
            self.next_index += 1
        return results

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._outstanding)

    def _index_of(self, response_id: str) -> int:
        if response_id.startswith(self.prefix):
            suffix = response_id[len(self.prefix) :]
            if suffix.isdigit() and int(suffix) in self._outstanding:
                return int(suffix)
        if not self._outstanding:
            raise InferenceServerError(
                "INVALID_RESPONSE", "the server sent more stream responses than requests"
            )
        return min(self._outstanding)
