"""The native front end while its server starts: it listens before the repository is
loaded (`kairos serve` binds first, then loads), so until the first `set_ready(True)`
inference for a model it does not know yet is UNAVAILABLE (a load balancer retries it
elsewhere), never NOT_FOUND, and health says NOT_SERVING. Afterwards an unknown model
is NOT_FOUND. A replica restarted behind Envoy answered NOT_FOUND to requests that
reached it in that window, and the clients saw them fail."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kairos.protos import codec
from kairos.protos import grpc_service_pb2 as pb
from kairos.protos import grpc_service_pb2_grpc as pb_grpc
from kairos.server.frontend import Frontend

SERVICE = "inference.GRPCInferenceService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def frontend():
    frontend = Frontend("127.0.0.1", 0)
    yield frontend
    frontend.stop(1.0)


def infer_code(stub, model: str) -> tuple[grpc.StatusCode, str]:
    request = codec.build_request(model, {"input": np.ones((1, 4), np.float32)})
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=10)
    return caught.value.code(), caught.value.details()


def health(channel) -> dict[str, int]:
    stub = health_pb2_grpc.HealthStub(channel)
    return {name: stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
            for name in ("", SERVICE)}


def test_unknown_models_are_unavailable_until_ready_then_not_found(frontend) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{frontend.port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        # Listening, nothing published yet: the model may be about to load.
        code, details = infer_code(stub, "mlp")
        assert code == grpc.StatusCode.UNAVAILABLE, details
        assert "starting" in details
        assert health(channel) == {"": NOT_SERVING, SERVICE: NOT_SERVING}
        assert not stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        assert not stub.ModelReady(pb.ModelReadyRequest(name="mlp"), timeout=10).ready

        frontend.set_ready(True)
        code, details = infer_code(stub, "mlp")
        assert code == grpc.StatusCode.NOT_FOUND, details
        assert health(channel) == {"": SERVING, SERVICE: SERVING}

        # Draining is not starting: still NOT_FOUND.
        frontend.begin_drain()
        assert infer_code(stub, "mlp")[0] == grpc.StatusCode.NOT_FOUND
        assert health(channel) == {"": NOT_SERVING, SERVICE: NOT_SERVING}


def test_a_model_published_before_ready_is_unavailable_while_loading(frontend) -> None:
    """What `NativeTransport.start` publishes for a model on disk that is not loaded yet."""
    frontend.publish("mlp", [], None, [], "not loaded")
    with grpc.insecure_channel(f"127.0.0.1:{frontend.port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        code, details = infer_code(stub, "mlp")
        assert code == grpc.StatusCode.UNAVAILABLE, details
        frontend.set_ready(True)
        assert infer_code(stub, "mlp")[0] == grpc.StatusCode.UNAVAILABLE
