"""Magnitude pruning: unstructured (L1, per layer or global) and structured (whole hidden
units or conv output channels scored by L2 norm, removed from the graph so matrices and
kernels really shrink), one-shot or on a gradual schedule during fine-tuning.

Unstructured zeros keep every shape, and onnxruntime's CPU kernels are dense, so they buy
no speed and no file size; only structured removal makes inference cheaper.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
from kairos.optimize.errors import OptimizeError, UnsupportedGraphError
from kairos.optimize.graph import Activation, Conv, Dense, Flatten, Mlp, layer_input_shapes

SCHEDULES = ("oneshot", "linear", "cubic")
ACT_AT = {"relu": lambda v: np.maximum(v, 0), "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
          "tanh": np.tanh, None: lambda v: v}


@dataclass
class PruneSettings:
    method: str = "structured"  # structured | unstructured
    sparsity: float = 0.5  # fraction of weights (unstructured) or hidden units (structured)
    scope: str = "layer"  # unstructured only: layer | global
    schedule: str = "cubic"

    def check(self) -> None:
        if self.method not in ("structured", "unstructured"):
            raise OptimizeError(f"unknown pruning method '{self.method}'")
        if not 0.0 <= self.sparsity < 1.0:
            raise OptimizeError(f"sparsity must be in [0, 1), not {self.sparsity}")
        if self.scope not in ("layer", "global"):
            raise OptimizeError(f"unknown pruning scope '{self.scope}' (layer | global)")
        if self.schedule not in SCHEDULES:
            raise OptimizeError(f"unknown schedule '{self.schedule}' ({' | '.join(SCHEDULES)})")


def sparsity_at(epoch: int, epochs: int, final: float, schedule: str) -> float:
    """Target sparsity for 1-based `epoch`: it reaches `final` after the first two thirds of
    fine-tuning (the last third recovers accuracy at full sparsity). Cubic is Zhu & Gupta's
    s_f * (1 - (1 - t)^3): prune fast while there is redundancy, slowly near the end."""
    if schedule == "oneshot":
        return final
    t = min(1.0, epoch / max(1, round(epochs * 2 / 3)))
    return final * (1 - (1 - t) ** 3) if schedule == "cubic" else final * t


def _smallest(values: np.ndarray, count: int) -> np.ndarray:
    """Boolean mask, True for the `count` smallest entries (exactly `count`, ties by index)."""
    drop = np.zeros(values.size, bool)
    if count > 0:
        drop[np.argsort(values.ravel(), kind="stable")[:count]] = True
    return drop.reshape(values.shape)


def weight_masks(mlp: Mlp, sparsity: float, scope: str) -> list[np.ndarray]:
    """Keep-masks over each weight tensor (Dense and Conv): the smallest |w| (L1 magnitude)
    are dropped, per layer or against one threshold over all layers. Biases are kept."""
    weights = [p.weight for p in mlp.param_layers()]
    if scope == "layer":
        return [~_smallest(np.abs(w), int(round(sparsity * w.size))) for w in weights]
    flat = np.concatenate([np.abs(w).ravel() for w in weights])
    drop = _smallest(flat, int(round(sparsity * flat.size)))
    bounds = np.cumsum([0] + [w.size for w in weights])
    return [~drop[a:b].reshape(w.shape) for a, b, w in zip(bounds[:-1], bounds[1:], weights, strict=True)]


def apply_weight_masks(mlp: Mlp, masks: list[np.ndarray]) -> None:
    for layer, keep in zip(mlp.param_layers(), masks, strict=True):
        layer.weight = np.where(keep, layer.weight, 0).astype(np.float32)


@dataclass
class _Link:
    """What lies between a weighted layer and the next: one activation, maybe a Flatten."""

    activation: str | None
    flat_block: int  # rows of the next dense layer fed by one channel (h*w after a Flatten)


def _links(mlp: Mlp) -> list[_Link]:
    if len(mlp.param_layers()) < 2:
        raise UnsupportedGraphError("structured pruning needs at least one hidden layer (two weighted layers)")
    shapes = layer_input_shapes(mlp.layers, mlp.input_shape)
    links, between, produced = [], None, ()
    for i, layer in enumerate(mlp.layers):
        if isinstance(layer, Dense | Conv):
            if between is not None:
                links.append(_link(between, produced))
            between, produced = [], shapes[i + 1]
        elif between is not None:
            between.append(layer)
    return links


def _link(between: list, produced: tuple[int, ...]) -> _Link:
    acts = [x for x in between if isinstance(x, Activation)]
    flat = [x for x in between if isinstance(x, Flatten)]
    if len(acts) > 1 or len(flat) > 1 or len(acts) + len(flat) != len(between) \
            or (acts and acts[0].kind not in ACT_AT):
        raise UnsupportedGraphError("structured pruning needs at most one elementwise activation "
                                    "(Relu, Sigmoid, Tanh) and one Flatten between weighted layers")
    return _Link(acts[0].kind if acts else None, int(np.prod(produced[1:])) if flat else 1)


def unit_scores(layer: Dense | Conv) -> np.ndarray:
    """L2 norm of each unit's (or output channel's) incoming weights and bias."""
    w = layer.weight.reshape(layer.weight.shape[0], -1) if isinstance(layer, Conv) else layer.weight.T
    return np.sqrt((w ** 2).sum(1) + layer.bias ** 2)


def unit_masks(mlp: Mlp, fraction: float) -> list[np.ndarray]:
    """Keep-masks over the units / channels of every weighted layer but the last: the
    lowest-L2 `fraction` dropped (at least one always stays)."""
    _links(mlp)
    masks = []
    for layer in mlp.param_layers()[:-1]:
        n = layer.out_features
        masks.append(~_smallest(unit_scores(layer), min(n - 1, int(round(fraction * n)))))
    return masks


def _drop_outputs(layer: Dense | Conv, keep: np.ndarray) -> None:
    if isinstance(layer, Dense):
        layer.weight = layer.weight[:, keep]
    else:
        layer.weight = layer.weight[keep]
    layer.bias = layer.bias[keep]


def _drop_inputs(layer: Dense | Conv, keep: np.ndarray, link: _Link, constant: np.ndarray) -> None:
    """Remove the inputs fed by dropped channels, folding their constant output into the bias
    (exact for dense layers; for a padded Conv, exact when the constant is 0, as with ReLU)."""
    if isinstance(layer, Dense):
        rows = np.repeat(keep, link.flat_block)  # Flatten is channel-major
        removed = layer.weight[~rows].reshape(len(constant), link.flat_block, -1).sum(1)
        layer.bias = (layer.bias + constant @ removed).astype(np.float32)
        layer.weight = layer.weight[rows]
    else:
        removed = layer.weight[:, ~keep].sum((2, 3))  # [out, dropped]
        layer.bias = (layer.bias + removed @ constant).astype(np.float32)
        layer.weight = layer.weight[:, keep]


def remove_units(mlp: Mlp, masks: list[np.ndarray]) -> Mlp:
    """A new network without the dropped units / channels: smaller matrices and kernels. A
    dropped unit j's output act(b_j) (what it emits once its weights are zero) is folded
    into the next layer's bias."""
    links = _links(mlp)
    new = copy.deepcopy(mlp)
    params = new.param_layers()
    for i, (keep, link) in enumerate(zip(masks, links, strict=True)):
        constant = ACT_AT[link.activation](params[i].bias[~keep]).astype(np.float32)
        _drop_inputs(params[i + 1], keep, link, constant)
        _drop_outputs(params[i], keep)
    for layer in params:
        layer.weight = np.ascontiguousarray(layer.weight, np.float32)
    return new


def zero_units(mlp: Mlp, masks: list[np.ndarray]) -> None:
    """Silence dropped units in place (weights and bias to zero) while fine-tuning."""
    for layer, keep in zip(mlp.param_layers()[:-1], masks, strict=True):
        if isinstance(layer, Dense):
            layer.weight[:, ~keep] = 0
        else:
            layer.weight[~keep] = 0
        layer.bias[~keep] = 0


def weight_sparsity(mlp: Mlp) -> float:
    weights = [p.weight for p in mlp.param_layers()]
    return float(sum((w == 0).sum() for w in weights) / sum(w.size for w in weights))


def prune_oneshot(mlp: Mlp, settings: PruneSettings) -> Mlp:
    """Prune without training data: zero weights, or remove units."""
    settings.check()
    if settings.method == "structured":
        return remove_units(mlp, unit_masks(mlp, settings.sparsity))
    pruned = copy.deepcopy(mlp)
    apply_weight_masks(pruned, weight_masks(pruned, settings.sparsity, settings.scope))
    return pruned


def prune_finetune(mlp: Mlp, x: np.ndarray, y: np.ndarray, settings: PruneSettings, cfg,
                   history: list[float] | None = None) -> Mlp:
    """Prune on `settings.schedule` while fine-tuning on labelled (x, y) for cfg.epochs;
    masks are recomputed from the current weights at each epoch and re-applied after
    every optimiser step, so pruned weights stay zero. `history` receives the fraction of
    units (structured) or weights (unstructured) masked in each epoch."""
    from kairos.optimize import train

    settings.check()
    module = train.to_torch(mlp)
    state: dict = {}

    def on_epoch(epoch: int) -> None:
        current = train.from_torch(module, mlp)
        target = sparsity_at(epoch, cfg.epochs, settings.sparsity, settings.schedule)
        if settings.method == "structured":
            state["masks"] = unit_masks(current, target)
        else:
            state["masks"] = weight_masks(current, target, settings.scope)
        if history is not None:
            masks = state["masks"]
            history.append(float(sum((~m).sum() for m in masks) / sum(m.size for m in masks)))
        after_step()

    def after_step() -> None:
        _mask_module(train, module, state["masks"], settings.method)

    train.fit(module, x, y, cfg, on_epoch=on_epoch, after_step=after_step)
    tuned = train.from_torch(module, mlp)
    if settings.method == "structured":
        return remove_units(tuned, state["masks"])
    return tuned


def _mask_module(train, module, masks: list[np.ndarray], method: str) -> None:
    import torch

    with torch.no_grad():
        for linear, keep in zip(train.linears(module), masks, strict=False):
            k = torch.from_numpy(keep)
            if method == "structured":
                linear.weight[~k] = 0  # torch weights are [out, ...]: a unit is a row
                linear.bias[~k] = 0
            else:  # Linear masks are in MatMul orientation [in, out]; Conv masks match torch
                k = k.T if isinstance(linear, torch.nn.Linear) else k
                linear.weight.mul_(k.to(linear.weight.dtype))
