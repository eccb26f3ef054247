"""Structured pruning of any ONNX graph: whole channels removed between two weighted layers.

The chain converter (graph.py) handles MLPs and plain CNNs; real models have batch norm,
residual adds, depthwise convolutions and attention. Here the graph itself is rewritten:

1. Batch norm after a convolution is folded into it (W' = W * g / sqrt(v + eps),
   b' = (b - m) * g / sqrt(v + eps) + beta).
2. A *channel group* starts at a producer (Conv with group 1, or MatMul by a constant
   [K, N]) and follows its output channels through ops that act per channel (activations,
   GELU's Mul/Erf/Add, bias adds, per-channel scales, batch norm, depthwise convs, global
   pooling + Flatten) to the layers that consume them (Conv, MatMul, Gemm by constants).
   Every tensor in the group carries the same channels, so removing channel c everywhere
   keeps the function of the other channels exactly.
3. A group that reaches anything else - a residual Add joining another branch, a Reshape
   into attention heads, a graph output - is left whole (that keeps residual dependency
   groups consistent: their channels are shared across blocks). The op that stopped it is
   named in the result; if no group can be pruned, the refusal names them.

Channels are scored by the L2 norm of the producer's (BN-folded) weights and the weakest
`sparsity` fraction of each group is removed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import onnx
from kairos.optimize.errors import UnsupportedGraphError
from onnx import helper, numpy_helper

UNARY = ("Relu", "HardSwish", "Sigmoid", "Tanh", "Erf", "Gelu", "LeakyRelu", "HardSigmoid", "Identity",
         "Softplus", "Elu", "Selu", "Neg", "Abs", "Sqrt", "Exp", "Clip", "Cast")
BINARY = ("Add", "Mul", "Sub", "Div")
POOLS = ("GlobalAveragePool", "GlobalMaxPool")
NCHW, LAST = "nchw", "last"  # where a tensor keeps its channels: axis 1 (of 4) or the last axis


@dataclass
class Group:
    producer: onnx.NodeProto
    channels: int
    slices: list[tuple[str, int]] = field(default_factory=list)  # (initializer, axis) to slice
    depthwise: list[onnx.NodeProto] = field(default_factory=list)  # their `group` attr changes
    consumers: list[str] = field(default_factory=list)


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


class _Index:
    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.inits = {t.name: t for t in graph.initializer}
        self.values = {name: numpy_helper.to_array(t) for name, t in self.inits.items()}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for x in node.input:
                self.consumers.setdefault(x, []).append(node)
        self.outputs = {o.name for o in graph.output}
        self.uses = {name: len(self.consumers.get(name, [])) for name in self.inits}

    def set(self, name: str, value: np.ndarray) -> None:
        self.values[name] = value
        self.inits[name].CopyFrom(numpy_helper.from_array(value.astype(self.values[name].dtype), name))


def fold_batchnorm(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """The model with each Conv -> BatchNormalization pair folded into one Conv."""
    model = copy.deepcopy(model)
    graph, index = model.graph, _Index(model.graph)
    producer = {out: n for n in graph.node for out in n.output}
    folded = []
    for bn in [n for n in graph.node if n.op_type == "BatchNormalization" and len(n.output) == 1]:
        conv = producer.get(bn.input[0])
        params = bn.input[1:5]
        if conv is None or conv.op_type != "Conv" or conv.input[1] not in index.inits \
                or len(index.consumers.get(conv.output[0], [])) != 1 or conv.output[0] in index.outputs \
                or not all(p in index.inits and index.uses[p] == 1 for p in params) \
                or index.uses[conv.input[1]] != 1 or (len(conv.input) > 2 and conv.input[2] not in index.inits):
            continue
        gamma, beta, mean, var = (index.values[p].astype(np.float64) for p in params)
        scale = gamma / np.sqrt(var + _attr(bn, "epsilon", 1e-5))
        w = index.values[conv.input[1]]
        bias = index.values[conv.input[2]] if len(conv.input) > 2 and conv.input[2] else np.zeros(len(w))
        index.set(conv.input[1], (w * scale.reshape(-1, 1, 1, 1)).astype(w.dtype))
        new_bias = ((bias - mean) * scale + beta).astype(w.dtype)
        if len(conv.input) > 2 and conv.input[2]:
            index.set(conv.input[2], new_bias)
        else:
            name = f"{conv.input[1]}_folded_bias"
            graph.initializer.append(numpy_helper.from_array(new_bias, name))
            del conv.input[2:]
            conv.input.append(name)
        conv.output[0] = bn.output[0]
        folded.append(bn)
    for bn in folded:
        graph.node.remove(bn)
    used = {x for n in graph.node for x in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return model, len(folded)


def _producer_channels(node: onnx.NodeProto, index: _Index) -> tuple[int, int, str] | None:
    """(channels, weight axis of the output channels, layout) of a weighted producer."""
    if node.op_type == "Conv" and _attr(node, "group", 1) == 1 and node.input[1] in index.inits:
        return index.values[node.input[1]].shape[0], 0, NCHW
    if node.op_type == "MatMul" and node.input[1] in index.inits and index.values[node.input[1]].ndim == 2:
        return index.values[node.input[1]].shape[1], 1, LAST
    return None


def _per_channel_axis(value: np.ndarray, channels: int, layout: str) -> int | None | bool:
    """None: a scalar (nothing to slice); an axis to slice; False: does not broadcast per channel."""
    if value.size == 1:
        return None
    if layout == LAST and value.shape[-1] == channels and value.size == channels:
        return value.ndim - 1
    if layout == NCHW and value.size == channels and value.ndim >= 3 and value.shape[-3] == channels:
        return value.ndim - 3
    return False


def _trace(group: Group, index: _Index, layout: str) -> str | None:
    """Follow the producer's channels; None when the group can be pruned, else the op that stops it."""
    frontier, seen = [(group.producer.output[0], layout)], {group.producer.output[0]}
    c, pending = group.channels, []
    while frontier or pending:
        if not frontier:  # binary ops waiting for their other input: has it joined the group?
            ready = [p for p in pending if p[0] in seen]
            if not ready:
                return pending[0][1]
            for item in ready:
                pending.remove(item)
                frontier.append(item[2])
            continue
        tensor, lay = frontier.pop()
        if tensor in index.outputs:
            return f"graph output '{tensor}'"
        for node in index.consumers.get(tensor, []):
            stop = _visit(node, tensor, lay, group, index, seen, frontier, c)
            if isinstance(stop, tuple):  # (other input, reason): decide once the group is complete
                pending.append((stop[0], stop[1], (node.output[0], lay)))
                seen.add(node.output[0])
            elif stop:
                return stop
    return None if group.consumers else "no weighted consumer"


def _visit(node, tensor, lay, group, index, seen, frontier, c) -> str | None:
    here = f"{node.op_type} '{node.name or node.output[0]}'"
    op = node.op_type

    def follow(new_layout=lay):
        if node.output[0] not in seen:
            seen.add(node.output[0])
            frontier.append((node.output[0], new_layout))

    if op in UNARY and node.input[0] == tensor:
        return follow()
    if op in BINARY:
        other = [x for x in node.input if x != tensor]
        if not other:
            return follow()
        (o,) = other
        if o in seen:
            return follow()
        if o not in index.inits:
            return (o, here)  # maybe computed from the group itself (GELU: x * f(x))
        axis = _per_channel_axis(index.values[o], c, lay)
        if axis is False or (axis is not None and index.uses[o] != 1):
            return here
        if axis is not None:
            group.slices.append((o, axis))
        return follow()
    if op == "BatchNormalization" and node.input[0] == tensor and lay == NCHW:
        if not all(p in index.inits and index.uses[p] == 1 for p in node.input[1:5]):
            return here
        group.slices += [(p, 0) for p in node.input[1:5]]
        return follow()
    if op in POOLS and lay == NCHW:
        return follow()
    if op == "Flatten" and lay == NCHW and _attr(node, "axis", 1) == 1 and _pooled(tensor, index):
        return follow(LAST)
    if op == "Conv" and node.input[0] == tensor and lay == NCHW and node.input[1] in index.inits \
            and index.uses[node.input[1]] == 1:
        w = index.values[node.input[1]]
        g = _attr(node, "group", 1)
        if g == 1 and w.shape[1] == c:
            group.slices.append((node.input[1], 1))
            group.consumers.append(here)
            return None
        if g == c and w.shape[0] == c and w.shape[1] == 1:
            group.slices.append((node.input[1], 0))
            if len(node.input) > 2 and node.input[2]:
                group.slices.append((node.input[2], 0))
            group.depthwise.append(node)
            return follow()
        return here
    if op == "MatMul" and node.input[0] == tensor and lay == LAST and node.input[1] in index.inits \
            and index.uses[node.input[1]] == 1 and index.values[node.input[1]].ndim == 2:
        group.slices.append((node.input[1], 0))
        group.consumers.append(here)
        return None
    if op == "Gemm" and node.input[0] == tensor and lay == LAST and node.input[1] in index.inits \
            and index.uses[node.input[1]] == 1 and not _attr(node, "transA", 0):
        group.slices.append((node.input[1], 1 if _attr(node, "transB", 0) else 0))
        group.consumers.append(here)
        return None
    return here


def _pooled(tensor: str, index: _Index) -> bool:
    return any(n.op_type in POOLS for n in index.graph.node if tensor in n.output)


@dataclass
class GraphPruneResult:
    model: onnx.ModelProto
    folded_batchnorms: int
    pruned: list[dict]  # one per pruned group: producer, channels before/after, consumers
    kept_whole: list[dict]  # groups left whole, with the op that stopped each


def prune(model: onnx.ModelProto, sparsity: float) -> GraphPruneResult:
    """Fold BN, then remove the weakest `sparsity` of the channels of every prunable group."""
    model, folded = fold_batchnorm(model)
    index = _Index(model.graph)
    pruned, kept = [], []
    for node in list(model.graph.node):
        found = _producer_channels(node, index)
        if found is None:
            continue
        channels, out_axis, layout = found
        group = Group(node, channels)
        stop = _trace(group, index, layout)
        label = node.name or node.output[0]
        if stop:
            kept.append({"producer": f"{node.op_type} '{label}'", "channels": channels, "stopped_at": stop})
            continue
        keep = _keep(index.values[node.input[1]], out_axis, channels, sparsity)
        _apply(group, index, node, out_axis, keep)
        pruned.append({"producer": f"{node.op_type} '{label}'", "channels_before": channels,
                       "channels_after": len(keep), "consumers": group.consumers})
    if not pruned and not kept:
        raise UnsupportedGraphError(
            "cannot prune structurally: the model has no Conv or MatMul by a constant weight to remove "
            f"channels from (it computes with {', '.join(_weighted_ops(model.graph, index))})")
    if not pruned:
        reasons = sorted({k["stopped_at"] for k in kept})
        raise UnsupportedGraphError(
            "cannot prune structurally: no channel group between two weighted layers passes only "
            f"through ops the pruner rewrites (stopped at {', '.join(reasons[:5])})")
    del model.graph.value_info[:]  # intermediate shapes changed; onnxruntime infers them again
    onnx.checker.check_model(model)
    return GraphPruneResult(model, folded, pruned, kept)


def _weighted_ops(graph: onnx.GraphProto, index: _Index) -> list[str]:
    """The ops that hold the model's parameters (weight initializers or ai.onnx.ml models)."""
    found = {}
    for node in graph.node:
        weighted = any(x in index.inits and index.values[x].ndim >= 2 for x in node.input)
        if (weighted or node.domain == "ai.onnx.ml") and node.op_type not in found:
            found[node.op_type] = f"{node.op_type} '{node.name or node.output[0]}'"
    return list(found.values()) or sorted({f"{n.op_type} '{n.name or n.output[0]}'" for n in graph.node})[:5]


def _keep(weight: np.ndarray, axis: int, channels: int, sparsity: float) -> np.ndarray:
    norms = np.sqrt((np.moveaxis(weight.astype(np.float64), axis, 0).reshape(channels, -1) ** 2).sum(1))
    count = max(1, channels - int(round(channels * sparsity)))
    return np.sort(np.argsort(-norms, kind="stable")[:count])


def _apply(group: Group, index: _Index, producer: onnx.NodeProto, out_axis: int, keep: np.ndarray) -> None:
    index.set(producer.input[1], np.take(index.values[producer.input[1]], keep, axis=out_axis))
    if producer.op_type == "Conv" and len(producer.input) > 2 and producer.input[2]:
        index.set(producer.input[2], index.values[producer.input[2]][keep])
    for name, axis in group.slices:
        index.set(name, np.take(index.values[name], keep, axis=axis))
    for node in group.depthwise:
        _set_attr(node, "group", len(keep))
