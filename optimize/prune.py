"""Magnitude pruning: unstructured (L1, per layer or global) and structured (whole hidden
units scored by L2 norm, removed from the graph so the matrices really shrink), one-shot
or on a gradual schedule during fine-tuning.

Unstructured zeros keep every shape, and onnxruntime's CPU kernels are dense, so they buy
no speed and no file size; only structured removal makes inference cheaper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from kairos.optimize.errors import OptimizeError, UnsupportedGraphError
from kairos.optimize.graph import Activation, Dense, Mlp

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
    """Keep-masks over each dense weight: the smallest |w| (L1 magnitude) are dropped, per
    layer or against one threshold over all layers. Biases are never pruned."""
    weights = [d.weight for d in mlp.dense_layers()]
    if scope == "layer":
        return [~_smallest(np.abs(w), int(round(sparsity * w.size))) for w in weights]
    flat = np.concatenate([np.abs(w).ravel() for w in weights])
    drop = _smallest(flat, int(round(sparsity * flat.size)))
    bounds = np.cumsum([0] + [w.size for w in weights])
    return [~drop[a:b].reshape(w.shape) for a, b, w in zip(bounds[:-1], bounds[1:], weights, strict=True)]


def apply_weight_masks(mlp: Mlp, masks: list[np.ndarray]) -> None:
    for dense, keep in zip(mlp.dense_layers(), masks, strict=True):
        dense.weight = np.where(keep, dense.weight, 0).astype(np.float32)


def _hidden_activations(mlp: Mlp) -> list[str | None]:
    """The elementwise activation after each hidden dense layer (None = linear)."""
    kinds: list[str | None] = []
    dense_seen = 0
    total = len(mlp.dense_layers())
    pending: list = []
    for layer in mlp.layers:
        if isinstance(layer, Dense):
            if dense_seen:
                kinds.append(_single_activation(pending))
            dense_seen, pending = dense_seen + 1, []
        elif dense_seen:
            pending.append(layer)
    if total < 2:
        raise UnsupportedGraphError("structured pruning needs at least one hidden layer (two dense layers)")
    return kinds


def _single_activation(between: list) -> str | None:
    if not between:
        return None
    if len(between) == 1 and isinstance(between[0], Activation) and between[0].kind in ACT_AT:
        return between[0].kind
    raise UnsupportedGraphError("structured pruning needs only one elementwise activation "
                                "(Relu, Sigmoid, Tanh) between dense layers")


def unit_scores(dense: Dense) -> np.ndarray:
    """L2 norm of each unit's incoming weights and bias."""
    return np.sqrt((dense.weight ** 2).sum(0) + dense.bias ** 2)


def unit_masks(mlp: Mlp, fraction: float) -> list[np.ndarray]:
    """Keep-masks over the units of each hidden layer: the lowest-L2 `fraction` dropped
    (at least one unit always stays)."""
    _hidden_activations(mlp)
    masks = []
    for dense in mlp.dense_layers()[:-1]:
        n = dense.out_features
        masks.append(~_smallest(unit_scores(dense), min(n - 1, int(round(fraction * n)))))
    return masks


def remove_units(mlp: Mlp, masks: list[np.ndarray]) -> Mlp:
    """A new Mlp without the dropped units. A dropped unit j's output act(b_j) (what it
    emits once its incoming weights are zero) is folded into the next layer's bias."""
    kinds = _hidden_activations(mlp)
    dense = [Dense(d.weight.copy(), d.bias.copy()) for d in mlp.dense_layers()]
    for i, (keep, kind) in enumerate(zip(masks, kinds, strict=True)):
        cur, nxt = dense[i], dense[i + 1]
        constant = ACT_AT[kind](cur.bias[~keep])
        nxt.bias = (nxt.bias + constant @ nxt.weight[~keep]).astype(np.float32)
        nxt.weight = nxt.weight[keep]
        cur.weight, cur.bias = cur.weight[:, keep], cur.bias[keep]
    it = iter(dense)
    layers = [next(it) if isinstance(layer, Dense) else layer for layer in mlp.layers]
    return Mlp(layers, mlp.input_name, mlp.output_name, mlp.input_shape, dict(mlp.metadata))


def zero_units(mlp: Mlp, masks: list[np.ndarray]) -> None:
    """Silence dropped units in place (weights and bias to zero) while fine-tuning."""
    for dense, keep in zip(mlp.dense_layers()[:-1], masks, strict=True):
        dense.weight[:, ~keep] = 0
        dense.bias[~keep] = 0


def weight_sparsity(mlp: Mlp) -> float:
    weights = [d.weight for d in mlp.dense_layers()]
    return float(sum((w == 0).sum() for w in weights) / sum(w.size for w in weights))


def prune_oneshot(mlp: Mlp, settings: PruneSettings) -> Mlp:
    """Prune without training data: zero weights, or remove units."""
    settings.check()
    if settings.method == "structured":
        return remove_units(mlp, unit_masks(mlp, settings.sparsity))
    pruned = Mlp([Dense(layer.weight.copy(), layer.bias.copy()) if isinstance(layer, Dense) else layer
                  for layer in mlp.layers], mlp.input_name, mlp.output_name, mlp.input_shape,
                 dict(mlp.metadata))
    apply_weight_masks(pruned, weight_masks(pruned, settings.sparsity, settings.scope))
    return pruned


def prune_finetune(mlp: Mlp, x: np.ndarray, y: np.ndarray, settings: PruneSettings, cfg) -> Mlp:
    """Prune on `settings.schedule` while fine-tuning on labelled (x, y) for cfg.epochs;
    masks are recomputed from the current weights at each epoch and re-applied after
    every optimiser step, so pruned weights stay zero."""
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
                linear.weight[~k] = 0  # torch weight is [out, in]: a unit is a row
                linear.bias[~k] = 0
            else:
                linear.weight.mul_(k.T.to(linear.weight.dtype))
