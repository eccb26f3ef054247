"""A model zoo built in code (no downloads): the architectures users bring, as ONNX.

Shared by the tests and `bench/model_zoo.py`. It imports onnx, onnxruntime, numpy,
scikit-learn and skl2onnx only (never Kairos's generated stubs), so the tritonclient
tests can use it too.

Models whose accuracy the reports show are trained on scikit-learn's digits data:
the scikit-learn ones by scikit-learn; the CNNs by torch (the architecture is written
once against `Graph`'s layer calls, trained through `TorchOps`, then emitted with
onnx.helper); the encoder and the GRU as random-feature networks (random attention /
recurrent weights) whose classifier head is a logistic regression fitted on the
backbone's features. A "text" task comes from the same digits: each lit pixel is a token
(position x 4 intensity levels), so sequences have 10 to 50 tokens.

Built models are cached under $KAIROS_ZOO_CACHE (default: a temp folder keyed by this
file's contents and the library versions), so only the first use pays for building.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
VOCAB = 257  # 0 = padding; 1 + pixel * 4 + (level - 1)
MAX_TOKENS = 128
FIXED_BATCH = 8
FLOAT = TensorProto.FLOAT


# -- data ---------------------------------------------------------------------


@dataclass(frozen=True)
class Digits:
    x_train: np.ndarray  # [rows, 64] float32 in [0, 1]
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@functools.lru_cache(maxsize=1)
def digits() -> Digits:
    """scikit-learn's 8x8 digits, a fixed stratified 75/25 split, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y.astype(np.int64), test_size=0.25,
                                              random_state=0, stratify=y)
    return Digits(x_tr, y_tr, x_te, y_te)


def tokens(x: np.ndarray, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) INT64 [rows, length] for digit rows: the lit pixels in
    order as tokens, padded with 0 to `length` (default: the longest row)."""
    levels = np.ceil(x * 4).astype(np.int64)  # 0 (dark) .. 4
    rows = [[1 + i * 4 + (v - 1) for i, v in enumerate(row) if v > 0] for row in levels]
    length = length or max(len(r) for r in rows)
    ids = np.zeros((len(rows), length), np.int64)
    for i, r in enumerate(rows):
        ids[i, :min(len(r), length)] = r[:length]
    return ids, (ids > 0).astype(np.int64)


def token_lengths(x: np.ndarray) -> np.ndarray:
    return (np.ceil(x * 4) > 0).sum(1)


# -- graph helpers ----------------------------------------------------------------


class Graph:
    """Nodes and initializers under construction, with unique names."""

    def __init__(self, seed: int, trained: list[list[np.ndarray]] | None = None) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self._count = 0
        self._trained = iter(trained or [])  # conv / bn parameters in call order (TorchOps)

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: np.ndarray, hint: str = "c") -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, outputs: int = 1,
           **attrs) -> str | list[str]:
        base = self.name(hint or op_type.lower())
        names = [base] if outputs == 1 else [f"{base}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=base, **attrs))
        return names[0] if outputs == 1 else names

    def model(self, name: str, inputs: list, outputs: list, opset: int = OPSET) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                  producer_name="kairos-zoo")
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model)
        return model

    # layers
    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, group: int = 1) -> str:
        fan_in = cin // group * k * k
        w = self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan_in)
        w = next(self._trained, [w])[0]
        return self.op("Conv", [x, self.const(w.astype(np.float32), "w")], "conv", kernel_shape=[k, k],
                       strides=[stride, stride], pads=[k // 2] * 4, group=group)

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        params = [r.uniform(0.6, 1.4, c), r.normal(0, 0.1, c), r.normal(0, 0.2, c), r.uniform(0.5, 2.0, c)]
        params = next(self._trained, params)
        return self.op("BatchNormalization", [x, *(self.const(p.astype(np.float32), "bn") for p in params)],
                       "bn", epsilon=1e-5)

    def dense(self, x: str, fin: int, fout: int, hint: str = "dense") -> str:
        w = (self.rng.standard_normal((fin, fout)) / np.sqrt(fin)).astype(np.float32)
        b = self.rng.normal(0, 0.02, fout).astype(np.float32)
        return self.op("Add", [self.op("MatMul", [x, self.const(w, "w")], hint), self.const(b, "b")])

    def layer_norm(self, x: str, d: int) -> str:
        return self.op("LayerNormalization", [x, self.const(np.ones(d, np.float32), "ln_g"),
                                              self.const(np.zeros(d, np.float32), "ln_b")],
                       "layernorm", axis=-1, epsilon=1e-5)

    def gelu(self, x: str) -> str:
        erf = self.op("Erf", [self.op("Mul", [x, self.const(np.float32(1 / np.sqrt(2)))])])
        one_plus = self.op("Add", [erf, self.const(np.float32(1.0))])
        return self.op("Mul", [self.op("Mul", [x, one_plus]), self.const(np.float32(0.5))], "gelu")


def _tensor(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _fit_head(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A logistic-regression classifier on standardized features, folded into (W [F, 10], b)."""
    from sklearn.linear_model import LogisticRegression

    mu, sd = features.mean(0), features.std(0) + 1e-6
    clf = LogisticRegression(max_iter=2000, C=1.0).fit((features - mu) / sd, labels)
    w = (clf.coef_ / sd).T
    b = clf.intercept_ - (mu / sd) @ clf.coef_.T
    return w.astype(np.float32), b.astype(np.float32)


def _headed(g: Graph, name: str, inputs: list, feat: str, train_feeds: dict[str, np.ndarray],
            labels: np.ndarray, logits_name: str = "logits") -> onnx.ModelProto:
    """The backbone's features -> a fitted linear head -> `logits` [batch, 10]."""
    probe = g.model(name, inputs, [_tensor(feat, FLOAT, ["batch", "features"])])
    features = _session(probe).run([feat], train_feeds)[0]
    w, b = _fit_head(features, labels)
    g.nodes.append(helper.make_node("Gemm", [feat, g.const(w, "head_w"), g.const(b, "head_b")],
                                    [logits_name], name="head"))
    return g.model(name, inputs, [_tensor(logits_name, FLOAT, ["batch", 10])])


# -- the neural models ------------------------------------------------------------------


def images(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, 1, 8, 8)


def sequences(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, 8, 8)  # 8 time steps of 8 features (the image's rows)


class TorchOps:
    """The same layer calls as `Graph`, run by torch: an architecture written once against
    conv / bn / op is trained here, then emitted as ONNX by `Graph` with these weights."""

    def __init__(self) -> None:
        self.modules: list = []
        self._next = 0

    def _module(self, make):
        if self._next == len(self.modules):
            self.modules.append(make())
        module = self.modules[self._next]
        self._next += 1
        return module

    def conv(self, x, cin: int, cout: int, k: int = 3, stride: int = 1, group: int = 1):
        from torch import nn

        return self._module(lambda: nn.Conv2d(cin, cout, k, stride, k // 2, groups=group, bias=False))(x)

    def bn(self, x, c: int):
        from torch import nn

        return self._module(lambda: nn.BatchNorm2d(c, eps=1e-5))(x)

    def op(self, op_type: str, inputs: list, hint: str | None = None, **attrs):
        import torch.nn.functional as F

        x = inputs[0]
        return {"Relu": F.relu, "HardSwish": F.hardswish, "Add": lambda v: v + inputs[1],
                "GlobalAveragePool": lambda v: v.mean((2, 3), keepdim=True),
                "Flatten": lambda v: v.flatten(1)}[op_type](x)

    def parameters(self) -> list:
        return [p for m in self.modules for p in m.parameters()]

    def exported(self) -> list[list[np.ndarray]]:
        out = []
        for m in self.modules:
            if hasattr(m, "running_mean"):
                out.append([t.detach().numpy().astype(np.float32) for t in
                            (m.weight, m.bias, m.running_mean, m.running_var)])
            else:
                out.append([m.weight.detach().numpy().astype(np.float32)])
        return out


def _train_cnn(arch: Callable, features: int, epochs: int = 8, seed: int = 0):
    """Train `arch` (+ a linear head) on the digit images with torch; returns (trained conv/bn
    parameters in call order, head W [F, 10], head b)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        d, ops = digits(), TorchOps()
        x, y = torch.from_numpy(images(d.x_train)), torch.from_numpy(d.y_train)
        arch(ops, x[:2])  # create the modules
        head = nn.Linear(features, 10)
        opt = torch.optim.Adam([*ops.parameters(), *head.parameters()], lr=3e-3)
        gen = torch.Generator().manual_seed(seed)
        for m in ops.modules:
            m.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=gen).split(64):
                ops._next = 0
                loss = nn.functional.cross_entropy(head(arch(ops, x[idx])), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        w, b = head.weight.detach().numpy().T.copy(), head.bias.detach().numpy().copy()
        return ops.exported(), w.astype(np.float32), b.astype(np.float32)
    finally:
        torch.set_num_threads(threads)


def _cnn(name: str, arch: Callable, features: int, seed: int) -> onnx.ModelProto:
    trained, w, b = _train_cnn(arch, features, seed=seed)
    g = Graph(seed, trained)
    feat = arch(g, "image")
    g.nodes.append(helper.make_node("Gemm", [feat, g.const(w, "head_w"), g.const(b, "head_b")],
                                    ["logits"], name="head"))
    return g.model(name, [_tensor("image", FLOAT, ["batch", 1, 8, 8])], [_tensor("logits", FLOAT, ["batch", 10])])


def resnet_arch(g, x):
    """conv-BN-ReLU stem, an identity residual block, a strided block with a projection
    shortcut, global average pooling -> features [batch, 64]."""
    x = g.op("Relu", [g.bn(g.conv(x, 1, 32), 32)])
    h = g.op("Relu", [g.bn(g.conv(x, 32, 32), 32)])
    h = g.bn(g.conv(h, 32, 32), 32)
    x = g.op("Relu", [g.op("Add", [h, x], "residual")])
    h = g.op("Relu", [g.bn(g.conv(x, 32, 64, stride=2), 64)])
    h = g.bn(g.conv(h, 64, 64), 64)
    shortcut = g.bn(g.conv(x, 32, 64, k=1, stride=2), 64)
    x = g.op("Relu", [g.op("Add", [h, shortcut], "residual")])
    return g.op("Flatten", [g.op("GlobalAveragePool", [x])], "features")


def mobilenet_arch(g, x):
    """stem conv + hard-swish, an inverted residual block (1x1 expand, 3x3 depthwise, 1x1
    project, residual add), a 1x1 conv, global average pooling -> features [batch, 96]."""
    x = g.op("HardSwish", [g.bn(g.conv(x, 1, 16), 16)])
    h = g.op("HardSwish", [g.bn(g.conv(x, 16, 64, k=1), 64)])
    h = g.op("HardSwish", [g.bn(g.conv(h, 64, 64, k=3, group=64), 64)])
    h = g.bn(g.conv(h, 64, 16, k=1), 16)
    x = g.op("Add", [h, x], "residual")
    x = g.op("HardSwish", [g.bn(g.conv(x, 16, 96, k=1), 96)])
    return g.op("Flatten", [g.op("GlobalAveragePool", [x])], "features")


def build_resnet() -> onnx.ModelProto:
    """ResNet-style CNN trained on the digits (torch, then emitted with onnx.helper)."""
    return _cnn("resnet", resnet_arch, 64, seed=1)


def build_mobilenet() -> onnx.ModelProto:
    """MobileNetV3-style CNN trained on the digits (torch, then emitted with onnx.helper)."""
    return _cnn("mobilenet", mobilenet_arch, 96, seed=2)


def _attention(g: Graph, x: str, mask_bias: str, d: int, heads: int) -> str:
    hd = d // heads
    split = g.const(np.array([0, 0, heads, hd], np.int64), "shape")

    def project(perm: list[int]) -> str:
        return g.op("Transpose", [g.op("Reshape", [g.dense(x, d, d, "proj"), split])], perm=perm)

    q, k, v = project([0, 2, 1, 3]), project([0, 2, 3, 1]), project([0, 2, 1, 3])
    scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), g.const(np.float32(1 / np.sqrt(hd)))]),
                          mask_bias])
    ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
    merged = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]),
                              g.const(np.array([0, 0, d], np.int64), "shape")])
    return g.dense(merged, d, d, "attn_out")


def build_encoder(d: int = 128, heads: int = 4, ffn: int = 256, layers: int = 1) -> onnx.ModelProto:
    """BERT-style encoder classifier: token + position embeddings, LayerNorm, multi-head
    self-attention with the padding mask, GELU feed-forward, masked mean pooling, head.
    input_ids, attention_mask INT64 [batch, seq] (seq dynamic, up to 128)."""
    g, data = Graph(3), digits()
    emb = g.const((g.rng.standard_normal((VOCAB, d)) * 0.5).astype(np.float32), "tok_emb")
    pos_table = g.const((g.rng.standard_normal((MAX_TOKENS, d)) * 0.1).astype(np.float32), "pos_emb")
    seq_len = g.op("Gather", [g.op("Shape", ["input_ids"]), g.const(np.int64(1), "axis1")], axis=0)
    positions = g.op("Range", [g.const(np.int64(0)), seq_len, g.const(np.int64(1))])
    x = g.op("Add", [g.op("Gather", [emb, "input_ids"], "embed"), g.op("Gather", [pos_table, positions])])
    x = g.layer_norm(x, d)
    mask = g.op("Cast", ["attention_mask"], to=FLOAT)
    bias = g.op("Mul", [g.op("Sub", [g.const(np.float32(1.0)), mask]), g.const(np.float32(-10000.0))])
    bias = g.op("Unsqueeze", [bias, g.const(np.array([1, 2], np.int64), "axes")])
    for _ in range(layers):
        x = g.layer_norm(g.op("Add", [x, _attention(g, x, bias, d, heads)]), d)
        h = g.dense(g.gelu(g.dense(x, d, ffn, "ffn_in")), ffn, d, "ffn_out")
        x = g.layer_norm(g.op("Add", [x, h]), d)
    mask3 = g.op("Unsqueeze", [mask, g.const(np.array([2], np.int64), "axes")])
    axis = g.const(np.array([1], np.int64), "axes")
    summed = g.op("ReduceSum", [g.op("Mul", [x, mask3]), axis], keepdims=0)
    counts = g.op("ReduceSum", [mask3, axis], keepdims=0)
    feat = g.op("Div", [summed, counts], "features")
    ids, attn = tokens(data.x_train)
    inputs = [_tensor("input_ids", TensorProto.INT64, ["batch", "seq"]),
              _tensor("attention_mask", TensorProto.INT64, ["batch", "seq"])]
    return _headed(g, "encoder", inputs, feat, {"input_ids": ids, "attention_mask": attn}, data.y_train)


def build_gru(hidden: int = 64) -> onnx.ModelProto:
    """A GRU over the image's rows (sequence [batch, time, 8], time dynamic), the last
    hidden state into a linear head."""
    g, d = Graph(4), digits()
    scale = 1 / np.sqrt(hidden)
    w = g.const(g.rng.uniform(-1, 1, (1, 3 * hidden, 8)).astype(np.float32) * 1.5, "gru_w")
    r = g.const(g.rng.uniform(-scale, scale, (1, 3 * hidden, hidden)).astype(np.float32), "gru_r")
    b = g.const(g.rng.normal(0, 0.1, (1, 6 * hidden)).astype(np.float32), "gru_b")
    time_major = g.op("Transpose", ["sequence"], perm=[1, 0, 2])
    _, last = g.op("GRU", [time_major, w, r, b], "gru", outputs=2, hidden_size=hidden)
    feat = g.op("Squeeze", [last, g.const(np.array([0], np.int64), "axes")], "features")
    inputs = [_tensor("sequence", FLOAT, ["batch", "time", 8])]
    return _headed(g, "gru", inputs, feat, {"sequence": sequences(d.x_train)}, d.y_train)


def build_multi_output() -> onnx.ModelProto:
    """x [batch, 64] FP32 -> logits FP32 [batch, 10], label INT64 [batch], embedding FP16
    [batch, 4, 4] and lit BOOL [batch, 64]: several outputs of different ranks and dtypes."""
    g, d = Graph(5), digits()
    w, b = _fit_head(d.x_train, d.y_train)
    logits = g.op("Gemm", ["x", g.const(w, "w"), g.const(b, "b")], "logits_gemm")
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))
    g.nodes.append(helper.make_node("ArgMax", [logits], ["label"], name="label", axis=1, keepdims=0))
    proj = g.op("MatMul", ["x", g.const((g.rng.standard_normal((64, 16)) / 8).astype(np.float32), "p")])
    shaped = g.op("Reshape", [proj, g.const(np.array([-1, 4, 4], np.int64), "shape")])
    g.nodes.append(helper.make_node("Cast", [shaped], ["embedding"], name="embedding", to=TensorProto.FLOAT16))
    g.nodes.append(helper.make_node("Greater", ["x", g.const(np.float32(0.5))], ["lit"], name="lit"))
    outputs = [_tensor("logits", FLOAT, ["batch", 10]), _tensor("label", TensorProto.INT64, ["batch"]),
               _tensor("embedding", TensorProto.FLOAT16, ["batch", 4, 4]),
               _tensor("lit", TensorProto.BOOL, ["batch", 64])]
    return g.model("multi_output", [_tensor("x", FLOAT, ["batch", 64])], outputs)


def _mlp_weights() -> list[tuple[np.ndarray, np.ndarray]]:
    clf = _sk_mlp()
    return [(w.astype(np.float32), b.astype(np.float32)) for w, b in zip(clf.coefs_, clf.intercepts_,
                                                                           strict=True)]


def _plain_mlp(name: str, elem: int, dtype: type, batch: int | str) -> onnx.ModelProto:
    g = Graph(6)
    (w1, b1), (w2, b2) = _mlp_weights()
    h = g.op("Relu", [g.op("Add", [g.op("MatMul", ["x", g.const(w1.astype(dtype), "w")]),
                                   g.const(b1.astype(dtype), "b")])])
    g.nodes.append(helper.make_node("Gemm", [h, g.const(w2.astype(dtype), "w"), g.const(b2.astype(dtype), "b")],
                                    ["logits"], name="head"))
    return g.model(name, [_tensor("x", elem, [batch, 64])], [_tensor("logits", elem, [batch, 10])])


def build_fp16_mlp() -> onnx.ModelProto:
    """The scikit-learn MLP's weights as an FP16 graph: x FP16 [batch, 64] -> logits FP16."""
    return _plain_mlp("fp16_mlp", TensorProto.FLOAT16, np.float16, "batch")


def build_fixed_batch() -> onnx.ModelProto:
    """The same MLP with a fixed batch dimension: x [8, 64] -> logits [8, 10] (no batching)."""
    return _plain_mlp("fixed_batch", FLOAT, np.float32, FIXED_BATCH)


# -- scikit-learn models ------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _sk_mlp():
    from sklearn.neural_network import MLPClassifier

    d = digits()
    return MLPClassifier(hidden_layer_sizes=(128,), max_iter=400, random_state=0).fit(d.x_train, d.y_train)


def _skl2onnx(estimator) -> onnx.ModelProto:
    from skl2onnx import to_onnx

    options = {"zipmap": False} if hasattr(estimator, "predict_proba") else None
    model = to_onnx(estimator, digits().x_train[:1], options=options,
                    target_opset={"": OPSET, "ai.onnx.ml": 3})
    model.ir_version = IR_VERSION
    return model


def build_sk_mlp() -> onnx.ModelProto:
    return _skl2onnx(_sk_mlp())


def build_sk_logistic() -> onnx.ModelProto:
    from sklearn.linear_model import LogisticRegression

    d = digits()
    return _skl2onnx(LogisticRegression(max_iter=2000).fit(d.x_train, d.y_train))


def build_sk_forest() -> onnx.ModelProto:
    from sklearn.ensemble import RandomForestClassifier

    d = digits()
    return _skl2onnx(RandomForestClassifier(n_estimators=30, max_depth=10, random_state=0)
                     .fit(d.x_train, d.y_train))


def build_sk_ridge() -> onnx.ModelProto:
    """A regression: Ridge predicting the digit's value as a number (variable [batch, 1])."""
    from sklearn.linear_model import Ridge

    d = digits()
    return _skl2onnx(Ridge(alpha=1.0).fit(d.x_train, d.y_train.astype(np.float32)))


# -- the catalogue ------------------------------------------------------------------------


def _flat(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"x": x}


@dataclass(frozen=True)
class ZooModel:
    """One zoo entry: how to build it, and how to turn digit rows into its inputs."""

    name: str
    description: str
    build: Callable[[], onnx.ModelProto]
    feeds: Callable[[np.ndarray], dict[str, np.ndarray]]  # digit rows -> model inputs
    trained: bool = True  # accuracy on digits is meaningful
    fixed_batch: int | None = None
    variable_length: bool = False  # a dimension besides the batch varies per request
    tags: tuple[str, ...] = field(default_factory=tuple)

    def path(self, cache: Path | None = None) -> Path:
        return build(self.name, cache)

    def eval_feeds(self) -> dict[str, np.ndarray]:
        """Inputs for the digits test split (token inputs padded to the longest row)."""
        return self.feeds(digits().x_test)

    def train_feeds(self) -> dict[str, np.ndarray]:
        return self.feeds(digits().x_train)


def _encoder_feeds(x: np.ndarray) -> dict[str, np.ndarray]:
    ids, mask = tokens(x)
    return {"input_ids": ids, "attention_mask": mask}


MODELS: dict[str, ZooModel] = {m.name: m for m in [
    ZooModel("resnet", "ResNet-style CNN: conv, batch norm, residual adds, global pooling",
             build_resnet, lambda x: {"image": images(x)}, tags=("conv",)),
    ZooModel("mobilenet", "MobileNet-style CNN: depthwise conv, hard-swish, inverted residual",
             build_mobilenet, lambda x: {"image": images(x)}, tags=("conv",)),
    ZooModel("encoder", "BERT-style encoder classifier: input_ids + attention_mask, dynamic seq, "
             "LayerNorm, GELU, attention", build_encoder, _encoder_feeds, variable_length=True,
             tags=("tokens",)),
    ZooModel("gru", "GRU sequence classifier, dynamic time steps", build_gru,
             lambda x: {"sequence": sequences(x)}, variable_length=True),
    ZooModel("sk_mlp", "scikit-learn MLPClassifier (skl2onnx): label INT64 + probabilities",
             build_sk_mlp, lambda x: {"X": x}, tags=("sklearn",)),
    ZooModel("sk_logistic", "scikit-learn LogisticRegression (skl2onnx LinearClassifier): label + "
             "probabilities", build_sk_logistic, lambda x: {"X": x}, tags=("sklearn",)),
    ZooModel("sk_forest", "scikit-learn RandomForest (skl2onnx TreeEnsembleClassifier)",
             build_sk_forest, lambda x: {"X": x}, tags=("sklearn",)),
    ZooModel("sk_ridge", "scikit-learn Ridge regression (skl2onnx LinearRegressor): variable [batch, 1]",
             build_sk_ridge, lambda x: {"X": x}, tags=("sklearn", "regression")),
    ZooModel("multi_output", "four outputs: logits FP32 [b,10], label INT64 [b], embedding FP16 "
             "[b,4,4], lit BOOL [b,64]", build_multi_output, _flat),
    ZooModel("fp16_mlp", "an FP16 model: x FP16 [b,64] -> logits FP16", build_fp16_mlp,
             lambda x: {"x": x.astype(np.float16)}),
    ZooModel("fixed_batch", f"fixed batch dimension: x [{FIXED_BATCH}, 64] -> logits [{FIXED_BATCH}, 10]",
             build_fixed_batch, _flat, fixed_batch=FIXED_BATCH),
]}


def _cache_root() -> Path:
    env = os.environ.get("KAIROS_ZOO_CACHE")
    if env:
        return Path(env)
    import skl2onnx
    import sklearn

    key = hashlib.sha1(Path(__file__).read_bytes() + f"{onnx.__version__}{sklearn.__version__}"
                       f"{skl2onnx.__version__}".encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"kairos-zoo-{key}"


def build(name: str, cache: Path | None = None) -> Path:
    """The zoo model `name` as an .onnx file, built once and cached."""
    path = (cache or _cache_root()) / f"{name}.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        onnx.save(MODELS[name].build(), tmp)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return path


def repository(dest: Path, names: list[str] | None = None, config: str | None = None) -> Path:
    """A model repository `<dest>/<name>/1/model.onnx` with the zoo models (all by default);
    `config` (YAML) is written as every model's config.yaml."""
    for name in names or list(MODELS):
        folder = dest / name / "1"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(build(name), folder / "model.onnx")
        if config is not None:
            (dest / name / "config.yaml").write_text(config)
    return dest


def reference(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What onnxruntime answers in this process, by output name."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def requests(model: ZooModel, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """`count` requests of digit test rows (1-4 rows each; the fixed-batch model's exactly
    its batch). Variable-length models get per-request lengths: tokens padded only to the
    request's own longest row, sequences cut to 4-8 time steps."""
    rng = np.random.default_rng(seed)
    x = digits().x_test
    out = []
    for _ in range(count):
        rows = model.fixed_batch or int(rng.integers(1, 5))
        feeds = model.feeds(x[rng.choice(len(x), rows, replace=False)])
        if model.name == "gru":
            feeds = {"sequence": np.ascontiguousarray(feeds["sequence"][:, :int(rng.integers(4, 9))])}
        out.append(feeds)
    return out
