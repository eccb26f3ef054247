"""Test dependencies. `./scripts/test` installs every one of them (the `test` extra, Debian's
prometheus, the Rust programs built by pip install), so a missing one is a broken set-up:
the test fails and says how to install it, rather than skipping a check."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import NoReturn

import pytest


def missing(what: str, install: str) -> NoReturn:
    """Fail the test: `what` is not there; `install` says how to get it."""
    pytest.fail(f"{what} is not installed ({install}; ./scripts/test installs it)")


def require_module(name: str, install: str) -> ModuleType:
    """Import `name`, or fail naming how to install it (e.g. "pip install -e '.[plot]'")."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        missing(f"{name} ({error})", install)
