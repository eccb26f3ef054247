"""A small, explicit model of feed-forward ONNX graphs: read, rewrite, write back.

Supported operators (a single chain from one input to one output):
Gemm (transA=0), MatMul (+ Add of a constant bias), Conv (2-D, group 1, symmetric pads),
Relu, Sigmoid, Tanh, Softmax (last axis), Flatten (axis=1) and Identity. Any other operator raises UnsupportedGraphError
naming it. Pruning and distillation work on this form; quantization works on any graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from kairos.optimize.errors import OptimizeError, UnsupportedGraphError
from onnx import TensorProto, helper, numpy_helper

SUPPORTED_OPS = ("Gemm", "MatMul", "Add", "Conv", "Relu", "Sigmoid", "Tanh", "Softmax", "Flatten", "Identity")
ACTIVATIONS = ("relu", "sigmoid", "tanh", "softmax")
OPSET = 17
IR_VERSION = 9  # onnxruntime >= 1.15 reads it; newer IRs buy nothing here


@dataclass
class Dense:
    """y = x @ weight + bias; weight is [in, out] (MatMul orientation)."""

    weight: np.ndarray
    bias: np.ndarray

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[1])


@dataclass
class Conv:
    """2-D convolution, group 1; weight is [out, in, kh, kw] (ONNX and torch orientation)."""

    weight: np.ndarray
    bias: np.ndarray
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int] = (0, 0)  # symmetric: (top = bottom, left = right)
    dilations: tuple[int, int] = (1, 1)

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        kh, kw = self.weight.shape[2:]
        return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
                     zip((h, w), self.pads, self.dilations, (kh, kw), self.strides, strict=True))


@dataclass
class Activation:
    kind: str  # one of ACTIVATIONS


@dataclass
class Flatten:
    pass


Layer = Dense | Conv | Activation | Flatten
Param = Dense | Conv


@dataclass
class Mlp:
    """A feed-forward network in the supported subset, with the I/O names to preserve."""

    layers: list[Layer]
    input_name: str = "input"
    output_name: str = "output"
    input_shape: tuple[int, ...] = ()  # per-row dims (no batch dim)
    metadata: dict[str, str] = field(default_factory=dict)

    def dense_layers(self) -> list[Dense]:
        return [layer for layer in self.layers if isinstance(layer, Dense)]

    def param_layers(self) -> list[Param]:
        """Layers with weights (Dense and Conv), in order."""
        return [layer for layer in self.layers if isinstance(layer, Dense | Conv)]

    def hidden_sizes(self) -> list[int]:
        """Units or channels of every weighted layer but the last."""
        return [layer.out_features for layer in self.param_layers()[:-1]]

    def ends_in_softmax(self) -> bool:
        return isinstance(self.layers[-1], Activation) and self.layers[-1].kind == "softmax"


def load_onnx(path: Path | str) -> onnx.ModelProto:
    """Read an ONNX file, turning every failure into a message that names the file."""
    path = Path(path)
    if not path.is_file():
        raise OptimizeError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises several unrelated types for a bad file
        raise OptimizeError(f"cannot read ONNX model {path}: {exc}") from None
    return model


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _float_input(graph: onnx.GraphProto, inits: set[str]) -> onnx.ValueInfoProto:
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise UnsupportedGraphError(
            f"the converter needs one input and one output, found {len(inputs)} inputs "
            f"and {len(graph.output)} outputs"
        )
    if inputs[0].type.tensor_type.elem_type != TensorProto.FLOAT:
        raise UnsupportedGraphError(f"input '{inputs[0].name}' must be float32")
    return inputs[0]


def _row_shape(value: onnx.ValueInfoProto) -> tuple[int, ...]:
    dims = value.type.tensor_type.shape.dim[1:]
    if any(not d.HasField("dim_value") for d in dims):
        raise UnsupportedGraphError(f"input '{value.name}' must have fixed dims after the batch dim")
    return tuple(int(d.dim_value) for d in dims)


def _gemm(node: onnx.NodeProto, weights: dict[str, np.ndarray]) -> Dense:
    a = _attrs(node)
    if a.get("transA", 0):
        raise UnsupportedGraphError(f"Gemm node '{node.name}' with transA=1 is not supported")
    w = _constant(node, 1, weights)
    w = (w.T if a.get("transB", 0) else w) * float(a.get("alpha", 1.0))
    bias = np.zeros(w.shape[1], np.float32)
    if len(node.input) > 2 and node.input[2]:
        bias = bias + _constant(node, 2, weights).reshape(-1) * float(a.get("beta", 1.0))
    return Dense(w.astype(np.float32), bias.astype(np.float32))


def _conv(node: onnx.NodeProto, weights: dict[str, np.ndarray]) -> Conv:
    a = _attrs(node)
    w = _constant(node, 1, weights)
    pads = list(a.get("pads", [0, 0, 0, 0]))
    if w.ndim != 4 or a.get("group", 1) != 1 or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") \
            or pads[:2] != pads[2:]:
        raise UnsupportedGraphError(f"Conv node '{node.name}': only 2-D, group=1 convolutions with "
                                    "explicit symmetric pads are supported")
    bias = _constant(node, 2, weights) if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0])
    return Conv(w, bias.astype(np.float32), tuple(a.get("strides", (1, 1))), tuple(pads[:2]),
                tuple(a.get("dilations", (1, 1))))


def _constant(node: onnx.NodeProto, index: int, weights: dict[str, np.ndarray]) -> np.ndarray:
    name = node.input[index]
    if name not in weights:
        raise UnsupportedGraphError(
            f"{node.op_type} node '{node.name}': input '{name}' must be a constant initializer"
        )
    return weights[name].astype(np.float32)


def _add_bias(node: onnx.NodeProto, layers: list[Layer], weights: dict[str, np.ndarray]) -> None:
    bias = _constant(node, 1, weights).reshape(-1)
    if not layers or not isinstance(layers[-1], Dense) or bias.shape[0] != layers[-1].out_features:
        raise UnsupportedGraphError(f"Add node '{node.name}' is supported only as the bias of a MatMul")
    layers[-1].bias = (layers[-1].bias + bias).astype(np.float32)


def _layer_for(node: onnx.NodeProto, layers: list[Layer], weights: dict[str, np.ndarray]) -> None:
    op = node.op_type
    if op == "Gemm":
        layers.append(_gemm(node, weights))
    elif op == "MatMul":
        w = _constant(node, 1, weights)
        if w.ndim != 2:
            raise UnsupportedGraphError(f"MatMul node '{node.name}' needs a 2-D weight")
        layers.append(Dense(w, np.zeros(w.shape[1], np.float32)))
    elif op == "Conv":
        layers.append(_conv(node, weights))
    elif op == "Add":
        _add_bias(node, layers, weights)
    elif op in ("Relu", "Sigmoid", "Tanh"):
        layers.append(Activation(op.lower()))
    elif op == "Softmax":
        if _attrs(node).get("axis", -1) not in (-1, 1):
            raise UnsupportedGraphError(f"Softmax node '{node.name}' must act on the last axis")
        layers.append(Activation("softmax"))
    elif op == "Flatten":
        if _attrs(node).get("axis", 1) != 1:
            raise UnsupportedGraphError(f"Flatten node '{node.name}' must use axis=1")
        layers.append(Flatten())
    elif op != "Identity":
        raise UnsupportedGraphError(
            f"operator '{op}' (node '{node.name or '?'}') is not supported by the ONNX->PyTorch "
            f"converter; supported operators: {', '.join(SUPPORTED_OPS)}"
        )


def layer_input_shapes(layers: list[Layer], row_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The per-row shape entering each layer (and, last, the output's); a dense layer must
    see [features], a Conv [channels, h, w]."""
    shapes, shape = [], tuple(row_shape)
    for layer in layers:
        shapes.append(shape)
        if isinstance(layer, Flatten):
            shape = (int(np.prod(shape)),)
        elif isinstance(layer, Dense):
            if shape != (layer.in_features,):
                raise UnsupportedGraphError(f"a dense layer with {layer.in_features} inputs receives rows of "
                                            f"shape {list(shape)}; flatten first")
            shape = (layer.out_features,)
        elif isinstance(layer, Conv):
            if len(shape) != 3 or shape[0] != layer.weight.shape[1]:
                raise UnsupportedGraphError(f"a Conv with {layer.weight.shape[1]} input channels receives "
                                            f"rows of shape {list(shape)}")
            shape = (layer.out_features, *layer.out_hw(*shape[1:]))
    return [*shapes, shape]


def read_mlp(model: onnx.ModelProto) -> Mlp:
    """The supported-subset view of `model`, or UnsupportedGraphError naming the problem."""
    graph = model.graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    source = _float_input(graph, set(weights))
    layers: list[Layer] = []
    current = source.name
    for node in graph.node:
        if not node.input or node.input[0] != current or len(node.output) != 1:
            raise UnsupportedGraphError(
                f"node '{node.name or node.op_type}' ({node.op_type}) is not part of a single chain "
                "from the input to the output; only feed-forward chains are supported"
            )
        _layer_for(node, layers, weights)
        current = node.output[0]
    if current != graph.output[0].name or not layers or not isinstance(
            next((x for x in reversed(layers) if not isinstance(x, Activation)), None), Dense):
        raise UnsupportedGraphError("the graph output is not produced by a chain ending in a dense layer")
    layer_input_shapes(layers, _row_shape(source))
    meta = {p.key: p.value for p in model.metadata_props}
    return Mlp(layers, source.name, graph.output[0].name, _row_shape(source), meta)


def read_mlp_file(path: Path | str) -> Mlp:
    return read_mlp(load_onnx(path))


def _dense_nodes(i: int, layer: Dense, x: str, inits: list) -> tuple[list, str]:
    w_name, b_name = f"dense{i}.weight", f"dense{i}.bias"
    inits += [numpy_helper.from_array(layer.weight.astype(np.float32), w_name),
              numpy_helper.from_array(layer.bias.astype(np.float32), b_name)]
    mm, out = f"dense{i}.matmul", f"dense{i}.out"
    return [helper.make_node("MatMul", [x, w_name], [mm], name=f"dense{i}/MatMul"),
            helper.make_node("Add", [mm, b_name], [out], name=f"dense{i}/Add")], out


def _conv_nodes(i: int, layer: Conv, x: str, inits: list) -> tuple[list, str]:
    w_name, b_name, out = f"conv{i}.weight", f"conv{i}.bias", f"conv{i}.out"
    inits += [numpy_helper.from_array(layer.weight.astype(np.float32), w_name),
              numpy_helper.from_array(layer.bias.astype(np.float32), b_name)]
    node = helper.make_node("Conv", [x, w_name, b_name], [out], name=f"conv{i}/Conv",
                            kernel_shape=list(layer.weight.shape[2:]), strides=list(layer.strides),
                            pads=[*layer.pads, *layer.pads], dilations=list(layer.dilations))
    return [node], out


def _layer_nodes(i: int, layer: Layer, x: str, inits: list) -> tuple[list, str]:
    if isinstance(layer, Dense):
        return _dense_nodes(i, layer, x, inits)
    if isinstance(layer, Conv):
        return _conv_nodes(i, layer, x, inits)
    out = f"layer{i}.out"
    if isinstance(layer, Flatten):
        return [helper.make_node("Flatten", [x], [out], name=f"layer{i}/Flatten", axis=1)], out
    op = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softmax": "Softmax"}[layer.kind]
    extra = {"axis": -1} if op == "Softmax" else {}
    return [helper.make_node(op, [x], [out], name=f"layer{i}/{op}", **extra)], out


def build_model(mlp: Mlp) -> onnx.ModelProto:
    """An ONNX model for `mlp`: MatMul+Add per dense layer, dynamic batch dim 'batch'."""
    nodes, inits, x = [], [], mlp.input_name
    for i, layer in enumerate(mlp.layers):
        new, x = _layer_nodes(i, layer, x, inits)
        nodes += new
    nodes[-1].output[0] = mlp.output_name  # keep the caller-visible output name
    out_dim = mlp.dense_layers()[-1].out_features
    graph = helper.make_graph(
        nodes, "kairos-mlp",
        [helper.make_tensor_value_info(mlp.input_name, TensorProto.FLOAT, ["batch", *mlp.input_shape])],
        [helper.make_tensor_value_info(mlp.output_name, TensorProto.FLOAT, ["batch", out_dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="kairos-optimize")
    model.ir_version = IR_VERSION
    helper.set_model_props(model, mlp.metadata)
    onnx.checker.check_model(model)
    return model


def save_model(model: onnx.ModelProto, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def random_mlp(sizes: list[int], seed: int = 0, softmax: bool = False) -> Mlp:
    """A ReLU MLP with He-initialised weights: for students and benchmarks."""
    rng = np.random.default_rng(seed)
    layers: list[Layer] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = rng.normal(0.0, np.sqrt(2.0 / fan_in), (fan_in, fan_out)).astype(np.float32)
        layers.append(Dense(w, np.zeros(fan_out, np.float32)))
        if i < len(sizes) - 2:
            layers.append(Activation("relu"))
    if softmax:
        layers.append(Activation("softmax"))
    return Mlp(layers, input_shape=(sizes[0],))
