"""`MetricsSink` exported in the Prometheus text format on its own HTTP port.

Naming follows Prometheus conventions: prefix `kairos_`, base units (seconds),
counters end in `_total`, histograms rather than summaries (summaries cannot be
aggregated across replicas). Labels: `model`, `version`, plus `class`
(online/batch), `reason` (failures), `path` (gemv/gemm) and `state` where they
apply.

Cost: the per-request hooks run on the serving path, so they do not go through
prometheus_client's metric objects (a `.labels()` lookup plus a lock per counter,
several per request: about 7 µs a request here). Each (model, version[, class])
keeps plain counters and bucket counts in one slotted object, found with one dict
lookup and updated under one lock (`bisect` picks the bucket); the collector turns
them into metric families only when Prometheus scrapes. `bench/metrics_overhead.py`
measures it.
"""

from __future__ import annotations

import contextlib
import math
import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from importlib import metadata
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from . import MetricsSink

# 100 µs .. 10 s in the 1-2.5-5 steps Prometheus's own default buckets use, so
# typical SLO thresholds (1 ms, 5 ms, 25 ms, 100 ms, ...) fall on a bucket edge.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05,
    0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)
# Rows per execution: powers of two up to the largest batch a model is likely to allow.
BATCH_ROWS_BUCKETS: tuple[float, ...] = tuple(float(2**i) for i in range(11))
# Observed / predicted service time of one execution: 1.0 is a perfect latency model.
PREDICTION_RATIO_BUCKETS: tuple[float, ...] = (
    0.25, 0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0,
)

# Failure reasons `request_finished` knows (see `MetricsSink`); their series are
# created at 0 up front so ratios and `rate()` work before the first failure.
FAILURE_REASONS: tuple[str, ...] = (
    "invalid_argument", "not_found", "unavailable", "refused_admission",
    "limit_exceeded", "deadline_exceeded", "cancelled", "internal",
)
MODEL_STATES: tuple[str, ...] = ("READY", "LOADING", "UNAVAILABLE", "UNLOADING", "UNLOADED")
REQUEST_CLASSES: tuple[str, ...] = ("online", "batch")
# Model names reach the labels straight from requests (a NOT_FOUND request names any
# model it likes); past this many label sets, new ones are counted under OTHER_MODEL
# so a misbehaving client cannot grow the series without bound.
MAX_LABEL_SETS = 1000
OTHER_MODEL = "__other__"


class _Histogram:
    """Per-bucket counts (not cumulative; the last is +Inf) and the sum of observations."""

    __slots__ = ("counts", "sum")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)
        self.sum = 0.0

    def cumulative(self, bounds: Sequence[str]) -> list[tuple[str, int]]:
        total, out = 0, []
        for bound, count in zip((*bounds, "+Inf"), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


class _RequestStats:
    """What one (model, version, class) has answered."""

    __slots__ = ("success", "failure", "failures", "rows", "latency", "met", "missed")

    def __init__(self, latency_buckets: int) -> None:
        self.success = self.failure = self.rows = self.met = self.missed = 0
        # Every known reason at 0 from the start, so ratios and rate() have data.
        self.failures = dict.fromkeys(FAILURE_REASONS, 0)
        self.latency = _Histogram(latency_buckets)


class _BatchStats:
    """What one (model, version) has executed."""

    __slots__ = ("gemv", "gemm", "rows", "queue", "compute", "predicted", "observed", "ratio")

    def __init__(self, latency_buckets: int) -> None:
        self.gemv = self.gemm = 0
        self.predicted = self.observed = 0.0
        self.rows = _Histogram(len(BATCH_ROWS_BUCKETS))
        self.queue = _Histogram(latency_buckets)
        self.compute = _Histogram(latency_buckets)
        self.ratio = _Histogram(len(PREDICTION_RATIO_BUCKETS))


class _ModelStats:
    """Gauges of one (model, version)."""

    __slots__ = ("inflight", "queue_requests", "queue_rows")

    def __init__(self) -> None:
        self.inflight = self.queue_requests = self.queue_rows = 0


class PrometheusMetrics(MetricsSink):
    """The real metrics: one private registry, served by `start_http_server`.

    The per-request series live in plain Python objects updated under one lock and
    are turned into metric families only when scraped (`_Collector`); rare ones
    (model state, load time, SLO) are ordinary prometheus_client gauges.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        latency_buckets: Sequence[float] = LATENCY_BUCKETS,
        max_label_sets: int = MAX_LABEL_SETS,
    ) -> None:
        # `*_created` series double the series count and nothing here reads them.
        # The switch is process-wide; the server has no other exporter.
        with contextlib.suppress(AttributeError):
            prometheus_client.disable_created_metrics()
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._server: Any = None
        self._thread: Any = None
        self._lock = threading.Lock()
        self._bounds = tuple(sorted(latency_buckets))
        self._requests: dict[tuple[str, str, str], _RequestStats] = {}
        self._batches: dict[tuple[str, str], _BatchStats] = {}
        self._models: dict[tuple[str, str], _ModelStats] = {}
        self._max_label_sets = max_label_sets
        self.registry.register(_Collector(self))
        self._define_rare()

    def _define_rare(self) -> None:
        reg = self.registry
        mv = ("model", "version")
        self.model_state_gauge = Gauge(
            "kairos_model_state", "1 for the state a model version is in, 0 for the others.",
            (*mv, "state"), registry=reg)
        self.load_duration = Gauge(
            "kairos_model_load_duration_seconds",
            "How long the last load of a model version took (warm-up and profiling included).",
            mv, registry=reg)
        self.loads = Counter(
            "kairos_model_loads", "Completed loads of a model version.", mv, registry=reg)
        self.slo = Gauge(
            "kairos_model_slo_seconds", "The model version's default latency objective.",
            mv, registry=reg)
        info = Gauge("kairos_build_info", "Always 1; labels say which Kairos runs.",
                     ("kairos_version",), registry=reg)
        info.labels(_kairos_version()).set(1)

    def _capped(self, table: dict, key: tuple) -> tuple:
        """`key`, or its OTHER_MODEL form once `table` holds max_label_sets entries."""
        if len(table) < self._max_label_sets:
            return key
        return (OTHER_MODEL, "", *key[2:])

    def _request_stats(self, model: str, version: str, klass: str) -> _RequestStats:
        key = self._capped(self._requests, (model, version, klass))
        with self._lock:
            return self._requests.setdefault(key, _RequestStats(len(self._bounds)))

    def _batch_stats(self, model: str, version: str) -> _BatchStats:
        with self._lock:
            return self._batches.setdefault((model, version), _BatchStats(len(self._bounds)))

    def _model_stats(self, model: str, version: str) -> _ModelStats:
        key = self._capped(self._models, (model, version))
        with self._lock:
            return self._models.setdefault(key, _ModelStats())

    def prepare(self, model: str, version: str) -> None:
        """Create a model version's series at 0, so they exist before its first request."""
        for klass in REQUEST_CLASSES:
            if (model, version, klass) not in self._requests:
                self._request_stats(model, version, klass)
        if (model, version) not in self._batches:
            self._batch_stats(model, version)
        if (model, version) not in self._models:
            self._model_stats(model, version)

    # ---- MetricsSink: hot path ---------------------------------------------------------

    def request_finished(
        self,
        model: str,
        version: str,
        outcome: str,
        latency_s: float,
        rows: int,
        klass: str = "online",
        met_deadline: bool | None = None,
    ) -> None:
        stats = self._requests.get((model, version, klass))
        if stats is None:
            stats = self._request_stats(model, version, klass)
        with self._lock:
            if outcome == "success":
                stats.success += 1
                stats.rows += rows
                # Only successes: fast refusals would otherwise pull the tail latency down.
                latency = stats.latency
                latency.counts[bisect_left(self._bounds, latency_s)] += 1
                latency.sum += latency_s
            else:
                stats.failure += 1
                stats.failures[outcome] = stats.failures.get(outcome, 0) + 1
            if met_deadline is True:
                stats.met += 1
            elif met_deadline is False:
                stats.missed += 1

    def batch_executed(
        self,
        model: str,
        version: str,
        rows: int,
        queue_times_s: Sequence[float],
        compute_s: float,
        predicted_s: float | None,
    ) -> None:
        stats = self._batches.get((model, version))
        if stats is None:
            stats = self._batch_stats(model, version)
        bounds = self._bounds
        with self._lock:
            # One row is a matrix-vector product; more rows make it matrix-matrix.
            if rows <= 1:
                stats.gemv += 1
            else:
                stats.gemm += 1
            stats.rows.counts[bisect_left(BATCH_ROWS_BUCKETS, rows)] += 1
            stats.rows.sum += rows
            stats.compute.counts[bisect_left(bounds, compute_s)] += 1
            stats.compute.sum += compute_s
            queue = stats.queue
            for queue_s in queue_times_s:
                queue.counts[bisect_left(bounds, queue_s)] += 1
                queue.sum += queue_s
            if predicted_s is not None and predicted_s > 0:
                ratio = compute_s / predicted_s
                stats.predicted += predicted_s
                stats.observed += compute_s
                stats.ratio.counts[bisect_left(PREDICTION_RATIO_BUCKETS, ratio)] += 1
                stats.ratio.sum += ratio

    def request_started(self, model: str, version: str) -> None:
        stats = self._models.get((model, version)) or self._model_stats(model, version)
        with self._lock:
            stats.inflight += 1

    def request_ended(self, model: str, version: str) -> None:
        stats = self._models.get((model, version)) or self._model_stats(model, version)
        with self._lock:
            stats.inflight -= 1

    def queue_depth(self, model: str, version: str, requests: int, rows: int) -> None:
        stats = self._models.get((model, version)) or self._model_stats(model, version)
        stats.queue_requests, stats.queue_rows = requests, rows

    def snapshot(self) -> tuple[dict, dict, dict]:
        """Deep copies of the per-request tables, taken under the lock (for the collector)."""
        with self._lock:
            return (
                {k: _copy(v) for k, v in self._requests.items()},
                {k: _copy(v) for k, v in self._batches.items()},
                {k: _copy(v) for k, v in self._models.items()},
            )

    # ---- MetricsSink: model life cycle (rare) ------------------------------------------

    def model_state(self, model: str, version: str, state: str) -> None:
        states = MODEL_STATES if state in MODEL_STATES else (*MODEL_STATES, state)
        for name in states:
            self.model_state_gauge.labels(model, version, name).set(1 if name == state else 0)
        if state == "READY":
            self.prepare(model, version)

    def model_loaded(self, model: str, version: str, duration_s: float) -> None:
        self.load_duration.labels(model, version).set(duration_s)
        self.loads.labels(model, version).inc()

    def model_slo(self, model: str, version: str, slo_s: float | None) -> None:
        """The model version's default latency objective (None: it has none)."""
        if slo_s is None or not math.isfinite(slo_s):
            with contextlib.suppress(KeyError):
                self.slo.remove(model, version)
            return
        self.slo.labels(model, version).set(slo_s)

    # ---- export ------------------------------------------------------------------------

    def start_http_server(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve /metrics on host:port (0 = any free port); returns the bound port."""
        if self._server is not None:
            raise RuntimeError("metrics HTTP server already started")
        self._server, self._thread = prometheus_client.start_http_server(
            port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def stop_http_server(self) -> None:
        """Stop serving /metrics (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def exposition(self) -> bytes:
        """The current metrics in the Prometheus text format."""
        return prometheus_client.generate_latest(self.registry)

    def exported_names(self) -> set[str]:
        """Every sample name this registry can expose (`_bucket`/`_sum`/`_count` included)."""
        return set(exported_names(self.registry.collect()))


def _copy(stats: Any) -> Any:
    """A copy of a stats object whose lists and dicts are not shared with the original."""
    clone = object.__new__(type(stats))
    for name in type(stats).__slots__:
        value = getattr(stats, name)
        if isinstance(value, _Histogram):
            copied = _Histogram(len(value.counts) - 1)
            copied.counts, copied.sum = list(value.counts), value.sum
            value = copied
        elif isinstance(value, dict):
            value = dict(value)
        setattr(clone, name, value)
    return clone


class _Collector:
    """Turns PrometheusMetrics' tables into metric families when Prometheus scrapes."""

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self.metrics = metrics
        self.latency_le = [floatToGoString(b) for b in metrics._bounds]
        self.rows_le = [floatToGoString(b) for b in BATCH_ROWS_BUCKETS]
        self.ratio_le = [floatToGoString(b) for b in PREDICTION_RATIO_BUCKETS]

    def collect(self) -> Iterator[Any]:
        requests, batches, models = self.metrics.snapshot()
        yield from self._request_families(requests)
        yield from self._batch_families(batches)
        yield from self._model_families(models)

    def _request_families(self, table: dict) -> Iterator[Any]:
        mvc = ["model", "version", "class"]
        total = CounterMetricFamily(
            "kairos_requests", "Requests answered, by outcome (success or failure).",
            labels=[*mvc, "outcome"])
        failures = CounterMetricFamily(
            "kairos_request_failures", "Requests answered with an error, by reason.",
            labels=[*mvc, "reason"])
        rows = CounterMetricFamily(
            "kairos_inferred_rows", "Rows (batch-dimension entries) of successful requests.",
            labels=mvc)
        latency = HistogramMetricFamily(
            "kairos_request_duration_seconds",
            "End-to-end latency of successful requests, from receipt to reply.", labels=mvc)
        met = CounterMetricFamily(
            "kairos_deadline_met", "Requests answered before their deadline.", labels=mvc)
        missed = CounterMetricFamily(
            "kairos_deadline_missed",
            "Requests that missed their deadline (served late or expired in the queue).",
            labels=mvc)
        for key, stats in table.items():
            total.add_metric([*key, "success"], stats.success)
            total.add_metric([*key, "failure"], stats.failure)
            for reason, count in stats.failures.items():
                failures.add_metric([*key, reason], count)
            rows.add_metric(list(key), stats.rows)
            latency.add_metric(list(key), stats.latency.cumulative(self.latency_le),
                               stats.latency.sum)
            met.add_metric(list(key), stats.met)
            missed.add_metric(list(key), stats.missed)
        return iter((total, failures, rows, latency, met, missed))

    def _batch_families(self, table: dict) -> Iterator[Any]:
        mv = ["model", "version"]
        executions = CounterMetricFamily(
            "kairos_executions", "Model executions (batches run).", labels=mv)
        dispatches = CounterMetricFamily(
            "kairos_dispatches", "Executions by path: gemv = one row, gemm = several rows.",
            labels=[*mv, "path"])
        rows = HistogramMetricFamily(
            "kairos_batch_rows", "Rows per model execution (batch size).", labels=mv)
        queue = HistogramMetricFamily(
            "kairos_queue_duration_seconds",
            "Time a request waited in the scheduler's queue before its batch ran.", labels=mv)
        compute = HistogramMetricFamily(
            "kairos_compute_duration_seconds", "Time one model execution took.", labels=mv)
        predicted = CounterMetricFamily(
            "kairos_service_time_predicted_seconds",
            "Service time the latency model predicted, summed over executions it predicted.",
            labels=mv)
        observed = CounterMetricFamily(
            "kairos_service_time_observed_seconds",
            "Service time observed, summed over the same executions as the prediction.",
            labels=mv)
        ratio = HistogramMetricFamily(
            "kairos_service_time_observed_to_predicted_ratio",
            "Observed / predicted service time of one execution (1 = exact).", labels=mv)
        for key, stats in table.items():
            labels = list(key)
            # Every execution takes exactly one path, so the sum is the execution count.
            executions.add_metric(labels, stats.gemv + stats.gemm)
            dispatches.add_metric([*labels, "gemv"], stats.gemv)
            dispatches.add_metric([*labels, "gemm"], stats.gemm)
            rows.add_metric(labels, stats.rows.cumulative(self.rows_le), stats.rows.sum)
            queue.add_metric(labels, stats.queue.cumulative(self.latency_le), stats.queue.sum)
            compute.add_metric(labels, stats.compute.cumulative(self.latency_le), stats.compute.sum)
            predicted.add_metric(labels, stats.predicted)
            observed.add_metric(labels, stats.observed)
            ratio.add_metric(labels, stats.ratio.cumulative(self.ratio_le), stats.ratio.sum)
        return iter((executions, dispatches, rows, queue, compute, predicted, observed, ratio))

    def _model_families(self, table: dict) -> Iterator[Any]:
        mv = ["model", "version"]
        inflight = GaugeMetricFamily(
            "kairos_inflight_requests", "Requests inside the server now.", labels=mv)
        queued = GaugeMetricFamily(
            "kairos_queue_requests", "Requests waiting in the scheduler's queue.", labels=mv)
        queued_rows = GaugeMetricFamily(
            "kairos_queue_rows", "Rows waiting in the scheduler's queue.", labels=mv)
        for key, stats in table.items():
            inflight.add_metric(list(key), stats.inflight)
            queued.add_metric(list(key), stats.queue_requests)
            queued_rows.add_metric(list(key), stats.queue_rows)
        return iter((inflight, queued, queued_rows))


def exported_names(families: Iterable[Any]) -> Iterable[str]:
    """Sample names of metric families, whether or not they hold samples yet."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "gauge": ("",),
        "info": ("_info",),
    }
    for family in families:
        for suffix in suffixes.get(family.type, ("",)):
            yield family.name + suffix


def _kairos_version() -> str:
    try:
        return metadata.version("kairos-serve")
    except metadata.PackageNotFoundError:
        return "unknown"
