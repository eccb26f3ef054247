"""int8 (dynamic, static QDQ with calibration) and fp16 variants, via onnxruntime's tools.

Choices baked in from measurements on the target CPUs (AVX-512 VNNI):
- weights are QInt8 (faster than QUInt8 here);
- static quantization always writes QDQ (the QOperator format with int8 activations takes
  a ~40x slower path) and is served with ORT_ENABLE_ALL, which fuses QDQ into int8 kernels;
- the calibrator is built here rather than inside `quantize_static`, because that function
  does not pass `num_bins` on, and Entropy with its default bins returns the MinMax range.
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import numpy as np
import onnx
from kairos.optimize.data import fixed_batch
from kairos.optimize.errors import OptimizeError, UnsupportedGraphError
from kairos.optimize.graph import build_model, read_mlp, save_model
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    create_calibrator,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}
WEIGHT_TYPES = {"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}
FP16_CPU_WARNING = ("fp16 is known to be no faster than fp32 on CPUExecutionProvider (it runs "
                    "Cast and fp32 kernels); serve it on a GPU provider")
CONV_DYNAMIC_WARNING = ("dynamic int8 turns Conv into ConvInteger, which onnxruntime's CPU provider "
                        "runs several times slower than fp32 (measured 6-22x on the zoo's ResNet and "
                        "MobileNet, BENCHMARKS.md); quantize conv nets with --mode static")
QUINT8_WARNING = "QUInt8 weights are known to run slower than QInt8 on AVX-512 VNNI CPUs"


@contextmanager
def _quiet_ort() -> Iterator[None]:
    """onnxruntime's quantizer logs advice at WARNING for every call (keep the CLI readable),
    and fails with assorted exception types on graphs it cannot handle (name the step)."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    except OptimizeError:
        raise
    except Exception as exc:  # onnxruntime's tools raise many unrelated types
        raise OptimizeError(f"onnxruntime quantization tools failed: {type(exc).__name__}: {exc}") from exc
    finally:
        logger.setLevel(level)


# The operators int8 quantization and fp16 conversion actually change.
WEIGHTED_OPS = ("MatMul", "Conv", "Gemm", "ConvTranspose", "Attention", "LSTM", "GRU", "RNN", "MatMulInteger",
                "ConvInteger", "QLinearMatMul", "QLinearConv")
QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
                 "ConvInteger", "QLinearMatMul", "QLinearConv")


def check_quantizable(model: onnx.ModelProto, mode: str) -> None:
    """Refuse, in one line, a model that int8 / fp16 cannot change."""
    ops = [n.op_type for n in model.graph.node]
    present = sorted(set(ops))
    if any(op in QUANTIZED_OPS for op in ops):
        raise OptimizeError(f"the model is already quantized (it has {', '.join(o for o in present if o in QUANTIZED_OPS)}); "
                            "quantize its fp32 original instead")
    if not any(op in WEIGHTED_OPS for op in ops):
        what = "nothing to convert to fp16" if mode == "fp16" else "nothing to quantize"
        raise OptimizeError(f"{what}: the model has no MatMul/Conv/Gemm (it computes with "
                            f"{', '.join(present) or 'no operators'})")
    input_types = {i.type.tensor_type.elem_type for i in model.graph.input}
    init_types = {t.data_type for t in model.graph.initializer}
    if onnx.TensorProto.FLOAT not in init_types | input_types and onnx.TensorProto.FLOAT16 in init_types:
        detail = "it is already fp16" if mode == "fp16" else "int8 quantization needs fp32 weights"
        raise OptimizeError(f"the model computes in fp16 ({detail}); quantize its fp32 original instead")


def canonical_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with Gemm rewritten as MatMul+Add when the graph is in the supported
    subset: onnxruntime's dynamic quantizer skips Gemm, so it would stay fp32."""
    if not any(n.op_type == "Gemm" for n in model.graph.node):
        return model
    try:
        return build_model(read_mlp(model))
    except UnsupportedGraphError:
        return model


def _unquantized_gemm_warning(model: onnx.ModelProto) -> str | None:
    if any(n.op_type == "Gemm" for n in model.graph.node):
        return "Gemm nodes are not quantized by dynamic quantization; they stay fp32"
    return None


def dynamic_int8(model: onnx.ModelProto, out: Path, per_channel: bool = False,
                 weight_type: str = "qint8") -> list[str]:
    """Dynamic int8 weights (activation scales computed per call); returns warnings."""
    model = canonical_model(model)
    with _quiet_ort():
        quantize_dynamic(model, out, per_channel=per_channel, weight_type=WEIGHT_TYPES[weight_type])
    conv = CONV_DYNAMIC_WARNING if any(n.op_type == "Conv" for n in model.graph.node) else None
    return [w for w in (_unquantized_gemm_warning(model), conv,
                        QUINT8_WARNING if weight_type == "quint8" else None) if w]


class _Batches(CalibrationDataReader):
    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self._items = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def split_batches(x: np.ndarray, batch_size: int) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Full batches, and the ragged remainder (None when the rows divide evenly)."""
    full = len(x) // batch_size * batch_size
    batches = [x[i:i + batch_size] for i in range(0, full, batch_size)]
    return batches, (x[full:] if full < len(x) else None)


def calibrate(model: onnx.ModelProto, x: np.ndarray | dict[str, np.ndarray], method: str = "minmax",
              batch_size: int = 64,
              num_bins: int = 2048, num_quantized_bins: int = 128,
              percentile: float = 99.999, symmetric: bool | None = None) -> TensorsData:
    """Activation ranges of `model` on calibration rows `x`.

    Histogram calibrators stack each collect_data() call's batches into one array, so a
    ragged last batch crashes them; it is fed in a second call instead, and their
    histograms carry over between calls, so every row counts exactly once.
    """
    if method not in METHODS:
        raise OptimizeError(f"unknown calibration method '{method}' (use {', '.join(METHODS)})")
    options = {"num_bins": num_bins, "num_quantized_bins": num_quantized_bins, "percentile": percentile}
    if symmetric is not None:
        options["symmetric"] = symmetric
    feeds = x if isinstance(x, dict) else {model.graph.input[0].name: x}
    rows = len(next(iter(feeds.values())))
    fixed = fixed_batch(model)
    batch_size = fixed or max(1, min(batch_size, rows))
    if fixed and rows < fixed:
        raise OptimizeError(f"calibration needs at least {fixed} rows for a model with a fixed batch "
                            f"of {fixed}; got {rows}")
    split = {k: split_batches(v, batch_size) for k, v in feeds.items()}
    full = [{k: split[k][0][i] for k in feeds} for i in range(len(next(iter(split.values()))[0]))]
    rest = None if fixed or next(iter(split.values()))[1] is None else {k: split[k][1] for k in feeds}
    with tempfile.TemporaryDirectory(prefix="kairos-calib-") as tmp, _quiet_ort(), \
            redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
        src = save_model(model, Path(tmp) / "model.onnx")
        calibrator = create_calibrator(src, None, augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                       calibrate_method=METHODS[method], extra_options=options)
        for batches in (full, [rest] if rest is not None else []):
            if batches:
                calibrator.collect_data(_Batches(batches))
        return calibrator.compute_data()


def static_int8(model: onnx.ModelProto, out: Path, calibration: np.ndarray | dict[str, np.ndarray],
                method: str = "minmax",
                per_channel: bool = False, batch_size: int = 64, activation_type: str = "quint8",
                **calib_options: float) -> TensorsData:
    """Static QDQ int8: QInt8 weights, and by default QUInt8 activations (u8 x s8 is the
    native VNNI product on x86), ranges from `calibration`."""
    model = canonical_model(model)
    ranges = calibrate(model, calibration, method, batch_size, **calib_options)
    with tempfile.TemporaryDirectory(prefix="kairos-quant-") as tmp, _quiet_ort():
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(ranges, cache)
        quantize_static(model, out, None, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=WEIGHT_TYPES[activation_type], weight_type=QuantType.QInt8,
                        calibrate_method=METHODS[method], calibration_cache_path=cache)
    return ranges


def fp16(model: onnx.ModelProto, out: Path, provider: str = "CPUExecutionProvider") -> list[str]:
    """fp16 weights and compute, keeping fp32 inputs and outputs for existing clients."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _quiet_ort():
        converted = convert_float_to_float16(model, keep_io_types=True)
    _sort_nodes(converted.graph)
    onnx.checker.check_model(converted)
    save_model(converted, out)
    return [FP16_CPU_WARNING] if provider == "CPUExecutionProvider" else []


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Topological node order (Kahn): the fp16 converter appends its input Casts at the end,
    which onnxruntime accepts but the ONNX checker (and so other tools) reject."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    producer = {out: i for i, n in enumerate(graph.node) for out in n.output}
    waiting = [sum(1 for x in set(n.input) if x not in available and x in producer) for n in graph.node]
    users: dict[int, list[int]] = {}
    for i, n in enumerate(graph.node):
        for x in set(n.input):
            if x not in available and x in producer:
                users.setdefault(producer[x], []).append(i)
    queue = [i for i, w in enumerate(waiting) if w == 0]
    order = []
    while queue:
        i = queue.pop(0)
        order.append(i)
        for j in users.get(i, []):
            waiting[j] -= 1
            if waiting[j] == 0:
                queue.append(j)
    if len(order) != len(graph.node):
        raise OptimizeError("the fp16 graph has a cycle; cannot order its nodes")
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


def range_summary(ranges: TensorsData) -> dict[str, list[float]]:
    """{tensor: [low, high]} as plain floats, for the report and for tests."""
    summary = {}
    for name, data in ranges.data.items():
        low, high = data.range_value
        summary[name] = [float(np.asarray(low).min()), float(np.asarray(high).max())]
    return summary
