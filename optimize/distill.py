"""Knowledge distillation: a smaller student learns the teacher's softened outputs.

The teacher runs in onnxruntime, so it may be any ONNX classifier (it need not be in the
converter's subset); only the student is a torch MLP. For an honest comparison the same
student (same initial weights, epochs, optimiser) is also trained on hard labels alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from kairos.optimize import runtime
from kairos.optimize.data import model_io
from kairos.optimize.errors import OptimizeError
from kairos.optimize.graph import Flatten, Mlp, random_mlp

AUGMENTATIONS = ("none", "noise", "mixup")


@dataclass
class DistillSettings:
    hidden: list[int] = field(default_factory=lambda: [128])
    augment: str = "none"
    augment_factor: int = 1  # augmented copies of the transfer set
    noise_std: float = 0.1  # relative to the per-feature standard deviation

    def check(self) -> None:
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise OptimizeError(f"student hidden sizes must be positive integers, got {self.hidden}")
        if self.augment not in AUGMENTATIONS:
            raise OptimizeError(f"unknown augmentation '{self.augment}' ({' | '.join(AUGMENTATIONS)})")
        if self.augment_factor < 0:
            raise OptimizeError("augment factor must be >= 0")


def _ends_in_softmax(model: onnx.ModelProto) -> bool:
    return bool(model.graph.node) and model.graph.node[-1].op_type == "Softmax"


def teacher_logits(teacher: Path, model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Teacher outputs as logits; a softmax output is logged (softmax is shift-invariant)."""
    out = runtime.run(runtime.make_session(teacher), x)
    return np.log(np.clip(out, 1e-12, None)) if _ends_in_softmax(model) else out


def student_for(model: onnx.ModelProto, hidden: list[int], seed: int) -> Mlp:
    """A ReLU MLP with the teacher's input/output names and shapes."""
    name, dims, classes = model_io(model)
    if any(d is None for d in dims) or not classes:
        raise OptimizeError("distillation needs a teacher with fixed row dims and a [batch, classes] output")
    features = int(np.prod(dims))
    student = random_mlp([features, *hidden, classes], seed, softmax=_ends_in_softmax(model))
    if len(dims) > 1:
        student.layers.insert(0, Flatten())
    student.input_name, student.output_name = name, model.graph.output[0].name
    student.input_shape = tuple(int(d) for d in dims)
    return student


def transfer_set(x: np.ndarray, settings: DistillSettings, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows to distil on and which of them are original (labelled): originals plus
    `augment_factor` noisy or mixed-up copies that only the teacher labels."""
    rng = np.random.default_rng(seed)
    extra = []
    for _ in range(settings.augment_factor if settings.augment != "none" else 0):
        if settings.augment == "noise":
            extra.append(x + rng.normal(0, 1, x.shape) * x.std(0) * settings.noise_std)
        else:
            lam = rng.beta(0.4, 0.4, (len(x),) + (1,) * (x.ndim - 1))
            extra.append(lam * x + (1 - lam) * x[rng.permutation(len(x))])
    rows = np.concatenate([x, *extra]).astype(np.float32)
    labelled = np.zeros(len(rows), bool)
    labelled[: len(x)] = True
    return rows, labelled


def distill(teacher: Path, x: np.ndarray, y: np.ndarray, settings: DistillSettings, cfg
            ) -> tuple[Mlp, Mlp]:
    """(distilled student, the same student trained on hard labels only)."""
    from kairos.optimize import train

    settings.check()
    model = onnx.load(str(teacher))
    student = student_for(model, settings.hidden, cfg.seed)
    rows, labelled = transfer_set(x, settings, cfg.seed)
    soft = teacher_logits(teacher, model, rows)
    labels = np.zeros(len(rows), np.int64)
    labels[: len(y)] = y
    distilled = train.train_mlp(student, rows, labels, cfg, soft_targets=soft, labelled=labelled)
    hard = train.train_mlp(student, x, y, cfg)
    return distilled, hard
