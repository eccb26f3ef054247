"""The load side of bench/frontend_compare.py: one point at a time, with probes at the window's
edges (server CPU over its whole process tree, the machine's CPU, Kairos's /metrics).

The generator is `kairos-loadgen` (Rust, client/loadgen) when it is installed, else the
Python engine of `kairos bench` (client/bench), which tops out near 5k req/s per core:
results then carry a warning. This process pins itself to core 1, so the generator runs
there; servers run on core 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import frontend_stats as fs

ROOT = Path(__file__).resolve().parent.parent
GENERATOR_CORE = 1
STARTUP_S = 0.03  # launch to the generator's t0 (exec, connect, metadata, its 20 ms lead)
TICK = os.sysconf("SC_CLK_TCK")


def pin_to_generator_core() -> None:
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {GENERATOR_CORE})


# ---------------------------------------------------------------- CPU accounting


def _proc_stats() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, utime+stime+cutime+cstime in seconds) for every process."""
    table: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2:].split()
        ppid = int(fields[1])
        ticks = sum(int(v) for v in fields[11:15])
        table[int(entry.name)] = (ppid, ticks / TICK)
    return table


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of `root` and all its live descendants (reaped children through cutime)."""
    table = _proc_stats()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        if pid in table:
            total += table[pid][1]
        stack.extend(children.get(pid, ()))
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle (from /proc/stat), since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / TICK


def idle_fractions(seconds: float = 0.3) -> list[float]:
    def sample() -> list[list[int]]:
        lines = Path("/proc/stat").read_text().splitlines()
        return [[int(v) for v in line.split()[1:9]] for line in lines
                if line.startswith("cpu") and line[3].isdigit()]

    first = sample()
    time.sleep(seconds)
    second = sample()
    out = []
    for a, b in zip(first, second, strict=False):
        total = sum(b) - sum(a)
        out.append(((b[3] + b[4]) - (a[3] + a[4])) / total if total else 1.0)
    return out


def wait_quiet(timeout: float, min_idle: float = 0.85) -> float:
    """Wait (up to `timeout` s) until every core is mostly idle; the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if min(idle_fractions()) >= min_idle:
            break
    return round(time.monotonic() - start, 1)


def scrape(url: str | None) -> fs.Samples | None:
    if not url:
        return None
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return fs.parse_prometheus(reply.read().decode())
    except OSError:
        return None


# ---------------------------------------------------------------- probes


@dataclass
class Edge:
    at: float
    server_cpu: float
    client_cpu: float
    machine: float
    metrics: fs.Samples | None


def _edge(server_pid: int, metrics_url: str | None) -> Edge:
    metrics = scrape(metrics_url)  # first: its cost lands in the window's edge, not inside it
    return Edge(time.monotonic(), tree_cpu_seconds(server_pid), tree_cpu_seconds(os.getpid()),
                machine_busy_seconds(), metrics)


class Probe(threading.Thread):
    """Samples at launch + STARTUP_S + warmup and + duration: the generator's window."""

    def __init__(self, server_pid: int, metrics_url: str | None, warmup: float, duration: float) -> None:
        super().__init__(daemon=True)
        self.server_pid, self.metrics_url = server_pid, metrics_url
        self.start_at = time.monotonic() + STARTUP_S + warmup
        self.end_at = self.start_at + duration
        self.edges: list[Edge] = []

    def run(self) -> None:
        for at in (self.start_at, self.end_at):
            time.sleep(max(0.0, at - time.monotonic()))
            self.edges.append(_edge(self.server_pid, self.metrics_url))

    def report(self, model: str) -> dict[str, Any]:
        self.join(timeout=30)
        if len(self.edges) < 2:
            return {}
        first, last = self.edges
        wall = max(1e-9, last.at - first.at)
        server = last.server_cpu - first.server_cpu
        client = last.client_cpu - first.client_cpu
        others = max(0.0, (last.machine - first.machine) - server - client)
        out: dict[str, Any] = {
            "wall_s": round(wall, 3),
            "server_cpu_s": round(server, 3),
            "server_cpu_util": round(server / wall, 3),
            "client_cpu_util": round(client / wall, 3),
            "others_cores": round(others / wall, 3),
        }
        if first.metrics is not None and last.metrics is not None:
            out["kairos"] = {
                **fs.dispatch_split(first.metrics, last.metrics, model),
                "promql_p99_ms": fs.promql_p99_ms(first.metrics, last.metrics, model),
            }
        return out


# ---------------------------------------------------------------- generators


def find_loadgen() -> Path | None:
    """kairos-loadgen: $KAIROS_LOADGEN, beside this interpreter, on PATH, or target/release."""
    explicit = os.environ.get("KAIROS_LOADGEN")
    candidates = [Path(explicit)] if explicit else []
    candidates.append(Path(sys.executable).parent / "kairos-loadgen")
    found = shutil.which("kairos-loadgen")
    if found:
        candidates.append(Path(found))
    candidates.append(ROOT / "target" / "release" / "kairos-loadgen")
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


@dataclass
class Load:
    """One point: open loop (`rate`) or closed loop (`concurrency`)."""

    rate: float | None = None
    concurrency: int | None = None
    model: str | None = None  # None: the server's model
    inputs: list[str] = field(default_factory=list)  # explicit NAME:DATATYPE:DIMS (native only)
    params: dict[str, Any] = field(default_factory=dict)
    slo_ms: float = 10.0


class Generator:
    """Runs points with kairos-loadgen, or the Python engine as a fallback."""

    def __init__(self, engine: str, warmup: float, duration: float, connections: int = 1) -> None:
        self.wanted = engine
        self.program = find_loadgen() if engine in ("auto", "native") else None
        if engine == "native" and self.program is None:
            raise SystemExit("frontend_compare: --engine native, but kairos-loadgen is not installed")
        self.warmup, self.duration, self.connections = warmup, duration, connections

    @property
    def native(self) -> bool:
        return self.program is not None

    def describe(self) -> dict[str, Any]:
        if self.program is None:
            why = "kairos-loadgen not found" if self.wanted == "auto" else "--engine python"
            return {"engine": "python", "warning": (
                f"{why}: the Python engine of `kairos bench` was used; it tops out near 5k req/s "
                "per core, so figures near or above that are the generator's limit, and the "
                "unknown-model refusal points are skipped")}
        version = ""
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            version = subprocess.run([str(self.program), "--version"], capture_output=True, text=True,
                                     timeout=10).stdout.strip()
        return {"engine": "native", "program": str(self.program), "version": version,
                "connections": self.connections, "workers": 1}

    def supports(self, flag: str) -> bool:
        """Whether kairos-loadgen's --help lists `flag` (its CLI is still growing)."""
        if self.program is None:
            return False
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return flag in subprocess.run([str(self.program), "--help"], capture_output=True, text=True,
                                          timeout=10).stdout
        return False

    def point(self, url: str, model: str, load: Load, server_pid: int,
              metrics_url: str | None, warmup: float | None = None,
              duration: float | None = None, extra: Sequence[str] = ()) -> dict[str, Any]:
        warmup = self.warmup if warmup is None else warmup
        duration = self.duration if duration is None else duration
        probe = Probe(server_pid, metrics_url, warmup, duration)
        probe.start()
        if self.native:
            point = self._native(url, load.model or model, load, warmup, duration, extra)
        else:
            point = self._python(url, load.model or model, load, warmup, duration)
        point["probe"] = probe.report(model)
        point.pop("latency_cdf_ms", None)
        point.pop("config", None)
        return point

    def _native(self, url: str, model: str, load: Load, warmup: float, duration: float,
                extra: Sequence[str]) -> dict[str, Any]:
        argv = [str(self.program), "--url", url, "--model", model, "--warmup", repr(warmup),
                "--duration", repr(duration), "--slo-ms", repr(load.slo_ms), "--workers", "1",
                "--connections", str(self.connections), *extra]
        for spec in load.inputs:
            argv += ["--input", spec]
        for key, value in load.params.items():
            argv += ["--param", f"{key}={value}"]
        argv += ["--rate", repr(float(load.rate))] if load.rate else ["--concurrency", str(load.concurrency or 1)]
        limit = warmup + duration + load.slo_ms / 1e3 + 60
        done = subprocess.run(argv, capture_output=True, text=True, timeout=limit, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"kairos-loadgen failed: {done.stderr.strip()[-500:]}")
        return json.loads(done.stdout)

    def _python(self, url: str, model: str, load: Load, warmup: float, duration: float) -> dict[str, Any]:
        from kairos.client.bench import BenchConfig, run

        if load.inputs:
            raise RuntimeError("explicit inputs (a refusal run) need kairos-loadgen")
        cfg = BenchConfig(url=url, model=model, concurrency=load.concurrency,
                          rates=[load.rate] if load.rate else [], duration_s=duration,
                          warmup_s=warmup, slo_ms=load.slo_ms, server_stats=False,
                          parameters=dict(load.params))
        return run(cfg)["points"][0]
