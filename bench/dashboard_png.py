"""Render the dashboard's main panels from a real run into docs/dashboard.png.

Starts a real Kairos server (built-in demo models) and a real Prometheus scraping it
every second, drives `mlp256` through a few load phases, then asks Prometheus's HTTP
API the dashboard's questions (query_range) and plots them with matplotlib.

    flock /tmp/kairos-bench.lock .venv/bin/python bench/dashboard_png.py

(The script does not take the lock itself: run under `flock` it would wait on itself.)
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from kairos.protos import grpc_service_pb2_grpc  # noqa: E402
from kairos.protos.codec import build_request  # noqa: E402
from kairos_testing.prometheus import PrometheusProcess, running_prometheus  # noqa: E402
from kairos_testing.server import running_server  # noqa: E402

MODEL = "mlp256"
SEL = f'model="{MODEL}"'
WINDOW = "5s"


@dataclass
class Phase:
    name: str
    # Each worker: (rows per request, requests/s per worker or None = closed loop,
    # `timeout` parameter in µs or None, model name).
    workers: list[tuple[int, float | None, int | None, str]]


PHASES = [
    Phase("light: 100 req/s\n1 row", [(1, 100.0, None, MODEL)]),
    Phase("busy: 6 clients\nback to back", [(1, None, None, MODEL)] * 6),
    Phase("bulk: 64-row\nrequests", [(64, None, None, MODEL)] * 2 + [(1, 50.0, None, MODEL)]),
    Phase("overload: 12 clients,\n3 ms deadlines", [(8, None, 3000, MODEL)] * 12 + [(1, 5.0, None, "no-such-model")]),
    Phase("light again", [(1, 100.0, None, MODEL)]),
]


def worker(address: str, rows: int, rate: float | None, timeout_us: int | None, model: str,
           stop: threading.Event) -> None:
    params = {"timeout": timeout_us} if timeout_us else None
    request = build_request(model, {"input": np.random.default_rng(rows).random((rows, 256), dtype=np.float32)},
                            parameters=params)
    with grpc.insecure_channel(address) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        origin, i = time.perf_counter(), 0
        while not stop.is_set():
            if rate:
                delay = origin + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                i += 1
            with contextlib.suppress(grpc.RpcError):  # refusals are part of the picture
                stub.ModelInfer(request, timeout=5)


def run_phases(address: str, seconds: float) -> list[tuple[str, float, float]]:
    spans = []
    for phase in PHASES:
        stop = threading.Event()
        threads = [threading.Thread(target=worker, args=(address, *w, stop), daemon=True)
                   for w in phase.workers]
        start = time.time()
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        stop.set()
        for thread in threads:
            thread.join(10)
        spans.append((phase.name, start, time.time()))
        print(f"phase {phase.name!r} done", flush=True)
    return spans


def series(prom: PrometheusProcess, expr: str, start: float, end: float) -> dict[str, tuple]:
    """{legend: (seconds since start, values)} of a range query, step 1 s."""
    out = {}
    for item in prom.query_range(expr, start, end, 1.0):
        legend = ",".join(f"{v}" for k, v in sorted(item["metric"].items())) or "value"
        points = np.array([(float(t), float(v)) for t, v in item["values"]])
        out[legend] = (points[:, 0] - start, points[:, 1])
    return out


def plot_lines(ax, prom, exprs: list[tuple[str, str]], start, end, *, rename: Callable | None = None,
               **style) -> None:
    for expr, label in exprs:
        for legend, (t, v) in sorted(series(prom, expr, start, end).items()):
            name = label.format(legend=rename(legend) if rename else legend)
            ax.plot(t, v, label=name, linewidth=1.3, **style)


def plot_stack(ax, prom, expr: str, start, end, order: list[str] | None = None, colors=None) -> None:
    data = series(prom, expr, start, end)
    if not data:
        return
    keys = order or sorted(data)
    keys = [k for k in keys if k in data]
    t = data[keys[0]][0]
    values = [np.nan_to_num(np.interp(t, *data[k])) for k in keys]
    ax.stackplot(t, values, labels=keys, colors=colors, alpha=0.85)


def shade(axes, spans, start) -> None:
    for ax in axes:
        for i, (_, s, e) in enumerate(spans):
            if i % 2:
                ax.axvspan(s - start, e - start, color="0.93", zorder=0)
        ax.set_xlim(0, spans[-1][2] - start + 2)
        ax.grid(alpha=0.3)
        ax.set_xlabel("seconds")
    for top in axes[:2]:
        for name, s, e in spans:
            top.text((s + e) / 2 - start, 1.02, name, transform=top.get_xaxis_transform(),
                     ha="center", va="bottom", fontsize=7)


def draw(prom: PrometheusProcess, spans, out: Path) -> None:
    start, end = spans[0][1] - 3, spans[-1][2] + 3
    fig, grid = plt.subplots(4, 2, figsize=(14, 15), sharex=True)
    axes = grid.ravel()
    rate = f"[{WINDOW}]"

    ax = axes[0]
    plot_lines(ax, prom, [(f"sum by (outcome) (rate(kairos_requests_total{{{SEL}}}{rate}))", "requests/s {legend}")],
               start, end)
    twin = ax.twinx()
    plot_lines(twin, prom, [(f"sum(rate(kairos_inferred_rows_total{{{SEL}}}{rate}))", "rows/s")],
               start, end, color="tab:green", linestyle="--")
    twin.set_ylabel("rows/s", color="tab:green")
    ax.set_title("Throughput", pad=26)
    ax.set_ylabel("requests/s")
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper left")

    ax = axes[1]
    for q, color in ((0.5, "tab:blue"), (0.95, "tab:orange"), (0.99, "tab:red")):
        plot_lines(ax, prom, [(
            f'histogram_quantile({q}, sum by (le) (rate(kairos_request_duration_seconds_bucket{{{SEL},class="online"}}{rate})))',
            f"p{int(q * 100)}")], start, end, color=color)
    plot_lines(ax, prom, [(f"max(kairos_model_slo_seconds{{{SEL}}})", "SLO")], start, end,
               color="black", linestyle=":")
    ax.set_yscale("log")
    ax.set_title("Latency of successful online requests (server histograms)", pad=26)
    ax.set_ylabel("seconds")
    ax.legend(fontsize=7, loc="upper left")

    ax = axes[2]
    plot_lines(ax, prom, [
        (f"sum(rate(kairos_queue_duration_seconds_sum{{{SEL}}}{rate})) / sum(rate(kairos_queue_duration_seconds_count{{{SEL}}}{rate}))", "queue time (mean)"),
        (f"sum(rate(kairos_compute_duration_seconds_sum{{{SEL}}}{rate})) / sum(rate(kairos_compute_duration_seconds_count{{{SEL}}}{rate}))", "compute time per execution (mean)"),
        (f"histogram_quantile(0.99, sum by (le) (rate(kairos_queue_duration_seconds_bucket{{{SEL}}}{rate})))", "queue time p99"),
    ], start, end)
    ax.set_yscale("log")
    ax.set_title("Queue time vs compute time")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=7, loc="upper left")

    ax = axes[3]
    edges = ["1.0", "2.0", "4.0", "8.0", "16.0", "32.0", "64.0", "+Inf"]
    names = ["1", "2", "3-4", "5-8", "9-16", "17-32", "33-64", ">64"]
    bucket = f"sum by (le) (rate(kairos_batch_rows_bucket{{{SEL}}}{rate}))"
    data = series(prom, bucket, start, end)
    if data:
        t = data["+Inf"][0]
        cumulative = [np.nan_to_num(np.interp(t, *data[e])) if e in data else np.zeros_like(t) for e in edges]
        total = np.where(cumulative[-1] > 0, cumulative[-1], np.nan)
        shares = [(cumulative[i] - (cumulative[i - 1] if i else 0)) / total for i in range(len(edges))]
        ax.stackplot(t, np.nan_to_num(shares), labels=names, cmap=None,
                     colors=plt.cm.viridis(np.linspace(0, 0.95, len(edges))))
    ax.set_title("Batch size distribution (share of executions by rows)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left", ncol=4)

    ax = axes[4]
    plot_stack(ax, prom, f"sum by (path) (rate(kairos_dispatches_total{{{SEL}}}{rate})) / ignoring (path) group_left "
                         f"sum(rate(kairos_dispatches_total{{{SEL}}}{rate}))", start, end,
               order=["gemv", "gemm"], colors=["tab:cyan", "tab:purple"])
    ax.set_ylim(0, 1)
    ax.set_title("GEMV / GEMM share of executions")
    ax.legend(fontsize=7, loc="upper left")

    ax = axes[5]
    plot_lines(ax, prom, [(
        f'sum(rate(kairos_deadline_met_total{{{SEL},class="online"}}{rate})) / (sum(rate(kairos_deadline_met_total{{{SEL},class="online"}}{rate})) '
        f'+ sum(rate(kairos_deadline_missed_total{{{SEL},class="online"}}{rate})))', "deadline met")], start, end,
        color="tab:green")
    ax.axhline(0.99, color="black", linestyle=":", linewidth=1, label="objective 99%")
    ax.set_ylim(-0.02, 1.05)
    ax.set_title("SLO attainment (online requests meeting their deadline)")
    ax.legend(fontsize=7, loc="lower left")

    ax = axes[6]
    plot_lines(ax, prom, [(f"sum by (reason) (rate(kairos_request_failures_total{rate})) > 0", "{legend}")],
               start, end)
    ax.set_title("Refusals and failures by reason (all models)")
    ax.set_ylabel("requests/s")
    ax.legend(fontsize=7, loc="upper left")

    ax = axes[7]
    plot_lines(ax, prom, [
        (f"sum(kairos_inflight_requests{{{SEL}}})", "in flight"),
        (f"sum(kairos_queue_requests{{{SEL}}})", "queued requests"),
        (f"sum(kairos_queue_rows{{{SEL}}})", "queued rows"),
    ], start, end)
    ax.set_title("In flight and queued (sampled each scrape)")
    ax.legend(fontsize=7, loc="upper left")

    shade(axes, spans, start)
    fig.suptitle(f"Kairos dashboard, main panels: {MODEL} under changing load "
                 f"(real server + Prometheus, scraped every 1 s, rate windows {WINDOW})", y=0.995)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase-seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    args = parser.parse_args()
    with running_server(None) as server, running_prometheus(
        [f"127.0.0.1:{server.metrics_port}"], interval="1s"
    ) as prom:
        prom.wait_for("up", lambda r: bool(r) and r[0]["value"][1] == "1")
        time.sleep(3)
        spans = run_phases(server.address, args.phase_seconds)
        time.sleep(4)
        # A picture of a broken server is no picture of Kairos: say so loudly.
        internal = prom.value('sum(kairos_request_failures_total{reason="internal"})')
        if internal:
            errors = [line for line in server.log().splitlines() if "ERROR" in line][:5]
            print(f"WARNING: {internal:.0f} requests failed with internal errors:", *errors, sep="\n")
        draw(prom, spans, args.out)


if __name__ == "__main__":
    main()
