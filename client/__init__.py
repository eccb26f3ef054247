"""Kairos client: sync and asyncio clients for any Open Inference Protocol (KServe V2) gRPC
server (Kairos, Triton, KServe runtimes), and the `kairos` command line (`kairos.client.cli`).

    from kairos.client import InferenceClient
    with InferenceClient("127.0.0.1:8001") as client:
        outputs = client.infer("digits", {"input": x}, timeout=1.0)
"""

from ._common import DEFAULT_URL, InferenceServerError, InferResult
from .aio_client import AsyncInferenceClient
from .sync_client import InferenceClient

__all__ = [
    "DEFAULT_URL",
    "AsyncInferenceClient",
    "InferResult",
    "InferenceClient",
    "InferenceServerError",
]
