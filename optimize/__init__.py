"""`kairos optimize`: turn an fp32 ONNX model into int8, fp16, pruned and distilled variants.

Quantization and one-shot pruning need only onnx/onnxruntime/numpy; fine-tuning and
distillation import PyTorch lazily (the `kairos-serve[optimize]` extra). The server never
imports this package.
"""

from kairos.optimize.errors import (
    DataError,
    MissingDependencyError,
    OptimizeError,
    UnsupportedGraphError,
)

__all__ = ["DataError", "MissingDependencyError", "OptimizeError", "UnsupportedGraphError"]
