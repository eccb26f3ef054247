"""PyTorch (CPU) training for fine-tuning and distillation; imported only when needed.

The network goes ONNX -> `Mlp` -> torch.nn.Sequential -> trained -> `Mlp` -> ONNX, so the
converter is the small one in `graph.py` (its supported operators are listed there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from kairos.optimize.errors import MissingDependencyError
from kairos.optimize.graph import Dense, Flatten, Mlp

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
        elif isinstance(layer, Flatten):
            modules.append(nn.Flatten())
        else:
            modules.append({"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
                            "softmax": lambda: nn.Softmax(-1)}[layer.kind]())
    return nn.Sequential(*modules)


def from_torch(module: nn.Sequential, template: Mlp) -> Mlp:
    """`template` with the dense weights of `module` (shapes may have changed)."""
    linears = iter(m for m in module if isinstance(m, nn.Linear))
    layers = []
    for layer in template.layers:
        if isinstance(layer, Dense):
            lin = next(linears)
            layers.append(Dense(lin.weight.detach().numpy().T.astype(np.float32).copy(),
                                lin.bias.detach().numpy().astype(np.float32).copy()))
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


def linears(module: nn.Sequential) -> list[nn.Linear]:
    return [m for m in module if isinstance(m, nn.Linear)]
