"""Optional test dependencies: a test skips when one is missing on a developer's machine,
and fails under CI (CI=true), where `scripts/test` installs everything."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def require_module(name: str, install: str) -> ModuleType:
    """Import `name`; without it, skip the test (fail when the CI variable is set).

    `install` says how to get it (e.g. "pip install -e '.[plot]'")."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        message = f"{name} is not installed ({install}): {error}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
