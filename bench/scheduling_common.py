"""Shared pieces of the scheduling benchmark scripts (bench/scheduling_*.py).

Setting: servers pinned to core 0, the load generator (this process)
to core 1. Servers run as child processes; the generator runs in-process via
`kairos.client.bench`, one point at a time. The machine is shared, so before
each point we wait for the cores to be quiet, every point records how much CPU
other processes took during its window, and a disturbed point is repeated.

Run every script under `flock /tmp/kairos-bench.lock` so only one benchmark
runs at a time.

"Peak", in every one of these scripts and in BENCHMARKS.md (PEAK_DEFINITION): Kairos's
*peak goodput* is the highest goodput at the SLO over an open-loop sweep of the offered
rate; the *peak rate* is the offered rate at which it was measured. "2x peak" is twice
the peak rate; "a fraction of peak" is that fraction of the peak rate; "0.54x peak" is a
goodput divided by the peak goodput. The floor's "peak req/s" is its closed-loop maximum
throughput (no deadline), always named so.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from kairos.client.bench import BenchConfig, run
from kairos.server.demo_models import MLP256_SIZES, MLP_HEAVY_SIZES, build_mlp

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "tests"))

from kairos_testing.server import stop_process, wait_for_ports  # noqa: E402

PEAK_DEFINITION = (
    "peak = Kairos's peak goodput at the SLO over an open-loop sweep; the peak rate is the "
    "offered rate at which it was measured; 2x peak and fractions of peak are multiples of "
    "the peak rate; 'N x peak' is a goodput over the peak goodput"
)
SERVER_CORE = 0
GENERATOR_CORE = 1
DISTURBED_CORES = 0.15  # others using more than this much CPU during a window: repeat it


def measured_peak_rate(flag: str) -> float:
    """The peak rate (see PEAK_DEFINITION) from bench/results/scheduling_floor.json.

    Refuses, naming `flag`, when that file or its figure is missing: a benchmark must not
    run at a made-up rate."""
    path = RESULTS / "scheduling_floor.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run bench/scheduling_floor.py first, or give {flag}")
    rate = json.loads(path.read_text()).get("kairos_peak_goodput_rate")
    if not rate:
        raise SystemExit(f"{path} holds no kairos_peak_goodput_rate: re-run bench/scheduling_floor.py, "
                         f"or give {flag}")
    return float(rate)


def pin_generator() -> None:
    """Run this process (the generator) on its core, whatever the caller did.

    Also turns SIGTERM into SystemExit so the servers this script started are stopped.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {GENERATOR_CORE})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


# ---------------------------------------------------------------- model repositories


def write_model(repo: Path, name: str, model_path: Path, config: str) -> None:
    """<repo>/<name>/config.yaml and 1/model.onnx (a hard link or copy of model_path)."""
    folder = repo / name / "1"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "model.onnx"
    if not target.exists():
        try:
            os.link(model_path, target)
        except OSError:
            target.write_bytes(model_path.read_bytes())
    (repo / name / "config.yaml").write_text(config)


def onnx_file(folder: Path, name: str, sizes: tuple[int, ...], seed: int) -> Path:
    path = folder / f"{name}.onnx"
    if not path.exists():
        onnx.save(build_mlp(sizes, seed=seed, name=name), path)
    return path


def mlp256_file(folder: Path) -> Path:
    return onnx_file(folder, "mlp256", MLP256_SIZES, seed=256)


def mlp_heavy_file(folder: Path) -> Path:
    # ~570 MB of fp32 weights; the file is kept in bench/results/models between runs.
    return onnx_file(folder, "mlp-heavy", MLP_HEAVY_SIZES, seed=1024)


def models_folder() -> Path:
    folder = RESULTS / "models"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ---------------------------------------------------------------- server processes


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    grpc_port: int
    metrics_port: int | None
    log: Path

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def metrics_url(self) -> str | None:
        return f"http://127.0.0.1:{self.metrics_port}/metrics" if self.metrics_port else None


@contextlib.contextmanager
def _process(name: str, command: list[str], timeout: float) -> Iterator[Server]:
    workdir = Path(tempfile.mkdtemp(prefix=f"kairos-bench-{name}-"))
    port_file, log = workdir / "ports.json", workdir / "server.log"
    command = ["taskset", "-c", str(SERVER_CORE), *command, "--port-file", str(port_file)]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        ports = wait_for_ports(port_file, process, log, timeout)
        yield Server(name, process, ports["grpc_port"], ports.get("metrics_port"), log)
    finally:
        stop_process(process, grace=20)


def floor_server(raw: bool = False) -> contextlib.AbstractContextManager[Server]:
    command = [sys.executable, str(ROOT / "bench" / "floor_server.py"), "--port", "0"]
    return _process("floor", command + (["--raw"] if raw else []), timeout=60)


def kairos_server(repo: Path, *extra: str, timeout: float = 300) -> contextlib.AbstractContextManager[Server]:
    command = [sys.executable, "-m", "kairos.server", "--model-repository", str(repo),
               "--grpc-port", "0", "--metrics-port", "0", "--host", "127.0.0.1", *extra]
    return _process("kairos", command, timeout=timeout)


def wait_ready(server: Server, model: str, timeout: float = 300) -> None:
    """Until ModelReady says yes (a big model loads and profiles L(b) first)."""
    import grpc
    from kairos.protos import grpc_service_pb2 as pb
    from kairos.protos import grpc_service_pb2_grpc as pb_grpc

    end = time.monotonic() + timeout
    with grpc.insecure_channel(server.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < end:
            with contextlib.suppress(grpc.RpcError):
                if stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=5).ready:
                    return
            time.sleep(0.5)
    raise TimeoutError(f"{model} not ready on {server.name} after {timeout}s")


# ---------------------------------------------------------------- quiet machine, points


# Extra `kairos serve` flags for every Kairos server a script starts (`--kairos-args`).
KAIROS_ARGS: list[str] = []
# Open-loop mlp256 at a 10 ms SLO: gRPC's core sheds calls beyond 4 waiting ones (about
# 3 ms of front-end work queued), so those that reach the scheduler still have slack.
PENDING_LIMIT_ARGS = "--max-pending-rpcs 4"


def add_kairos_args(parser: Any, default: str = "") -> None:
    parser.add_argument("--kairos-args", default=default,
                        help=f"extra `kairos serve` flags for every Kairos server (default: {default!r})")


def use_kairos_args(text: str) -> list[str]:
    KAIROS_ARGS[:] = shlex.split(text)
    return list(KAIROS_ARGS)


class KairosHandle:
    """A Kairos server that can be restarted between points.

    Why: Kairos's latency model can wedge. When other processes preempt the
    pinned server, a few batch-1 runs take 20+ ms; once 2 of the last 32 do,
    L(1) (a 0.95 quantile) exceeds the 10 ms SLO, admission refuses every
    request, nothing runs, and L(1) is never corrected. A point that shows this
    (nearly all refused while the server is mostly idle) is recorded, the server
    restarted and the point measured again.
    """

    def __init__(self, repo: Path, models: list[str], *extra: str) -> None:
        self.repo, self.models, self.extra = repo, models, extra
        self.restarts = 0
        self.wedged_points: list[dict[str, Any]] = []
        self._cm: contextlib.AbstractContextManager[Server] | None = None
        self.server: Server

    def start(self) -> None:
        self._cm = kairos_server(self.repo, *KAIROS_ARGS, *self.extra)
        self.server = self._cm.__enter__()
        for model in self.models:
            wait_ready(self.server, model)

    def stop(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = None

    def restart(self) -> None:
        self.stop()
        self.start()
        self.restarts += 1

    def __enter__(self) -> KairosHandle:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wedged(point: dict[str, Any]) -> bool:
    """Nearly everything refused while the server sat mostly idle: not overload."""
    refused = point["errors"].get("RESOURCE_EXHAUSTED", {}).get("count", 0)
    util = point.get("server_cpu", {}).get("cpu_util", 1.0)
    return point["requests"] > 0 and refused >= 0.9 * point["requests"] and util < 0.5


def measure_kairos(handle: KairosHandle, model: str, label: str = "", **changes: Any) -> dict[str, Any]:
    """`measure` on Kairos, restarting it (once) when the point finds it wedged."""
    point = measure(config(handle.server, model, **changes), label=label)
    if wedged(point):
        print(f"  {label}: Kairos wedged (refusing all while idle); restarting it", flush=True)
        handle.wedged_points.append(point)
        handle.restart()
        point = measure(config(handle.server, model, **changes), label=label)
        point["after_wedge_restart"] = True
    return point


def cpu_idle_fractions(seconds: float = 0.5) -> list[float]:
    """Idle fraction of each core over `seconds` (from /proc/stat)."""

    def sample() -> list[list[int]]:
        lines = Path("/proc/stat").read_text().splitlines()
        return [[int(v) for v in line.split()[1:9]] for line in lines if line.startswith("cpu") and line[3].isdigit()]

    first = sample()
    time.sleep(seconds)
    second = sample()
    fractions = []
    for a, b in zip(first, second, strict=False):
        total = sum(b) - sum(a)
        idle = (b[3] + b[4]) - (a[3] + a[4])
        fractions.append(idle / total if total else 1.0)
    return fractions


def wait_quiet(min_idle: float = 0.85, timeout: float = 30.0) -> float:
    """Wait until both cores are mostly idle; returns seconds waited (timeout: go anyway)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if min(cpu_idle_fractions()) >= min_idle:
            break
    return round(time.monotonic() - start, 1)


def measure(cfg: BenchConfig, *, repeats: int | None = None, label: str = "") -> dict[str, Any]:
    """One point, repeated (up to `repeats` more times, env KAIROS_BENCH_REPEATS, default 1)
    while others disturbed it; the least disturbed attempt is kept."""
    if repeats is None:
        repeats = int(os.environ.get("KAIROS_BENCH_REPEATS", "1"))
    best: dict[str, Any] | None = None
    for attempt in range(repeats + 1):
        waited = wait_quiet()
        point = run(cfg)["points"][0]
        point["attempt"] = attempt
        point["waited_for_quiet_s"] = waited
        others = point.get("machine", {}).get("others_cores", 0.0)
        if best is None or others < best.get("machine", {}).get("others_cores", 0.0):
            best = point
        print(f"  {label:28s} {_brief(point)}", flush=True)
        if others <= DISTURBED_CORES:
            break
    assert best is not None
    best["disturbed"] = best.get("machine", {}).get("others_cores", 0.0) > DISTURBED_CORES
    return best


def _brief(point: dict[str, Any]) -> str:
    lat = point["latency_ms"]
    errors = {k: v["count"] for k, v in point["errors"].items()}
    head = f"r={point['offered_rate']:g}" if point["mode"] == "open" else f"c={point['concurrency']}"
    late = point.get("lateness_ms", {}).get("p99")
    return (f"{head} thr {point['throughput']:.0f}/s good {point['goodput']:.0f}/s "
            f"p50 {lat['p50']} p99 {lat['p99']} ms err {errors} late99 {late} "
            f"others {point.get('machine', {}).get('others_cores')} "
            f"srv {point.get('server_cpu', {}).get('cpu_us_per_request')} us/req")


def config(server: Server, model: str, **changes: Any) -> BenchConfig:
    """The scheduling benchmarks' setting: 1-row requests, SLO 10 ms sent as the gRPC deadline."""
    base: dict[str, Any] = {
        "url": server.url, "model": model, "rows": 1, "slo_ms": 10.0,
        "warmup_s": 2.0, "duration_s": 8.0, "server_pid": server.pid,
        "metrics_url": server.metrics_url,
    }
    base.update(changes)
    return BenchConfig(**base)


def save(name: str, data: dict[str, Any], merge: bool = False) -> Path:
    """bench/results/<name>.json; with merge, keys of an earlier run not re-measured are kept."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    if merge and path.exists():
        data = {**json.loads(path.read_text()), **data}
    data = {**data, "script": name, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join(sys.argv)}
    path.write_text(json.dumps(data, indent=2, default=_plain) + "\n")
    print(f"wrote {path}")
    return path


def _plain(value: Any) -> Any:
    """numpy scalars (a bool or float from a computation) as plain JSON values."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
