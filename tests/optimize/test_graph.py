"""The ONNX <-> Mlp converter: exact round trips, preserved names, clear refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from kairos.optimize import runtime
from kairos.optimize.errors import OptimizeError, UnsupportedGraphError
from kairos.optimize.graph import Dense, build_model, load_onnx, read_mlp, save_model
from onnx import TensorProto, helper, numpy_helper


def _gemm_model(extra_op: str | None = None) -> onnx.ModelProto:
    """A Gemm(transB=1) -> Relu -> MatMul -> Add -> Softmax network, as other exporters write it."""
    rng = np.random.default_rng(1)
    w1, b1 = rng.normal(size=(16, 8)).astype(np.float32), rng.normal(size=16).astype(np.float32)
    w2, b2 = rng.normal(size=(16, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1, alpha=0.5),
             helper.make_node(extra_op or "Relu", ["h"], ["a"], name="act"),
             helper.make_node("MatMul", ["a", "w2"], ["m"], name="fc2"),
             helper.make_node("Add", ["m", "b2"], ["z"], name="bias2"),
             helper.make_node("Softmax", ["z"], ["probs"], name="sm", axis=-1)]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def test_round_trip_matches_original_outputs(tmp_path: Path) -> None:
    original = save_model(_gemm_model(), tmp_path / "orig.onnx")
    mlp = read_mlp(load_onnx(original))
    assert [type(layer).__name__ for layer in mlp.layers] == ["Dense", "Activation", "Dense", "Activation"]
    rebuilt = save_model(build_model(mlp), tmp_path / "rebuilt.onnx")
    x = np.random.default_rng(0).normal(size=(33, 8)).astype(np.float32)
    a = runtime.run(runtime.make_session(original), x)
    b = runtime.run(runtime.make_session(rebuilt), x)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_export_keeps_names_and_a_dynamic_batch_dim() -> None:
    model = build_model(read_mlp(_gemm_model()))
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("x", "probs")
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert out.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [8]


def test_gemm_alpha_and_transpose_are_folded_into_the_weight() -> None:
    mlp = read_mlp(_gemm_model())
    first = mlp.layers[0]
    assert isinstance(first, Dense) and first.weight.shape == (8, 16)


@pytest.mark.parametrize("op", ["MaxPool", "LeakyRelu"])
def test_unsupported_operator_is_named(op: str) -> None:
    with pytest.raises(UnsupportedGraphError, match=f"operator '{op}'.*supported operators"):
        read_mlp(_gemm_model(extra_op=op))


def test_branching_graph_is_refused() -> None:
    model = _gemm_model()
    model.graph.node[2].input[0] = "h"  # fc2 reads the pre-activation: Relu's output is a dead branch
    with pytest.raises(UnsupportedGraphError, match="single chain"):
        read_mlp(model)


def test_unreadable_model_file(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(OptimizeError, match="cannot read ONNX model .*garbage.onnx"):
        load_onnx(bad)
    with pytest.raises(OptimizeError, match="model file not found"):
        load_onnx(tmp_path / "missing.onnx")
