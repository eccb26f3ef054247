"""The onnxruntime backend: provider fallback, signatures, session options."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from kairos.server.backend.onnx_backend import ModelLoadError, OnnxBackend
from kairos.server.repository.config import ModelSettings
from kairos_testing.models import fixed_shape, identity, write_model
from onnx import TensorProto


def test_unavailable_preferred_provider_falls_back_to_cpu_and_says_so(tmp_path, caplog):
    path = write_model(tmp_path, "m", identity())
    settings = ModelSettings(providers=["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    with caplog.at_level(logging.INFO, logger="kairos.backend"):
        backend = OnnxBackend(path, settings, "m/1")
    assert backend.provider == "CPUExecutionProvider"
    assert "running on CPUExecutionProvider" in caplog.text


def test_signature_and_batching_from_the_onnx_file(tmp_path):
    batching = OnnxBackend(write_model(tmp_path, "a", identity(TensorProto.INT64)), ModelSettings())
    assert batching.signature.max_batch_size == 64
    assert batching.signature.inputs[0].datatype == "INT64"
    assert batching.signature.inputs[0].shape == (-1, 4)
    fixed = OnnxBackend(write_model(tmp_path, "b", fixed_shape()), ModelSettings())
    assert fixed.signature.max_batch_size == 0
    with pytest.raises(ModelLoadError, match="not a dynamic batch dimension"):
        OnnxBackend(write_model(tmp_path, "c", fixed_shape()), ModelSettings(max_batch_size=4))


def test_session_options_follow_the_config(tmp_path):
    settings = ModelSettings(intra_op_threads=2, graph_optimization="basic", allow_spinning=True)
    backend = OnnxBackend(write_model(tmp_path, "m", identity()), settings)
    options = backend.session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_run_and_example_inputs(tmp_path):
    backend = OnnxBackend(write_model(tmp_path, "m", identity(TensorProto.STRING, width=2)), ModelSettings())
    examples = backend.example_inputs(3)
    assert examples["input"].shape == (3, 2)
    out = backend.run({"input": np.array([[b"a", b"b"]], dtype=object)})
    assert out["output"].tolist() == [["a", "b"]]


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        OnnxBackend(tmp_path / "model.onnx", ModelSettings())
