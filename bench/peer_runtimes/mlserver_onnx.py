"""An MLServer 1.7.1 runtime that runs an ONNX file through onnxruntime.

MLServer has no onnxruntime runtime package (there is no `mlserver-onnx`), so
bench/frontend_compare.py serves `mlp256` to MLServer with this custom `MLModel`, copied
beside the model's model-settings.json (`"implementation": "mlserver_onnx.OnnxModel"`).
MLServer's adaptive batching (`max_batch_size`, `max_batch_time`) merges requests
before `predict`, which runs the whole batch as one onnxruntime call.

Runs inside MLServer's own virtual environment (.bench-venvs/mlserver), never Kairos's.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    """One onnxruntime session (CPU, one intra-op thread, no spinning: Kairos's defaults)."""

    async def load(self) -> bool:
        path = await get_model_uri(self._settings)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        batch = NumpyCodec.decode_input(payload.inputs[0])
        (scores,) = self._session.run([self._output], {self._input: batch})
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(self._output, scores)],
        )
