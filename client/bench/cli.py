"""`kairos bench`: load any Open Inference Protocol (KServe V2) gRPC server.

Closed loop (`--concurrency N`: N requests always in flight) or open loop
(`--rate R`: Poisson arrivals at R req/s, `--sweep R1,R2,...` for one point per
offered rate; `--arrival gamma --cv 4` for bursty arrivals at the same mean rate,
gamma-distributed gaps with that coefficient of variation; `--arrival constant`;
`--burst` for batch or on/off bursts). Reports throughput,
latency p50/p90/p99/p99.9, goodput (answers within `--slo-ms` per second),
errors by gRPC status (with how fast they came back), and, in open loop, how
late the generator itself was against its schedule.

Deadlines: by default every request carries a gRPC deadline equal to the SLO,
so a deadline-aware server (Kairos) can refuse at once what it cannot answer
in time, and the client stops waiting at the SLO. `--deadline-ms D` sends a
different deadline (e.g. larger than the SLO, to see how late late answers
are); `--deadline-ms 0` sends none (Kairos then uses the model's default SLO).
`--deadline-mix 5:0.5,50:0.5` (open loop) gives each request one of several
deadlines (ms : share), sent as its gRPC deadline and used as its SLO; every point
then also reports each class on its own (goodput, attainment, p99, refusals).
Every point reports `admitted_attainment`: the share of requests not refused at
admission (RESOURCE_EXHAUSTED) that were answered within their deadline.

Engines: by default this process generates the load (asyncio; near 5k req/s per
core at most). `--engine native` runs the `kairos-loadgen` program (Rust, built by
`pip install .`) once per point instead: the same fields come back, from one core
at rates well past that (`--connections N` HTTP/2 connections, `--arrival constant`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .runner import BenchConfig, run
from .schedule import ARRIVALS, parse_burst, parse_deadline_mix


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, not {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("rates must be positive")
    return values


def _deadline_mix(text: str):
    try:
        return parse_deadline_mix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _shape(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected dims like 256 or 3x224x224, not {text!r}") from None


def _parameter(text: str) -> tuple[str, Any]:
    """KEY=VALUE; the value is an int, float, true/false or else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    if value.lower() in ("true", "false"):
        return key, value.lower() == "true"
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_argument_group("target")
    target.add_argument("--url", default="127.0.0.1:8001", help="host:port of the gRPC server")
    target.add_argument("--model", "-m", required=True, help="model name")
    target.add_argument("--model-version", default="", help="version (default: the server's choice)")
    target.add_argument("--rows", type=int, default=1, help="rows per request (batch dim); default 1")
    target.add_argument("--input-shape", type=_shape, help="non-batch dims where metadata has -1, e.g. 256")
    target.add_argument("--param", type=_parameter, action="append", default=[], metavar="KEY=VALUE",
                        help="request parameter, e.g. priority=1 or timeout=5000 (us); repeatable")
    load = parser.add_argument_group("load (one of)")
    mode = load.add_mutually_exclusive_group(required=True)
    mode.add_argument("--concurrency", "-c", type=int, help="closed loop: requests in flight")
    mode.add_argument("--rate", "-r", type=float, help="open loop: Poisson arrivals per second")
    mode.add_argument("--sweep", type=_floats, help="open loop: one point per rate, e.g. 500,1000,2000")
    load.add_argument("--burst", type=parse_burst, help="open loop arrivals 'batch:K' or 'onoff:ON_MS:OFF_MS'")
    load.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    load.add_argument("--duration", type=float, default=10.0, help="seconds measured per point")
    load.add_argument("--seed", type=int, default=0, help="seed of arrivals and input values")
    engine = parser.add_argument_group("engine")
    engine.add_argument("--engine", choices=("python", "native"), default="python",
                        help="python: this process (asyncio, ~5k req/s per core); native: the kairos-loadgen "
                             "program (Rust), one run per point")
    engine.add_argument("--connections", type=int, default=1, help="native engine: HTTP/2 connections, round-robin")
    engine.add_argument("--workers", type=int, default=1, help="native engine: worker threads (1: one core)")
    load.add_argument("--arrival", choices=ARRIVALS, default="poisson",
                      help="open-loop arrival process (gamma: gaps of coefficient of variation --cv)")
    load.add_argument("--cv", type=float, help="--arrival gamma: coefficient of variation of the gaps, "
                      "e.g. 4 (1 is Poisson)")
    slo = parser.add_argument_group("objective")
    slo.add_argument("--slo-ms", type=float, default=10.0, help="latency objective for goodput")
    slo.add_argument("--deadline-ms", type=float, help="gRPC deadline per request (default: the SLO; 0: none)")
    slo.add_argument("--deadline-mix", type=_deadline_mix, metavar="MS:SHARE,...",
                     help="open loop: deadline classes in one run, e.g. 5:0.5,50:0.5 (each class's "
                          "deadline is its gRPC deadline and SLO; per-class results)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", nargs="?", const="-", metavar="FILE", help="write JSON (to FILE, or stdout)")
    out.add_argument("--plot", type=Path, metavar="FILE.png", help="latency CDF (+ goodput vs offered load)")
    out.add_argument("--no-server-stats", action="store_true", help="skip ModelStatistics batch counts")
    out.add_argument("--metrics-url", help="Prometheus page to read kairos_dispatches_total from")
    out.add_argument("--server-pid", type=int, help="a local server's pid: report its CPU per request")
    out.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                     help="event loop (auto: uvloop when installed)")


def plain_address(url: str) -> str:
    """host:port from `host:port` or `grpc://host:port`; TLS is not supported by the generator."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if scheme in ("grpcs", "https"):
        raise SystemExit("kairos bench: TLS (grpcs://) is not supported; benchmark a plaintext port")
    return rest.rstrip("/")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    if args.concurrency is not None and args.concurrency < 1:
        raise SystemExit("kairos bench: --concurrency must be >= 1")
    if args.rows < 1:
        raise SystemExit("kairos bench: --rows must be >= 1")
    if args.burst is not None and args.concurrency is not None:
        raise SystemExit("kairos bench: --burst needs open loop (--rate or --sweep)")
    rates = args.sweep if args.sweep else ([args.rate] if args.rate is not None else [])
    if args.rate is not None and args.rate <= 0:
        raise SystemExit("kairos bench: --rate must be > 0")
    if args.arrival == "gamma" and (args.cv is None or args.cv <= 0):
        raise SystemExit("kairos bench: --arrival gamma needs --cv > 0 (e.g. --cv 4)")
    if args.cv is not None and args.arrival != "gamma":
        raise SystemExit("kairos bench: --cv goes with --arrival gamma")
    if args.burst is not None and args.arrival != "poisson":
        raise SystemExit("kairos bench: --burst and --arrival are alternatives")
    if args.deadline_mix is not None:
        if args.concurrency is not None:
            raise SystemExit("kairos bench: --deadline-mix needs open loop (--rate or --sweep)")
        if args.deadline_ms is not None:
            raise SystemExit("kairos bench: --deadline-mix sets each class's deadline; drop --deadline-ms")
    _check_engine(args)
    return BenchConfig(
        url=plain_address(args.url),
        model=args.model,
        model_version=args.model_version,
        concurrency=args.concurrency,
        rates=rates,
        burst=args.burst,
        duration_s=args.duration,
        warmup_s=args.warmup,
        slo_ms=args.slo_ms,
        deadline_ms=args.deadline_ms,
        rows=args.rows,
        input_shape=args.input_shape,
        seed=args.seed,
        server_stats=not args.no_server_stats,
        metrics_url=args.metrics_url,
        parameters=dict(args.param),
        server_pid=args.server_pid,
        engine=args.engine,
        connections=args.connections,
        workers=args.workers,
        arrival=args.arrival,
        cv=args.cv,
        deadline_mix=args.deadline_mix,
    )


def _check_engine(args: argparse.Namespace) -> None:
    """Flags of one engine refused with the other, before anything runs."""
    if args.engine == "native":
        if args.burst is not None:
            raise SystemExit("kairos bench: --burst is not supported by --engine native")
        if args.metrics_url:
            raise SystemExit("kairos bench: --metrics-url is not supported by --engine native")
        if args.connections < 1 or args.workers < 1:
            raise SystemExit("kairos bench: --connections and --workers must be >= 1")
        from .native import NativeEngineError, find_loadgen

        try:
            find_loadgen()
        except NativeEngineError as exc:
            raise SystemExit(f"kairos bench: {exc}") from None
    elif args.connections != 1 or args.workers != 1:
        raise SystemExit("kairos bench: --connections and --workers need --engine native")


def format_point(point: dict[str, Any], slo_ms: float) -> str:
    """A few human lines for one point."""
    lat = point["latency_ms"]
    head = (
        f"offered {point['offered_rate']:g} req/s" if point["mode"] == "open"
        else f"concurrency {point['concurrency']}"
    )
    if point.get("arrival") == "gamma":
        head += f" (gamma arrivals, cv {point['cv']:g})"
    classes = point.get("classes")
    at = "in its class's deadline" if classes else "in SLO"
    lines = [
        f"{head}: sent {point['send_rate']:.0f}/s, throughput {point['throughput']:.1f}/s, "
        f"goodput{'' if classes else f'@{slo_ms:g}ms'} {point['goodput']:.1f}/s "
        f"({point['slo_attainment'] * 100:.2f}% {at}, {_pct(point.get('admitted_attainment'))} of the admitted)",
        "  latency ms  " + "  ".join(f"{k} {_ms(v)}" for k, v in lat.items()),
    ]
    for klass in classes or ():
        refused = klass["requests"] - klass["admitted"]
        lines.append(
            f"  class {klass['deadline_ms']:g} ms ({klass['share'] * 100:.0f}%): {klass['requests']} requests, "
            f"goodput {klass['goodput']:.1f}/s, {klass['slo_attainment'] * 100:.2f}% in deadline, "
            f"{_pct(klass['admitted_attainment'])} of the admitted, refused {refused}, "
            f"p99 {_ms(klass['latency_ms']['p99'])} ms"
        )
    if point["errors"]:
        errs = ", ".join(
            f"{name} {e['count']} (p50 {_ms(e['p50_ms'])} ms)" for name, e in point["errors"].items()
        )
        lines.append(f"  errors      {errs}")
    if "lateness_ms" in point:
        late = point["lateness_ms"]
        flag = "" if point.get("kept_up", True) else "   << GENERATOR FELL BEHIND: results understate latency"
        lines.append(f"  lateness ms p50 {_ms(late['p50'])}  p99 {_ms(late['p99'])}  max {_ms(late['max'])}{flag}")
    gen = point.get("generator")
    if gen:
        lines.append(
            f"  generator   cpu {gen['cpu_util'] * 100:.0f}%, {gen['cpu_us_per_request']:.0f} us/request "
            f"(~{gen['capacity_rps'] or 0:.0f} req/s per core)"
        )
    server = point.get("server_cpu")
    if server:
        lines.append(f"  server cpu  {server['cpu_util'] * 100:.0f}%, {server['cpu_us_per_request']:.0f} us/request")
    machine = point.get("machine")
    if machine and machine["server_known"] and machine["others_cores"] > 0.1:
        lines.append(f"  DISTURBED   other processes used {machine['others_cores']:.2f} cores during the window")
    batches = point.get("server_batches")
    if batches and batches.get("executions"):
        lines.append(
            f"  server      {batches['executions']} executions, mean batch {batches['mean_batch_rows']} rows, "
            f"batch-1 share {batches['gemv_share_executions'] * 100:.1f}% of executions"
        )
    return "\n".join(lines)


def _deadlines(config: dict[str, Any]) -> str:
    if config.get("deadline_mix"):
        return f"deadline mix {config['deadline_mix']} (ms:share)"
    return f"deadline {config['deadline_ms'] or 'none'} ms"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def execute(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.plot is not None:  # fail before the run, not after it
        from .plot import require_matplotlib

        require_matplotlib()
    from .native import NativeEngineError

    try:
        result = run(cfg, loop=args.loop)
    except NativeEngineError as exc:  # one line, from `kairos bench` and python -m alike
        raise SystemExit(f"kairos bench: {exc}") from None
    if args.json is not None:
        text = json.dumps(result, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if args.json != "-":
        engine = "engine native" if cfg.engine == "native" else f"loop {result['config']['loop']}"
        print(f"kairos bench: {cfg.model} at {cfg.url}, {cfg.rows} row(s)/request, "
              f"{_deadlines(result['config'])}, {engine}")
        for point in result["points"]:
            print(format_point(point, cfg.slo_ms))
    if args.plot is not None:
        from .plot import plot_result

        plot_result(result, args.plot)
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `bench` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "bench",
        help="load-test a V2 gRPC server (latency, goodput, refusals)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=execute, handler=execute)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kairos bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return execute(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a clear one-line error, not a traceback, for the operator
        import grpc

        if isinstance(exc, grpc.RpcError | ValueError | TimeoutError | OSError):
            print(f"kairos bench: {exc}", file=sys.stderr)
            return 1
        raise
