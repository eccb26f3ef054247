"""Metrics are fed by transport, scheduler and repository, and feed nothing.

`MetricsSink` is the interface every layer calls; its methods do nothing, so a
layer can be used (and tested) without metrics. `prometheus.PrometheusMetrics`
is the real implementation exported on the metrics HTTP port.

Outcome labels for `request_finished`: success, invalid_argument, not_found,
unavailable, refused_admission, limit_exceeded, deadline_exceeded, cancelled, internal
(the model failed), internal_bug (Kairos itself failed: a bug, logged with its traceback).
"""

from __future__ import annotations

from collections.abc import Sequence


class MetricsSink:
    """No-op metrics; subclasses export them. Every method must be cheap."""

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
        """A request was answered (successfully or not), end to end."""

    def requests_refused(
        self, model: str, version: str, reason: str, klass: str, count: int
    ) -> None:
        """`count` requests the native front end refused before Python (fed in bulk,
        once per hand-off); model is "" when the name was unknown. By default each is
        one `request_finished`."""
        for _ in range(count):
            self.request_finished(model, version, reason, 0.0, 0, klass, None)

    def request_started(self, model: str, version: str) -> None:
        """A request entered the server (in-flight gauge +1)."""

    def request_ended(self, model: str, version: str) -> None:
        """A request left the server (in-flight gauge -1)."""

    def queue_depth(self, model: str, version: str, requests: int, rows: int) -> None:
        """The scheduler's queue for this model now holds this much."""

    def batch_executed(
        self,
        model: str,
        version: str,
        rows: int,
        queue_times_s: Sequence[float],
        compute_s: float,
        predicted_s: float | None,
    ) -> None:
        """One model execution: its rows, each request's queue time, compute time,
        and what the latency model predicted for it (None when it made no prediction)."""

    def variant_served(
        self, model: str, version: str, variant: str, requests: int, rows: int,
        spent: float, budget: float, switches: int,
    ) -> None:
        """A model group's batch ran on `variant`: requests completed and rows in it, the
        accuracy the group has spent on average against its budget, and how often its
        variant choice has switched so far."""

    def model_state(self, model: str, version: str, state: str) -> None:
        """A model version changed state: READY, LOADING, UNAVAILABLE, UNLOADING, UNLOADED."""

    def model_loaded(self, model: str, version: str, duration_s: float) -> None:
        """A model version finished loading (warm-up and profiling included)."""

    def model_slo(self, model: str, version: str, slo_s: float | None) -> None:
        """A model version's default latency objective in seconds (None: none), so
        dashboards and alerts can compare the tail latency with it."""


NULL_METRICS = MetricsSink()
