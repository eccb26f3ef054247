"""asyncio client for any Open Inference Protocol (KServe V2) gRPC server (grpc.aio)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any, TypeVar

import grpc
import grpc.aio
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
from .sync_client import PemSource

T = TypeVar("T")
InputDicts = Iterable[Mapping[str, np.ndarray]] | AsyncIterable[Mapping[str, np.ndarray]]


def _translate_errors(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(method)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return await method(*args, **kwargs)
        except grpc.RpcError as error:
            raise InferenceServerError.from_rpc_error(error) from None

    return wrapper


async def _iterate(items: InputDicts) -> AsyncIterator[Mapping[str, np.ndarray]]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


class AsyncInferenceClient:
    """The asyncio twin of `InferenceClient`: same methods, awaitable.

    Create it inside the event loop that uses it (grpc.aio channels belong to one loop);
    `async with AsyncInferenceClient(url) as client: ...` closes it.
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
            self._channel = grpc.aio.insecure_channel(self.url, options=options)
        else:
            self._channel = grpc.aio.secure_channel(self.url, credentials, options=options)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._metadata = call_metadata(token, headers)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncInferenceClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- health and metadata -----------------------------------------------------------

    @_translate_errors
    async def server_live(self, *, timeout: float | None = None) -> bool:
        request = pb.ServerLiveRequest()
        return (await self._stub.ServerLive(request, timeout=timeout, metadata=self._metadata)).live

    @_translate_errors
    async def server_ready(self, *, timeout: float | None = None) -> bool:
        request = pb.ServerReadyRequest()
        reply = await self._stub.ServerReady(request, timeout=timeout, metadata=self._metadata)
        return reply.ready

    @_translate_errors
    async def model_ready(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> bool:
        request = pb.ModelReadyRequest(name=model, version=version)
        reply = await self._stub.ModelReady(request, timeout=timeout, metadata=self._metadata)
        return reply.ready

    @_translate_errors
    async def server_metadata(self, *, timeout: float | None = None) -> pb.ServerMetadataResponse:
        request = pb.ServerMetadataRequest()
        return await self._stub.ServerMetadata(request, timeout=timeout, metadata=self._metadata)

    @_translate_errors
    async def model_metadata(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> pb.ModelMetadataResponse:
        request = pb.ModelMetadataRequest(name=model, version=version)
        return await self._stub.ModelMetadata(request, timeout=timeout, metadata=self._metadata)

    @_translate_errors
    async def model_config(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> model_config_pb2.ModelConfig:
        request = pb.ModelConfigRequest(name=model, version=version)
        reply = await self._stub.ModelConfig(request, timeout=timeout, metadata=self._metadata)
        return reply.config

    @_translate_errors
    async def model_statistics(
        self, model: str = "", version: str = "", *, timeout: float | None = None
    ) -> pb.ModelStatisticsResponse:
        request = pb.ModelStatisticsRequest(name=model, version=version)
        return await self._stub.ModelStatistics(request, timeout=timeout, metadata=self._metadata)

    async def wait_until_ready(
        self, timeout: float = 60.0, *, models: Sequence[str] = (), interval: float = 0.1
    ) -> None:
        """Poll until the server (and each of `models`) is ready; InferenceServerError if not."""
        end = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            try:
                if await self.server_ready(timeout=2.0):
                    states = [await self.model_ready(name, timeout=2.0) for name in models]
                    if all(states):
                        return
            except InferenceServerError as error:
                last = error
            if time.monotonic() >= end:
                what = f"models {', '.join(models)}" if models else "the server"
                detail = f" (last error: {last})" if last else ""
                raise InferenceServerError(
                    "DEADLINE_EXCEEDED", f"{what} not ready at {self.url} after {timeout}s{detail}"
                )
            await asyncio.sleep(interval)

    # -- repository --------------------------------------------------------------------

    @_translate_errors
    async def repository_index(
        self, *, ready: bool = False, timeout: float | None = None
    ) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        request = pb.RepositoryIndexRequest(ready=ready)
        reply = await self._stub.RepositoryIndex(request, timeout=timeout, metadata=self._metadata)
        return list(reply.models)

    @_translate_errors
    async def load_model(self, model: str, *, timeout: float | None = None) -> None:
        request = pb.RepositoryModelLoadRequest(model_name=model)
        await self._stub.RepositoryModelLoad(request, timeout=timeout, metadata=self._metadata)

    @_translate_errors
    async def unload_model(self, model: str, *, timeout: float | None = None) -> None:
        request = pb.RepositoryModelUnloadRequest(model_name=model)
        await self._stub.RepositoryModelUnload(request, timeout=timeout, metadata=self._metadata)

    # -- inference ---------------------------------------------------------------------

    async def infer(
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
        result = await self.infer_response(
            model,
            inputs,
            version=version,
            outputs=outputs,
            timeout=timeout,
            request_id=request_id,
            parameters=parameters,
        )
        return result.outputs

    @_translate_errors
    async def infer_response(
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
        request = make_request(
            model,
            inputs,
            version=version,
            outputs=outputs,
            request_id=request_id,
            parameters=parameters,
        )
        response = await self._stub.ModelInfer(request, timeout=timeout, metadata=self._metadata)
        return InferResult.from_response(response)

    async def stream_infer(
        self,
        model: str,
        inputs: InputDicts,
        *,
        version: str = "",
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
        parameters: Mapping[str, Any] | None = None,
        max_in_flight: int = 64,
    ) -> AsyncIterator[dict[str, np.ndarray]]:
        """Outputs of each input dict (sync or async iterable), in input order; the first
        failed request raises InferenceServerError and ends the stream."""
        async for result in self.stream_infer_responses(
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

    async def stream_infer_responses(
        self,
        model: str,
        inputs: InputDicts,
        *,
        version: str = "",
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
        parameters: Mapping[str, Any] | None = None,
        max_in_flight: int = 64,
    ) -> AsyncIterator[InferResult | InferenceServerError]:
        """Per-request outcomes (InferResult or the server's InferenceServerError), in order."""
        order = StreamReorderer()
        window = asyncio.Semaphore(max(1, max_in_flight))
        call = self._stub.ModelStreamInfer(timeout=timeout, metadata=self._metadata)

        async def write_all() -> None:
            async for item in _iterate(inputs):
                await window.acquire()
                request = make_request(
                    model,
                    item,
                    version=version,
                    outputs=outputs,
                    request_id=order.request_id(),
                    parameters=parameters,
                )
                try:
                    await call.write(request)
                except (grpc.RpcError, asyncio.InvalidStateError):
                    return  # the call already ended; the reader reports why
            # Half-close: the server answers what it has, then ends the stream.
            with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):
                await call.done_writing()

        def stop_reading_if_failed(task: asyncio.Task) -> None:
            # If producing requests fails, the stream is never half-closed: end it so the
            # reader stops (it then raises the writer's exception, not the cancellation).
            if not task.cancelled() and task.exception() is not None:
                call.cancel()

        writer = asyncio.create_task(write_all())
        writer.add_done_callback(stop_reading_if_failed)
        try:
            while True:
                try:
                    response = await call.read()
                except asyncio.CancelledError:
                    if writer.done() and not writer.cancelled() and writer.exception():
                        raise writer.exception() from None
                    raise
                if response is grpc.aio.EOF:
                    break
                window.release()
                order.add(response)
                for result in order.pop_ready():
                    yield result
            if writer.done():
                writer.result()  # re-raises a failure producing the requests
        except grpc.RpcError as error:
            if writer.done() and not writer.cancelled() and writer.exception():
                raise writer.exception() from None
            raise InferenceServerError.from_rpc_error(error) from None
        finally:
            if not writer.done():
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer
            call.cancel()
        if order.pending:
            raise InferenceServerError(
                "UNKNOWN", f"the server ended the stream with {order.pending} requests unanswered"
            )
