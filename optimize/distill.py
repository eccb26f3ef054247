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
from kairos.optimize import outputs, runtime
from kairos.optimize.data import model_inputs, model_io
from kairos.optimize.errors import OptimizeError
from kairos.optimize.graph import Activation, Conv, Flatten, Mlp, random_mlp

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


def _probabilities(values: np.ndarray) -> bool:
    """Rows of non-negative scores summing to 1: probabilities (softmax outputs)."""
    return bool(values.size) and values.min() >= 0 and np.allclose(values.sum(1), 1, atol=1e-3)


def teacher_output(teacher: Path, feeds: dict[str, np.ndarray], output: str | None = None
                   ) -> tuple[str, np.ndarray]:
    """(name, values) of the teacher's class scores (probabilities or logits, or `output`)."""
    out = runtime.run_all(runtime.make_session(teacher), feeds)
    name = outputs.judged_output(out, output)
    if outputs.role(out[name]) != outputs.SCORES:
        raise OptimizeError(f"distillation needs class scores [batch, classes]; the teacher's output "
                            f"'{name}' is a {outputs.role(out[name])} output (choose one with --output)")
    return name, out[name].astype(np.float32)


def teacher_scores(teacher: Path, feeds: dict[str, np.ndarray], output: str | None = None) -> np.ndarray:
    return teacher_output(teacher, feeds, output)[1]


def teacher_logits(teacher: Path, model: onnx.ModelProto, x: np.ndarray,
                   output: str | None = None) -> np.ndarray:
    """Teacher outputs as logits; probabilities are logged (softmax is shift-invariant).
    The teacher runs only in onnxruntime, so it may be any ONNX classifier."""
    out = teacher_scores(teacher, _feeds(model, x), output)
    return np.log(np.clip(out, 1e-12, None)) if _probabilities(out) else out


def _feeds(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    (spec,) = check_teacher_inputs(model)
    return {spec.name: x.astype(spec.dtype, copy=False)}


def check_teacher_inputs(model: onnx.ModelProto) -> list:
    """The teacher's one input, with fixed row dims (students are MLPs and CNNs)."""
    specs = model_inputs(model)
    if len(specs) != 1:
        raise OptimizeError(f"distillation builds MLP and CNN students for one-input teachers; this "
                            f"one has inputs {', '.join(s.name for s in specs)} (no encoder student yet)")
    free = [i for i, d in enumerate(specs[0].dims[1:], 1) if not (isinstance(d, int) and d > 0)]
    if free:
        raise OptimizeError(f"distillation needs a teacher whose rows have fixed dims; input "
                            f"'{specs[0].name}' has free dim(s) {free} (e.g. a variable sequence length)")
    return specs


def match_input_dtype(student: onnx.ModelProto, teacher: onnx.ModelProto) -> onnx.ModelProto:
    """The student taking the teacher's input dtype (e.g. FP16), cast to float inside, so it
    can stand in for the teacher."""
    (spec,) = model_inputs(teacher)
    elem = onnx.helper.np_dtype_to_tensor_dtype(spec.dtype)
    value = student.graph.input[0]
    if elem == value.type.tensor_type.elem_type:
        return student
    cast_name = f"{value.name}_as_float"
    for node in student.graph.node:
        for i, x in enumerate(node.input):
            if x == value.name:
                node.input[i] = cast_name
    student.graph.node.insert(0, onnx.helper.make_node("Cast", [value.name], [cast_name],
                                                       to=onnx.TensorProto.FLOAT))
    value.type.tensor_type.elem_type = elem
    onnx.checker.check_model(student)
    return student


def student_for(model: onnx.ModelProto, hidden: list[int], seed: int, classes: int,
                output_name: str, softmax: bool) -> Mlp:
    """A ReLU MLP with the teacher's input name and row shape; image rows [C, H, W] get a
    small CNN (a 3x3 conv of 8 channels in front)."""
    check_teacher_inputs(model)
    name, dims, _ = model_io(model)
    if len(dims) == 3:
        return _cnn_student(name, tuple(int(d) for d in dims), hidden, seed, classes, output_name, softmax)
    features = int(np.prod(dims))
    student = random_mlp([features, *hidden, classes], seed, softmax=softmax)
    if len(dims) > 1:
        student.layers.insert(0, Flatten())
    student.input_name, student.output_name = name, output_name
    student.input_shape = tuple(int(d) for d in dims)
    return student


def _cnn_student(name: str, dims: tuple[int, int, int], hidden: list[int], seed: int, classes: int,
                 output_name: str, softmax: bool, channels: int = 8) -> Mlp:
    rng = np.random.default_rng(seed)
    c, h, w = dims
    weight = (rng.standard_normal((channels, c, 3, 3)) * np.sqrt(2 / (9 * c))).astype(np.float32)
    head = random_mlp([channels * h * w, *hidden, classes], seed, softmax=softmax)
    layers = [Conv(weight, np.zeros(channels, np.float32), pads=(1, 1)), Activation("relu"), Flatten(),
              *head.layers]
    return Mlp(layers, name, output_name, dims)


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


def distill(teacher: Path, x: np.ndarray, y: np.ndarray, settings: DistillSettings, cfg,
            output: str | None = None) -> tuple[Mlp, Mlp]:
    """(distilled student, the same student trained on hard labels only)."""
    from kairos.optimize import train

    settings.check()
    model = onnx.load(str(teacher))
    check_teacher_inputs(model)
    rows, labelled = transfer_set(x, settings, cfg.seed)
    name, scores = teacher_output(teacher, _feeds(model, rows), output)
    softmax = _probabilities(scores)
    soft = np.log(np.clip(scores, 1e-12, None)) if softmax else scores
    student = student_for(model, settings.hidden, cfg.seed, scores.shape[1], name, softmax)
    labels = np.zeros(len(rows), np.int64)
    labels[: len(y)] = y
    distilled = train.train_mlp(student, rows, labels, cfg, soft_targets=soft, labelled=labelled)
    hard = train.train_mlp(student, x, y, cfg)
    return distilled, hard
