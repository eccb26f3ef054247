"""What TLS and bearer-token authentication cost per request, server and client apart.

Starts one server per configuration (plain, token, TLS, TLS + token), all pinned to
one CPU, and drives a tiny identity model from this process: p50 latency at
concurrency 1, then requests/s with `--window` requests in flight. For the pipelined
window it also reads the server's CPU time (/proc) and this process's CPU time, so
the server's cost (TLS, the token check) is measured apart from the client's (TLS,
the interceptor or call credentials). The configurations alternate, `--repeats`
rounds, each round in a rotated order; the table shows medians and every round.

    flock /tmp/kairos-bench.lock taskset -c 1 .venv/bin/python bench/security_overhead.py \\
        --server-cpu 0 --repeats 5 --seconds 4
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
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
_TICK = os.sysconf("SC_CLK_TCK")  # /proc/<pid>/stat clock ticks per second


@dataclass
class Round:
    rate: float  # requests/s, pipelined
    p50_ms: float  # concurrency 1
    server_us: float  # server CPU per request, pipelined window
    client_us: float  # this process's CPU per request, pipelined window
    errors: int = 0  # pipelined requests that failed (reported, not counted in req/s)


@dataclass
class Config:
    name: str
    server_args: tuple[str, ...]
    credentials: grpc.ChannelCredentials | None
    header: bool
    rounds: list[Round] = field(default_factory=list)


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def measure(channel: grpc.Channel, server_pid: int, seconds: float, window: int) -> Round:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = codec.build_request("identity", {"input": np.ones((1, 4), np.float32)})
    latencies = []
    for _ in range(300):  # warm-up + latency at concurrency 1
        t0 = time.perf_counter()
        stub.ModelInfer(request, timeout=10)
        latencies.append(time.perf_counter() - t0)
    done = errors = 0
    pending: list = []
    server0, client0 = process_cpu_s(server_pid), time.process_time()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or pending:
        while len(pending) < window and time.perf_counter() - start < seconds:
            pending.append(stub.ModelInfer.future(request, timeout=10))
        if pending:
            if pending.pop(0).exception() is None:
                done += 1
            else:
                errors += 1
    wall = time.perf_counter() - start
    server, client = process_cpu_s(server_pid) - server0, time.process_time() - client0
    answered = max(1, done)
    return Round(done / wall, statistics.median(latencies[100:]) * 1000,
                 server / answered * 1e6, client / answered * 1e6, errors)


def channel_for(config: Config, address: str) -> grpc.Channel:
    if config.credentials is not None:
        channel = grpc.secure_channel(address, config.credentials)
    else:
        channel = grpc.insecure_channel(address)
    return grpc.intercept_channel(channel, _Header(TOKEN)) if config.header else channel


def configurations(work: Path) -> list[Config]:
    pki = make_pki(work / "pki")
    (work / "tokens").write_text(TOKEN + "\n")
    tls = grpc.ssl_channel_credentials(pki.read("ca_cert"))
    tls_args = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
    auth_args = ("--auth-token-file", str(work / "tokens"))
    token = grpc.access_token_call_credentials(TOKEN)
    return [
        Config("plain text", (), None, False),
        Config("bearer token", auth_args, None, True),
        Config("TLS", tls_args, tls, False),
        Config("TLS + bearer token", tls_args + auth_args,
               grpc.composite_channel_credentials(tls, token), False),
    ]


def run(args: argparse.Namespace) -> list[Config]:
    work = Path(tempfile.mkdtemp(prefix="kairos-secbench-"))
    repo = work / "repo"
    write_model(repo, "identity", identity())
    configs = configurations(work)
    with contextlib.ExitStack() as stack:
        extra = tuple(args.server_args.split())
        servers = [stack.enter_context(running_server(repo, *c.server_args, *extra, cpu=args.server_cpu,
                                                      credentials=c.credentials)) for c in configs]
        channels = [stack.enter_context(channel_for(c, s.address)) for c, s in zip(configs, servers, strict=True)]
        for repeat in range(args.repeats):
            shift = repeat % len(configs)  # rotate the order: no configuration always goes first
            for index in list(range(len(configs)))[shift:] + list(range(len(configs)))[:shift]:
                result = measure(channels[index], servers[index].process.pid, args.seconds, args.window)
                configs[index].rounds.append(result)
                print(f"round {repeat + 1} {configs[index].name:<20} {result.rate:7.0f} req/s  "
                      f"p50 {result.p50_ms:.3f} ms  server {result.server_us:.0f} us  "
                      f"client {result.client_us:.0f} us  errors {result.errors}", file=sys.stderr)
    return configs


def table(configs: list[Config], window: int) -> str:
    def cell(values: list[float], fmt: str, base: float | None = None) -> str:
        median = statistics.median(values)
        text = format(median, fmt)
        if base:
            text += f" ({(median / base - 1) * 100:+.0f}%)"
        return text + " [" + "/".join(format(v, fmt) for v in values) + "]"

    plain = configs[0].rounds
    bases = {key: statistics.median(getattr(r, key) for r in plain)
             for key in ("rate", "p50_ms", "server_us", "client_us")}
    lines = [f"| configuration | req/s ({window} in flight) | p50 ms at concurrency 1 | "
             "server CPU us/request | client CPU us/request | failed |", "|---|---|---|---|---|---|"]
    for config in configs:
        rows = config.rounds
        first = config is configs[0]
        lines.append("| " + " | ".join([
            config.name,
            cell([r.rate for r in rows], ".0f", None if first else bases["rate"]),
            cell([r.p50_ms for r in rows], ".3f", None if first else bases["p50_ms"]),
            cell([r.server_us for r in rows], ".0f", None if first else bases["server_us"]),
            cell([r.client_us for r in rows], ".0f", None if first else bases["client_us"]),
            str(sum(r.errors for r in rows)),
        ]) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="pipelined window per round")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="alternated rounds (medians shown)")
    parser.add_argument("--server-cpu", type=int, default=None)
    parser.add_argument("--server-args", default="", help="more `kairos serve` flags, e.g. '--transport aio'")
    args = parser.parse_args()
    configs = run(args)
    print(f"`{' '.join(sys.argv)}`: medians of {args.repeats} alternated rounds [every round]; "
          "change against plain text")
    print(table(configs, args.window))
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
