"""asyncio client for any Open Inference Protocol (KServe V2) gRPC server (grpc.aio).

The requests, replies, readiness bookkeeping and stream ordering are shared with the
blocking client (`_base`); this module only awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio
import numpy as np
from kairos.protos import grpc_service_pb2 as pb
from kairos.protos import model_config_pb2

from . import _base as calls
from ._base import PROBE_TIMEOUT_S, ClientBase, ReadinessWait, Rpc, StreamSession
from ._common import InferenceServerError, InferResult

InputDicts = Iterable[Mapping[str, np.ndarray]] | AsyncIterable[Mapping[str, np.ndarray]]


async def _iterate(items: InputDicts) -> AsyncIterator[Mapping[str, np.ndarray]]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


class AsyncInferenceClient(ClientBase):
    """The asyncio twin of `InferenceClient`: same methods, awaitable.

    Create it inside the event loop that uses it (grpc.aio channels belong to one loop);
    `async with AsyncInferenceClient(url) as client: ...` closes it.
    """

    _insecure_channel = staticmethod(grpc.aio.insecure_channel)
    _secure_channel = staticmethod(grpc.aio.secure_channel)

    async def _call(self, rpc: Rpc, timeout: float | None) -> Any:
        try:
            reply = await self._invoke(rpc, timeout)
        except grpc.RpcError as error:
            raise InferenceServerError.from_rpc_error(error) from None
        return rpc.result(reply)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncInferenceClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- health and metadata -----------------------------------------------------------

    async def server_live(self, *, timeout: float | None = None) -> bool:
        return await self._call(calls.server_live(), timeout)

    async def server_ready(self, *, timeout: float | None = None) -> bool:
        return await self._call(calls.server_ready(), timeout)

    async def model_ready(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> bool:
        return await self._call(calls.model_ready(model, version), timeout)

    async def server_metadata(self, *, timeout: float | None = None) -> pb.ServerMetadataResponse:
        return await self._call(calls.server_metadata(), timeout)

    async def model_metadata(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> pb.ModelMetadataResponse:
        return await self._call(calls.model_metadata(model, version), timeout)

    async def model_config(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> model_config_pb2.ModelConfig:
        return await self._call(calls.model_config(model, version), timeout)

    async def model_statistics(
        self, model: str = "", version: str = "", *, timeout: float | None = None
    ) -> pb.ModelStatisticsResponse:
        return await self._call(calls.model_statistics(model, version), timeout)

    async def wait_until_ready(
        self, timeout: float = 60.0, *, models: Sequence[str] = (), interval: float = 0.1
    ) -> None:
        """Poll until the server (and each of `models`) is ready; InferenceServerError if not."""
        wait = ReadinessWait(self.url, timeout, models)
        while True:
            try:
                if await self._all_ready(wait.probes()):
                    return
            except InferenceServerError as error:
                wait.failed(error)
            wait.check_deadline()
            await asyncio.sleep(interval)

    async def _all_ready(self, probes: list[Rpc]) -> bool:
        for probe in probes:
            if not await self._call(probe, PROBE_TIMEOUT_S):
                return False
        return True

    # -- repository --------------------------------------------------------------------

    async def repository_index(
        self, *, ready: bool = False, timeout: float | None = None
    ) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        return await self._call(calls.repository_index(ready), timeout)

    async def load_model(self, model: str, *, timeout: float | None = None) -> None:
        await self._call(calls.load_model(model), timeout)

    async def unload_model(self, model: str, *, timeout: float | None = None) -> None:
        await self._call(calls.unload_model(model), timeout)

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
        rpc = calls.infer(
            model, inputs, version=version, outputs=outputs, request_id=request_id,
            parameters=parameters,
        )
        return await self._call(rpc, timeout)

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
        session = StreamSession(model, version=version, outputs=outputs, parameters=parameters)
        window = asyncio.Semaphore(max(1, max_in_flight))
        call = self._stub.ModelStreamInfer(timeout=timeout, metadata=self._metadata)

        async def write_all() -> None:
            async for item in _iterate(inputs):
                await window.acquire()
                request = session.request(item)
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
                for result in session.received(response):
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
        session.check_complete()
