"""Per-request cost of Kairos's Prometheus metrics: µs per request, with vs without.

One "request" is what the server calls for a lone online request run at batch 1:
`request_finished` + `batch_executed` (the hot pair), and the full set with the
in-flight gauge (`request_started` ... `request_ended`). "Without" is the no-op
`MetricsSink` the layers use when metrics are off; the difference is the cost.
Also times one scrape (the exposition Prometheus fetches) of a registry holding
a few models: it holds the GIL, so the event loop waits that long once per scrape.

    flock /tmp/kairos-bench.lock .venv/bin/python bench/metrics_overhead.py
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit

from kairos.server.metrics import MetricsSink
from kairos.server.metrics.prometheus import PrometheusMetrics


def pair(sink: MetricsSink) -> None:
    sink.request_finished("mlp256", "1", "success", 0.00042, 1, "online", True)
    sink.batch_executed("mlp256", "1", 1, (0.00003,), 0.00019, 0.0002)


def full(sink: MetricsSink) -> None:
    sink.request_started("mlp256", "1")
    sink.request_finished("mlp256", "1", "success", 0.00042, 1, "online", True)
    sink.batch_executed("mlp256", "1", 1, (0.00003,), 0.00019, 0.0002)
    sink.request_ended("mlp256", "1")


def per_call_us(func, sink: MetricsSink, number: int, repeat: int) -> float:
    """Median over `repeat` runs of the mean CPU µs per call (CPU time, not wall time:
    on a shared machine, time spent descheduled is not the hooks' cost)."""
    func(sink)  # the first call creates the model's series
    timer = timeit.Timer(lambda: func(sink), timer=time.process_time)
    return statistics.median(timer.repeat(number=number, repeat=repeat)) / number * 1e6


def scrape_ms(models: int, repeat: int) -> tuple[float, int]:
    metrics = PrometheusMetrics()
    for i in range(models):
        metrics.model_state(f"model{i}", "1", "READY")
        pair_sink_model(metrics, f"model{i}")
    text = metrics.exposition()
    times = timeit.Timer(metrics.exposition, timer=time.process_time).repeat(number=20, repeat=repeat)
    return statistics.median(times) / 20 * 1e3, len(text.splitlines())


def pair_sink_model(metrics: PrometheusMetrics, model: str) -> None:
    metrics.request_finished(model, "1", "success", 0.00042, 1, "online", True)
    metrics.batch_executed(model, "1", 1, (0.00003,), 0.00019, 0.0002)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    rows = []
    for name, func in (("request_finished + batch_executed", pair), ("+ request_started/ended", full)):
        without = per_call_us(func, MetricsSink(), args.number, args.repeat)
        with_ = per_call_us(func, PrometheusMetrics(), args.number, args.repeat)
        rows.append((name, without, with_))
    print(f"{'hooks per request':<36}{'without µs':>12}{'with µs':>10}{'cost µs':>10}")
    for name, without, with_ in rows:
        print(f"{name:<36}{without:>12.2f}{with_:>10.2f}{with_ - without:>10.2f}")
    for models in (3, 20):
        ms, lines = scrape_ms(models, args.repeat)
        print(f"scrape (exposition) with {models} models READY: {ms:.2f} ms, {lines} lines")


if __name__ == "__main__":
    main()
