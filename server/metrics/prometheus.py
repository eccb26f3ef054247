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
import socket
import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.parser import text_string_to_metric_families
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
    "limit_exceeded", "deadline_exceeded", "cancelled", "internal", "internal_bug",
)
MODEL_STATES: tuple[str, ...] = ("READY", "LOADING", "UNAVAILABLE", "UNLOADING", "UNLOADED")
REQUEST_CLASSES: tuple[str, ...] = ("online", "batch")
# Model names reach the labels straight from requests (a NOT_FOUND request names any
# model it likes); past this many label sets, new ones are counted under OTHER_MODEL
# so a misbehaving client cannot grow the series without bound.
MAX_LABEL_SETS = 1000
OTHER_MODEL = "__other__"
# The classic text format, which every Prometheus 2.x reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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
        # Rare series (model life cycle) are ordinary prometheus_client metrics.
        self.rare_registry = CollectorRegistry()
        self._server: Any = None
        self._thread: Any = None
        self._lock = threading.Lock()
        self._bounds = tuple(sorted(latency_buckets))
        self._requests: dict[tuple[str, str, str], _RequestStats] = {}
        self._batches: dict[tuple[str, str], _BatchStats] = {}
        self._models: dict[tuple[str, str], _ModelStats] = {}
        self._max_label_sets = max_label_sets
        self._writer = _TextWriter(self._bounds)
        self._define_rare()
        self.registry.register(_Collector(self))

    def _define_rare(self) -> None:
        reg = self.rare_registry
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
        self.frontend_refusals = Counter(
            "kairos_frontend_refusals",
            "Requests the native front end refused before Python, by reason (also counted "
            "in kairos_requests_total and kairos_request_failures_total).",
            ("reason",), registry=reg)
        mvv = (*mv, "variant")
        self.variant_requests = Counter(
            "kairos_variant_requests", "Requests of a model group served by each variant.",
            mvv, registry=reg)
        self.variant_rows = Counter(
            "kairos_variant_rows", "Rows of a model group served by each variant (the share: "
            "rate of one over the sum).", mvv, registry=reg)
        self.variant_spent = Gauge(
            "kairos_variant_accuracy_spent",
            "Agreement a model group has given up against its reference, averaged over "
            "recently served rows.", mv, registry=reg)
        self.variant_budget = Gauge(
            "kairos_variant_accuracy_budget", "The most a model group may give up on average.",
            mv, registry=reg)
        self.variant_switches = Counter(
            "kairos_variant_switches", "Times a model group's variant choice switched.",
            mv, registry=reg)
        self._switches_seen: dict[tuple[str, str], int] = {}
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

    def requests_refused(
        self, model: str, version: str, reason: str, klass: str, count: int
    ) -> None:
        stats = self._requests.get((model, version, klass))
        if stats is None:
            stats = self._request_stats(model, version, klass)
        with self._lock:
            stats.failure += count
            stats.failures[reason] = stats.failures.get(reason, 0) + count
        self.frontend_refusals.labels(reason).inc(count)

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

    def variant_served(
        self, model: str, version: str, variant: str, requests: int, rows: int,
        spent: float, budget: float, switches: int,
    ) -> None:
        if requests:
            self.variant_requests.labels(model, version, variant).inc(requests)
        self.variant_rows.labels(model, version, variant).inc(rows)
        self.variant_spent.labels(model, version).set(spent)
        self.variant_budget.labels(model, version).set(budget)
        seen = self._switches_seen.get((model, version), 0)
        if switches != seen:  # the chooser counts since load; a reload starts again at 0
            self._switches_seen[(model, version)] = switches
            self.variant_switches.labels(model, version).inc(max(0, switches - seen) or switches)

    def model_state(self, model: str, version: str, state: str) -> None:
        states = MODEL_STATES if state in MODEL_STATES else (*MODEL_STATES, state)
        for name in states:
            self.model_state_gauge.labels(model, version, name).set(1 if name == state else 0)
        if version:
            # The repository reports LOADING with version "" before it knows which
            # versions exist; once a real version reports, that placeholder is stale.
            for name in states:
                with contextlib.suppress(KeyError):
                    self.model_state_gauge.remove(model, "", name)
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
        server = _MetricsHTTPServer((host, port), self)
        self._thread = threading.Thread(target=server.serve_forever, name="kairos-metrics",
                                        daemon=True)
        self._thread.start()
        self._server = server
        return int(server.server_address[1])

    def stop_http_server(self) -> None:
        """Stop serving /metrics (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def table_text(self) -> str:
        """The per-request series in the text format."""
        return self._writer.write(*self.snapshot())

    def exposition(self) -> bytes:
        """The current metrics in the Prometheus text format (what /metrics serves)."""
        return self.table_text().encode() + prometheus_client.generate_latest(self.rare_registry)

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


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else floatToGoString(value)


class _TextWriter:
    """The per-request tables in the Prometheus text format (0.0.4), written directly.

    prometheus_client builds sample objects and validates every label on each scrape
    (about 7 µs a line); a scrape holds the GIL, so the event loop waits meanwhile.
    Label strings are formatted once per key and cached.
    """

    def __init__(self, latency_bounds: Sequence[float]) -> None:
        self.latency_le = [floatToGoString(b) for b in latency_bounds]
        self.rows_le = [floatToGoString(b) for b in BATCH_ROWS_BUCKETS]
        self.ratio_le = [floatToGoString(b) for b in PREDICTION_RATIO_BUCKETS]
        self._labels: dict[tuple, str] = {}

    def labels(self, key: tuple) -> str:
        text = self._labels.get(key)
        if text is None:
            names = ("model", "version", "class")[: len(key)]
            text = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, key, strict=True))
            self._labels[key] = text
        return text

    def write(self, requests: dict, batches: dict, models: dict) -> str:
        out: list[str] = []
        self._requests(out, requests)
        self._batches(out, batches)
        self._models(out, models)
        return "".join(out)

    @staticmethod
    def header(out: list[str], name: str, kind: str, doc: str) -> None:
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")

    def scalar(self, out: list[str], name: str, kind: str, doc: str, rows: list[tuple]) -> None:
        """One family of plain samples: rows of (key, extra label text, value)."""
        self.header(out, name, kind, doc)
        for key, extra, value in rows:
            out.append(f"{name}{{{self.labels(key)}{extra}}} {_num(value)}\n")

    def histogram(self, out: list[str], name: str, doc: str, rows: list[tuple]) -> None:
        """One histogram family: rows of (key, _Histogram, le strings)."""
        self.header(out, name, "histogram", doc)
        for key, hist, bounds in rows:
            labels = self.labels(key)
            total = 0
            for bound, count in zip((*bounds, "+Inf"), hist.counts, strict=True):
                total += count
                out.append(f'{name}_bucket{{{labels},le="{bound}"}} {total}\n')
            out.append(f"{name}_count{{{labels}}} {total}\n{name}_sum{{{labels}}} {_num(hist.sum)}\n")

    def _requests(self, out: list[str], table: dict) -> None:
        items = list(table.items())
        self.scalar(out, "kairos_requests_total", "counter",
                    "Requests answered, by outcome (success or failure).",
                    [(k, ',outcome="success"', s.success) for k, s in items]
                    + [(k, ',outcome="failure"', s.failure) for k, s in items])
        self.scalar(out, "kairos_request_failures_total", "counter",
                    "Requests answered with an error, by reason.",
                    [(k, f',reason="{_escape(r)}"', n) for k, s in items for r, n in s.failures.items()])
        self.scalar(out, "kairos_inferred_rows_total", "counter",
                    "Rows (batch-dimension entries) of successful requests.",
                    [(k, "", s.rows) for k, s in items])
        self.histogram(out, "kairos_request_duration_seconds",
                       "End-to-end latency of successful requests, from receipt to reply.",
                       [(k, s.latency, self.latency_le) for k, s in items])
        self.scalar(out, "kairos_deadline_met_total", "counter",
                    "Requests answered before their deadline.", [(k, "", s.met) for k, s in items])
        self.scalar(out, "kairos_deadline_missed_total", "counter",
                    "Requests that missed their deadline (served late or expired in the queue).",
                    [(k, "", s.missed) for k, s in items])

    def _batches(self, out: list[str], table: dict) -> None:
        items = list(table.items())
        # Every execution takes exactly one path, so the sum is the execution count.
        self.scalar(out, "kairos_executions_total", "counter", "Model executions (batches run).",
                    [(k, "", s.gemv + s.gemm) for k, s in items])
        self.scalar(out, "kairos_dispatches_total", "counter",
                    "Executions by path: gemv = one row, gemm = several rows.",
                    [(k, ',path="gemv"', s.gemv) for k, s in items]
                    + [(k, ',path="gemm"', s.gemm) for k, s in items])
        self.histogram(out, "kairos_batch_rows", "Rows per model execution (batch size).",
                       [(k, s.rows, self.rows_le) for k, s in items])
        self.histogram(out, "kairos_queue_duration_seconds",
                       "Time a request waited in the scheduler's queue before its batch ran.",
                       [(k, s.queue, self.latency_le) for k, s in items])
        self.histogram(out, "kairos_compute_duration_seconds", "Time one model execution took.",
                       [(k, s.compute, self.latency_le) for k, s in items])
        self.scalar(out, "kairos_service_time_predicted_seconds_total", "counter",
                    "Service time the latency model predicted, summed over executions it predicted.",
                    [(k, "", s.predicted) for k, s in items])
        self.scalar(out, "kairos_service_time_observed_seconds_total", "counter",
                    "Service time observed, summed over the same executions as the prediction.",
                    [(k, "", s.observed) for k, s in items])
        self.histogram(out, "kairos_service_time_observed_to_predicted_ratio",
                       "Observed / predicted service time of one execution (1 = exact).",
                       [(k, s.ratio, self.ratio_le) for k, s in items])

    def _models(self, out: list[str], table: dict) -> None:
        items = list(table.items())
        self.scalar(out, "kairos_inflight_requests", "gauge", "Requests inside the server now.",
                    [(k, "", s.inflight) for k, s in items])
        self.scalar(out, "kairos_queue_requests", "gauge",
                    "Requests waiting in the scheduler's queue.",
                    [(k, "", s.queue_requests) for k, s in items])
        self.scalar(out, "kairos_queue_rows", "gauge", "Rows waiting in the scheduler's queue.",
                    [(k, "", s.queue_rows) for k, s in items])


class _Collector:
    """The tables as metric families, for prometheus_client's registry API
    (`generate_latest`, other exporters): parsed back from the direct text, so the
    two can never disagree."""

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        yield from text_string_to_metric_families(self.metrics.table_text())
        yield from self.metrics.rare_registry.collect()


class _Handler(BaseHTTPRequestHandler):
    """GET /metrics (or /): the exposition; anything else 404."""

    server: _MetricsHTTPServer

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        if urlsplit(self.path).path not in ("/metrics", "/"):
            self.send_error(404)
            return
        body = self.server.metrics.exposition()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # one line per scrape is noise


class _MetricsHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], metrics: PrometheusMetrics) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.metrics = metrics
        super().__init__(address, _Handler)


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
