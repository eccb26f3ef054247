"""One onnxruntime InferenceSession per model version, behind the `BatchRunner` interface.

Provider choice follows the model's preference list, keeping only providers this
onnxruntime build offers, and falls back to CPU when a preferred provider fails
to start (e.g. CUDA listed but no driver). The choice is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from ..errors import InternalError, InvalidInput
from ..types import ModelSignature, TensorSpec

if TYPE_CHECKING:  # the repository imports the backend, not the other way round
    from ..repository.config import ModelSettings

log = logging.getLogger("kairos.backend")

ORT_TO_DATATYPE = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
    "tensor(bfloat16)": "BF16",
}
_GRAPH_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_NUMPY_OF = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}


class ModelLoadError(Exception):
    """The model file cannot be served; the message is the reason operators see."""


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def _session_options(settings: ModelSettings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.graph_optimization_level = _GRAPH_LEVELS[settings.graph_optimization]
    # Spinning threads fight the gRPC event loop on small machines (DESIGN.md).
    spin = "1" if settings.allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    options.log_severity_level = 3
    return options


def _provider_plan(preferred: list[str]) -> list[str]:
    offered = set(available_providers())
    plan = [p for p in preferred if p in offered]
    skipped = [p for p in preferred if p not in offered]
    if skipped:
        log.info("providers not offered by this onnxruntime build, skipped: %s", ", ".join(skipped))
    if "CPUExecutionProvider" not in plan:
        plan.append("CPUExecutionProvider")
    return plan


def _dim(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else -1


def _specs(args: list) -> tuple[TensorSpec, ...]:
    specs = []
    for arg in args:
        datatype = ORT_TO_DATATYPE.get(arg.type)
        if datatype is None:
            raise ModelLoadError(f"tensor '{arg.name}' has type {arg.type}, which Kairos cannot serve")
        specs.append(TensorSpec(arg.name, datatype, tuple(_dim(d) for d in arg.shape)))
    return tuple(specs)


class OnnxBackend:
    """A loaded model version: session, signature and the chosen provider."""

    def __init__(self, path: Path, settings: ModelSettings, label: str = "") -> None:
        self.path = path
        self.settings = settings
        self.label = label or str(path)
        self.session = self._create_session()
        self.provider = self.session.get_providers()[0]
        self.signature = self._signature()
        self._output_names = [spec.name for spec in self.signature.outputs]
        self._string_inputs = {s.name for s in self.signature.inputs if s.datatype == "BYTES"}

    @property
    def threads_per_run(self) -> int:
        """Cores one run uses (intra-op threads; 0: onnxruntime's default, every core)."""
        return self.settings.intra_op_threads

    def _create_session(self) -> ort.InferenceSession:
        if not self.path.is_file():
            raise ModelLoadError(f"model file {self.path.name} not found")
        plan = _provider_plan(self.settings.providers)
        options = _session_options(self.settings)
        while plan:
            try:
                session = ort.InferenceSession(str(self.path), options, providers=plan)
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types
                if plan == ["CPUExecutionProvider"]:
                    raise ModelLoadError(f"onnxruntime cannot load {self.path.name}: {exc}") from None
                log.warning("%s: providers %s failed (%s); falling back to CPU", self.label, plan, exc)
                plan = ["CPUExecutionProvider"]
                continue
            log.info("%s: running on %s (asked for %s)", self.label, session.get_providers()[0],
                     ", ".join(self.settings.providers))
            return session
        raise ModelLoadError("no execution provider")

    def _signature(self) -> ModelSignature:
        inputs = _specs(self.session.get_inputs())
        outputs = _specs(self.session.get_outputs())
        batch_dynamic = all(spec.shape and spec.shape[0] == -1 for spec in inputs + outputs)
        configured = self.settings.max_batch_size
        if configured and not batch_dynamic:
            raise ModelLoadError(
                f"max_batch_size is {configured} but the model's first dimension is not a dynamic "
                "batch dimension on every input and output"
            )
        if configured is None:
            configured = 64 if batch_dynamic else 0
        return ModelSignature(inputs, outputs, configured)

    def run(
        self, inputs: Mapping[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = outputs or self._output_names
        feeds = {name: self._feed(name, array) for name, array in inputs.items()}
        try:
            values = self.session.run(names, feeds)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors carry the message we need
            raise InternalError(f"model {self.label} failed: {exc}") from None
        return dict(zip(names, values, strict=True))

    def _feed(self, name: str, array: np.ndarray) -> np.ndarray:
        if name not in self._string_inputs:
            return array
        # onnxruntime wants str elements for string tensors; the wire carries bytes.
        try:
            return np.vectorize(
                lambda item: item.decode("utf-8") if isinstance(item, bytes) else str(item),
                otypes=[object],
            )(array)
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"input '{name}': BYTES element is not valid UTF-8: {exc}") from None

    def example_inputs(
        self, rows: int, like: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Random inputs of `rows` rows, with other dynamic dims taken from `like` or set to 1."""
        rng = np.random.default_rng(rows)
        examples = {}
        for spec in self.signature.inputs:
            shape = list(like[spec.name].shape) if like and spec.name in like else [
                1 if d < 0 else d for d in spec.shape
            ]
            if self.signature.max_batch_size:
                shape[0] = rows
            examples[spec.name] = _random_array(spec.datatype, tuple(shape), rng)
        return examples

    def warm_up(self, runs: int) -> None:
        sample = self.example_inputs(1)
        for _ in range(runs):
            self.run(sample)


def _random_array(datatype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if datatype == "BYTES":
        array = np.empty(shape, dtype=object)
        array.fill("kairos")
        return array
    if datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    dtype = _NUMPY_OF[datatype]
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 8, size=shape).astype(dtype)
