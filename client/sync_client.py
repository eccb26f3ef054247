"""Blocking client for any Open Inference Protocol (KServe V2) gRPC server."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from kairos.protos import grpc_service_pb2 as pb
from kairos.protos import grpc_service_pb2_grpc as pb_grpc
from kairos.protos import model_config_pb2

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

T = TypeVar("T")
PemSource = str | bytes | Path | None


def _translate_errors(method: Callable[..., T]) -> Callable[..., T]:
    """Turn grpc.RpcError into InferenceServerError, so callers handle one exception type."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return method(*args, **kwargs)
        except grpc.RpcError as error:
            raise InferenceServerError.from_rpc_error(error) from None

    return wrapper


class InferenceClient:
    """A blocking V2 client over one gRPC channel (thread-safe; share one per process).

    `url` is host:port (a grpc:// prefix is dropped; grpcs:// means TLS). `timeout` arguments
    are seconds and become the call's gRPC deadline. TLS is used when `ssl` is true or any
    certificate is given (PEM bytes or a file path); `token` is sent as
    `authorization: Bearer <token>` metadata on every call. `max_message_mb` limits messages
    both ways (0: unlimited).
    """

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
            self._channel = grpc.insecure_channel(self.url, options=options)
        else:
            self._channel = grpc.secure_channel(self.url, credentials, options=options)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._metadata = call_metadata(token, headers)

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- health and metadata -----------------------------------------------------------

    @_translate_errors
    def server_live(self, *, timeout: float | None = None) -> bool:
        reply = self._stub.ServerLive(pb.ServerLiveRequest(), timeout=timeout, metadata=self._metadata)
        return reply.live

    @_translate_errors
    def server_ready(self, *, timeout: float | None = None) -> bool:
        reply = self._stub.ServerReady(
            pb.ServerReadyRequest(), timeout=timeout, metadata=self._metadata
        )
        return reply.ready

    @_translate_errors
    def model_ready(self, model: str, version: str = "", *, timeout: float | None = None) -> bool:
        request = pb.ModelReadyRequest(name=model, version=version)
        return self._stub.ModelReady(request, timeout=timeout, metadata=self._metadata).ready

    @_translate_errors
    def server_metadata(self, *, timeout: float | None = None) -> pb.ServerMetadataResponse:
        return self._stub.ServerMetadata(
            pb.ServerMetadataRequest(), timeout=timeout, metadata=self._metadata
        )

    @_translate_errors
    def model_metadata(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> pb.ModelMetadataResponse:
        request = pb.ModelMetadataRequest(name=model, version=version)
        return self._stub.ModelMetadata(request, timeout=timeout, metadata=self._metadata)

    @_translate_errors
    def model_config(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> model_config_pb2.ModelConfig:
        request = pb.ModelConfigRequest(name=model, version=version)
        return self._stub.ModelConfig(request, timeout=timeout, metadata=self._metadata).config

    @_translate_errors
    def model_statistics(
        self, model: str = "", version: str = "", *, timeout: float | None = None
    ) -> pb.ModelStatisticsResponse:
        """Statistics of one model, or of every model when `model` is empty."""
        request = pb.ModelStatisticsRequest(name=model, version=version)
        return self._stub.ModelStatistics(request, timeout=timeout, metadata=self._metadata)

    def wait_until_ready(
        self, timeout: float = 60.0, *, models: Sequence[str] = (), interval: float = 0.1
    ) -> None:
        """Poll until the server (and each of `models`) is ready; InferenceServerError if not."""
        end = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            try:
                if self.server_ready(timeout=2.0) and all(
                    self.model_ready(name, timeout=2.0) for name in models
                ):
                    return
            except InferenceServerError as error:
                last = error
            if time.monotonic() >= end:
                what = f"models {', '.join(models)}" if models else "the server"
                detail = f" (last error: {last})" if last else ""
                raise InferenceServerError(
                    "DEADLINE_EXCEEDED", f"{what} not ready at {self.url} after {timeout}s{detail}"
                )
            time.sleep(interval)

    # -- repository --------------------------------------------------------------------

    @_translate_errors
    def repository_index(
        self, *, ready: bool = False, timeout: float | None = None
    ) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        request = pb.RepositoryIndexRequest(ready=ready)
        reply = self._stub.RepositoryIndex(request, timeout=timeout, metadata=self._metadata)
        return list(reply.models)

    @_translate_errors
    def load_model(self, model: str, *, timeout: float | None = None) -> None:
        """Load (or reload) a model from the server's repository; returns once it is loaded."""
        request = pb.RepositoryModelLoadRequest(model_name=model)
        self._stub.RepositoryModelLoad(request, timeout=timeout, metadata=self._metadata)

    @_translate_errors
    def unload_model(self, model: str, *, timeout: float | None = None) -> None:
        request = pb.RepositoryModelUnloadRequest(model_name=model)
        self._stub.RepositoryModelUnload(request, timeout=timeout, metadata=self._metadata)

    # -- inference ---------------------------------------------------------------------

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: str = "",
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
        request_id: str = "",
        parameters: Mapping[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one request; returns the outputs by name (all of them, or `outputs`)."""
        return self.infer_response(
            model,
            inputs,
            version=version,
            outputs=outputs,
            timeout=timeout,
            request_id=request_id,
            parameters=parameters,
        ).outputs

    @_translate_errors
    def infer_response(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: str = "",
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
        request_id: str = "",
        parameters: Mapping[str, Any] | None = None,
    ) -> InferResult:
        """Like `infer`, but returns the whole answer: outputs, id, model version, parameters."""
        request = make_request(
            model,
            inputs,
            version=version,
            outputs=outputs,
            request_id=request_id,
            parameters=parameters,
        )
        response = self._stub.ModelInfer(request, timeout=timeout, metadata=self._metadata)
        return InferResult.from_response(response)

    def stream_infer(
        self,
        model: str,
        inputs: Iterable[Mapping[str, np.ndarray]],
        *,
        version: str = "",
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
        parameters: Mapping[str, Any] | None = None,
        max_in_flight: int = 64,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Send each input dict over one ModelStreamInfer stream; yield outputs in input order.

        The first failed request raises InferenceServerError and ends the stream; use
        `stream_infer_responses` to get per-request errors instead. `timeout` bounds the
        whole stream.
        """
        for result in self.stream_infer_responses(
            model,
            inputs,
            version=version,
            outputs=outputs,
            timeout=timeout,
            parameters=parameters,
            max_in_flight=max_in_flight,
        ):
            if isinstance(result, InferenceServerError):
                raise result
            yield result.outputs

    def stream_infer_responses(
        self,
        model: str,
        inputs: Iterable[Mapping[str, np.ndarray]],
        *,
        version: str = "",
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
        parameters: Mapping[str, Any] | None = None,
        max_in_flight: int = 64,
    ) -> Iterator[InferResult | InferenceServerError]:
        """Streaming with per-request outcomes: yields an InferResult, or the
        InferenceServerError the server sent for that request, in input order.

        At most `max_in_flight` requests are unanswered at a time, so a long (or endless)
        input iterable is consumed only as fast as the server answers.
        """
        order = StreamReorderer()
        window = threading.Semaphore(max(1, max_in_flight))
        stopped = threading.Event()
        # Exceptions raised while producing requests (a bad array, a failing input iterator):
        # gRPC's sending thread would swallow them, so they are carried to the caller.
        failures: list[BaseException] = []

        def requests() -> Iterator[pb.ModelInferRequest]:
            try:
                for item in inputs:
                    while not window.acquire(timeout=0.05):
                        if stopped.is_set():
                            return
                    if stopped.is_set():
                        return
                    yield make_request(
                        model,
                        item,
                        version=version,
                        outputs=outputs,
                        request_id=order.request_id(),
                        parameters=parameters,
                    )
            except Exception as exc:  # re-raised on the caller's thread below
                failures.append(exc)
            # Returning half-closes the stream: the server answers what it has, then ends it.

        call = self._stub.ModelStreamInfer(requests(), timeout=timeout, metadata=self._metadata)
        try:
            for response in call:
                window.release()
                order.add(response)
                yield from order.pop_ready()
        except grpc.RpcError as error:
            raise InferenceServerError.from_rpc_error(error) from None
        finally:
            stopped.set()
            call.cancel()
        if failures:
            raise failures[0]
        if order.pending:
            raise InferenceServerError(
                "UNKNOWN", f"the server ended the stream with {order.pending} requests unanswered"
            )
