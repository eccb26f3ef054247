"""The model repository: `<repo>/<model>/config.(yaml|toml)` + `<repo>/<model>/<version>/model.onnx`."""

from .repository import IndexEntry, ModelRepository, ServedVersion

__all__ = ["IndexEntry", "ModelRepository", "ServedVersion"]
