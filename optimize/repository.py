"""Where variants go: `<repo>/<model>-<suffix>/<version>/model.onnx` + report beside it."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from kairos.optimize.errors import OptimizeError

CONFIG_NAMES = ("config.yaml", "config.yml", "config.toml")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Source:
    """The fp32 model to optimise, and where it sits in a repository (if it does)."""

    path: Path
    name: str
    repository: Path | None = None
    model_dir: Path | None = None


def _latest_version(model_dir: Path) -> Path:
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()
                and (p / "model.onnx").is_file()]
    if not versions:
        raise OptimizeError(f"{model_dir}: no <version>/model.onnx inside this model folder")
    return max(versions, key=lambda p: int(p.name)) / "model.onnx"


def resolve_source(arg: Path | str) -> Source:
    """An .onnx file, or a repository model folder (its highest version is used)."""
    path = Path(arg)
    if path.is_dir():
        return Source(_latest_version(path), path.name, path.parent, path)
    if not path.is_file():
        raise OptimizeError(f"model not found: {path} (give an .onnx file or <repo>/<model>)")
    version_dir = path.parent
    if version_dir.name.isdigit() and path.name == "model.onnx":
        return Source(path, version_dir.parent.name, version_dir.parent.parent, version_dir.parent)
    return Source(path, path.stem)


@dataclass
class Target:
    model_dir: Path
    version: int
    created: list[Path] = field(default_factory=list)  # folders made here, removed on failure

    def discard(self) -> None:
        """Remove what prepare_target created, so a failed run leaves no half-made model."""
        if self.created:
            shutil.rmtree(self.created[0], ignore_errors=True)

    @property
    def model_path(self) -> Path:
        return self.model_dir / str(self.version) / "model.onnx"


def prepare_target(source: Source, repository: Path | str | None, name: str | None,
                   suffix: str, version: int = 1, overwrite: bool = False) -> Target:
    """The folder for a new variant model; refuses to replace one unless `overwrite`."""
    repo = Path(repository) if repository else source.repository
    if repo is None:
        raise OptimizeError("the model is not inside a model repository: pass --repository DIR")
    name = name or f"{source.name}-{suffix}"
    if not NAME_RE.match(name):
        raise OptimizeError(f"invalid model name '{name}': use letters, digits, '.', '_' and '-'")
    if version < 1:
        raise OptimizeError(f"version must be >= 1, not {version}")
    target = Target(repo / name, version)
    if source.model_dir and target.model_dir.resolve() == source.model_dir.resolve():
        raise OptimizeError(f"the variant name '{name}' is the original model's; choose another --name")
    if target.model_path.exists() and not overwrite:
        raise OptimizeError(f"{target.model_path} already exists; pass --overwrite to replace it")
    target.created = [p for p in (target.model_dir, target.model_path.parent) if not p.exists()]
    target.model_path.parent.mkdir(parents=True, exist_ok=True)
    _copy_config(source, target)
    return target


def _copy_config(source: Source, target: Target) -> None:
    """Serve the variant with the original's settings (SLO, batching) unless it has its own."""
    if source.model_dir is None or any((target.model_dir / n).exists() for n in CONFIG_NAMES):
        return
    for config_name in CONFIG_NAMES:
        config = source.model_dir / config_name
        if config.is_file():
            shutil.copy2(config, target.model_dir / config_name)
            return
