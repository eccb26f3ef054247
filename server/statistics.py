"""Per-model cumulative statistics for the protocol's ModelStatistics RPC.

Fed through the same hooks as the Prometheus metrics (it is a `MetricsSink`),
so the counts always agree with what was measured. Counting follows the
protocol: queue and compute counts grow by one per request, execution_count by
one per batch, inference_count by rows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .metrics import MetricsSink


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)


@dataclass
class VersionStatistics:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    # rows in a batch -> compute duration of batches of that size
    batches: dict[int, Duration] = field(default_factory=dict)


class StatisticsRecorder(MetricsSink):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[tuple[str, str], VersionStatistics] = {}

    def _get(self, model: str, version: str) -> VersionStatistics:
        key = (model, version)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats.setdefault(key, VersionStatistics())
        return stats

    def request_finished(
        self, model: str, version: str, outcome: str, latency_s: float, rows: int,
        klass: str = "online", met_deadline: bool | None = None,
    ) -> None:
        if not version:  # refused before a version was chosen
            return
        with self._lock:
            stats = self._get(model, version)
            (stats.success if outcome == "success" else stats.fail).add(latency_s)
            stats.last_inference_ms = int(time.time() * 1000)

    def batch_executed(
        self, model: str, version: str, rows: int, queue_times_s: Sequence[float],
        compute_s: float, predicted_s: float | None,
    ) -> None:
        requests = len(queue_times_s)
        with self._lock:
            stats = self._get(model, version)
            stats.queue.add(sum(queue_times_s), requests)
            stats.compute_infer.add(compute_s * requests, requests)
            stats.inference_count += rows
            stats.execution_count += 1
            stats.batches.setdefault(rows, Duration()).add(compute_s)

    def snapshot(self, model: str, version: str) -> VersionStatistics:
        with self._lock:
            stats = self._get(model, version)
            return VersionStatistics(
                Duration(stats.success.count, stats.success.ns),
                Duration(stats.fail.count, stats.fail.ns),
                Duration(stats.queue.count, stats.queue.ns),
                Duration(stats.compute_infer.count, stats.compute_infer.ns),
                stats.inference_count,
                stats.execution_count,
                stats.last_inference_ms,
                {rows: Duration(d.count, d.ns) for rows, d in stats.batches.items()},
            )

    def forget(self, model: str) -> None:
        with self._lock:
            for key in [k for k in self._stats if k[0] == model]:
                del self._stats[key]


class FanoutMetrics(MetricsSink):
    """Feeds every hook to several sinks (Prometheus and ModelStatistics)."""

    def __init__(self, *sinks: MetricsSink) -> None:
        self.sinks = sinks

    def request_finished(self, *args, **kwargs) -> None:  # type: ignore[override]
        for sink in self.sinks:
            sink.request_finished(*args, **kwargs)

    def requests_refused(self, model: str, version: str, reason: str, klass: str, count: int) -> None:
        for sink in self.sinks:
            sink.requests_refused(model, version, reason, klass, count)

    def request_started(self, model: str, version: str) -> None:
        for sink in self.sinks:
            sink.request_started(model, version)

    def request_ended(self, model: str, version: str) -> None:
        for sink in self.sinks:
            sink.request_ended(model, version)

    def queue_depth(self, model: str, version: str, requests: int, rows: int) -> None:
        for sink in self.sinks:
            sink.queue_depth(model, version, requests, rows)

    def batch_executed(self, *args, **kwargs) -> None:  # type: ignore[override]
        for sink in self.sinks:
            sink.batch_executed(*args, **kwargs)

    def variant_served(self, *args, **kwargs) -> None:  # type: ignore[override]
        for sink in self.sinks:
            sink.variant_served(*args, **kwargs)

    def model_state(self, model: str, version: str, state: str) -> None:
        for sink in self.sinks:
            sink.model_state(model, version, state)

    def model_loaded(self, model: str, version: str, duration_s: float) -> None:
        for sink in self.sinks:
            sink.model_loaded(model, version, duration_s)

    def model_slo(self, model: str, version: str, slo_s: float | None) -> None:
        for sink in self.sinks:
            sink.model_slo(model, version, slo_s)
