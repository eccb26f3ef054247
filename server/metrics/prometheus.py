"""`MetricsSink` exported in the Prometheus text format on its own HTTP port.

Naming follows Prometheus conventions: prefix `kairos_`, base units (seconds),
counters end in `_total`, histograms rather than summaries (summaries cannot be
aggregated across replicas). Labels: `model`, `version`, plus `class`
(online/batch), `reason` (failures), `path` (gemv/gemm) and `state` where they
apply.

Cost: `.labels(...)` hashes and looks up its label values under a lock on every
call, so the children for each (model, version[, class]) are bound once and kept
in plain dicts; a hot call is one dict lookup plus a few locked increments.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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


@dataclass(slots=True)
class _RequestChildren:
    """Pre-bound children for one (model, version, class)."""

    success: Any
    failure: Any
    failures: dict[str, Any]
    rows: Any
    latency: Any
    met: Any
    missed: Any


@dataclass(slots=True)
class _BatchChildren:
    """Pre-bound children for one (model, version)'s executions."""

    executions: Any
    gemv: Any
    gemm: Any
    rows: Any
    queue: Any
    compute: Any
    predicted: Any
    observed: Any
    ratio: Any


@dataclass(slots=True)
class _ModelChildren:
    """Pre-bound gauges for one (model, version)."""

    inflight: Any
    queue_requests: Any
    queue_rows: Any


class PrometheusMetrics(MetricsSink):
    """The real metrics: one private registry, served by `start_http_server`."""

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
        self._requests: dict[tuple[str, str, str], _RequestChildren] = {}
        self._batches: dict[tuple[str, str], _BatchChildren] = {}
        self._models: dict[tuple[str, str], _ModelChildren] = {}
        self._max_label_sets = max_label_sets
        self._define(tuple(latency_buckets))

    # ---- definitions -------------------------------------------------------------------

    def _define(self, buckets: tuple[float, ...]) -> None:
        reg = self.registry
        mv = ("model", "version")
        mvc = (*mv, "class")
        self.requests = Counter(
            "kairos_requests", "Requests answered, by outcome (success or failure).",
            (*mvc, "outcome"), registry=reg)
        self.failures = Counter(
            "kairos_request_failures", "Requests answered with an error, by reason.",
            (*mvc, "reason"), registry=reg)
        self.rows = Counter(
            "kairos_inferred_rows", "Rows (batch-dimension entries) of successful requests.",
            mvc, registry=reg)
        self.latency = Histogram(
            "kairos_request_duration_seconds",
            "End-to-end latency of successful requests, from receipt to reply.",
            mvc, buckets=buckets, registry=reg)
        self.deadline_met = Counter(
            "kairos_deadline_met", "Requests answered before their deadline.", mvc, registry=reg)
        self.deadline_missed = Counter(
            "kairos_deadline_missed",
            "Requests that missed their deadline (served late or expired in the queue).",
            mvc, registry=reg)
        self.executions = Counter(
            "kairos_executions", "Model executions (batches run).", mv, registry=reg)
        self.dispatches = Counter(
            "kairos_dispatches", "Executions by path: gemv = one row, gemm = several rows.",
            (*mv, "path"), registry=reg)
        self.batch_rows = Histogram(
            "kairos_batch_rows", "Rows per model execution (batch size).",
            mv, buckets=BATCH_ROWS_BUCKETS, registry=reg)
        self.queue_time = Histogram(
            "kairos_queue_duration_seconds",
            "Time a request waited in the scheduler's queue before its batch ran.",
            mv, buckets=buckets, registry=reg)
        self.compute_time = Histogram(
            "kairos_compute_duration_seconds", "Time one model execution took.",
            mv, buckets=buckets, registry=reg)
        self.predicted = Counter(
            "kairos_service_time_predicted_seconds",
            "Service time the latency model predicted, summed over executions it predicted.",
            mv, registry=reg)
        self.observed = Counter(
            "kairos_service_time_observed_seconds",
            "Service time observed, summed over the same executions as the prediction.",
            mv, registry=reg)
        self.prediction_ratio = Histogram(
            "kairos_service_time_observed_to_predicted_ratio",
            "Observed / predicted service time of one execution (1 = exact).",
            mv, buckets=PREDICTION_RATIO_BUCKETS, registry=reg)
        self.inflight = Gauge(
            "kairos_inflight_requests", "Requests inside the server now.", mv, registry=reg)
        self.queue_requests = Gauge(
            "kairos_queue_requests", "Requests waiting in the scheduler's queue.", mv, registry=reg)
        self.queue_rows = Gauge(
            "kairos_queue_rows", "Rows waiting in the scheduler's queue.", mv, registry=reg)
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

    def _request_children(self, model: str, version: str, klass: str) -> _RequestChildren:
        if len(self._requests) >= self._max_label_sets:
            other = self._requests.get((OTHER_MODEL, "", klass))
            if other is not None:
                return other
            model, version = OTHER_MODEL, ""
        labels = (model, version, klass)
        children = _RequestChildren(
            success=self.requests.labels(*labels, "success"),
            failure=self.requests.labels(*labels, "failure"),
            failures={reason: self.failures.labels(*labels, reason) for reason in FAILURE_REASONS},
            rows=self.rows.labels(*labels),
            latency=self.latency.labels(*labels),
            met=self.deadline_met.labels(*labels),
            missed=self.deadline_missed.labels(*labels),
        )
        self._requests[labels] = children
        return children

    def _batch_children(self, model: str, version: str) -> _BatchChildren:
        children = _BatchChildren(
            executions=self.executions.labels(model, version),
            gemv=self.dispatches.labels(model, version, "gemv"),
            gemm=self.dispatches.labels(model, version, "gemm"),
            rows=self.batch_rows.labels(model, version),
            queue=self.queue_time.labels(model, version),
            compute=self.compute_time.labels(model, version),
            predicted=self.predicted.labels(model, version),
            observed=self.observed.labels(model, version),
            ratio=self.prediction_ratio.labels(model, version),
        )
        self._batches[(model, version)] = children
        return children

    def _model_children(self, model: str, version: str) -> _ModelChildren:
        if len(self._models) >= self._max_label_sets:
            other = self._models.get((OTHER_MODEL, ""))
            if other is not None:
                return other
            model, version = OTHER_MODEL, ""
        children = _ModelChildren(
            inflight=self.inflight.labels(model, version),
            queue_requests=self.queue_requests.labels(model, version),
            queue_rows=self.queue_rows.labels(model, version),
        )
        self._models[(model, version)] = children
        return children

    def prepare(self, model: str, version: str) -> None:
        """Create a model version's series at 0, so they exist before its first request."""
        for klass in REQUEST_CLASSES:
            if (model, version, klass) not in self._requests:
                self._request_children(model, version, klass)
        if (model, version) not in self._batches:
            self._batch_children(model, version)
        if (model, version) not in self._models:
            self._model_children(model, version)

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
        children = self._requests.get((model, version, klass))
        if children is None:
            children = self._request_children(model, version, klass)
        if outcome == "success":
            children.success.inc()
            children.rows.inc(rows)
            # Only successes: fast refusals would otherwise pull the tail latency down.
            children.latency.observe(latency_s)
        else:
            children.failure.inc()
            failure = children.failures.get(outcome)
            if failure is None:
                failure = children.failures[outcome] = self.failures.labels(
                    model, version, klass, outcome)
            failure.inc()
        if met_deadline is True:
            children.met.inc()
        elif met_deadline is False:
            children.missed.inc()

    def batch_executed(
        self,
        model: str,
        version: str,
        rows: int,
        queue_times_s: Sequence[float],
        compute_s: float,
        predicted_s: float | None,
    ) -> None:
        children = self._batches.get((model, version))
        if children is None:
            children = self._batch_children(model, version)
        children.executions.inc()
        # One row is a matrix-vector product; more rows make it matrix-matrix.
        (children.gemv if rows <= 1 else children.gemm).inc()
        children.rows.observe(rows)
        children.compute.observe(compute_s)
        for queue_s in queue_times_s:
            children.queue.observe(queue_s)
        if predicted_s is not None and predicted_s > 0:
            children.predicted.inc(predicted_s)
            children.observed.inc(compute_s)
            children.ratio.observe(compute_s / predicted_s)

    def request_started(self, model: str, version: str) -> None:
        children = self._models.get((model, version)) or self._model_children(model, version)
        children.inflight.inc()

    def request_ended(self, model: str, version: str) -> None:
        children = self._models.get((model, version)) or self._model_children(model, version)
        children.inflight.dec()

    def queue_depth(self, model: str, version: str, requests: int, rows: int) -> None:
        children = self._models.get((model, version)) or self._model_children(model, version)
        children.queue_requests.set(requests)
        children.queue_rows.set(rows)

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
