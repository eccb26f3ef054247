"""The simplest dispatcher: every request runs alone, at once, on one executor thread.

Used when the latency-aware scheduler is unavailable, and as the reference the
scheduler is compared against.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..errors import ShuttingDown
from ..metrics import MetricsSink
from ..scheduler.interface import BatchRunner
from ..types import InferenceRequest


class PassThroughDispatcher:
    def __init__(self, model: str, version: str, runner: BatchRunner, metrics: MetricsSink) -> None:
        self.model, self.version = model, version
        self.runner = runner
        self.metrics = metrics
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"kairos-{model}")
        self._closed = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def prepare(self) -> None:
        """Nothing to learn: this dispatcher makes no predictions."""

    async def start(self) -> None:
        return None

    async def submit(self, request: InferenceRequest) -> dict[str, np.ndarray]:
        if self._closed:
            raise ShuttingDown(f"model '{self.model}' is being unloaded")
        self._inflight += 1
        self._idle.clear()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, request)
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    def _run(self, request: InferenceRequest) -> dict[str, np.ndarray]:
        started = time.monotonic()
        outputs = self.runner.run(request.inputs, request.outputs)
        compute = time.monotonic() - started
        self.metrics.batch_executed(
            self.model, self.version, request.rows, [started - request.arrival], compute, None
        )
        return outputs

    async def close(self, drain: bool = True) -> None:
        self._closed = True
        if drain:
            await self._idle.wait()
        self._pool.shutdown(wait=drain)

    def describe(self) -> dict[str, Any]:
        return {"policy": "passthrough", "inflight": self._inflight}
