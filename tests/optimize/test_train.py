"""PyTorch stays optional: quantization never imports it, and its absence is a clear error."""

from __future__ import annotations

import subprocess
import sys

import pytest
from kairos.optimize import train
from kairos.optimize.errors import MissingDependencyError
from kairos.optimize.graph import random_mlp


def test_quantization_path_does_not_import_torch() -> None:
    code = ("import sys, kairos.optimize.cli, kairos.optimize.pipeline, kairos.optimize.quantize; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_missing_torch_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train, "torch", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'kairos-serve\[optimize\]'"):
        train.to_torch(random_mlp([4, 3, 2]))


def test_torch_round_trip_keeps_weights() -> None:
    mlp = random_mlp([5, 7, 3], seed=4, softmax=True)
    module = train.to_torch(mlp)
    assert not any(type(m).__name__ == "Softmax" for m in module)  # the loss applies it
    back = train.from_torch(module, mlp)
    for a, b in zip(mlp.param_layers(), back.param_layers(), strict=True):
        assert (a.weight == b.weight).all() and (a.bias == b.bias).all()
    assert back.ends_in_softmax()
