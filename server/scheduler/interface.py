"""What the transport and repository see of scheduling.

The transport calls `await dispatcher.submit(request)`; the repository makes
one dispatcher per loaded model version with `make_dispatcher`, giving it the
backend as a `BatchRunner`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from ..types import InferenceRequest


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic clock."""


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()


class BatchRunner(Protocol):
    """Runs one batch on the model (blocking; called from an executor thread)."""

    def run(
        self, inputs: Mapping[str, np.ndarray], outputs: list[str] | None
    ) -> dict[str, np.ndarray]: ...

    def example_inputs(self, rows: int, like: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Synthetic inputs of `rows` rows (shaped like `like` when given), for profiling."""
        ...


class Dispatcher(Protocol):
    async def submit(self, request: InferenceRequest) -> dict[str, np.ndarray]:
        """Run the request; raise a `KairosError` subclass when it is refused or fails."""
        ...

    async def close(self, drain: bool = True) -> None:
        """Stop accepting; with drain, finish what is queued first."""
        ...

    def describe(self) -> dict[str, Any]:
        """Operator-facing state (policy, latency model L(b), queue)."""
        ...
