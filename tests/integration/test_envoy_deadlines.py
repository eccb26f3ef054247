"""deploy/envoy's retry policy keeps to the request's deadline (real Envoy, two fake upstreams).

One upstream hangs (a replica on a lost node: no answer, no reset), the other answers at
once; each records the deadline it was told (grpc-timeout, as `time_remaining()`).
- A request whose deadline leaves room is retried on the other upstream after the
  per-try timeout, and that try is told only what remains of the deadline.
- A request whose deadline is shorter than the per-try timeout gets one try, bounded
  by its deadline: DEADLINE_EXCEEDED on time, never late.
Fakes rather than Kairos: a hung upstream and what each try was told are what is
measured, and these start in milliseconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from kairos_testing.envoy import Envoy, config_module, free_port, running_envoy

SERVICE = "inference.GRPCInferenceService"
PER_TRY_S = 0.3
pytestmark = pytest.mark.timeout(120)


class Upstream:
    """A gRPC server answering ModelInfer with empty bytes (or never); health SERVING."""

    def __init__(self, hang: bool) -> None:
        self.hang = hang
        self.told: list[float] = []  # time_remaining() at arrival, per request
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handler = grpc.unary_unary_rpc_method_handler(self._infer)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"ModelInfer": handler}),))
        checks = health.HealthServicer()
        checks.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(checks, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _infer(self, request: bytes, context) -> bytes:
        self.told.append(context.time_remaining())
        if self.hang:
            released = threading.Event()
            context.add_callback(released.set)  # Envoy resets the stream at its timeout
            released.wait(10)
        return b""


@pytest.fixture(scope="module")
def proxied() -> Iterator[tuple[Envoy, Upstream, Upstream]]:
    hung, good = Upstream(hang=True), Upstream(hang=False)
    module = config_module()
    settings = module.EnvoySettings(
        upstreams=[("127.0.0.1", hung.port), ("127.0.0.1", good.port)],
        listen=("127.0.0.1", free_port()), admin=("127.0.0.1", free_port()),
        health_interval_s=0.25, per_try_timeout_s=PER_TRY_S,
        # Hangs are not failures outlier detection counts here; keep both in rotation.
        consecutive_gateway_failure=1000, consecutive_5xx=1000)
    try:
        with running_envoy(module.render(settings), settings.listen[1], settings.admin[1]) as envoy:
            yield envoy, hung, good
    finally:
        hung.server.stop(0)
        good.server.stop(0)


def call(envoy: Envoy, deadline_s: float) -> tuple[str, float]:
    with grpc.insecure_channel(envoy.address) as channel:
        infer = channel.unary_unary(f"/{SERVICE}/ModelInfer")
        started = time.monotonic()
        try:
            infer(b"", timeout=deadline_s)
            code = "OK"
        except grpc.RpcError as exc:
            code = f"{exc.code().name}: {exc.details()}"
        return code, time.monotonic() - started


def test_a_hung_try_is_retried_elsewhere_within_the_deadline(proxied) -> None:
    envoy, hung, good = proxied
    deadline = 0.5  # after a 0.3 s hung try, 0.2 s remain: less than a whole try
    results = []
    while len(hung.told) < 3:  # until some first tries met the hung upstream
        before = len(good.told)
        code, took = call(envoy, deadline)
        results.append((code, took, good.told[before:] if len(good.told) > before else []))
        assert len(results) < 60, "Envoy never chose the hung upstream"
    retried = [(took, told) for code, took, told in results if took > PER_TRY_S * 0.9]
    print(f"\n{len(results)} requests, {len(retried)} retried after a hung try: took "
          f"{[round(t, 3) for t, _ in retried]} s; second try told "
          f"{[round(t[0], 3) for _, t in retried if t]} s")
    assert all(code == "OK" for code, _, _ in results), results
    assert retried
    for took, told in retried:
        assert took < deadline
        # The retry was told what was left (deadline - first try), not a whole per-try timeout.
        assert told and told[0] <= deadline - PER_TRY_S + 0.05
    # Every try on the hung upstream was told the per-try timeout, not the whole deadline.
    assert max(hung.told) <= PER_TRY_S + 0.01


def test_a_deadline_shorter_than_a_try_is_kept(proxied) -> None:
    envoy, hung, _ = proxied
    deadline = 0.15
    seen = len(hung.told)
    late = []
    while len(hung.told) < seen + 2:
        code, took = call(envoy, deadline)
        if code != "OK":
            # The client's own deadline and Envoy's (the same grpc-timeout) fire together;
            # whichever answers first, the answer comes at the deadline. Envoy reports its own
            # timeout as UNAVAILABLE (HTTP 504's gRPC mapping), the client as DEADLINE_EXCEEDED.
            assert code in ("DEADLINE_EXCEEDED: Deadline Exceeded",
                            "UNAVAILABLE: upstream request timeout"), code
            late.append(took)
        assert len(late) < 60
    print(f"\nhung first tries with a {deadline}s deadline answered after "
          f"{[round(t, 3) for t in late]} s")
    assert late and max(late) < deadline + 0.1
