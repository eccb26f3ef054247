"""KServe's conventions for `kairos serve`, so a KServe ServingRuntime runs it unchanged.

KServe's storage initializer downloads an InferenceService's `storageUri` into
`/mnt/models` and the runtime's container arguments name the model with the
`{{.Name}}` template. What lands in `/mnt/models` depends on what the user
uploaded, so `--model-dir` accepts the three layouts people upload:

- a repository folder (`<dir>/<model>/<version>/model.onnx`): served as it is,
  under its own model names (as Triton does);
- one model's folder with version subfolders (`<dir>/<version>/model.onnx`, and
  optionally `<dir>/config.yaml`): served as `--model-name`;
- a folder holding the ONNX file directly (`<dir>/model.onnx`, or the only
  `*.onnx` file there): served as version 1 of `--model-name`.

The last two are turned into a repository in a temporary folder. Its files are
hard links to the originals where the filesystem allows, copies otherwise (a
KServe volume is a separate mount, so that means a copy): not symlinks, because
the repository refuses links that resolve outside itself (see
`ModelRepository._model_dir`), and that guard stays. The folder is removed at exit.

KServe's Python runtimes spell flags with underscores (`--model_dir`,
`--model_name`, `--grpc_port`, `--http_port`); those spellings are accepted too.
Kairos speaks the V2 protocol over gRPC only, so an HTTP port is accepted and
ignored with a warning (use `protocolVersion: grpc-v2`).
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from .errors import InvalidInput
from .repository.config import CONFIG_NAMES
from .repository.repository import MODEL_FILE, check_model_name

log = logging.getLogger("kairos.kserve")

KSERVE_MODEL_DIR = Path("/mnt/models")
_VERSION = re.compile(r"^[0-9]{1,18}$")


class LayoutError(ValueError):
    """A model folder Kairos cannot serve; the message says why and what to pass."""


def add_kserve_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags a KServe ServingRuntime passes (both spellings)."""
    group = parser.add_argument_group("KServe")
    group.add_argument("--model-dir", "--model_dir", dest="model_dir", type=Path, default=None,
                       help=f"a folder laid out as KServe's storage initializer leaves it (e.g. "
                            f"{KSERVE_MODEL_DIR}): a repository, one model's version folders, or "
                            "model.onnx itself; replaces --model-repository")
    group.add_argument("--model-name", "--model_name", dest="model_name", default=None,
                       help="the name to serve a single model under (KServe: {{.Name}}); "
                            "a repository folder keeps its own names")
    group.add_argument("--grpc_port", dest="grpc_port", type=int, default=argparse.SUPPRESS,
                       help="the same as --grpc-port (KServe's spelling)")
    group.add_argument("--http-port", "--http_port", dest="http_port", type=int, default=None,
                       help="accepted for KServe runtime templates and ignored: Kairos serves "
                            "the V2 protocol over gRPC only")


def model_layout(folder: Path) -> str:
    """'file' (the ONNX file itself), 'model' (version folders) or 'repository'."""
    if not folder.is_dir():
        raise LayoutError(f"model folder {folder} is not a folder")
    if (folder / MODEL_FILE).is_file():
        return "file"
    onnx_files = sorted(p.name for p in folder.glob("*.onnx") if p.is_file())
    if len(onnx_files) > 1:
        raise LayoutError(f"{folder} holds several ONNX files ({', '.join(onnx_files)}): "
                          f"name the one to serve {MODEL_FILE}, or lay out a repository")
    if onnx_files:
        return "file"
    versions = [p for p in folder.iterdir() if p.is_dir() and _VERSION.fullmatch(p.name)]
    if any((p / MODEL_FILE).is_file() for p in versions):
        return "model"
    return "repository"


def _place(source: str, target: str) -> str:
    """A hard link where the filesystem allows one, else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target


def build_repository(folder: Path, name: str | None, workdir: Path | None = None) -> Path:
    """The repository to serve `folder` from (see the module doc); `folder` itself for a
    repository. Others are built under `workdir` (default: a new temporary folder)."""
    layout = model_layout(folder)
    if layout == "repository":
        if name and not (folder / name).is_dir():
            log.warning("%s is a model repository without a folder %r: serving its own "
                        "model names, not --model-name", folder, name)
        return folder
    if not name:
        raise LayoutError(f"{folder} holds a single model ({layout} layout): "
                          "name it with --model-name")
    try:
        check_model_name(name)  # the repository's own rule for names
    except InvalidInput as exc:
        raise LayoutError(f"--model-name: {exc}") from None
    root = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="kairos-kserve-"))
    model = root / name
    if layout == "model":
        shutil.copytree(folder, model, copy_function=_place)
    else:
        _single_file_model(folder, model)
    return root


def _single_file_model(folder: Path, model: Path) -> None:
    """`folder`'s ONNX file as `<model>/1/model.onnx`; its other files beside it (external
    weights keep resolving); a config file at the model's level."""
    version = model / "1"
    version.mkdir(parents=True)
    for entry in sorted(folder.iterdir()):
        if entry.name in CONFIG_NAMES and entry.is_file():
            _place(str(entry), str(model / entry.name))
        elif entry.is_file() and entry.suffix == ".onnx":
            _place(str(entry), str(version / MODEL_FILE))
        elif entry.is_file():
            _place(str(entry), str(version / entry.name))
        elif entry.is_dir() and not entry.name.startswith("."):
            shutil.copytree(entry, version / entry.name, copy_function=_place)


def kserve_repository(args: argparse.Namespace) -> Path | None:
    """The repository path KServe's flags ask for, or None when none of them was given.

    With `--model-dir`, or `--model-name` beside `--model-repository`, the folder is read
    as KServe lays it out. Errors end the process with a message, like `kairos serve`'s."""
    if getattr(args, "http_port", None) is not None:
        log.warning("--http-port %s ignored: Kairos serves the V2 protocol over gRPC only "
                    "(on --grpc-port %s)", args.http_port, args.grpc_port)
    model_dir = getattr(args, "model_dir", None)
    name = getattr(args, "model_name", None)
    if model_dir is not None and args.model_repository is not None:
        raise SystemExit("kairos serve: give --model-dir or --model-repository, not both")
    folder = model_dir if model_dir is not None else (args.model_repository if name else None)
    if folder is None:
        if name:
            raise SystemExit("kairos serve: --model-name needs --model-dir (KServe: "
                             f"{KSERVE_MODEL_DIR})")
        return None
    try:
        root = build_repository(folder, name)
    except (LayoutError, OSError) as exc:
        raise SystemExit(f"kairos serve: {exc}") from None
    if root != folder:
        atexit.register(shutil.rmtree, root, True)
        log.info("serving %s as model %r from the repository %s", folder, name, root)
    return root
