"""Front end, side by side: native Kairos vs the grpc.aio floor, grpc.aio Kairos, MLServer
1.7.1 (adaptive batching) and Triton 2.51 (dynamic batching), in one run.

Setting: each server pinned to core 0 (`taskset -c 0`), the generator on core 1, 1-row
requests to `mlp256` (Kairos's demo model; MLServer and Triton serve the same ONNX file
through onnxruntime), gRPC deadline 10 ms. For each server:

- c=1 p50: closed loop, one request in flight;
- peak goodput@10 ms: a closed-loop capacity estimate (concurrency 4 and 16), then open-loop
  Poisson rates around it (extended while the best point is the highest or lowest rate tried); peak = the highest
  goodput of an open-loop point, with the offered rate it was measured at;
- goodput at 2x that offered rate, the refusals' statuses and how fast they came back;
- server CPU (its whole process tree, /proc utime+stime, children included) per answered
  request at 1,000 req/s, and per refusal at 1,000 req/s of requests it refuses (an
  unknown model: NOT_FOUND; for Kairos also a deadline already passed: DEADLINE_EXCEEDED);
- Kairos: the GEMV/GEMM split (batch-1 share, mean batch) from /metrics along the sweep,
  and at half of peak, Prometheus's histogram_quantile(0.99) of its request latency over
  the window against the client's p99;
- `mlp-heavy` (1024 -> 3x8192 -> 10; native Kairos only, deadline --heavy-slo-ms): peak
  goodput and goodput at 2x its peak offered rate.

    bash bench/setup_peers.sh     # once: the MLServer and Triton environments
    flock /tmp/kairos-bench.lock .venv/bin/python bench/frontend_compare.py          # ~15 min
    flock /tmp/kairos-bench.lock .venv/bin/python bench/frontend_compare.py --quick \
        --servers kairos,floor                                                       # checks the script

A full run writes bench/results/frontend_compare.json and replaces its generated section
of BENCHMARKS.md; --quick writes bench/results/frontend_compare_quick.{json,md} only.
`--render FILE.json` rewrites the section from an earlier results file.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import frontend_load as fl
import frontend_report as fr
import frontend_stats as fs
import peers

RESULTS = peers.ROOT / "bench" / "results"
BENCHMARKS = peers.ROOT / "BENCHMARKS.md"
SLO_MS = 10.0
CPU_RATE = 1000.0
PROBE_CONCURRENCY = {"mlp256": (4, 16), peers.HEAVY: (16, 64)}
FACTORS = (0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5)
QUICK_FACTORS = (0.75, 1.0, 1.3)
MAX_EXTENSIONS = 3
KAIROS = ("kairos", "kairos-aio", "heavy")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--servers", default=",".join(peers.SERVERS),
                        help=f"comma-separated subset of {','.join(peers.SERVERS)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="very short points to check the script works (~3 min); figures are not "
                             "written to BENCHMARKS.md")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds; each round measures every server in turn; medians reported")
    parser.add_argument("--duration", type=float, help="seconds measured per point (default 5; quick 0.8)")
    parser.add_argument("--warmup", type=float, help="seconds of load before each point (default 1; quick 0.2)")
    parser.add_argument("--engine", choices=("auto", "native", "python"), default="auto",
                        help="auto: kairos-loadgen when installed, else the Python engine (with a warning)")
    parser.add_argument("--connections", type=int, default=1, help="HTTP/2 connections of kairos-loadgen")
    parser.add_argument("--loadgen-args", default="", help="extra kairos-loadgen flags for every server")
    parser.add_argument("--triton-loadgen-args", default="--transport tonic",
                        help="extra kairos-loadgen flags for Triton only (default '--transport tonic': "
                             "Triton's gRPC server answers the h2 transport's connection with an HTTP/2 "
                             "protocol error under load; dropped when the generator has no --transport)")
    parser.add_argument("--triton-delays",
                        help="max_queue_delay_microseconds values tried for Triton, the best used "
                             "(default 100,500,2000; --quick: 500, untuned)")
    parser.add_argument("--mlserver-batch-time-ms", type=float, default=1.0,
                        help="MLServer's max_batch_time (adaptive batching), ms")
    parser.add_argument("--max-batch-size", type=int, default=64, help="MLServer's and Triton's max batch")
    parser.add_argument("--heavy-slo-ms", type=float, default=250.0, help="mlp-heavy's deadline and SLO, ms")
    parser.add_argument("--quiet-wait", type=float,
                        help="longest wait for idle cores (85%% idle) before a point, s (default 5; quick 0)")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/frontend_compare[_quick].json)")
    parser.add_argument("--no-markdown", action="store_true", help="leave BENCHMARKS.md alone")
    parser.add_argument("--render", type=Path, metavar="RESULTS.json",
                        help="only rewrite BENCHMARKS.md's section from this results file")
    args = parser.parse_args(argv)
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = sorted(set(args.server_list) - set(peers.SERVERS))
    if unknown:
        parser.error(f"unknown servers {unknown}; choose from {list(peers.SERVERS)}")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    args.duration = args.duration or (0.8 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.2 if args.quick else 1.0)
    args.quiet_wait = args.quiet_wait if args.quiet_wait is not None else (0.0 if args.quick else 5.0)
    delays = args.triton_delays or ("500" if args.quick else "100,500,2000")
    args.delays = [int(v) for v in delays.split(",") if v.strip()]
    if not args.delays:
        parser.error("--triton-delays needs at least one value")
    return args


class Bench:
    """One run: the generator, the settings, and what has been measured."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.generator = fl.Generator(args.engine, args.warmup, args.duration, args.connections)
        self.options = peers.Options(
            mlserver_max_batch_size=args.max_batch_size,
            mlserver_max_batch_time_ms=args.mlserver_batch_time_ms,
            triton_max_batch_size=args.max_batch_size, heavy_slo_ms=args.heavy_slo_ms)
        self.factors = QUICK_FACTORS if args.quick else FACTORS
        self.failures = 0
        common = shlex.split(args.loadgen_args)
        triton = shlex.split(args.triton_loadgen_args)
        if "--transport" in triton and not self.generator.supports("--transport"):
            triton = []
        self.extra = {name: common + (triton if name == "triton" else []) for name in peers.SERVERS}
        if not self.generator.native:
            self.extra = {name: [] for name in peers.SERVERS}

    # ------------------------------------------------------------ points

    def point(self, server: peers.Running, load: fl.Load, label: str, **window: float) -> dict[str, Any]:
        """One point; a generator failure is recorded as a failed point, and a second failure in
        a row (the server no longer answers, e.g. ModelMetadata times out) ends that server."""
        waited = fl.wait_quiet(self.args.quiet_wait) if self.args.quiet_wait else 0.0
        try:
            extra = self.extra[server.name]
            point = self.generator.point(server.url, server.model, load, server.pid, server.metrics_url,
                                         extra=extra, **window)
            if fr.idle_server_failures(point):  # e.g. an HTTP/2 connection error: measure again, once
                print(f"  {server.name:10s} {label:14s} {fr.brief(point)}  << server idle: again", flush=True)
                first = point
                point = self.generator.point(server.url, server.model, load, server.pid,
                                             server.metrics_url, extra=extra, **window)
                point["first_attempt"] = {k: first.get(k) for k in ("errors", "error_messages", "probe")}
            self.failures = 0
        except (RuntimeError, OSError, ValueError) as exc:
            self.failures += 1
            point = failed_point(load, _one_line(exc))
            if self.failures >= 2 or server.process.poll() is not None:
                raise ServerStopped(f"{label}: {point['failed']}") from exc
        point["label"] = label
        point["waited_for_quiet_s"] = waited
        print(f"  {server.name:10s} {label:14s} {fr.brief(point)}", flush=True)
        return point

    def slo(self, server: peers.Running) -> float:
        return self.args.heavy_slo_ms if server.model == peers.HEAVY else SLO_MS

    def sweep(self, server: peers.Running, result: dict[str, Any]) -> dict[str, Any]:
        """Capacity estimate, open-loop rates around it, the peak and 2x the peak's rate."""
        slo = self.slo(server)
        out: dict[str, Any] = {"capacity_probes": [], "points": []}
        result["sweep"] = out
        concurrencies = PROBE_CONCURRENCY[server.model][-1:] if self.args.quick else PROBE_CONCURRENCY[server.model]
        for c in concurrencies:
            out["capacity_probes"].append(self.point(server, fl.Load(concurrency=c, slo_ms=slo), f"c={c}"))
        capacity = max(20.0, *(p["throughput"] for p in out["capacity_probes"]))
        points = out["points"]
        for rate in fs.sweep_rates(capacity, self.factors):
            points.append(self.point(server, fl.Load(rate=rate, slo_ms=slo), f"r={rate:g}"))
        for _ in range(MAX_EXTENSIONS):  # the peak lies outside the rates tried: go on that way
            rate = fs.next_rate(points)
            if rate is None:
                break
            points.append(self.point(server, fl.Load(rate=rate, slo_ms=slo), f"r={rate:g}"))
        points.sort(key=lambda p: p["offered_rate"])
        peak = fs.peak_point(points)
        assert peak is not None
        out["peak"] = _peak_summary(peak)
        out["double"] = self.point(server, fl.Load(rate=2 * peak["offered_rate"], slo_ms=slo), "2x peak")
        return out

    def cpu_points(self, server: peers.Running, out: dict[str, Any]) -> None:
        """Server CPU per answer and per refusal, each at 1,000 req/s."""
        width = peers.INPUT_WIDTH[server.model]
        out["answers"] = self.point(server, fl.Load(rate=CPU_RATE), "cpu answers")
        if self.generator.native:  # an unknown model: every server refuses it (the floor excepted)
            load = fl.Load(rate=CPU_RATE, model="no-such-model", inputs=[f"input:FP32:1x{width}"])
            out["refusals_not_found"] = self.point(server, load, "cpu NOT_FOUND")
        if server.name in KAIROS:  # a deadline already passed at receipt: timeout=1 us
            out["refusals_deadline"] = self.point(server, fl.Load(rate=CPU_RATE, params={"timeout": 1}),
                                                  "cpu deadline")

    # ------------------------------------------------------------ servers

    def measure(self, name: str) -> dict[str, Any]:
        print(f"{name}: starting", flush=True)
        self.failures = 0
        with peers.started(name, self.options) as server:
            onnx_path = None if name == "floor" else (
                peers.mlp_heavy_file() if name == "heavy" else peers.mlp256_file())
            result: dict[str, Any] = {"settings": server.settings, "model": server.model,
                                      "check": peers.check_inference(server, onnx_path)}
            try:
                self._measure(name, server, result)
            except ServerStopped as exc:
                result["aborted"] = str(exc)
                print(f"{name}: STOPPED ANSWERING: {exc}\n{server.log_tail(10)}", flush=True)
            return result

    def _measure(self, name: str, server: peers.Running, result: dict[str, Any]) -> None:
        """Fills `result` step by step (so a server that stops answering keeps what it showed)."""
        if name != "heavy":
            result["c1"] = self.point(server, fl.Load(concurrency=1), "c=1")
        result["sweep"] = self.sweep(server, result)
        if name == "heavy":
            return
        result["cpu"] = {}
        self.cpu_points(server, result["cpu"])
        if server.metrics_url:
            half = max(1.0, result["sweep"]["peak"]["goodput"] / 2)
            result["half_peak"] = self.point(server, fl.Load(rate=fs.sweep_rates(half, (1.0,))[0]),
                                             "half peak")

    def tune_triton(self) -> dict[str, Any]:
        """max_queue_delay_microseconds: the value whose closed-loop (c=16) goodput is highest."""
        if len(self.args.delays) == 1:  # nothing to choose between
            self.options.triton_delay_us = self.args.delays[0]
            return {"tried": [], "chosen": self.args.delays[0]}
        tried = []
        for delay in self.args.delays:
            self.options.triton_delay_us = delay
            with peers.started("triton", self.options) as server:
                point = self.point(server, fl.Load(concurrency=16), f"delay {delay}us")
            tried.append({"max_queue_delay_microseconds": delay, "goodput": point["goodput"],
                          "p50_ms": point["latency_ms"]["p50"], "p99_ms": point["latency_ms"]["p99"]})
        best = max(tried, key=lambda t: t["goodput"])
        self.options.triton_delay_us = best["max_queue_delay_microseconds"]
        return {"tried": tried, "chosen": best["max_queue_delay_microseconds"]}

    def run(self) -> dict[str, Any]:
        began = time.time()
        data: dict[str, Any] = {
            "command": shlex.join(["python", "bench/frontend_compare.py", *sys.argv[1:]]),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(began)),
            "quick": self.args.quick, "servers": self.args.server_list, "repeats": self.args.repeats,
            "duration_s": self.args.duration, "warmup_s": self.args.warmup, "slo_ms": SLO_MS,
            "heavy_slo_ms": self.args.heavy_slo_ms, "generator": self.generator.describe(),
            "loadgen_args": {n: shlex.join(a) for n, a in self.extra.items() if a and n in self.args.server_list},
            "onnxruntime_batch1_ms": onnxruntime_batch1_ms(), "rounds": [], "errors": {},
        }
        if not self.generator.native:
            print(f"WARNING: {data['generator']['warning']}", flush=True)
        if "triton" in self.args.server_list:
            try:
                data["triton_tuning"] = self.tune_triton()
            except (peers.PeerMissing, RuntimeError, TimeoutError) as exc:
                data["errors"]["triton"] = _one_line(exc)
        for index in range(self.args.repeats):
            print(f"round {index + 1}/{self.args.repeats}", flush=True)
            data["rounds"].append(self._round(data["errors"]))
        data["settings"] = {"mlserver": {"max_batch_size": self.options.mlserver_max_batch_size,
                                         "max_batch_time_ms": self.options.mlserver_max_batch_time_ms},
                            "triton": {"max_batch_size": self.options.triton_max_batch_size,
                                       "max_queue_delay_microseconds": self.options.triton_delay_us}}
        data["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        data["elapsed_s"] = round(time.time() - began, 1)
        return data

    def _round(self, errors: dict[str, str]) -> dict[str, Any]:
        measured: dict[str, Any] = {}
        for name in self.args.server_list:
            if name in errors:
                continue
            try:
                measured[name] = self.measure(name)
            except (peers.PeerMissing, RuntimeError, TimeoutError, AssertionError) as exc:
                errors[name] = _one_line(exc)
                print(f"{name}: NOT MEASURED: {errors[name]}", flush=True)
        return measured


class ServerStopped(RuntimeError):
    """Two points in a row failed: the server no longer answers."""


def failed_point(load: fl.Load, message: str) -> dict[str, Any]:
    """A point the generator could not measure, shaped so sweeps and tables go on."""
    point: dict[str, Any] = {"mode": "open" if load.rate else "closed", "failed": message, "goodput": 0.0,
                             "throughput": 0.0, "requests": 0, "ok": 0, "errors": {}, "latency_ms": {}}
    if load.rate:
        point["offered_rate"] = load.rate
    else:
        point["concurrency"] = load.concurrency
    return point


def _peak_summary(point: dict[str, Any]) -> dict[str, Any]:
    return {"goodput": point["goodput"], "offered_rate": point["offered_rate"],
            "p99_ms": point["latency_ms"]["p99"]}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def onnxruntime_batch1_ms() -> float:
    """Raw onnxruntime on mlp256 at batch 1 (one thread, no spinning), median ms, on this core."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(peers.mlp256_file()), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.ones((1, 256), np.float32)}
    times = []
    for index in range(550):
        start = time.perf_counter()
        session.run(None, feed)
        if index >= 50:
            times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1e3, 4)


def write(data: dict[str, Any], args: argparse.Namespace) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "frontend_compare_quick" if args.quick else "frontend_compare"
    out = args.out or RESULTS / f"{stem}.json"
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {out}")
    body = fr.render(data)
    if args.quick or args.no_markdown:
        side = out.with_suffix(".md")
        side.write_text(body + "\n")
        print(f"wrote {side} (BENCHMARKS.md untouched)")
        return
    fr.write_section(BENCHMARKS, body)
    print(f"replaced the generated section of {BENCHMARKS}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        fr.write_section(BENCHMARKS, fr.render(json.loads(args.render.read_text())))
        print(f"replaced the generated section of {BENCHMARKS} from {args.render}")
        return 0
    fl.pin_to_generator_core()
    data = Bench(args).run()
    write(data, args)
    return 1 if data["errors"] and not data["rounds"][0] else 0


if __name__ == "__main__":
    sys.exit(main())
