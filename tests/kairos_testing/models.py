"""Small ONNX models built with the onnx helper API, and repositories holding them."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

OPSET = 17


def _model(nodes, inputs, outputs, name: str, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def identity(elem_type: int = TensorProto.FLOAT, width: int = 4, name: str = "identity") -> onnx.ModelProto:
    """input [batch, width] -> output, unchanged."""
    return _model(
        [helper.make_node("Identity", ["input"], ["output"])],
        [helper.make_tensor_value_info("input", elem_type, ["batch", width])],
        [helper.make_tensor_value_info("output", elem_type, ["batch", width])],
        name,
    )


def cast(from_type: int, to_type: int, width: int = 3) -> onnx.ModelProto:
    """input [batch, width] of from_type -> output cast to to_type."""
    return _model(
        [helper.make_node("Cast", ["input"], ["output"], to=to_type)],
        [helper.make_tensor_value_info("input", from_type, ["batch", width])],
        [helper.make_tensor_value_info("output", to_type, ["batch", width])],
        "cast",
    )


def boolean_not(width: int = 3) -> onnx.ModelProto:
    return _model(
        [helper.make_node("Not", ["input"], ["output"])],
        [helper.make_tensor_value_info("input", TensorProto.BOOL, ["batch", width])],
        [helper.make_tensor_value_info("output", TensorProto.BOOL, ["batch", width])],
        "not",
    )


def add_sub(width: int = 4) -> onnx.ModelProto:
    """Two inputs a, b [batch, width] -> outputs sum = a + b and difference = a - b."""
    return _model(
        [
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Sub", ["a", "b"], ["difference"]),
        ],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", width]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", width]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", width]),
            helper.make_tensor_value_info("difference", TensorProto.FLOAT, ["batch", width]),
        ],
        "add_sub",
    )


def fixed_shape(width: int = 4) -> onnx.ModelProto:
    """A model with no batch dimension: input [2, width] -> output."""
    return _model(
        [helper.make_node("Identity", ["input"], ["output"])],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [2, width])],
        "fixed",
    )


def write_model(repo: Path, name: str, model: onnx.ModelProto | bytes, version: int = 1,
                config: str | None = None) -> Path:
    """Write `model` as `<repo>/<name>/<version>/model.onnx` (bytes are written as-is)."""
    folder = repo / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    if isinstance(model, bytes):
        path.write_bytes(model)
    else:
        onnx.save(model, path)
    if config is not None:
        (repo / name / "config.yaml").write_text(config)
    return path


def standard_repository(repo: Path) -> Path:
    """The repository most integration tests use: one model per datatype family."""
    write_model(repo, "identity_fp32", identity(TensorProto.FLOAT))
    write_model(repo, "identity_fp16", identity(TensorProto.FLOAT16))
    write_model(repo, "identity_int64", identity(TensorProto.INT64))
    write_model(repo, "identity_bytes", identity(TensorProto.STRING, width=2))
    write_model(repo, "identity_uint8", identity(TensorProto.UINT8))
    write_model(repo, "identity_fp64", identity(TensorProto.DOUBLE))
    write_model(repo, "cast_int64_fp32", cast(TensorProto.INT64, TensorProto.FLOAT))
    write_model(repo, "not_bool", boolean_not())
    write_model(repo, "add_sub", add_sub())
    write_model(repo, "fixed", fixed_shape())
    write_model(repo, "broken", b"this is not an onnx model")
    return repo


GROUP_CONFIG = """max_batch_size: 64
scheduling: {profile_budget_s: 0.4}
variants:
  reference: fp32
  accuracy_budget: 0.02
  members:
    int8: {model: mlp-int8}
    pruned: {model: mlp-pruned, accuracy: 0.9}
"""


def model_group_repository(repo: Path, agreement: float = 0.99) -> Path:
    """A model group `mlp` {fp32 reference, static int8 (its agreement in report.json, as
    `kairos optimize` writes it), a declared "pruned" member}; the members are also
    served under their own names."""
    import json

    import numpy as np
    from kairos.server.demo_models import build_mlp, quantize_int8

    fp32 = write_model(repo, "mlp", build_mlp((32, 64, 10), seed=7), config=GROUP_CONFIG)
    int8 = repo / "mlp-int8" / "1" / "model.onnx"
    int8.parent.mkdir(parents=True)
    calibration = np.random.default_rng(0).standard_normal((32, 32)).astype(np.float32)
    quantize_int8(fp32, int8, calibration, "input")
    (repo / "mlp-int8" / "report.json").write_text(json.dumps({"top1_agreement": agreement}))
    write_model(repo, "mlp-pruned", build_mlp((32, 64, 10), seed=8))
    return repo
