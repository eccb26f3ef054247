"""The native engine: `kairos bench --engine native` runs the `kairos-loadgen` program.

The Python engine (runner.py) tops out near 5k requests/s per core, below what a native
server answers; `kairos-loadgen` (Rust, client/loadgen/) sends the pre-encoded request
over HTTP/2 at its scheduled time from one core well past that. It runs once per point (one
rate or one concurrency) and prints one JSON point with the fields the Python engine's
points have (client/bench/stats.py `summarize`), so both print, save and plot alike.

The program is looked for in $KAIROS_LOADGEN, next to this interpreter (a venv's bin,
where `pip install .` puts it), then on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runner import BenchConfig

PROGRAM = "kairos-loadgen"
ENV_VAR = "KAIROS_LOADGEN"


class NativeEngineError(RuntimeError):
    """The native engine is missing or a run of it failed (a one-line message)."""


def find_loadgen() -> Path:
    """The kairos-loadgen program; NativeEngineError with what to do when it is missing."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        path = Path(explicit)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise NativeEngineError(f"${ENV_VAR}={explicit} is not an executable file")
    beside = Path(sys.executable).parent / PROGRAM
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(PROGRAM)
    if found:
        return Path(found)
    raise NativeEngineError(
        f"--engine native needs the {PROGRAM} program, found neither next to {sys.executable} nor on PATH: "
        f"reinstall with `pip install .`, or `cargo build --release -p {PROGRAM}` and set "
        f"{ENV_VAR}=target/release/{PROGRAM}"
    )


def _parameter_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def point_arguments(cfg: BenchConfig, rate: float | None, concurrency: int | None) -> list[str]:
    """kairos-loadgen's arguments for one point of `cfg`."""
    if cfg.burst is not None:
        raise NativeEngineError("--burst is not supported by --engine native (Poisson, constant or gamma arrivals only)")
    if cfg.metrics_url:
        raise NativeEngineError("--metrics-url is not supported by --engine native")
    argv = [
        "--url", cfg.url, "--model", cfg.model, "--rows", str(cfg.rows),
        "--warmup", repr(cfg.warmup_s), "--duration", repr(cfg.duration_s), "--seed", str(cfg.seed),
        "--slo-ms", repr(cfg.slo_ms), "--drain-s", repr(cfg.drain_s),
        "--connections", str(cfg.connections), "--workers", str(cfg.workers), "--arrival", cfg.arrival,
    ]
    if cfg.model_version:
        argv += ["--model-version", cfg.model_version]
    if cfg.input_shape is not None:
        argv += ["--input-shape", "x".join(str(d) for d in cfg.input_shape)]
    if cfg.deadline_ms is not None:
        argv += ["--deadline-ms", repr(float(cfg.deadline_ms))]
    if cfg.arrival == "gamma":
        argv += ["--cv", repr(float(cfg.cv if cfg.cv is not None else 0.0))]
    if cfg.deadline_mix:
        from .schedule import describe_mix

        argv += ["--deadline-mix", describe_mix(cfg.deadline_mix)]
    for key, value in cfg.parameters.items():
        argv += ["--param", f"{key}={_parameter_text(value)}"]
    if cfg.server_pid is not None:
        argv += ["--server-pid", str(cfg.server_pid)]
    if rate is not None:
        argv += ["--rate", repr(float(rate))]
    else:
        argv += ["--concurrency", str(concurrency or 1)]
    return argv


def run_point(cfg: BenchConfig, rate: float | None = None, concurrency: int | None = None,
              program: Path | None = None) -> dict[str, Any]:
    """One point measured by kairos-loadgen; its JSON point."""
    command = [str(program or find_loadgen()), *point_arguments(cfg, rate, concurrency)]
    limit = cfg.warmup_s + cfg.duration_s + (cfg.timeout_s or cfg.drain_s) + 60.0
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        raise NativeEngineError(f"{PROGRAM} did not finish within {limit:.0f} s") from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        raise NativeEngineError(lines[-1].removeprefix(f"{PROGRAM}: "))
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        raise NativeEngineError(f"{PROGRAM} printed no JSON point: {done.stdout[:200]!r}") from None


def run(cfg: BenchConfig) -> dict[str, Any]:
    """All points of a run, shaped as the Python engine's result."""
    from .runner import _config_json  # the same config block, whichever engine ran

    program = find_loadgen()
    config = {**_config_json(cfg), "loop": "native", "engine": "native", "program": str(program),
              "connections": cfg.connections, "workers": cfg.workers}
    config["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if cfg.concurrency is not None:
        points = [run_point(cfg, concurrency=cfg.concurrency, program=program)]
    else:
        points = [run_point(cfg, rate=rate, program=program) for rate in cfg.rates]
    return {"config": config, "points": points}
