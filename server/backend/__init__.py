"""The onnxruntime backend: one InferenceSession per loaded model version."""

from .onnx_backend import OnnxBackend, available_providers

__all__ = ["OnnxBackend", "available_providers"]
