"""Batch mode side by side: raw onnxruntime, `kairos batch` alone, online alone, and mixed.

One run, one machine, one server process: the server is pinned to CPU 0 (`taskset -c 0`),
every client (the batch job and the online load generator) to CPU 1, raw onnxruntime to
CPU 0 with the server's thread count (`intra_op_threads: 1`). Model `mlp256`
(`build_mlp((256, 1024, 1024, 10), seed=256)`), SLO 10 ms.

1. raw: in-process onnxruntime rows/s per batch size; the best is the reference.
2. batch alone: `kairos batch` over an .npy dataset per rows-per-request; rows/s.
3. online peak: the peak goodput at the SLO, measured closed loop (`kairos bench
   --concurrency C`, 1 row per request; the best goodput over the concurrencies). A
   closed loop has no offered rate, so this is the one place where the load below is
   set from a goodput: the scheduling benchmarks' peak is open loop, with a peak rate
   (bench/scheduling_common.py, PEAK_DEFINITION).
4. online alone / mixed, alternated `--repeats` times: Poisson online load offered at half
   that peak goodput (`kairos bench --rate`), alone and with a batch job running; online p99 and goodput,
   and the batch job's rows/s sampled from its checkpoint over the same window.

    flock /tmp/kairos-bench.lock .venv/bin/python bench/batch_mode.py \\
        --out bench/results/batch_mode.json

Medians are quoted; the JSON keeps every repeat. The scheduler's view (executed piece
sizes, slo/best batch size) is saved after each phase to explain the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from kairos.client import InferenceClient  # noqa: E402
from kairos.client.batch.checkpoint import checkpoint_path  # noqa: E402
from kairos.server.demo_models import build_mlp  # noqa: E402
from kairos_testing.models import write_model  # noqa: E402
from kairos_testing.server import running_server  # noqa: E402

MODEL = "mlp256"
SIZES = (256, 1024, 1024, 10)
SLO_MS = 10.0
PYTHON = sys.executable
CLIENT_CPU = "1"
SERVER_CPU = 0

RAW_SCRIPT = """
import json, sys, time
import numpy as np, onnxruntime as ort
path, sizes, seconds = sys.argv[1], [int(s) for s in sys.argv[2].split(",")], float(sys.argv[3])
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
result = {}
for rows in sizes:
    x = np.random.default_rng(0).standard_normal((rows, 256), dtype=np.float32)
    for _ in range(3):
        session.run(None, {"input": x})
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {"input": x})
        done += rows
    result[rows] = done / (time.perf_counter() - start)
print(json.dumps(result))
"""


def model_config(max_batch_size: int, max_queued_rows: int, execution: str = "auto") -> str:
    return (
        f"max_batch_size: {max_batch_size}\nslo_ms: {SLO_MS:g}\nintra_op_threads: 1\n"
        f"inter_op_threads: 1\nscheduling:\n  max_queued_rows: {max_queued_rows}\n"
        f"  execution: {execution}\n"
    )


def pinned(cpu: str, *command: str) -> list[str]:
    return ["taskset", "-c", cpu, *command]


def raw_onnxruntime(model_path: Path, sizes: list[int], seconds: float) -> dict[int, float]:
    out = subprocess.run(
        pinned(str(SERVER_CPU), PYTHON, "-c", RAW_SCRIPT, str(model_path),
               ",".join(map(str, sizes)), str(seconds)),
        check=True, capture_output=True, text=True,
    )
    return {int(k): v for k, v in json.loads(out.stdout).items()}


def batch_command(address: str, data: Path, out: Path, rows: int, in_flight: int,
                  summary: Path) -> list[str]:
    return pinned(
        CLIENT_CPU, PYTHON, "-m", "kairos.client.batch", MODEL, "-i", str(data), "-o", str(out),
        "--url", address, "--rows-per-request", str(rows), "--in-flight", str(in_flight),
        "--no-progress", "--checkpoint-interval-s", "0.2", "--summary-json", str(summary),
    )


def batch_alone(address: str, data: Path, work: Path, rows: int, in_flight: int) -> dict:
    out, summary = work / "alone.npy", work / "alone.json"
    subprocess.run(batch_command(address, data, out, rows, in_flight, summary), check=True,
                   capture_output=True)
    out.unlink()
    return json.loads(summary.read_text())


def bench(address: str, *load: str, duration: float, warmup: float, work: Path) -> dict:
    """One `kairos bench` point (1 row per request, deadline = SLO)."""
    target = work / "bench.json"
    subprocess.run(
        pinned(CLIENT_CPU, PYTHON, "-m", "kairos.client.bench", "--url", address, "--model", MODEL,
               *load, "--duration", str(duration), "--warmup", str(warmup),
               "--slo-ms", str(SLO_MS), "--seed", "1", "--json", str(target)),
        check=True, capture_output=True,
    )
    point = json.loads(target.read_text())["points"][0]
    point.pop("latency_cdf_ms", None)
    return point


def rows_done(out: Path) -> tuple[float, int]:
    try:
        return time.monotonic(), json.loads(checkpoint_path(out).read_text())["rows_done"]
    except (OSError, ValueError, KeyError):
        return time.monotonic(), 0


def mixed(address: str, data: Path, work: Path, rows: int, in_flight: int, rate: float,
          duration: float, warmup: float) -> dict:
    """Online Poisson load while a batch job runs; batch rows/s over the online window."""
    out = work / "mixed.npy"
    for stale in (checkpoint_path(out), out):
        stale.unlink(missing_ok=True)
    job = subprocess.Popen(batch_command(address, data, out, rows, in_flight, work / "m.json"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(1.5)  # the job is connected and streaming
        t0, r0 = rows_done(out)
        point = bench(address, "--rate", f"{rate:.1f}", duration=duration, warmup=warmup, work=work)
        t1, r1 = rows_done(out)
        finished = job.poll() is not None
    finally:
        job.send_signal(signal.SIGTERM)
        job.wait(30)
    for stale in (checkpoint_path(out), out):
        stale.unlink(missing_ok=True)
    subprocess.run(["rm", "-rf", str(out) + ".kairos-parts"], check=False)
    return {"online": point, "batch_rows_per_s": (r1 - r0) / (t1 - t0),
            "batch_finished_early": finished}


def scheduler_view(address: str) -> dict:
    with InferenceClient(address) as client:
        config = client.model_config(MODEL)
    state = json.loads(config.parameters["kairos.scheduler"].string_value)
    keep = ("slo_batch_size", "best_batch_size", "online_budget_ms", "batch_sizes", "counts")
    return {key: state.get(key) for key in keep}


WHAT_IF = """
import os
floor = os.environ.get("KAIROS_BENCH_BUDGET_FLOOR_S")
if floor:
    from kairos.server.scheduler import core

    original = core.SchedulerCore.admit

    def admit(self, request, now):
        try:
            return original(self, request, now)
        finally:
            self.online_budget = max(self.online_budget, float(floor))

    core.SchedulerCore.admit = admit
"""


def what_if_env(work: Path, floor_ms: float | None) -> dict[str, str] | None:
    """Server environment for the what-if: a sitecustomize that floors the online budget."""
    if floor_ms is None:
        return None
    folder = work / "what-if"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(WHAT_IF)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "KAIROS_BENCH_BUDGET_FLOOR_S": str(floor_ms / 1e3)}


def mixed_only(args: argparse.Namespace, repo: Path, data: Path, work: Path,
               patch_env: dict[str, str] | None) -> int:
    """Only the mixed run, at a given online rate, per rows-per-request (a fresh server each):
    the quick reproduction of a mixed-run finding."""
    for rows in [int(r) for r in args.rows_per_request.split(",")]:
        with running_server(repo, cpu=SERVER_CPU, env=patch_env) as server:
            run = mixed(server.address, data, work, rows, args.in_flight, args.mixed_only_rate,
                        args.duration, args.warmup)
            view = scheduler_view(server.address)
        online = run["online"]
        print(f"{rows} rows/request: online goodput {online['goodput']}/s of "
              f"{args.mixed_only_rate}/s offered, p99 {online['latency_ms']['p99']} ms, errors "
              f"{ {k: e['count'] for k, e in online['errors'].items()} }, admitted by the "
              f"scheduler {view['counts']['admitted']}, batch {run['batch_rows_per_s']:,.0f} rows/s",
              flush=True)
    subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


def write_dataset(path: Path, rows: int) -> None:
    """Random FP32 [rows, 256], written in slices (memory stays small)."""
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, 256))
    rng = np.random.default_rng(0)
    for start in range(0, rows, 65536):
        stop = min(start + 65536, rows)
        x[start:stop] = rng.standard_normal((stop - start, 256), dtype=np.float32)
    x.flush()


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="dataset rows (mixed runs)")
    parser.add_argument("--alone-rows", type=int, default=200_000, help="dataset rows (alone runs)")
    parser.add_argument("--raw-sizes", default="64,128,256,512,1024,2048")
    parser.add_argument("--raw-seconds", type=float, default=1.5)
    parser.add_argument("--rows-per-request", default="256,1024,4096")
    parser.add_argument("--in-flight", type=int, default=3)
    parser.add_argument("--max-batch-size", type=int, default=256)
    parser.add_argument("--max-queued-rows", type=int, default=16384)
    parser.add_argument("--peak-concurrency", default="2,4,8,16",
                        help="closed-loop concurrencies; the best goodput is the peak")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--what-if-budget-floor-ms", type=float, default=None,
                        help="what-if, not Kairos as shipped: the server's scheduler keeps its "
                        "online budget (which sizes batch pieces) at least this large")
    parser.add_argument("--execution", default="auto", choices=("auto", "inline", "thread"),
                        help="the model's scheduling.execution (auto runs short pieces inline)")
    parser.add_argument("--mixed-only-rate", type=float, default=None,
                        help="only the mixed run at this online rate (req/s), per --rows-per-request")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/batch_mode.json")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="kairos-batch-bench-"))
    repo = work / "repo"
    model_path = write_model(repo, MODEL, build_mlp(SIZES, seed=256, name=MODEL),
                             config=model_config(args.max_batch_size, args.max_queued_rows,
                                                 args.execution))
    data, small = work / "x.npy", work / "x_small.npy"
    write_dataset(data, args.rows)
    write_dataset(small, args.alone_rows)
    # A fresh server per phase and per online/mixed run: the scheduler keeps the tightest
    # online budget it has ever seen, so one overloaded phase would shrink every later batch
    # piece to a row (see BENCHMARKS.md); fresh servers keep the runs independent.
    patch_env = what_if_env(work, args.what_if_budget_floor_ms)
    result: dict[str, Any] = {"config": {**vars(args), "out": str(args.out)}, "cpus": os.cpu_count()}

    if args.mixed_only_rate:
        return mixed_only(args, repo, data, work, patch_env)

    # Raw onnxruntime and batch alone alternate, so both medians see the same machine.
    raw_sizes = [int(s) for s in args.raw_sizes.split(",")]
    raw_runs: list[dict[int, float]] = []
    alone: dict[int, list[dict]] = {}
    with running_server(repo, cpu=SERVER_CPU, env=patch_env) as server:
        for _ in range(args.repeats):
            raw_runs.append(raw_onnxruntime(model_path, raw_sizes, args.raw_seconds))
            for rows in [int(r) for r in args.rows_per_request.split(",")]:
                alone.setdefault(rows, []).append(
                    batch_alone(server.address, small, work, rows, args.in_flight))
        result["batch_alone_scheduler"] = scheduler_view(server.address)
    raw = {size: median([run[size] for run in raw_runs]) for size in raw_sizes}
    best_raw_size = max(raw, key=raw.get)
    result["raw"] = {"runs": raw_runs, "median": raw, "best_size": best_raw_size}
    print(f"raw onnxruntime (1 thread): {raw[best_raw_size]:,.0f} rows/s at batch {best_raw_size}; "
          + ", ".join(f"{s}: {r:,.0f}" for s, r in raw.items()), flush=True)
    alone_rate = {rows: median([s["rows_per_s"] for s in runs]) for rows, runs in alone.items()}
    best_rows = max(alone_rate, key=alone_rate.get)
    result["batch_alone"] = {"runs": alone, "median_rows_per_s": alone_rate,
                             "best_rows_per_request": best_rows,
                             "ratio_to_raw": alone_rate[best_rows] / raw[best_raw_size]}
    print(f"batch alone: {alone_rate[best_rows]:,.0f} rows/s at {best_rows} rows/request "
          f"= {alone_rate[best_rows] / raw[best_raw_size]:.2f}x raw; "
          + ", ".join(f"{r}: {v:,.0f}" for r, v in alone_rate.items()), flush=True)

    # Peak = the best goodput over closed-loop concurrencies: one overloaded concurrency
    # alone can have most answers late and a goodput far below the server's capacity.
    points = []
    with running_server(repo, cpu=SERVER_CPU, env=patch_env) as server:
        for concurrency in args.peak_concurrency.split(","):
            points.append(bench(server.address, "--concurrency", concurrency,
                                duration=args.duration / 2, warmup=args.warmup, work=work))
    peak = max(points, key=lambda point: point["goodput"])
    rate = peak["goodput"] / 2
    result["online_peak"] = peak
    result["online_peak_points"] = points
    print(f"online peak: goodput {peak['goodput']:.0f}/s, throughput {peak['throughput']:.0f}/s"
          f" -> Poisson rate {rate:.0f}/s", flush=True)

    online, mix = [], []
    for _ in range(args.repeats):
        with running_server(repo, cpu=SERVER_CPU, env=patch_env) as server:
            online.append(bench(server.address, "--rate", f"{rate:.1f}", duration=args.duration,
                                warmup=args.warmup, work=work))
            online[-1]["scheduler"] = scheduler_view(server.address)
        with running_server(repo, cpu=SERVER_CPU, env=patch_env) as server:
            mix.append(mixed(server.address, data, work, best_rows, args.in_flight, rate,
                             args.duration, args.warmup))
            mix[-1]["scheduler"] = scheduler_view(server.address)
        print(f"  online alone p99 {online[-1]['latency_ms']['p99']:.2f} ms goodput "
              f"{online[-1]['goodput']:.0f}/s | mixed p99 {mix[-1]['online']['latency_ms']['p99']:.2f}"
              f" ms goodput {mix[-1]['online']['goodput']:.0f}/s batch "
              f"{mix[-1]['batch_rows_per_s']:,.0f} rows/s (slo_batch_size "
              f"{mix[-1]['scheduler']['slo_batch_size']})", flush=True)

    summary = {
        "online_alone_p99_ms": median([p["latency_ms"]["p99"] for p in online]),
        "online_alone_goodput": median([p["goodput"] for p in online]),
        "mixed_p99_ms": median([m["online"]["latency_ms"]["p99"] for m in mix]),
        "mixed_goodput": median([m["online"]["goodput"] for m in mix]),
        "mixed_batch_rows_per_s": median([m["batch_rows_per_s"] for m in mix]),
        "batch_alone_rows_per_s": alone_rate[best_rows],
    }
    summary["p99_ratio"] = summary["mixed_p99_ms"] / summary["online_alone_p99_ms"]
    summary["goodput_ratio"] = summary["mixed_goodput"] / summary["online_alone_goodput"]
    summary["batch_share"] = summary["mixed_batch_rows_per_s"] / summary["batch_alone_rows_per_s"]
    result.update(online_alone=online, mixed=mix, summary=summary)
    print(json.dumps(summary, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
