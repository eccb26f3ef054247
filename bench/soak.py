"""Soak: mixed load against one Kairos server process, sampling its RSS.

Mixed load, unthrottled at a fixed concurrency: MLP inference of 1-32 rows,
BYTES inference, malformed requests, metadata and statistics calls, short
streams, and a model reload every `--reload-every` seconds (so the load/unload
path is soaked too). Every `--interval` seconds the server's resident set size
is read from /proc. The drift is the last samples' median against the first
sample after warm-up.

    flock /tmp/kairos-bench.lock taskset -c 1 .venv/bin/python bench/soak.py \\
        --duration 600 --interval 10 --warmup 60 --server-cpu 0 --out bench/results/soak.json

The test suite imports `soak()` and runs ~20 s of it (tests/integration/test_soak.py).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from kairos.protos import codec  # noqa: E402
from kairos.protos import grpc_service_pb2 as pb  # noqa: E402
from kairos.protos import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from kairos_testing.models import identity, write_model  # noqa: E402
from kairos_testing.reliability import mlp, read_rss_kib  # noqa: E402
from kairos_testing.server import running_server  # noqa: E402
from onnx import TensorProto  # noqa: E402

WIDTH = 256


@dataclass
class SoakResult:
    duration_s: float
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds, RSS KiB)
    outcomes: dict[str, int] = field(default_factory=dict)
    warm_rss_kib: int = 0
    final_rss_kib: int = 0
    peak_rss_kib: int = 0
    drift: float = 0.0  # (final - warm) / warm
    requests: int = 0
    warm_requests: int = 0  # requests sent when the warm sample was taken
    growth_per_request_b: float = 0.0  # RSS growth per request after warm-up (least squares)
    streams: int = 0  # stream bursts sent (STREAM_BURST requests each)
    sample_requests: list[int] = field(default_factory=list)  # requests sent at each sample
    reloads: int = 0
    errors: list[str] = field(default_factory=list)  # first unexpected answers, verbatim


def soak_repository(folder: Path) -> Path:
    write_model(folder, "mlp", mlp(WIDTH, 2))
    write_model(folder, "identity_bytes", identity(TensorProto.STRING, width=2))
    write_model(folder, "identity_fp32", identity(TensorProto.FLOAT))
    return folder


class Load:
    """Builds one request of the mix at a time (seeded: the same run every time)."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.data = np.random.default_rng(seed).standard_normal((32, WIDTH)).astype(np.float32)

    def next(self) -> tuple[str, object, set[grpc.StatusCode]]:
        """(method, request, acceptable codes); OK is always acceptable for valid ones."""
        roll = self.rng.random()
        if roll < 0.65:
            rows = self.rng.randint(1, 32)
            return "ModelInfer", codec.build_request("mlp", {"input": self.data[:rows]}), {grpc.StatusCode.OK}
        if roll < 0.78:
            items = np.array([[b"x" * self.rng.randint(0, 64), b"soak"]] * 2, dtype=object)
            return "ModelInfer", codec.build_request("identity_bytes", {"input": items}), {grpc.StatusCode.OK}
        if roll < 0.90:
            request = codec.build_request("identity_fp32", {"input": np.ones((2, 4), np.float32)})
            request.raw_input_contents[0] = request.raw_input_contents[0][: self.rng.randint(0, 31)]
            return "ModelInfer", request, {grpc.StatusCode.INVALID_ARGUMENT}
        if roll < 0.95:
            return "ModelMetadata", pb.ModelMetadataRequest(name="mlp"), {grpc.StatusCode.OK}
        return "ModelStatistics", pb.ModelStatisticsRequest(name="mlp"), {grpc.StatusCode.OK}


STREAM_BURST = 50


def expected_outcomes(requests: int, seed: int = 0) -> Counter:
    """The unary outcomes `requests` draws of the seeded mix must have: OK for the valid
    ones, INVALID_ARGUMENT for the malformed ones (a replay of `Load`)."""
    load, outcomes = Load(seed), Counter()
    for _ in range(requests):
        _, _, acceptable = load.next()
        outcomes[next(iter(acceptable)).name] += 1
    return outcomes


def _stream_burst(stub, load: Load, errors: list[str], count: int = STREAM_BURST) -> Counter:
    requests = [codec.build_request("mlp", {"input": load.data[: 1 + i % 8]}) for i in range(count)]
    outcomes: Counter = Counter()
    for reply in stub.ModelStreamInfer(iter(requests), timeout=60):
        if reply.error_message:
            # "STATUS: message"; a refusal under load is expected, anything else is not.
            status = reply.error_message.split(":", 1)[0]
            outcomes[f"stream_{status}"] += 1
            if len(errors) < 20:
                errors.append(reply.error_message)
        else:
            outcomes["stream_ok"] += 1
    return outcomes


def run_load(address: str, pid: int, *, duration: float, interval: float, warmup: float,
             concurrency: int = 8, reload_every: float = 30.0, stream_every: float = 5.0,
             log=print) -> SoakResult:
    """Drive the mix for `duration` seconds; RSS sampled every `interval` seconds."""
    result = SoakResult(duration_s=duration)
    outcomes: Counter = Counter()
    load = Load()
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        start = time.monotonic()
        next_sample = next_reload = next_stream = start
        pending: list = []
        while (now := time.monotonic()) - start < duration:
            if now >= next_sample:
                rss = read_rss_kib(pid)
                result.samples.append((round(now - start, 1), rss))
                result.sample_requests.append(result.requests)
                log(f"{now - start:7.1f}s  RSS {rss / 1024:8.1f} MiB  requests {result.requests}")
                next_sample += interval
            if now >= next_reload and reload_every > 0:
                stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="identity_fp32"), timeout=60)
                result.reloads += 1
                next_reload += reload_every
            if now >= next_stream and stream_every > 0:
                outcomes.update(_stream_burst(stub, load, result.errors))
                result.streams += 1
                next_stream += stream_every
            while len(pending) < concurrency:
                method, request, acceptable = load.next()
                pending.append((getattr(stub, method).future(request, timeout=60), acceptable))
                result.requests += 1
            future, acceptable = pending.pop(0)
            _record(future, acceptable, outcomes, result.errors)
        for future, acceptable in pending:
            _record(future, acceptable, outcomes, result.errors)
    result.samples.append((round(time.monotonic() - start, 1), read_rss_kib(pid)))
    result.sample_requests.append(result.requests)
    result.outcomes = dict(outcomes)
    _summarize(result, warmup)
    return result


def _record(future, acceptable: set, outcomes: Counter, errors: list[str]) -> None:
    code = future.code()
    if code in acceptable:
        outcomes[code.name] += 1
        return
    outcomes[f"UNEXPECTED_{code.name}"] += 1
    if len(errors) < 20:
        errors.append(f"{code.name}: {future.details()}")


def _summarize(result: SoakResult, warmup: float) -> None:
    warm = next((i for i, (t, _) in enumerate(result.samples) if t >= warmup), len(result.samples) - 1)
    after = [rss for _, rss in result.samples[warm:]]
    result.warm_rss_kib = after[0]
    result.warm_requests = result.sample_requests[warm]
    result.final_rss_kib = int(statistics.median(after[-3:]))
    result.peak_rss_kib = max(rss for _, rss in result.samples)
    result.drift = (result.final_rss_kib - result.warm_rss_kib) / result.warm_rss_kib
    result.growth_per_request_b = _slope_b_per_request(
        result.sample_requests[warm:], [rss for _, rss in result.samples[warm:]]
    )


def _slope_b_per_request(requests: list[int], rss_kib: list[int]) -> float:
    """Least-squares growth of RSS per request sent (bytes), over the samples given:
    steadier than two end points against the allocator's steps."""
    if len(requests) < 2 or requests[-1] == requests[0]:
        return 0.0
    mean_x, mean_y = statistics.fmean(requests), statistics.fmean(rss_kib)
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(requests, rss_kib, strict=True))
    var = sum((x - mean_x) ** 2 for x in requests)
    return cov / var * 1024


def soak(*, duration: float, interval: float, warmup: float, server_cpu: int | None = None,
         concurrency: int = 8, reload_every: float = 30.0, log=print) -> SoakResult:
    """Start a server on a fresh repository, soak it, stop it."""
    repo = soak_repository(Path(tempfile.mkdtemp(prefix="kairos-soak-")))
    with running_server(repo, cpu=server_cpu) as server:
        return run_load(server.address, server.process.pid, duration=duration, interval=interval,
                        warmup=warmup, concurrency=concurrency, reload_every=reload_every, log=log)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--reload-every", type=float, default=30.0)
    parser.add_argument("--server-cpu", type=int, default=None, help="pin the server to this CPU")
    parser.add_argument("--out", type=Path, default=None, help="write the result here as JSON")
    args = parser.parse_args()
    result = soak(duration=args.duration, interval=args.interval, warmup=args.warmup,
                  server_cpu=args.server_cpu, concurrency=args.concurrency,
                  reload_every=args.reload_every)
    print(f"requests {result.requests}  reloads {result.reloads}  outcomes {result.outcomes}")
    for error in result.errors:
        print(f"  error: {error}")
    print(f"RSS after warm-up {result.warm_rss_kib / 1024:.1f} MiB, final {result.final_rss_kib / 1024:.1f} MiB, "
          f"peak {result.peak_rss_kib / 1024:.1f} MiB, drift {result.drift:+.1%} "
          f"({result.growth_per_request_b:+.0f} B per request after warm-up)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(asdict(result), indent=1))
    unexpected = sum(n for k, n in result.outcomes.items() if k.startswith("UNEXPECTED"))
    unexpected += sum(n for k, n in result.outcomes.items()
                      if k.startswith("stream_") and k not in ("stream_ok", "stream_RESOURCE_EXHAUSTED"))
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
