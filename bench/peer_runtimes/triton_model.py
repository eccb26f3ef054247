"""A Triton python-backend model that runs an ONNX file through onnxruntime.

The nvidia-pytriton 0.7.0 wheel ships `tritonserver` 2.51 with only the python backend
(no onnxruntime backend exists for this box), so bench/frontend_compare.py serves
`mlp256` to Triton as this model.py beside `1/model.onnx`. Triton's dynamic batcher
hands `execute` several requests at once; they run as one onnxruntime call and the
answer is split back per request.

Runs inside Triton's python-backend stub, with .bench-venvs/triton's packages.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """One onnxruntime session (CPU, one intra-op thread, no spinning: Kairos's defaults)."""

    def initialize(self, args: dict) -> None:
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name

    def execute(self, requests: list) -> list:
        arrays = [pb_utils.get_input_tensor_by_name(r, self._input).as_numpy() for r in requests]
        sizes = [len(a) for a in arrays]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        (scores,) = self._session.run([self._output], {self._input: batch})
        responses, start = [], 0
        for size in sizes:
            part = scores[start:start + size]
            start += size
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self._output, part)]))
        return responses
