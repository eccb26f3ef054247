"""The load generator's engine: one asyncio process driving a V2 gRPC server.

Speed matters more than elegance here, because a slow generator silently caps
what it measures. So:
- the request is built and serialized once; every call sends the same bytes
  through a generic `unary_unary` multicallable with identity (de)serializers,
  so no protobuf work happens per request;
- completions are handled by done-callbacks rather than one coroutine per
  request, and the status is read from the finished call without awaiting;
- records are appended to plain lists, the GC is paused during a run, and
  arrival schedules are drawn up front.
Each point (one rate or one concurrency) uses a fresh channel, so calls left
over from a previous point cannot disturb it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from kairos.protos import codec
from kairos.protos import grpc_service_pb2 as pb
from kairos.protos import grpc_service_pb2_grpc as pb_grpc

from .schedule import BurstSpec, DeadlineClass, arrival_times, class_of_requests, describe_mix
from .stats import UNFINISHED, Records, kept_up, summarize

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
# No transparent retries (a retried request would be measured as one), and no message-size
# cap (big --rows requests and answers are the point of some runs).
CHANNEL_OPTIONS = (
    ("grpc.enable_retries", 0),
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
)
_OK = grpc.StatusCode.OK.value[0]
_CANCELLED = grpc.StatusCode.CANCELLED.value[0]


@dataclass
class BenchConfig:
    url: str
    model: str
    model_version: str = ""
    concurrency: int | None = None  # closed loop when set
    rates: list[float] = field(default_factory=list)  # open loop: one point per rate
    burst: BurstSpec | None = None
    duration_s: float = 10.0
    warmup_s: float = 2.0
    slo_ms: float = 10.0
    deadline_ms: float | None = None  # None: the SLO; 0: no gRPC deadline at all
    rows: int = 1
    input_shape: list[int] | None = None  # non-batch dims, where metadata leaves them open
    seed: int = 0
    drain_s: float = 10.0  # longest wait for answers after the window, without a deadline
    server_stats: bool = True  # read ModelStatistics batch_stats before/after each point
    metrics_url: str | None = None  # Prometheus text endpoint to read counters from
    parameters: dict[str, Any] = field(default_factory=dict)  # request parameters (priority, ...)
    server_pid: int | None = None  # a local server: its CPU per request is reported too
    engine: str = "python"  # "native": each point is measured by kairos-loadgen (native.py)
    connections: int = 1  # native engine: HTTP/2 connections, round-robin
    workers: int = 1  # native engine: tokio worker threads
    arrival: str = "poisson"  # open-loop arrivals: "poisson", "constant" or "gamma"
    cv: float | None = None  # gamma arrivals: coefficient of variation of the gaps
    # deadline classes (open loop): each request's deadline (sent as its gRPC deadline)
    # and SLO is its class's; slo_ms and deadline_ms are then unused
    deadline_mix: tuple[DeadlineClass, ...] | None = None

    @property
    def timeout_s(self) -> float | None:
        deadline = self.slo_ms if self.deadline_ms is None else self.deadline_ms
        return deadline / 1e3 if deadline and deadline > 0 else None

    @property
    def timeouts_s(self) -> list[float | None]:
        """Each deadline class's gRPC deadline (one entry without a mix)."""
        if not self.deadline_mix:
            return [self.timeout_s]
        return [c.deadline_ms / 1e3 for c in self.deadline_mix]

    @property
    def tightest_slo_s(self) -> float:
        if not self.deadline_mix:
            return self.slo_ms / 1e3
        return min(c.deadline_ms for c in self.deadline_mix) / 1e3


# ---------------------------------------------------------------- the request


def _example_array(tensor: pb.ModelMetadataResponse.TensorMetadata, cfg: BenchConfig, rng) -> np.ndarray:
    """An input of cfg.rows rows for one metadata tensor (-1 batch dim assumed first)."""
    dims = [int(d) for d in tensor.shape]
    if dims and dims[0] == -1:
        rest = dims[1:]
        if cfg.input_shape is not None:
            rest = list(cfg.input_shape)
        dims = [cfg.rows, *rest]
    elif cfg.input_shape is not None:
        dims = list(cfg.input_shape)
    if any(d < 0 for d in dims):
        raise ValueError(
            f"input '{tensor.name}' has open dims {list(tensor.shape)}: give --input-shape"
        )
    if tensor.datatype == "BYTES":
        array = np.empty(dims, dtype=np.object_)
        array.fill(b"0")
        return array
    dtype = codec.DATATYPE_TO_DTYPE.get(tensor.datatype)
    if dtype is None:
        raise ValueError(f"input '{tensor.name}': datatype {tensor.datatype} is not supported")
    if dtype.kind == "f":
        return rng.standard_normal(dims).astype(dtype)
    return np.zeros(dims, dtype=dtype)


async def fetch_metadata(channel: grpc.aio.Channel, cfg: BenchConfig) -> pb.ModelMetadataResponse:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelMetadataRequest(name=cfg.model, version=cfg.model_version)
    return await stub.ModelMetadata(request, timeout=30)


def build_payload(meta: pb.ModelMetadataResponse, cfg: BenchConfig) -> bytes:
    """The one serialized ModelInferRequest every call of the run sends."""
    rng = np.random.default_rng(cfg.seed)
    inputs = {t.name: _example_array(t, cfg, rng) for t in meta.inputs}
    request = codec.build_request(
        cfg.model, inputs, model_version=cfg.model_version, parameters=cfg.parameters
    )
    return request.SerializeToString()


# ---------------------------------------------------------------- the engine


def _status_code(call: grpc.aio.UnaryUnaryCall) -> int:
    """The finished call's numeric status, without awaiting (private API, guarded)."""
    try:
        return int(call._cython_call._status.code())  # type: ignore[attr-defined]
    except AttributeError:  # another grpcio layout: fall back to the exception
        return _status_from_task(call)


def _status_from_task(call: Any) -> int:
    task = getattr(call, "_invocation_task", None)
    if task is not None and task.done() and not task.cancelled() and task.exception() is None:
        result = task.result()
        return _OK if not isinstance(result, type(grpc.aio.EOF)) else grpc.StatusCode.UNKNOWN.value[0]
    return grpc.StatusCode.UNKNOWN.value[0]


class Engine:
    """Fires calls and records when each was scheduled, sent and answered."""

    def __init__(self, infer: Callable, payload: bytes, timeout_s: float | None) -> None:
        self._infer = infer
        self._payload = payload
        self._timeout = timeout_s
        self.records = Records()
        self.outstanding = 0
        self.idle = asyncio.Event()
        self.on_complete: Callable[[], None] | None = None
        self.closed = False  # after close, late answers are not recorded

    def fire(self, scheduled: float | None = None, timeout: float | None = None, klass: int = -1) -> None:
        now = time.perf_counter()
        call = self._infer(self._payload, timeout=self._timeout if klass < 0 else timeout)
        records = self.records
        index = len(records.sent)
        if klass >= 0:
            records.classes.append(klass)
        records.scheduled.append(now if scheduled is None else scheduled)
        records.sent.append(now)
        records.ended.append(0.0)
        records.codes.append(UNFINISHED)
        self.outstanding += 1
        self.idle.clear()
        call.add_done_callback(partial(self._done, index))

    def _done(self, index: int, call: grpc.aio.UnaryUnaryCall) -> None:
        if self.closed:
            return
        self.records.ended[index] = time.perf_counter()
        self.records.codes[index] = _status_code(call)
        self.outstanding -= 1
        if self.on_complete is not None:
            self.on_complete()
        if self.outstanding == 0:
            self.idle.set()


async def _send_schedule(engine: Engine, times: list[float], classes: list[int] | None = None,
                         timeouts: list[float | None] | None = None) -> None:
    """Send each request at its time (with its class's deadline, given classes); when
    late, send at once and note it."""
    clock = time.perf_counter
    fire = engine.fire
    i, n = 0, len(times)
    while i < n:
        now = clock()
        if classes is None:
            while i < n and times[i] <= now:
                fire(times[i])
                i += 1
        else:
            while i < n and times[i] <= now:
                klass = classes[i]
                fire(times[i], timeouts[klass], klass)
                i += 1
        if i < n:
            # asyncio timers resolve to about 1 ms; sleeping to the next arrival
            # and then sending everything due keeps lateness within that.
            await asyncio.sleep(max(0.0, times[i] - clock()))


def _closed_loop(engine: Engine, concurrency: int, stop_at: float) -> None:
    """N requests in flight: each completion sends the next until stop_at."""

    def again() -> None:
        if time.perf_counter() < stop_at:
            engine.fire()

    engine.on_complete = again
    for _ in range(concurrency):
        engine.fire()


# ---------------------------------------------------------------- server-side counters


async def model_statistics(channel: grpc.aio.Channel, cfg: BenchConfig) -> dict[str, Any] | None:
    """Executions per batch size and counts from ModelStatistics (None if unsupported)."""
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    try:
        reply = await stub.ModelStatistics(
            pb.ModelStatisticsRequest(name=cfg.model, version=cfg.model_version), timeout=5
        )
    except grpc.aio.AioRpcError:
        return None
    batches: dict[int, int] = {}
    inferences = executions = 0
    for stats in reply.model_stats:
        if stats.name != cfg.model:
            continue
        inferences += stats.inference_count
        executions += stats.execution_count
        for entry in stats.batch_stats:
            size = int(entry.batch_size)
            batches[size] = batches.get(size, 0) + int(entry.compute_infer.count)
    return {"batches": batches, "inference_count": inferences, "execution_count": executions}


def statistics_delta(before: dict | None, after: dict | None) -> dict[str, Any] | None:
    """Executions per batch size during the window, and the GEMV (batch 1) share."""
    if before is None or after is None:
        return None
    batches = {
        size: count - before["batches"].get(size, 0)
        for size, count in sorted(after["batches"].items())
        if count - before["batches"].get(size, 0) > 0
    }
    executions = sum(batches.values())
    rows = sum(size * count for size, count in batches.items())
    return {
        "executions_by_batch_size": {str(k): v for k, v in batches.items()},
        "executions": executions,
        "rows": rows,
        "gemv_share_executions": round(batches.get(1, 0) / executions, 5) if executions else None,
        "gemv_share_rows": round(batches.get(1, 0) / rows, 5) if rows else None,
        "mean_batch_rows": round(rows / executions, 3) if executions else None,
    }


def parse_prometheus(text: str, prefix: str = "kairos_") -> dict[str, float]:
    """Sample lines of a Prometheus text page whose metric starts with prefix."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        key, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            samples[key] = float(value)
    return samples


async def scrape(url: str | None) -> dict[str, float] | None:
    if not url:
        return None

    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - operator-given URL
            return reply.read().decode()

    try:
        return parse_prometheus(await asyncio.to_thread(fetch))
    except OSError:
        return None


def counters_delta(before: dict | None, after: dict | None, name: str) -> dict[str, float] | None:
    """How much each labelled sample of counter `name` grew (labels as in the page)."""
    if before is None or after is None:
        return None
    out = {}
    for key, value in after.items():
        if key.startswith(name + "{") or key == name:
            out[key] = value - before.get(key, 0.0)
    return out


# ---------------------------------------------------------------- CPU accounting (Linux /proc)

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int | None) -> float | None:
    """User+system CPU of a process (all its threads), or None if unreadable."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (not idle, not iowait)."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    values = [int(v) for v in first[1:9]]
    return (sum(values) - values[3] - values[4]) / _TICK


# ---------------------------------------------------------------- one point


class _Probe:
    """Snapshots taken at the window's edges: generator CPU and server counters."""

    def __init__(self, channel: grpc.aio.Channel, cfg: BenchConfig) -> None:
        self.channel, self.cfg = channel, cfg
        self.cpu: list[float] = []
        self.wall: list[float] = []
        self.stats: list[dict | None] = []
        self.metrics: list[dict | None] = []
        self.server_cpu: list[float | None] = []
        self.machine: list[float | None] = []

    async def snapshot(self) -> None:
        self.cpu.append(time.process_time())
        self.wall.append(time.perf_counter())
        self.server_cpu.append(process_cpu_seconds(self.cfg.server_pid))
        self.machine.append(machine_busy_seconds())
        if self.cfg.server_stats:
            self.stats.append(await model_statistics(self.channel, self.cfg))
        self.metrics.append(await scrape(self.cfg.metrics_url))

    async def run(self, start: float, end: float) -> None:
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        await self.snapshot()
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        await self.snapshot()

    def _cpu_report(self, cpu: float, wall: float, requests: int) -> dict[str, Any]:
        """Server CPU per request, and how much CPU others took (a disturbed point)."""
        out: dict[str, Any] = {}
        server = None
        if None not in self.server_cpu:
            server = self.server_cpu[1] - self.server_cpu[0]
            out["server_cpu"] = {
                "cpu_util": round(server / wall, 4),
                "cpu_us_per_request": round(server / max(1, requests) * 1e6, 2),
            }
        if None not in self.machine:
            foreign = self.machine[1] - self.machine[0] - cpu - (server or 0.0)
            # Tick granularity makes small negatives; clamp for readability.
            out["machine"] = {"busy_cores": round((self.machine[1] - self.machine[0]) / wall, 3),
                              "others_cores": round(max(0.0, foreign) / wall, 3),
                              "server_known": server is not None}
        return out

    def report(self, requests: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if len(self.cpu) == 2:
            cpu = self.cpu[1] - self.cpu[0]
            wall = self.wall[1] - self.wall[0]
            out["generator"] = {
                "cpu_util": round(cpu / wall, 4),
                "cpu_us_per_request": round(cpu / max(1, requests) * 1e6, 2),
                # What one core could send at this per-request cost.
                "capacity_rps": round(requests / cpu, 1) if cpu > 0 else None,
            }
            out.update(self._cpu_report(cpu, wall, requests))
        if len(self.stats) == 2:
            out["server_batches"] = statistics_delta(self.stats[0], self.stats[1])
        if len(self.metrics) == 2 and self.metrics[0] is not None:
            out["server_metrics"] = counters_delta(self.metrics[0], self.metrics[1], "kairos_dispatches_total")
        return out


async def run_point(cfg: BenchConfig, rate: float | None = None, concurrency: int | None = None) -> dict[str, Any]:
    """One measured point: warm-up, window, drain; returns its summary."""
    async with grpc.aio.insecure_channel(cfg.url, options=CHANNEL_OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=30)
        payload = build_payload(await fetch_metadata(channel, cfg), cfg)
        infer = channel.unary_unary(INFER_METHOD, _registered_method=True)
        engine = Engine(infer, payload, cfg.timeout_s)
        probe = _Probe(channel, cfg)
        gc.collect()
        gc.disable()  # a collection pause would show up as generator lateness
        try:
            window = await _drive(engine, probe, cfg, rate, concurrency)
        finally:
            gc.enable()
    summary = summarize(engine.records, window, cfg.slo_ms / 1e3, cfg.rows, open_loop=rate is not None,
                        mix=cfg.deadline_mix if rate is not None else None)
    point: dict[str, Any] = {"mode": "open" if rate is not None else "closed"}
    if rate is not None:
        point["offered_rate"] = rate
        point["arrival"] = cfg.arrival
        point["cv"] = cfg.cv if cfg.arrival == "gamma" else None
        point["burst"] = cfg.burst.describe() if cfg.burst else None
        point["deadline_mix"] = describe_mix(cfg.deadline_mix) if cfg.deadline_mix else None
        point.update(summary)
        point["kept_up"] = kept_up(summary, rate, cfg.tightest_slo_s)
    else:
        point["concurrency"] = concurrency
        point.update(summary)
    point.update(probe.report(summary["requests"]))
    return point


async def _drive(
    engine: Engine, probe: _Probe, cfg: BenchConfig, rate: float | None, concurrency: int | None
) -> tuple[float, float]:
    start = time.perf_counter() + 0.05  # leave time for the first sleep to be scheduled
    window = (start + cfg.warmup_s, start + cfg.warmup_s + cfg.duration_s)
    probe_task = asyncio.ensure_future(probe.run(*window))
    if rate is not None:
        offsets = arrival_times(rate, cfg.warmup_s + cfg.duration_s, cfg.burst, cfg.seed, cfg.arrival, cfg.cv)
        classes = None
        if cfg.deadline_mix:
            classes = class_of_requests(len(offsets), cfg.deadline_mix, cfg.seed).tolist()
        await _send_schedule(engine, (offsets + start).tolist(), classes, cfg.timeouts_s)
    else:
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        _closed_loop(engine, concurrency or 1, window[1])
        await asyncio.sleep(max(0.0, window[1] - time.perf_counter()))
    await probe_task
    longest = [t for t in cfg.timeouts_s if t]
    wait = (max(longest) if len(longest) == len(cfg.timeouts_s) else cfg.drain_s) + 2.0
    if engine.outstanding:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(engine.idle.wait(), timeout=wait)
    engine.closed = True  # what is still outstanding stays UNFINISHED
    return window


async def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """All points of a run (one closed-loop point, or one open-loop point per rate)."""
    if cfg.concurrency is not None:
        points = [await run_point(cfg, concurrency=cfg.concurrency)]
    else:
        points = [await run_point(cfg, rate=rate) for rate in cfg.rates]
    return {"config": _config_json(cfg), "points": points}


def _config_json(cfg: BenchConfig) -> dict[str, Any]:
    return {
        "url": cfg.url,
        "model": cfg.model,
        "model_version": cfg.model_version,
        "concurrency": cfg.concurrency,
        "rates": cfg.rates,
        "burst": cfg.burst.describe() if cfg.burst else None,
        "arrival": cfg.arrival,
        "cv": cfg.cv,
        "deadline_mix": describe_mix(cfg.deadline_mix) if cfg.deadline_mix else None,
        "duration_s": cfg.duration_s,
        "warmup_s": cfg.warmup_s,
        "slo_ms": cfg.slo_ms,
        "deadline_ms": None if cfg.timeout_s is None else cfg.timeout_s * 1e3,
        "rows": cfg.rows,
        "seed": cfg.seed,
        "parameters": cfg.parameters,
        "server_pid": cfg.server_pid,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def run(cfg: BenchConfig, loop: str = "auto") -> dict[str, Any]:
    """Run synchronously on a fresh event loop (uvloop when asked/available), or, with
    `cfg.engine == "native"`, point by point in the kairos-loadgen program."""
    if cfg.engine == "native":
        from .native import run as run_native

        return run_native(cfg)
    if cfg.engine != "python":
        raise ValueError(f"engine must be 'python' or 'native', not {cfg.engine!r}")
    if loop in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise
        else:
            result = uvloop.run(run_bench(cfg))
            result["config"]["loop"] = "uvloop"
            return result
    result = asyncio.run(run_bench(cfg))
    result["config"]["loop"] = "asyncio"
    return result
