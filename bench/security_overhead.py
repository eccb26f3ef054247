"""What TLS and bearer-token authentication cost per request.

Starts one server per configuration (plain, token, TLS, TLS + token) pinned to
one CPU, drives a tiny identity model with pipelined unary requests from this
process, and prints requests/s and p50 latency at concurrency 1.

    flock /tmp/kairos-bench.lock taskset -c 1 .venv/bin/python bench/security_overhead.py --server-cpu 0
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from kairos.protos import codec  # noqa: E402
from kairos.protos import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from kairos_testing.models import identity, write_model  # noqa: E402
from kairos_testing.reliability import make_pki  # noqa: E402
from kairos_testing.server import running_server  # noqa: E402

TOKEN = "bench-token"


def measure(channel: grpc.Channel, seconds: float, window: int) -> tuple[float, float]:
    """(requests/s pipelined with `window` in flight, p50 ms at concurrency 1)."""
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = codec.build_request("identity", {"input": np.ones((1, 4), np.float32)})
    latencies = []
    for _ in range(300):  # warm-up + latency at concurrency 1
        t0 = time.perf_counter()
        stub.ModelInfer(request, timeout=10)
        latencies.append(time.perf_counter() - t0)
    done, pending = 0, []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        while len(pending) < window:
            pending.append(stub.ModelInfer.future(request, timeout=10))
        pending.pop(0).result()
        done += 1
    for future in pending:
        future.result()
        done += 1
    return done / (time.perf_counter() - start), statistics.median(latencies[100:]) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--server-cpu", type=int, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kairos-secbench-"))
    repo = work / "repo"
    write_model(repo, "identity", identity())
    pki = make_pki(work / "pki")
    (work / "tokens").write_text(TOKEN + "\n")
    tls = grpc.ssl_channel_credentials(pki.read("ca_cert"))
    tls_args = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
    auth_args = ("--auth-token-file", str(work / "tokens"))
    token = grpc.access_token_call_credentials(TOKEN)
    configs = [
        ("plain text", (), None, None),
        ("bearer token", auth_args, None, "header"),
        ("TLS", tls_args, tls, None),
        ("TLS + bearer token", tls_args + auth_args, grpc.composite_channel_credentials(tls, token), None),
    ]
    print(f"{'configuration':<20}{'req/s (window ' + str(args.window) + ')':>22}{'p50 ms (c=1)':>14}")
    for name, extra, credentials, header in configs:
        with running_server(repo, *extra, cpu=args.server_cpu, credentials=credentials) as server:
            if credentials is not None:
                channel = grpc.secure_channel(server.address, credentials)
            else:
                channel = grpc.insecure_channel(server.address)
            if header:
                channel = grpc.intercept_channel(channel, _Header(TOKEN))
            with channel:
                rate, p50 = measure(channel, args.seconds, args.window)
        print(f"{name:<20}{rate:>22.0f}{p50:>14.3f}")
    return 0


class _Header(grpc.UnaryUnaryClientInterceptor):
    """Adds `authorization: Bearer` metadata on a plain-text channel (call
    credentials need TLS in grpcio)."""

    def __init__(self, token: str) -> None:
        self.metadata = [("authorization", f"Bearer {token}")]

    def intercept_unary_unary(self, continuation, details, request):
        details = details._replace(metadata=list(details.metadata or []) + self.metadata)
        return continuation(details, request)


if __name__ == "__main__":
    sys.exit(main())
