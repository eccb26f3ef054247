"""Batch mode on the whole machine: raw onnxruntime, `kairos batch` alone, online alone, mixed,
and how fast online work gets the cores back.

Layout: the server is not pinned (batch pieces may use every core); raw onnxruntime runs in
a process of its own, not pinned; the `kairos batch` client runs unpinned beside the server
with `--low-priority` (as a job started on the server's own machine should; what it costs
is part of batch mode here); the online load generator (`kairos bench
--engine native`, the Rust generator) is pinned to core LOADGEN_CPU in every online phase,
alone and mixed alike. Model `mlp256` (`build_mlp((256, 1024, 1024, 10), seed=256)`), SLO
10 ms, the model config in `model_config()` (`intra_op_threads: 1`; `batch_threads` left at
0: one batch piece per core).

1. raw: in-process onnxruntime rows/s per batch size, for one session with 1 and with 2
   intra-op threads, and for 2 runs side by side on one 1-thread session (two Python
   threads; what batch mode does). The reference is the best thread count and batch size
   (1 or 2 intra-op threads); the side-by-side best is reported too.
2. batch alone: `kairos batch` over an .npy dataset per rows-per-request; whole-job rows/s
   from its summary. Raw and batch alone alternate, `--repeats` times.
3. online peak (bench/scheduling_common.py's PEAK_DEFINITION): the highest goodput at the
   SLO over an open-loop (Poisson) sweep of the offered rate, 1 row per request, rates
   growing by `--peak-step` until goodput falls below 90% of the offered rate twice; the
   peak rate is the offered rate of that point, and half of it is step 4's rate.
4. online alone / mixed, alternated `--repeats` times on fresh servers: Poisson online load
   at half the peak, alone and with a batch job running; online p99 and goodput, and the
   job's rows/s read from its checkpoint over the same window.
5. give-back, alternated `--repeats` times on fresh servers, each measured on an idle
   server and during a batch job (whose pieces then fill every core):
   - the OS: a normal-priority process sleeps WAKE_SLEEPS times for 2-8 ms; how late it
     wakes (the time to get a core back from the pieces, plus the timer's own lateness,
     which the idle runs measure);
   - an online request: sparse online requests (Poisson at `--sparse-rate`, 1 row, so each
     one arrives alone), their latency.

    flock /tmp/kairos-bench.lock .venv/bin/python bench/batch_mode.py \\
        --out bench/results/batch_mode.json --write

Medians are quoted; the JSON keeps every repeat. `--write` replaces this script's generated
section of BENCHMARKS.md with the figures of the run.
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
LOADGEN_CPU = "1"
BEGIN = "<!-- batch-mode:start (written by bench/batch_mode.py) -->"
END = "<!-- batch-mode:end -->"
TITLE = "## Batch mode on the whole machine (`kairos batch` vs raw onnxruntime, beside online load)"

WAKE_SLEEPS = 2000
WAKE_SCRIPT = """
import json, random, sys, time
rng, late = random.Random(1), []
for _ in range(int(sys.argv[1])):
    pause = rng.uniform(0.002, 0.008)
    start = time.perf_counter()
    time.sleep(pause)
    late.append(time.perf_counter() - start - pause)
late.sort()
print(json.dumps({q: late[min(len(late) - 1, int(len(late) * float(q)))] * 1e3
                  for q in ("0.5", "0.99", "0.999")}))
"""

RAW_SCRIPT = """
import json, sys, threading, time
import numpy as np, onnxruntime as ort
path, sizes, seconds = sys.argv[1], [int(s) for s in sys.argv[2].split(",")], float(sys.argv[3])

def session(threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

def rate(session, rows, runners):
    x = np.random.default_rng(0).standard_normal((rows, 256), dtype=np.float32)
    for _ in range(3):
        session.run(None, {"input": x})
    done, stop = [0] * runners, time.perf_counter() + seconds
    def work(i):
        while time.perf_counter() < stop:
            session.run(None, {"input": x})
            done[i] += rows
    threads = [threading.Thread(target=work, args=(i,)) for i in range(runners)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - start)

one, two = session(1), session(2)
result = {"1 thread": {}, "2 threads": {}, "2 runs side by side": {}}
for rows in sizes:
    result["1 thread"][rows] = rate(one, rows, 1)
    result["2 threads"][rows] = rate(two, rows, 1)
    result["2 runs side by side"][rows] = rate(one, rows, 2)
print(json.dumps(result))
"""


def model_config(max_batch_size: int, max_queued_rows: int) -> str:
    return (
        f"max_batch_size: {max_batch_size}\nslo_ms: {SLO_MS:g}\nintra_op_threads: 1\n"
        f"inter_op_threads: 1\nscheduling:\n  max_queued_rows: {max_queued_rows}\n"
    )


def raw_onnxruntime(model_path: Path, sizes: list[int], seconds: float) -> dict[str, dict[int, float]]:
    out = subprocess.run(
        [PYTHON, "-c", RAW_SCRIPT, str(model_path), ",".join(map(str, sizes)), str(seconds)],
        check=True, capture_output=True, text=True,
    )
    return {kind: {int(k): v for k, v in rates.items()} for kind, rates in json.loads(out.stdout).items()}


def batch_command(address: str, data: Path, out: Path, rows: int, in_flight: int,
                  summary: Path) -> list[str]:
    return [
        PYTHON, "-m", "kairos.client.batch", MODEL, "-i", str(data), "-o", str(out),
        "--url", address, "--rows-per-request", str(rows), "--in-flight", str(in_flight),
        "--no-progress", "--checkpoint-interval-s", "0.2", "--summary-json", str(summary),
        "--low-priority",
    ]


def batch_alone(address: str, data: Path, work: Path, rows: int, in_flight: int) -> dict:
    out, summary = work / "alone.npy", work / "alone.json"
    subprocess.run(batch_command(address, data, out, rows, in_flight, summary), check=True,
                   capture_output=True)
    out.unlink()
    return json.loads(summary.read_text())


def bench(address: str, *load: str, duration: float, warmup: float, work: Path) -> dict:
    """One `kairos bench --engine native` point (1 row per request, deadline = SLO)."""
    target = work / "bench.json"
    subprocess.run(
        ["taskset", "-c", LOADGEN_CPU, PYTHON, "-m", "kairos.client.bench", "--engine", "native",
         "--url", address, "--model", MODEL, *load, "--duration", str(duration),
         "--warmup", str(warmup), "--slo-ms", str(SLO_MS), "--seed", "1", "--json", str(target)],
        check=True, capture_output=True,
    )
    point = json.loads(target.read_text())["points"][0]
    point.pop("latency_cdf_ms", None)
    return point


def wake_lateness() -> dict[str, float]:
    """How late a normal-priority process wakes from short sleeps (ms, by quantile)."""
    out = subprocess.run([PYTHON, "-c", WAKE_SCRIPT, str(WAKE_SLEEPS)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def during_batch(address: str, data: Path, work: Path, rows: int, in_flight: int, measure):
    """`measure()` while a batch job runs; (its result, the job's rows/s meanwhile)."""
    out = work / "during.npy"
    for stale in (checkpoint_path(out), out):
        stale.unlink(missing_ok=True)
    job = subprocess.Popen(batch_command(address, data, out, rows, in_flight, work / "d.json"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(1.5)  # the job is connected and streaming
        t0, r0 = rows_done(out)
        result = measure()
        t1, r1 = rows_done(out)
    finally:
        job.send_signal(signal.SIGTERM)
        job.wait(30)
    for stale in (checkpoint_path(out), out):
        stale.unlink(missing_ok=True)
    subprocess.run(["rm", "-rf", str(out) + ".kairos-parts"], check=False)
    return result, (r1 - r0) / (t1 - t0)


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
    keep = ("slo_batch_size", "best_batch_size", "online_budget_ms", "batch_sizes", "counts",
            "background_pieces", "background_piece_rows", "background_batches", "inline_batches",
            "thread_batches")
    return {key: state.get(key) for key in keep}


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


def measure_raw_and_alone(args, repo: Path, model_path: Path, small: Path, work: Path) -> dict:
    """Steps 1 and 2, alternating, so both medians see the same machine."""
    raw_sizes = [int(s) for s in args.raw_sizes.split(",")]
    raw_runs: list[dict] = []
    alone: dict[int, list[dict]] = {}
    with running_server(repo) as server:
        for _ in range(args.repeats):
            raw_runs.append(raw_onnxruntime(model_path, raw_sizes, args.raw_seconds))
            for rows in [int(r) for r in args.rows_per_request.split(",")]:
                alone.setdefault(rows, []).append(
                    batch_alone(server.address, small, work, rows, args.in_flight))
        scheduler = scheduler_view(server.address)
    raw = {kind: {size: median([run[kind][size] for run in raw_runs]) for size in raw_sizes}
           for kind in raw_runs[0]}
    best = {kind: max(rates, key=rates.get) for kind, rates in raw.items()}
    reference = max(("1 thread", "2 threads"), key=lambda kind: raw[kind][best[kind]])
    alone_rate = {rows: median([s["rows_per_s"] for s in runs]) for rows, runs in alone.items()}
    best_rows = max(alone_rate, key=alone_rate.get)
    side = raw["2 runs side by side"][best["2 runs side by side"]]
    return {
        "raw": {"runs": raw_runs, "median": raw, "best_size": best, "reference": reference,
                "reference_rows_per_s": raw[reference][best[reference]],
                "side_by_side_rows_per_s": side},
        "batch_alone": {"runs": alone, "median_rows_per_s": alone_rate,
                        "best_rows_per_request": best_rows,
                        "ratio_to_raw": alone_rate[best_rows] / raw[reference][best[reference]],
                        "ratio_to_side_by_side": alone_rate[best_rows] / side,
                        "scheduler": scheduler},
    }


def measure_give_back(args, repo: Path, data: Path, work: Path, rows: int) -> dict:
    """Step 5: the OS's wake-up lateness and sparse online requests, idle vs during a job."""
    runs: dict[str, list] = {"wake_idle": [], "wake_busy": [], "online_idle": [], "online_busy": []}
    rates = []

    def sparse(address: str) -> dict:
        return bench(address, "--rate", f"{args.sparse_rate:g}", duration=args.duration,
                     warmup=args.warmup, work=work)

    for _ in range(args.repeats):
        with running_server(repo) as server:
            runs["wake_idle"].append(wake_lateness())
            runs["online_idle"].append(sparse(server.address))
        with running_server(repo) as server:
            wake, rate = during_batch(server.address, data, work, rows, args.in_flight,
                                      wake_lateness)
            runs["wake_busy"].append(wake)
            point, rate_online = during_batch(server.address, data, work, rows, args.in_flight,
                                              lambda address=server.address: sparse(address))
            runs["online_busy"].append(point)
            rates += [rate, rate_online]
    summary = {"batch_rows_per_s": median(rates)}
    for key, quantile in (("p50", "0.5"), ("p99", "0.99"), ("p99.9", "0.999")):
        idle = median([run[quantile] for run in runs["wake_idle"]])
        busy = median([run[quantile] for run in runs["wake_busy"]])
        summary[f"wake_{key}_ms"] = {"idle": idle, "busy": busy, "added": busy - idle}
    for key in ("p50", "p99"):
        idle = median([p["latency_ms"][key] for p in runs["online_idle"]])
        busy = median([p["latency_ms"][key] for p in runs["online_busy"]])
        summary[f"online_{key}_ms"] = {"idle": idle, "busy": busy, "added": busy - idle}
    return {**runs, "summary": summary}


def measure_peak(args, repo: Path, work: Path) -> tuple[dict, list[dict]]:
    """Step 3: an open-loop sweep up from `--peak-start`; the point of the highest goodput."""
    points: list[dict] = []
    rate, misses = args.peak_start, 0
    with running_server(repo) as server:
        while misses < 2 and len(points) < 16:
            point = bench(server.address, "--rate", f"{rate:.0f}", duration=args.duration / 2,
                          warmup=args.warmup, work=work)
            point["offered"] = rate
            points.append(point)
            misses = misses + 1 if point["goodput"] < 0.9 * rate else 0
            rate *= args.peak_step
    return max(points, key=lambda point: point["goodput"]), points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="dataset rows (mixed runs)")
    parser.add_argument("--alone-rows", type=int, default=400_000, help="dataset rows (alone runs)")
    parser.add_argument("--raw-sizes", default="64,128,256,512,1024,2048")
    parser.add_argument("--raw-seconds", type=float, default=1.0)
    parser.add_argument("--rows-per-request", default="1024,4096")
    parser.add_argument("--in-flight", type=int, default=3)
    parser.add_argument("--max-batch-size", type=int, default=256)
    parser.add_argument("--max-queued-rows", type=int, default=16384)
    parser.add_argument("--peak-start", type=float, default=2000.0,
                        help="first offered rate (req/s) of the peak sweep")
    parser.add_argument("--peak-step", type=float, default=1.25,
                        help="factor between the offered rates of the peak sweep")
    parser.add_argument("--sparse-rate", type=float, default=50.0,
                        help="online req/s of the give-back measurement (step 5)")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/batch_mode.json")
    parser.add_argument("--write", action="store_true", help="replace the BENCHMARKS.md section")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="kairos-batch-bench-"))
    repo = work / "repo"
    model_path = write_model(repo, MODEL, build_mlp(SIZES, seed=256, name=MODEL),
                             config=model_config(args.max_batch_size, args.max_queued_rows))
    data, small = work / "x.npy", work / "x_small.npy"
    write_dataset(data, args.rows)
    write_dataset(small, args.alone_rows)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result: dict[str, Any] = {"config": {**vars(args), "out": str(args.out)},
                              "cpus": os.cpu_count(), "started": started, "commit": _commit()}

    result.update(measure_raw_and_alone(args, repo, model_path, small, work))
    raw, alone = result["raw"], result["batch_alone"]
    best_rows = alone["best_rows_per_request"]
    print(f"raw onnxruntime: {raw['reference_rows_per_s']:,.0f} rows/s ({raw['reference']}, batch "
          f"{raw['best_size'][raw['reference']]}); 2 runs side by side "
          f"{raw['side_by_side_rows_per_s']:,.0f}", flush=True)
    print(f"batch alone: {alone['median_rows_per_s'][best_rows]:,.0f} rows/s at {best_rows} "
          f"rows/request = {alone['ratio_to_raw']:.2f}x raw", flush=True)

    # A fresh server per phase and per online/mixed run keeps the runs independent.
    peak, points = measure_peak(args, repo, work)
    rate = peak["offered"] / 2
    result["online_peak"] = peak
    result["online_peak_points"] = points
    print(f"online peak: goodput {peak['goodput']:.0f}/s at {peak['offered']:.0f}/s offered "
          f"-> Poisson rate {rate:.0f}/s", flush=True)

    online, mix = [], []
    for _ in range(args.repeats):
        with running_server(repo) as server:
            online.append(bench(server.address, "--rate", f"{rate:.1f}", duration=args.duration,
                                warmup=args.warmup, work=work))
            online[-1]["scheduler"] = scheduler_view(server.address)
        with running_server(repo) as server:
            mix.append(mixed(server.address, data, work, best_rows, args.in_flight, rate,
                             args.duration, args.warmup))
            mix[-1]["scheduler"] = scheduler_view(server.address)
        print(f"  online alone p99 {online[-1]['latency_ms']['p99']:.2f} ms goodput "
              f"{online[-1]['goodput']:.0f}/s | mixed p99 {mix[-1]['online']['latency_ms']['p99']:.2f}"
              f" ms goodput {mix[-1]['online']['goodput']:.0f}/s batch "
              f"{mix[-1]['batch_rows_per_s']:,.0f} rows/s", flush=True)
    summary = {
        "online_alone_p99_ms": median([p["latency_ms"]["p99"] for p in online]),
        "online_alone_goodput": median([p["goodput"] for p in online]),
        "mixed_p99_ms": median([m["online"]["latency_ms"]["p99"] for m in mix]),
        "mixed_goodput": median([m["online"]["goodput"] for m in mix]),
        "mixed_batch_rows_per_s": median([m["batch_rows_per_s"] for m in mix]),
        "batch_alone_rows_per_s": alone["median_rows_per_s"][best_rows],
    }
    summary["p99_ratio"] = summary["mixed_p99_ms"] / summary["online_alone_p99_ms"]
    summary["goodput_ratio"] = summary["mixed_goodput"] / summary["online_alone_goodput"]
    summary["batch_share"] = summary["mixed_batch_rows_per_s"] / summary["batch_alone_rows_per_s"]
    result.update(online_alone=online, mixed=mix, summary=summary)

    result["give_back"] = measure_give_back(args, repo, data, work, best_rows)
    print(json.dumps({**summary, "give_back": result["give_back"]["summary"]}, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    if args.write:
        command = " ".join(["flock /tmp/kairos-bench.lock .venv/bin/python bench/batch_mode.py",
                            *(argv if argv is not None else sys.argv[1:])])
        write_section(render(result, command))
    subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


def _commit() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def _verdict(reached: bool) -> str:
    return "**reached**" if reached else "**not reached**"


def render(result: dict, command: str) -> str:
    """The BENCHMARKS.md section: exactly the figures of one run."""
    config, raw, alone = result["config"], result["raw"], result["batch_alone"]
    summary, give = result["summary"], result["give_back"]["summary"]
    best_rows = int(alone["best_rows_per_request"])
    rates = {int(rows): rate for rows, rate in alone["median_rows_per_s"].items()}  # JSON: str keys
    reference = raw["reference"]
    raw_line = "; ".join(
        f"{kind}: {max(sizes.values()):,.0f} at {max(sizes, key=sizes.get)}"
        for kind, sizes in raw["median"].items())
    peak = result["online_peak"]
    lines = [
        BEGIN,
        f"Measured {result['started']} (code {result['commit']}) by:", "",
        f"    {command}", "",
        f"The whole machine ({result['cpus']} vCPU, shared with other work): the server is not "
        "pinned, raw onnxruntime runs in its own unpinned process, the `kairos batch` client "
        "runs unpinned beside the server with `--low-priority` (its CPU is part of the cost), "
        "the online load "
        f"generator (`kairos bench --engine native`) is pinned to core {LOADGEN_CPU}. Model "
        f"`mlp256`, `max_batch_size: {config['max_batch_size']}`, `slo_ms: {SLO_MS:g}`, "
        "`intra_op_threads: 1`, `batch_threads` at its default (one batch piece per core); "
        f"batch requests {config['in_flight']} in flight; {config['repeats']} repeats, "
        f"{config['warmup']:g} s warm-up + {config['duration']:g} s measured per online point; "
        "medians.", "",
        "| figure | measured | target | |", "|---|---|---|---|",
        f"| raw onnxruntime, best per way of running (rows/s at batch size) | {raw_line} | | |",
        f"| batch mode alone ({config['alone_rows']:,} rows), best rows/request | "
        f"{rates[best_rows]:,.0f} rows/s at {best_rows:,} rows/request ("
        + ", ".join(f"{r:,}: {v:,.0f}" for r, v in rates.items() if r != best_rows) + ") | | |",
        f"| batch alone / raw at its best thread count ({reference}) | "
        f"**{alone['ratio_to_raw']:.2f}x** | >= 0.8x | {_verdict(alone['ratio_to_raw'] >= 0.8)} |",
        f"| batch alone / raw, 2 runs side by side | {alone['ratio_to_side_by_side']:.2f}x | | |",
        f"| online peak (open-loop sweep from {config['peak_start']:,.0f}/s, x{config['peak_step']:g}) | "
        f"goodput {peak['goodput']:,.0f}/s at {peak['offered']:,.0f}/s offered -> Poisson at "
        f"{peak['offered'] / 2:,.0f}/s | | |",
        f"| online p99, alone -> mixed | {summary['online_alone_p99_ms']:.2f} -> "
        f"{summary['mixed_p99_ms']:.2f} ms = **{summary['p99_ratio']:.2f}x** | <= 1.10x | "
        f"{_verdict(summary['p99_ratio'] <= 1.10)} |",
        f"| online goodput@{SLO_MS:g}ms, alone -> mixed | {summary['online_alone_goodput']:,.1f} -> "
        f"{summary['mixed_goodput']:,.1f}/s = {summary['goodput_ratio']:.2f}x | | |",
        f"| batch rows/s, mixed / alone | {summary['mixed_batch_rows_per_s']:,.0f} / "
        f"{summary['batch_alone_rows_per_s']:,.0f} = **{summary['batch_share']:.2f}** | >= 0.50 | "
        f"{_verdict(summary['batch_share'] >= 0.5)} |",
        *[f"| give-back, the OS: a normal-priority process's wake-up lateness {key}, idle -> "
          f"during a batch job | {give[f'wake_{key}_ms']['idle']:.3f} -> "
          f"{give[f'wake_{key}_ms']['busy']:.3f} ms ({give[f'wake_{key}_ms']['added'] * 1e3:+.0f} us) | "
          f"<= 1 ms added | {_verdict(give[f'wake_{key}_ms']['added'] <= 1.0)} |"
          for key in ("p50", "p99", "p99.9")],
        *[f"| give-back, an online request: latency {key} at {config['sparse_rate']:g} req/s, idle "
          f"-> during a batch job | {give[f'online_{key}_ms']['idle']:.3f} -> "
          f"{give[f'online_{key}_ms']['busy']:.3f} ms ({give[f'online_{key}_ms']['added'] * 1e3:+.0f} us) | "
          f"<= 1 ms added | {_verdict(give[f'online_{key}_ms']['added'] <= 1.0)} |"
          for key in ("p50", "p99")],
        f"| batch rows/s during the give-back runs | {give['batch_rows_per_s']:,.0f} | | |",
        "",
        "Per repeat (online alone p99 / goodput -> mixed p99 / goodput, batch rows/s): "
        + "; ".join(
            f"{a['latency_ms']['p99']:.2f} / {a['goodput']:.0f} -> {m['online']['latency_ms']['p99']:.2f}"
            f" / {m['online']['goodput']:.0f}, {m['batch_rows_per_s']:,.0f}"
            for a, m in zip(result["online_alone"], result["mixed"], strict=True)) + ".",
        END,
    ]
    return "\n".join(lines)


def write_section(section: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + section + tail
    else:
        text = text.rstrip() + f"\n\n{TITLE}\n\n" + section + "\n"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
