"""Which output a report judges, and how: scores (probabilities or logits) by top-1
agreement and accuracy, a label output compared directly, regression outputs by error.

A classifier exported by skl2onnx answers `label` INT64 [N] first and `probabilities`
[N, classes] second; a report that took the first output and its argmax would fail.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from kairos.optimize.errors import OptimizeError

SCORES, LABEL, REGRESSION, OTHER = "scores", "label", "regression", "other"
# Names that say "these are class scores", preferred in this order.
SCORE_NAMES = ("prob", "logit", "score", "softmax", "output")


def role(value: np.ndarray) -> str:
    """scores: float [N, classes>1]; label: integer [N] (or [N, 1]); regression: float [N]
    or [N, 1]; other: anything else (embeddings, masks, ...)."""
    floating = np.issubdtype(value.dtype, np.floating)
    integer = np.issubdtype(value.dtype, np.integer)
    if value.ndim == 2 and floating and value.shape[1] > 1:
        return SCORES
    single = value.ndim == 1 or (value.ndim == 2 and value.shape[1] == 1)
    if single and integer:
        return LABEL
    if single and floating:
        return REGRESSION
    return OTHER


def judged_output(outputs: dict[str, np.ndarray], wanted: str | None = None) -> str:
    """The output to judge: `wanted` if given; else the scores output whose name says so
    (probabilities, logits, ...), any scores output, a label, a regression, the first."""
    if wanted is not None:
        if wanted not in outputs:
            raise OptimizeError(f"--output {wanted}: the model has no such output "
                                f"(it has {', '.join(outputs)})")
        return wanted
    roles = {name: role(value) for name, value in outputs.items()}
    scores = [n for n, r in roles.items() if r == SCORES]
    for hint in SCORE_NAMES:
        named = [n for n in scores if hint in n.lower()]
        if named:
            return named[0]
    for kind in (SCORES, LABEL, REGRESSION):
        found = [n for n, r in roles.items() if r == kind]
        if found:
            return found[0]
    return next(iter(outputs))


def metrics(base: np.ndarray, out: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    """How far `out` is from `base` (and from `labels` where they apply), by role."""
    kind = role(base)
    result: dict[str, Any] = {"role": kind}
    if kind == SCORES:
        result["top1_agreement"] = float(np.mean(base.argmax(1) == out.argmax(1)))
        if labels is not None:
            result["accuracy"] = float(np.mean(out.argmax(1) == labels))
    elif kind == LABEL:
        result["top1_agreement"] = float(np.mean(base.reshape(-1) == out.reshape(-1)))
        if labels is not None:
            result["accuracy"] = float(np.mean(out.reshape(-1) == labels))
    if np.issubdtype(base.dtype, np.floating):
        diff = np.abs(base.astype(np.float64) - out.astype(np.float64))
        result["max_abs_deviation"] = float(np.max(diff)) if diff.size else 0.0
        if kind == REGRESSION:
            result["mean_abs_error"] = float(np.mean(diff))
            result["rmse"] = float(np.sqrt(np.mean(diff ** 2)))
    else:
        result["mismatch_fraction"] = float(np.mean(base != out)) if base.size else 0.0
        result["max_abs_deviation"] = float(np.max(np.abs(base.astype(np.float64) - out.astype(np.float64)))) \
            if base.size and base.dtype != np.bool_ else float(np.any(base != out))
    return result
