"""PyTorch (CPU) training for fine-tuning and distillation; imported only when needed.

The network goes ONNX -> `Mlp` -> torch.nn.Sequential -> trained -> `Mlp` -> ONNX, so the
converter is the small one in `graph.py` (its supported operators are listed there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from kairos.optimize.errors import MissingDependencyError
from kairos.optimize.graph import Conv, Dense, Flatten, Mlp

try:
    import torch
    from torch import nn
except ImportError:  # the optional extra; quantization works without it
    torch = None  # type: ignore[assignment]
    nn = None  # type: ignore[assignment]


def require_torch() -> None:
    if torch is None:
        raise MissingDependencyError(
            "fine-tuning and distillation need PyTorch: pip install 'kairos-serve[optimize]'")


@dataclass
class TrainConfig:
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    seed: int = 0
    temperature: float = 4.0  # distillation only
    alpha: float = 0.7  # weight of the soft-target loss; 1 - alpha on hard labels


def to_torch(mlp: Mlp) -> nn.Sequential:
    """A torch module computing logits: a trailing softmax is left out (the loss applies it)."""
    require_torch()
    modules: list[nn.Module] = []
    layers = mlp.layers[:-1] if mlp.ends_in_softmax() else mlp.layers
    for layer in layers:
        if isinstance(layer, Dense):
            linear = nn.Linear(layer.in_features, layer.out_features)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(layer.weight.T.copy()))
                linear.bias.copy_(torch.from_numpy(layer.bias.copy()))
            modules.append(linear)
        elif isinstance(layer, Conv):
            modules.append(_conv2d(layer))
        elif isinstance(layer, Flatten):
            modules.append(nn.Flatten())
        else:
            modules.append({"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
                            "softmax": lambda: nn.Softmax(-1)}[layer.kind]())
    return nn.Sequential(*modules)


def _conv2d(layer: Conv) -> nn.Conv2d:
    out_ch, in_ch, kh, kw = layer.weight.shape
    conv = nn.Conv2d(in_ch, out_ch, (kh, kw), stride=layer.strides, padding=layer.pads,
                     dilation=layer.dilations)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(layer.weight.copy()))
        conv.bias.copy_(torch.from_numpy(layer.bias.copy()))
    return conv


def from_torch(module: nn.Sequential, template: Mlp) -> Mlp:
    """`template` with the dense weights of `module` (shapes may have changed)."""
    weighted = iter(linears(module))
    layers = []
    for layer in template.layers:
        if isinstance(layer, Dense | Conv):
            m = next(weighted)
            w = m.weight.detach().numpy().astype(np.float32).copy()
            b = m.bias.detach().numpy().astype(np.float32).copy()
            layers.append(Dense(w.T.copy(), b) if isinstance(layer, Dense) else
                          Conv(w, b, layer.strides, layer.pads, layer.dilations))
        else:
            layers.append(layer)
    return Mlp(layers, template.input_name, template.output_name, template.input_shape,
               dict(template.metadata))


def _loss(logits, y, soft, labelled, cfg: TrainConfig):
    """Cross-entropy on labelled rows; with soft targets, Hinton's T^2-scaled KL term too."""
    ce = nn.functional.cross_entropy(logits[labelled], y[labelled]) if labelled.any() else 0.0
    if soft is None:
        return ce
    t = cfg.temperature
    kd = nn.functional.kl_div(nn.functional.log_softmax(logits / t, -1),
                              nn.functional.softmax(soft / t, -1), reduction="batchmean") * t * t
    return cfg.alpha * kd + (1 - cfg.alpha) * ce


def fit(module: nn.Sequential, x: np.ndarray, y: np.ndarray, cfg: TrainConfig,
        soft_targets: np.ndarray | None = None, labelled: np.ndarray | None = None,
        on_epoch: Callable[[int], None] | None = None, after_step: Callable[[], None] | None = None
        ) -> nn.Sequential:
    """Adam over shuffled mini-batches. `on_epoch(e)` runs before epoch e (1-based; pruning
    schedules update masks there) and `after_step()` after every step (re-applies masks)."""
    require_torch()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    xt, yt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
    st = None if soft_targets is None else torch.from_numpy(soft_targets.astype(np.float32))
    lt = torch.ones(len(x), dtype=torch.bool) if labelled is None else torch.from_numpy(labelled)
    opt = torch.optim.Adam(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    module.train()
    for epoch in range(1, cfg.epochs + 1):
        if on_epoch:
            on_epoch(epoch)
        for idx in torch.randperm(len(x), generator=gen).split(cfg.batch_size):
            opt.zero_grad()
            loss = _loss(module(xt[idx]), yt[idx], None if st is None else st[idx], lt[idx], cfg)
            loss.backward()
            opt.step()
            if after_step:
                after_step()
    module.eval()
    return module


def train_mlp(mlp: Mlp, x: np.ndarray, y: np.ndarray, cfg: TrainConfig, **kwargs) -> Mlp:
    """`mlp` trained on (x, y): the same network with new weights."""
    return from_torch(fit(to_torch(mlp), x, y, cfg, **kwargs), mlp)


def linears(module: nn.Sequential) -> list[nn.Module]:
    """The weighted modules (Linear and Conv2d), in order."""
    return [m for m in module if isinstance(m, nn.Linear | nn.Conv2d)]
