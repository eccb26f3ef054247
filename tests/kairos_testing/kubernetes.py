"""Reading and checking deploy/kubernetes/ offline: manifests, timings, Kairos's own flags."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from .dependencies import missing

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
KSERVE = KUBERNETES / "kserve"
CRDS = KUBERNETES / "schemas" / "kserve"


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kubernetes_validate() -> list[str]:
    """The `kubernetes-validate` command (PyPI); the test fails without it."""
    beside = Path(sys.executable).parent / "kubernetes-validate"
    path = str(beside) if beside.exists() else shutil.which("kubernetes-validate")
    if path is None:
        missing("kubernetes-validate", "pip install kubernetes-validate")
    return [path]


def validate_strict(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*kubernetes_validate(), "--strict", "--quiet", str(path)],
                          capture_output=True, text=True, timeout=120)


def serve_args(args: list[str]) -> argparse.Namespace:
    """Parse container args with `kairos serve`'s own parser (unknown flags fail)."""
    from kairos.server.app import add_arguments

    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    return parser.parse_args(args)


def drain_budget(container: dict, args: argparse.Namespace) -> float:
    """Seconds a pod needs to stop cleanly: preStop sleep + drain delay + grace."""
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    return pre_stop + args.drain_delay_seconds + args.grace_seconds


def port_named(container: dict, name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return port
