"""Errors that `kairos optimize` reports as one clear line (exit code 2, no traceback)."""

from __future__ import annotations


class OptimizeError(Exception):
    """A problem with the user's input: the message names the file, tensor or operator."""


class UnsupportedGraphError(OptimizeError):
    """The ONNX graph uses an operator or a topology the converter does not handle."""


class DataError(OptimizeError):
    """An unreadable data file, or data whose shape does not fit the model."""


class MissingDependencyError(OptimizeError):
    """An optional dependency (PyTorch for fine-tuning and distillation) is not installed."""
