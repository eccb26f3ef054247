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
import threading
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


class BatchLoad:
    """`kairos batch` jobs over `data`, back to back until the block ends (a job that
    finishes is followed by the next), so that no measurement outlasts the batch work;
    `rows()` is (time, rows done by every job so far)."""

    def __init__(self, address: str, data: Path, work: Path, rows: int, in_flight: int):
        self.args = (address, data, work, rows, in_flight)
        self.total = int(np.load(data, mmap_mode="r").shape[0])
        self.finished = 0  # rows of the jobs that completed
        self.jobs = 0
        self.failed: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._job: subprocess.Popen | None = None
        self._out = work / "load-0.npy"
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BatchLoad:
        self._thread.start()
        time.sleep(1.5)  # the first job is connected and streaming
        return self

    def _run(self) -> None:
        address, data, work, rows, in_flight = self.args
        while not self._stop.is_set():
            out = work / f"load-{self.jobs}.npy"
            with self._lock:
                self._out = out
                self._job = subprocess.Popen(
                    batch_command(address, data, out, rows, in_flight, work / "load.json"),
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            job = self._job
            while job.poll() is None and not self._stop.wait(0.02):
                pass
            if job.poll() is None:
                return  # stopped: __exit__ ends the job
            if job.returncode != 0:
                self.failed = job.stderr.read().decode(errors="replace")[-500:]
                return
            with self._lock:
                self.finished += self.total
                self.jobs += 1
                out.unlink(missing_ok=True)

    def rows(self) -> tuple[float, int]:
        with self._lock:
            out, finished = self._out, self.finished
            now, current = rows_done(out)
            if out.exists():  # complete: the checkpoint is gone, the output written
                current = self.total
            return now, finished + current

    def __exit__(self, *exc) -> None:
        self._stop.set()
        with self._lock:
            job = self._job
        if job is not None and job.poll() is None:
            job.send_signal(signal.SIGTERM)
            job.wait(30)
        self._thread.join(30)
        work = self.args[2]
        for stale in work.glob("load-*"):
            subprocess.run(["rm", "-rf", str(stale)], check=False)


def during_batch(address: str, data: Path, work: Path, rows: int, in_flight: int, measure):
    """`measure()` while batch jobs run; (its result, the jobs' rows/s meanwhile, jobs done)."""
    with BatchLoad(address, data, work, rows, in_flight) as load:
        t0, r0 = load.rows()
        result = measure()
        t1, r1 = load.rows()
    if load.failed:
        raise RuntimeError(f"a batch job failed: {load.failed}")
    return result, (r1 - r0) / (t1 - t0)


def rows_done(out: Path) -> tuple[float, int]:
    try:
        return time.monotonic(), json.loads(checkpoint_path(out).read_text())["rows_done"]
    except (OSError, ValueError, KeyError):
        return time.monotonic(), 0


def mixed(address: str, data: Path, work: Path, rows: int, in_flight: int, rate: float,
          duration: float, warmup: float) -> dict:
    """Online Poisson load while batch jobs run; batch rows/s over the online window."""
    point, rate_batch = during_batch(
        address, data, work, rows, in_flight,
        lambda: bench(address, "--rate", f"{rate:.1f}", duration=duration, warmup=warmup, work=work))
    return {"online": point, "batch_rows_per_s": rate_batch}


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
                        "busy_cores": busy_cores(args, repo, small, work, best_rows),
                        "scheduler": scheduler},
    }


def busy_cores(args, repo: Path, data: Path, work: Path, rows: int) -> float:
    """Cores the whole machine keeps busy while a batch job runs alone (server and client;
    a 3 s window of a running job, median over the repeats)."""
    busy = []
    with running_server(repo) as server:
        for _ in range(args.repeats):
            with BatchLoad(server.address, data, work, rows, args.in_flight), CpuIdle() as idle:
                time.sleep(3)
            busy.append((os.cpu_count() or 1) - idle.cores)
    return median(busy)


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


class CpuIdle:
    """Idle cores of the whole machine over a block (/proc/stat: idle + iowait ticks)."""

    def __enter__(self) -> CpuIdle:
        self.start = _cpu_ticks()
        return self

    def __exit__(self, *exc) -> None:
        idle0, total0 = self.start
        idle1, total1 = _cpu_ticks()
        self.cores = (os.cpu_count() or 1) * (idle1 - idle0) / max(1, total1 - total0)


def _cpu_ticks() -> tuple[int, int]:
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:9]]  # user..steal, no guest
    return fields[3] + fields[4], sum(fields)


def measure_mixed(args, repo: Path, data: Path, work: Path, rows: int, rate: float,
                  alone_rate: float, alone_busy: float) -> dict:
    """Step 4 at one online rate: online alone and mixed alternate on fresh servers."""
    online, mix = [], []
    for _ in range(args.repeats):
        with running_server(repo) as server:
            with CpuIdle() as idle:
                online.append(bench(server.address, "--rate", f"{rate:.1f}",
                                    duration=args.duration, warmup=args.warmup, work=work))
            online[-1]["idle_cores"] = idle.cores
        with running_server(repo) as server:
            with CpuIdle() as idle:
                mix.append(mixed(server.address, data, work, rows, args.in_flight, rate,
                                 args.duration, args.warmup))
            mix[-1]["idle_cores"] = idle.cores
            mix[-1]["scheduler"] = scheduler_view(server.address)
        print(f"  {rate:.0f}/s: online alone p99 {online[-1]['latency_ms']['p99']:.2f} ms goodput "
              f"{online[-1]['goodput']:.0f}/s idle cores {online[-1]['idle_cores']:.2f} | mixed p99 "
              f"{mix[-1]['online']['latency_ms']['p99']:.2f} ms goodput "
              f"{mix[-1]['online']['goodput']:.0f}/s batch {mix[-1]['batch_rows_per_s']:,.0f} rows/s "
              f"idle cores {mix[-1]['idle_cores']:.2f}", flush=True)
    summary = {
        "rate": rate,
        "online_alone_p99_ms": median([p["latency_ms"]["p99"] for p in online]),
        "online_alone_goodput": median([p["goodput"] for p in online]),
        "online_alone_idle_cores": median([p["idle_cores"] for p in online]),
        "mixed_p99_ms": median([m["online"]["latency_ms"]["p99"] for m in mix]),
        "mixed_goodput": median([m["online"]["goodput"] for m in mix]),
        "mixed_idle_cores": median([m["idle_cores"] for m in mix]),
        "mixed_batch_rows_per_s": median([m["batch_rows_per_s"] for m in mix]),
        "batch_alone_rows_per_s": alone_rate,
    }
    summary["p99_ratio"] = summary["mixed_p99_ms"] / summary["online_alone_p99_ms"]
    summary["goodput_ratio"] = summary["mixed_goodput"] / summary["online_alone_goodput"]
    summary["batch_share"] = summary["mixed_batch_rows_per_s"] / alone_rate
    # what the cores online work left idle would give at batch-alone speed per busy core
    summary["idle_capacity_rows_per_s"] = alone_rate * summary["online_alone_idle_cores"] / alone_busy
    summary["idle_capture"] = summary["mixed_batch_rows_per_s"] / summary["idle_capacity_rows_per_s"]
    return {**summary, "online_alone": online, "mixed": mix}


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
    parser.add_argument("--fractions", default="0.5,0.25",
                        help="online rates of step 4 as fractions of the peak rate; the first is "
                        "the one the targets are judged at")
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

    alone_rate = alone["median_rows_per_s"][best_rows]
    result["mixed_by_fraction"] = {}
    for fraction in [float(f) for f in args.fractions.split(",")]:
        entry = measure_mixed(args, repo, data, work, best_rows, peak["offered"] * fraction,
                              alone_rate, alone["busy_cores"])
        result["mixed_by_fraction"][fraction] = entry
    result["summary"] = summary = result["mixed_by_fraction"][float(args.fractions.split(",")[0])]

    result["give_back"] = measure_give_back(args, repo, data, work, best_rows)
    print(json.dumps({**{k: v for k, v in summary.items() if k not in ("online_alone", "mixed")},
                      "give_back": result["give_back"]["summary"]}, indent=1, default=str))
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
    fraction = float(config["fractions"].split(",")[0])
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
        f"goodput {peak['goodput']:,.0f}/s at {peak['offered']:,.0f}/s offered | | |",
        f"| online rate of the mixed runs: {fraction:g} x the peak rate | {summary['rate']:,.0f}/s "
        "Poisson | | |",
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
        "Mixed runs per online rate. Idle cores: the whole machine's, over the measured window "
        f"(/proc/stat). A batch job alone kept {alone['busy_cores']:.2f} cores busy; *what online "
        "left idle* is the batch-alone rate scaled to the cores online alone left idle, and the "
        "last column the share of it the job took.", "",
        "| online rate | online alone: p99 ms / goodput / idle cores | mixed: p99 ms / goodput / "
        "idle cores | p99 ratio | batch rows/s (/ alone) | of what online left idle |",
        "|---|---|---|---|---|---|",
        *[f"| {entry['rate']:,.0f}/s ({float(frac):g} x peak rate) | {entry['online_alone_p99_ms']:.2f} / "
          f"{entry['online_alone_goodput']:,.0f} / {entry['online_alone_idle_cores']:.2f} | "
          f"{entry['mixed_p99_ms']:.2f} / {entry['mixed_goodput']:,.0f} / {entry['mixed_idle_cores']:.2f} | "
          f"{entry['p99_ratio']:.2f}x | {entry['mixed_batch_rows_per_s']:,.0f} ({entry['batch_share']:.2f}) | "
          f"{entry['idle_capture']:.2f} of {entry['idle_capacity_rows_per_s']:,.0f} |"
          for frac, entry in result["mixed_by_fraction"].items()],
        "",
        f"Per repeat at {fraction:g} x the peak rate (online alone p99 / goodput -> mixed p99 / "
        "goodput, batch rows/s): "
        + "; ".join(
            f"{a['latency_ms']['p99']:.2f} / {a['goodput']:.0f} -> {m['online']['latency_ms']['p99']:.2f}"
            f" / {m['online']['goodput']:.0f}, {m['batch_rows_per_s']:,.0f}"
            for a, m in zip(summary["online_alone"], summary["mixed"], strict=True)) + ".",
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
