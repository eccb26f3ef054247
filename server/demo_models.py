"""Built-in demo models, generated reproducibly into a cache folder at first start.

`kairos serve` with no repository serves these so a newcomer sees it answer at once:

- `digits`: an MLP classifier (64 -> 128 -> 10, softmax) trained with scikit-learn
  on its bundled 8x8 digits images (fp32); `digits-int8` is the same model with
  int8 weights (static QDQ quantization calibrated on the training images). `digits`
  is a model group {fp32, int8}: its int8 member's top-1 agreement with fp32 on the
  digits images is measured here and written to digits-int8/report.json, as
  `kairos optimize` does; under overload the scheduler may serve from int8 within an
  accuracy budget of 1%.
- `mlp256`: the performance reference model, FP32 [batch,256] -> 1024 -> ReLU ->
  1024 -> ReLU -> 10, random weights from a fixed seed.

The cache key is a hash of this file, so editing it regenerates the models.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
MLP256_SIZES = (256, 1024, 1024, 10)
MLP_HEAVY_SIZES = (1024, 8192, 8192, 8192, 10)


def _dense_layers(
    weights: Sequence[np.ndarray],
    biases: Sequence[np.ndarray],
    input_name: str,
    output_name: str,
    final: str | None,
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    nodes, inits = [], []
    current = input_name
    last = len(weights) - 1
    for index, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
        inits += [
            numpy_helper.from_array(weight.astype(np.float32), f"W{index}"),
            numpy_helper.from_array(bias.astype(np.float32), f"B{index}"),
        ]
        gemm_out = f"gemm{index}"
        if index == last and final is None:
            gemm_out = output_name
        nodes.append(helper.make_node("Gemm", [current, f"W{index}", f"B{index}"], [gemm_out]))
        if index < last:
            current = f"relu{index}"
            nodes.append(helper.make_node("Relu", [gemm_out], [current]))
        elif final is not None:
            nodes.append(helper.make_node(final, [gemm_out], [output_name], axis=1))
    return nodes, inits


def mlp_from_weights(
    weights: Sequence[np.ndarray],
    biases: Sequence[np.ndarray],
    *,
    input_name: str = "input",
    output_name: str = "output",
    final: str | None = None,
    name: str = "mlp",
) -> onnx.ModelProto:
    """An ONNX MLP (Gemm + ReLU layers) with a dynamic batch dimension.

    `weights[i]` has shape (in, out); `final` may be "Softmax" for probabilities.
    """
    nodes, inits = _dense_layers(weights, biases, input_name, output_name, final)
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", weights[0].shape[0]])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", weights[-1].shape[1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_mlp(sizes: Sequence[int], seed: int = 0, name: str = "mlp") -> onnx.ModelProto:
    """An MLP with random (He-scaled) weights from a fixed seed, e.g. sizes (256, 1024, 1024, 10)."""
    rng = np.random.default_rng(seed)
    weights = [
        rng.standard_normal((fan_in, fan_out), dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True)
    ]
    biases = [rng.standard_normal(fan_out, dtype=np.float32) * np.float32(0.01) for fan_out in sizes[1:]]
    return mlp_from_weights(weights, biases, name=name)


def digits_data() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: images scaled to [0, 1] as FP32 [n, 64], labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)


def build_digits_classifier(seed: int = 0) -> onnx.ModelProto:
    """Train a small MLP on the digits data (about a second) and export it to ONNX."""
    from sklearn.neural_network import MLPClassifier

    features, labels = digits_data()
    classifier = MLPClassifier(hidden_layer_sizes=(128,), max_iter=300, random_state=seed)
    classifier.fit(features, labels)
    return mlp_from_weights(
        classifier.coefs_, classifier.intercepts_, final="Softmax", name="digits"
    )


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: np.ndarray, input_name: str) -> None:
    """Static QDQ int8 (fixed scales, so a row's output never depends on its batch-mates)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._rows = iter(calibration[i : i + 1] for i in range(len(calibration)))

        def get_next(self) -> dict | None:
            row = next(self._rows, None)
            return None if row is None else {input_name: row}

    quantize_static(
        str(fp32_path),
        str(int8_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )


def _agreement(fp32_path: Path, int8_path: Path, features: np.ndarray) -> float:
    """Top-1 agreement of the int8 model with the fp32 one on `features`."""
    import onnxruntime as ort

    labels = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": features})[0]
              .argmax(1) for p in (fp32_path, int8_path)]
    return float(np.mean(labels[0] == labels[1]))


def _cache_root() -> Path:
    if os.environ.get("KAIROS_CACHE_DIR"):
        return Path(os.environ["KAIROS_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kairos"


def _write_model(repo: Path, name: str, model: onnx.ModelProto, config: str) -> Path:
    folder = repo / name / "1"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(model, path)
    (repo / name / "config.yaml").write_text(config)
    return path


def generate(repo: Path) -> Path:
    """Write the demo repository into `repo` (which must not exist yet)."""
    repo.mkdir(parents=True)
    digits_path = _write_model(
        repo, "digits", build_digits_classifier(), "max_batch_size: 64\nslo_ms: 50\n"
    )
    int8_folder = repo / "digits-int8" / "1"
    int8_folder.mkdir(parents=True)
    features, _ = digits_data()
    quantize_int8(digits_path, int8_folder / "model.onnx", features[:256], "input")
    (repo / "digits-int8" / "config.yaml").write_text("max_batch_size: 64\nslo_ms: 50\n")
    agreement = _agreement(digits_path, int8_folder / "model.onnx", features)
    (repo / "digits-int8" / "report.json").write_text(json.dumps({"top1_agreement": agreement}))
    (repo / "digits" / "config.yaml").write_text(
        "max_batch_size: 64\nslo_ms: 50\nvariants:\n  reference: fp32\n  accuracy_budget: 0.01\n"
        "  members:\n    int8: {model: digits-int8}\n"
    )
    _write_model(
        repo, "mlp256", build_mlp(MLP256_SIZES, seed=256, name="mlp256"),
        "max_batch_size: 64\nslo_ms: 10\n",
    )
    return repo


def demo_repository() -> Path:
    """The demo repository in the cache folder, generated on first use."""
    key = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    target = _cache_root() / f"demo-models-{key}"
    if (target / "mlp256" / "1" / "model.onnx").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Generate beside the target and rename, so a crash never leaves half a repository.
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=target.parent))
    shutil.rmtree(staging)
    generate(staging)
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target
