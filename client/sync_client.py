"""Blocking client for any Open Inference Protocol (KServe V2) gRPC server.

The requests, replies, readiness bookkeeping and stream ordering are shared with the
asyncio client (`_base`); this module only blocks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
from kairos.protos import grpc_service_pb2 as pb
from kairos.protos import model_config_pb2

from . import _base as calls
from ._base import PROBE_TIMEOUT_S, ClientBase, PemSource, ReadinessWait, Rpc, StreamSession
from ._common import InferenceServerError, InferResult

__all__ = ["InferenceClient", "PemSource"]


class InferenceClient(ClientBase):
    """A blocking V2 client over one gRPC channel (thread-safe; share one per process).

    `url` is host:port (a grpc:// prefix is dropped; grpcs:// means TLS). `timeout` arguments
    are seconds and become the call's gRPC deadline. TLS is used when `ssl` is true or any
    certificate is given (PEM bytes or a file path); `token` is sent as
    `authorization: Bearer <token>` metadata on every call. `max_message_mb` limits messages
    both ways (0: unlimited).
    """

    _insecure_channel = staticmethod(grpc.insecure_channel)
    _secure_channel = staticmethod(grpc.secure_channel)

    def _call(self, rpc: Rpc, timeout: float | None) -> Any:
        try:
            reply = self._invoke(rpc, timeout)
        except grpc.RpcError as error:
            raise InferenceServerError.from_rpc_error(error) from None
        return rpc.result(reply)

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- health and metadata -----------------------------------------------------------

    def server_live(self, *, timeout: float | None = None) -> bool:
        return self._call(calls.server_live(), timeout)

    def server_ready(self, *, timeout: float | None = None) -> bool:
        return self._call(calls.server_ready(), timeout)

    def model_ready(self, model: str, version: str = "", *, timeout: float | None = None) -> bool:
        return self._call(calls.model_ready(model, version), timeout)

    def server_metadata(self, *, timeout: float | None = None) -> pb.ServerMetadataResponse:
        return self._call(calls.server_metadata(), timeout)

    def model_metadata(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> pb.ModelMetadataResponse:
        return self._call(calls.model_metadata(model, version), timeout)

    def model_config(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> model_config_pb2.ModelConfig:
        return self._call(calls.model_config(model, version), timeout)

    def model_statistics(
        self, model: str = "", version: str = "", *, timeout: float | None = None
    ) -> pb.ModelStatisticsResponse:
        """Statistics of one model, or of every model when `model` is empty."""
        return self._call(calls.model_statistics(model, version), timeout)

    def wait_until_ready(
        self, timeout: float = 60.0, *, models: Sequence[str] = (), interval: float = 0.1
    ) -> None:
        """Poll until the server (and each of `models`) is ready; InferenceServerError if not."""
        wait = ReadinessWait(self.url, timeout, models)
        while True:
            try:
                if all(self._call(probe, PROBE_TIMEOUT_S) for probe in wait.probes()):
                    return
            except InferenceServerError as error:
                wait.failed(error)
            wait.check_deadline()
            time.sleep(interval)

    # -- repository --------------------------------------------------------------------

    def repository_index(
        self, *, ready: bool = False, timeout: float | None = None
    ) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        return self._call(calls.repository_index(ready), timeout)

    def load_model(self, model: str, *, timeout: float | None = None) -> None:
        """Load (or reload) a model from the server's repository; returns once it is loaded."""
        self._call(calls.load_model(model), timeout)

    def unload_model(self, model: str, *, timeout: float | None = None) -> None:
        self._call(calls.unload_model(model), timeout)

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
        rpc = calls.infer(
            model, inputs, version=version, outputs=outputs, request_id=request_id,
            parameters=parameters,
        )
        return self._call(rpc, timeout)

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
        session = StreamSession(model, version=version, outputs=outputs, parameters=parameters)
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
                    yield session.request(item)
            except Exception as exc:  # re-raised on the caller's thread below
                failures.append(exc)
            # Returning half-closes the stream: the server answers what it has, then ends it.

        call = self._stub.ModelStreamInfer(requests(), timeout=timeout, metadata=self._metadata)
        try:
            for response in call:
                window.release()
                yield from session.received(response)
        except grpc.RpcError as error:
            raise InferenceServerError.from_rpc_error(error) from None
        finally:
            stopped.set()
            call.cancel()
        if failures:
            raise failures[0]
        session.check_complete()
