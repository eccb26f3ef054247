"""Where Kairos's server CPU goes per request at (near) peak load on `mlp256`.

Kairos on core 0, this generator on core 1 at `--rate` req/s (open loop, 1 row,
SLO 10 ms), py-spy sampling the server without stopping it (`--nonblocking`,
Python frames only: time inside gRPC's C core or onnxruntime shows on the
Python frame that called it). Each sample is charged to the innermost frame
that belongs to a known part (gRPC, transport, codec, scheduler, backend,
metrics, asyncio, ...), then scaled by the server CPU per request measured
in the same window, giving microseconds per request per part.

    flock /tmp/kairos-bench.lock taskset -c 1 .venv/bin/python bench/scheduling_profile.py --rate 1200

Writes bench/results/scheduling_profile.json and scheduling_profile.raw (py-spy's raw
collapsed stacks, for flamegraph.pl or speedscope).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from kairos.client.bench import run
from scheduling_common import (
    PENDING_LIMIT_ARGS,
    RESULTS,
    add_kairos_args,
    config,
    kairos_server,
    measured_peak_rate,
    mlp256_file,
    models_folder,
    pin_generator,
    save,
    use_kairos_args,
    wait_ready,
    write_model,
)

MODEL = "mlp256"
# (part, substring of "function (file:line)") checked from the innermost frame outwards.
PARTS = (
    ("onnxruntime run", "onnxruntime/"),
    ("backend", "server/backend/"),
    ("scheduler", "server/scheduler/"),
    ("codec (numpy<->protobuf)", "protos/codec"),
    ("transport", "server/transport/"),
    ("metrics", "server/metrics/"),
    ("metrics", "prometheus_client/"),
    ("statistics", "server/statistics"),
    ("validation", "server/validation"),
    ("gRPC (grpc.aio + C core)", "grpc/"),
    # grpc.aio's server runs in Cython, invisible to py-spy: its time lands on the loop's frames.
    ("event loop + gRPC core (Cython)", "asyncio/"),
    ("event loop + gRPC core (Cython)", "uvloop/"),
    ("executor threads", "concurrent/futures"),
    # A thread whose only Python frame is Thread.run is gRPC's completion-queue poller
    # (Cython), busy or waiting: py-spy cannot tell which.
    ("gRPC poller thread (Cython; busy or waiting)", "threading.py"),
)
# The event loop waiting in its selector: idle, not CPU.
IDLE_LEAVE = "select (selectors.py"


def part_of(stack: list[str]) -> str:
    for frame in reversed(stack):
        for part, marker in PARTS:
            if marker in frame:
                return part
    return "other"


def attribute(raw: Path) -> tuple[Counter, Counter, int]:
    """Samples per part, and per innermost function, from py-spy's raw output."""
    parts: Counter = Counter()
    leaves: Counter = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text:
            continue
        count = int(count_text)
        stack = stack_text.split(";")
        if IDLE_LEAVE in stack[-1]:
            continue
        parts[part_of(stack)] += count
        leaves[stack[-1]] += count
        total += count
    return parts, leaves, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float,
                        help="offered req/s (default: the peak rate in bench/results/scheduling_floor.json; "
                        "refuses to guess when that file is missing)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--refused", action="store_true",
                        help="profile the refusal path: every request carries timeout=1 us and no "
                        "gRPC deadline, so admission refuses it (writes scheduling_profile_refusal.json)")
    parser.add_argument("--from-raw", action="store_true",
                        help="recompute the attribution from the saved raw profile, without running")
    add_kairos_args(parser, PENDING_LIMIT_ARGS)
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"))
    args = parser.parse_args()
    if args.from_raw:  # re-attribute an earlier run (e.g. after changing PARTS)
        name = "scheduling_profile_refusal" if args.refused else "scheduling_profile"
        earlier = json.loads((RESULTS / f"{name}.json").read_text())
        args.rate = earlier["rate"]
        report(name, RESULTS / f"{name}.raw", args, earlier["point"])
        return
    if args.rate is None:
        args.rate = measured_peak_rate("--rate")
    pin_generator()
    with tempfile.TemporaryDirectory(prefix="kairos-bench-repo-") as tmp:
        repo = Path(tmp)
        write_model(repo, MODEL, mlp256_file(models_folder()), "max_batch_size: 64\nslo_ms: 10\n")
        with kairos_server(repo, *use_kairos_args(args.kairos_args)) as kairos:
            wait_ready(kairos, MODEL)  # a fresh server: its L(b) has not been disturbed yet
            name = "scheduling_profile_refusal" if args.refused else "scheduling_profile"
            raw = RESULTS / f"{name}.raw"
            warmup = 2.0
            spy = subprocess.Popen(
                ["taskset", "-c", "1", args.py_spy, "record", "--nonblocking", "--pid", str(kairos.pid),
                 "-r", "250", "-d", str(int(warmup + args.duration)), "-f", "raw", "-o", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            extra: dict[str, Any] = {"deadline_ms": 0, "parameters": {"timeout": 1}} if args.refused else {}
            point = run(config(kairos, MODEL, rates=[args.rate], duration_s=args.duration,
                               warmup_s=warmup, **extra))["points"][0]
            spy.wait(60)
    report(name, raw, args, point)


def report(name: str, raw: Path, args: argparse.Namespace, point: dict[str, Any]) -> None:
    """Samples per part scaled to the server CPU per request measured in the same window."""
    parts, leaves, total = attribute(raw)
    per_request = point.get("server_cpu", {}).get("cpu_us_per_request") or 0.0
    share = {part: round(n / total, 4) for part, n in parts.most_common()}
    out: dict[str, Any] = {
        "rate": args.rate, "refused": args.refused, "samples": total,
        "server_cpu_us_per_request": per_request,
        "server_cpu_util": point.get("server_cpu", {}).get("cpu_util"),
        "throughput": point["throughput"], "goodput": point["goodput"],
        "errors": point["errors"],
        "share": share,
        "us_per_request": {part: round(s * per_request, 1) for part, s in share.items()},
        "top_functions": [(f, round(n / total, 4)) for f, n in leaves.most_common(25)],
        "point": point,
    }
    save(name, out)
    print(f"server {per_request} us/request at {point['throughput']}/s answered:")
    for part, us in out["us_per_request"].items():
        print(f"  {part:30s} {us:7.1f} us  ({share[part] * 100:.1f}%)")


if __name__ == "__main__":
    main()
