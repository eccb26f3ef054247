"""Plain data passed between the layers: no gRPC, no onnxruntime."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

RequestClass = Literal["online", "batch"]


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: protocol datatype and shape (-1 = dynamic).

    For a batching model the first dimension is the batch dimension (-1).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelSignature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # 0: the model does not batch (first dim is not a batch dim); >0: largest batch.
    max_batch_size: int

    def input(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.outputs if spec.name == name), None)


@dataclass
class InferenceRequest:
    """One decoded, validated request as the scheduler and backend see it."""

    model: str
    version: str
    inputs: dict[str, np.ndarray]
    # Outputs to return, in order; None: every output of the model.
    outputs: list[str] | None
    # Rows along the batch dimension (1 for a model that does not batch).
    rows: int
    # Absolute deadline on the server's monotonic clock (seconds).
    deadline: float
    # Time the transport received it, same clock.
    arrival: float
    # Lower value = more urgent, as in the protocol's `priority` parameter; 0 = default.
    priority: int = 0
    klass: RequestClass = "online"
    request_id: str = ""
    # Requests are merged only when this key is equal: non-batch dims and dtypes.
    shape_key: tuple = field(default=())
    # Least accuracy (against the reference) of the model-group variant that may serve
    # it: the `kairos_min_accuracy` parameter; 0 = any variant.
    min_accuracy: float = 0.0
    # The variant of a model group that served it (set by the scheduler; "" otherwise).
    served_by: str = ""
