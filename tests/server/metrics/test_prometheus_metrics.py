"""PrometheusMetrics, scraped straight from its registry (no server needed)."""

from __future__ import annotations

import inspect
import subprocess
import threading
import urllib.error
import urllib.request

import pytest
from kairos.server.metrics import MetricsSink
from kairos.server.metrics.prometheus import (
    FAILURE_REASONS,
    LATENCY_BUCKETS,
    MODEL_STATES,
    PrometheusMetrics,
)
from kairos_testing.prometheus import binary
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

M, V = "mlp256", "1"


def samples(metrics: PrometheusMetrics) -> dict[tuple, float]:
    """{(sample name, sorted label items): value} of the current exposition."""
    text = metrics.exposition().decode()
    out: dict[tuple, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(metrics: PrometheusMetrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def metrics() -> PrometheusMetrics:
    return PrometheusMetrics()


def test_success_counts_request_rows_and_latency(metrics: PrometheusMetrics) -> None:
    metrics.request_finished(M, V, "success", 0.0007, 4, met_deadline=True)
    metrics.request_finished(M, V, "success", 0.003, 2, met_deadline=True)
    mvc = {"model": M, "version": V, "class": "online"}
    assert value(metrics, "kairos_requests_total", **mvc, outcome="success") == 2
    assert value(metrics, "kairos_requests_total", **mvc, outcome="failure") == 0
    assert value(metrics, "kairos_inferred_rows_total", **mvc) == 6
    assert value(metrics, "kairos_deadline_met_total", **mvc) == 2
    assert value(metrics, "kairos_deadline_missed_total", **mvc) == 0
    assert value(metrics, "kairos_request_duration_seconds_count", **mvc) == 2
    assert value(metrics, "kairos_request_duration_seconds_sum", **mvc) == pytest.approx(0.0037)
    assert value(metrics, "kairos_request_duration_seconds_bucket", **mvc, le="0.0005") == 0
    assert value(metrics, "kairos_request_duration_seconds_bucket", **mvc, le="0.001") == 1
    assert value(metrics, "kairos_request_duration_seconds_bucket", **mvc, le="0.005") == 2


def test_failures_are_counted_by_reason_and_kept_out_of_latency(metrics: PrometheusMetrics) -> None:
    metrics.request_finished(M, V, "refused_admission", 0.0001, 3, klass="batch", met_deadline=False)
    metrics.request_finished(M, V, "something_new", 0.0001, 1, klass="batch")
    mvc = {"model": M, "version": V, "class": "batch"}
    assert value(metrics, "kairos_requests_total", **mvc, outcome="failure") == 2
    assert value(metrics, "kairos_request_failures_total", **mvc, reason="refused_admission") == 1
    assert value(metrics, "kairos_request_failures_total", **mvc, reason="something_new") == 1
    # Every known reason exists at 0 from the first request on, so ratios have data.
    for reason in FAILURE_REASONS:
        assert (("kairos_request_failures_total", tuple(sorted({**mvc, "reason": reason}.items())))
                in samples(metrics))
    assert value(metrics, "kairos_deadline_missed_total", **mvc) == 1
    assert value(metrics, "kairos_inferred_rows_total", **mvc) == 0
    assert value(metrics, "kairos_request_duration_seconds_count", **mvc) == 0


def test_met_deadline_none_counts_neither(metrics: PrometheusMetrics) -> None:
    metrics.request_finished(M, V, "success", 0.001, 1)
    mvc = {"model": M, "version": V, "class": "online"}
    assert value(metrics, "kairos_deadline_met_total", **mvc) == 0
    assert value(metrics, "kairos_deadline_missed_total", **mvc) == 0


def test_batches_split_into_gemv_and_gemm(metrics: PrometheusMetrics) -> None:
    metrics.batch_executed(M, V, 1, [0.0002], 0.0002, None)
    metrics.batch_executed(M, V, 8, [0.001, 0.002, 0.0], 0.0004, 0.0005)
    metrics.batch_executed(M, V, 64, [0.003], 0.0012, 0.0010)
    mv = {"model": M, "version": V}
    gemv = value(metrics, "kairos_dispatches_total", **mv, path="gemv")
    gemm = value(metrics, "kairos_dispatches_total", **mv, path="gemm")
    assert (gemv, gemm) == (1, 2)
    assert value(metrics, "kairos_executions_total", **mv) == gemv + gemm
    assert value(metrics, "kairos_batch_rows_sum", **mv) == 73
    assert value(metrics, "kairos_batch_rows_bucket", **mv, le="8.0") == 2
    assert value(metrics, "kairos_queue_duration_seconds_count", **mv) == 5
    assert value(metrics, "kairos_compute_duration_seconds_count", **mv) == 3
    # Only the executions with a prediction enter predicted-vs-observed.
    assert value(metrics, "kairos_service_time_predicted_seconds_total", **mv) == pytest.approx(0.0015)
    assert value(metrics, "kairos_service_time_observed_seconds_total", **mv) == pytest.approx(0.0016)
    assert value(metrics, "kairos_service_time_observed_to_predicted_ratio_count", **mv) == 2
    assert value(metrics, "kairos_service_time_observed_to_predicted_ratio_bucket", **mv, le="0.8") == 1


def test_gauges(metrics: PrometheusMetrics) -> None:
    mv = {"model": M, "version": V}
    metrics.request_started(M, V)
    metrics.request_started(M, V)
    metrics.request_ended(M, V)
    metrics.queue_depth(M, V, 3, 17)
    assert value(metrics, "kairos_inflight_requests", **mv) == 1
    assert value(metrics, "kairos_queue_requests", **mv) == 3
    assert value(metrics, "kairos_queue_rows", **mv) == 17


def test_model_state_is_one_hot_and_load_is_recorded(metrics: PrometheusMetrics) -> None:
    mv = {"model": M, "version": V}
    metrics.model_state(M, "", "LOADING")  # before the repository knows the versions
    metrics.model_state(M, V, "LOADING")
    metrics.model_loaded(M, V, 1.25)
    metrics.model_state(M, V, "READY")
    states = {s: value(metrics, "kairos_model_state", **mv, state=s) for s in MODEL_STATES}
    assert states == {s: float(s == "READY") for s in MODEL_STATES}
    # The version-less placeholder is gone once a real version reported.
    assert not any(name == "kairos_model_state" and dict(labels)["version"] == ""
                   for name, labels in samples(metrics))
    assert value(metrics, "kairos_model_load_duration_seconds", **mv) == 1.25
    assert value(metrics, "kairos_model_loads_total", **mv) == 1
    # READY creates the version's request series at 0 (dashboards show 0, not "no data").
    assert value(metrics, "kairos_requests_total", **mv, **{"class": "online"}, outcome="success") == 0


def test_model_slo_set_and_cleared(metrics: PrometheusMetrics) -> None:
    metrics.model_slo(M, V, 0.025)
    assert value(metrics, "kairos_model_slo_seconds", model=M, version=V) == 0.025
    metrics.model_slo(M, V, None)
    assert ("kairos_model_slo_seconds", (("model", M), ("version", V))) not in samples(metrics)


def test_registries_are_independent() -> None:
    first, second = PrometheusMetrics(), PrometheusMetrics()
    first.request_finished(M, V, "success", 0.001, 1)
    mvc = {"model": M, "version": V, "class": "online", "outcome": "success"}
    assert value(first, "kairos_requests_total", **mvc) == 1
    assert ("kairos_requests_total", tuple(sorted(mvc.items()))) not in samples(second)


def test_conventions(metrics: PrometheusMetrics) -> None:
    assert LATENCY_BUCKETS[0] == 0.0001 and LATENCY_BUCKETS[-1] == 10.0
    assert list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS)
    families = list(metrics.registry.collect())
    assert {f.type for f in families} <= {"counter", "gauge", "histogram"}  # no summaries
    for family in families:
        assert family.name.startswith("kairos_")
        if family.type == "histogram" and "duration" in family.name:
            assert family.name.endswith("_seconds")
    names = metrics.exported_names()
    assert "kairos_requests_total" in names and "kairos_request_duration_seconds_bucket" in names
    assert not any(name.endswith("_created") for name in names)


def test_signatures_match_the_sink() -> None:
    """The scheduler and transport call MetricsSink's signatures; the override must accept them."""
    for name, method in inspect.getmembers(MetricsSink, inspect.isfunction):
        if name.startswith("_"):
            continue
        ours = inspect.signature(getattr(PrometheusMetrics, name))
        assert list(ours.parameters) == list(inspect.signature(method).parameters), name


def test_http_server_on_a_free_port(metrics: PrometheusMetrics) -> None:
    metrics.request_finished(M, V, "success", 0.001, 1)
    port = metrics.start_http_server(0, "127.0.0.1")
    try:
        assert port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            body = reply.read().decode()
        assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        parsed = {(s.name, tuple(sorted(s.labels.items()))): s.value
                  for f in text_string_to_metric_families(body) for s in f.samples}
        key = (("class", "online"), ("model", M), ("outcome", "success"), ("version", V))
        assert parsed[("kairos_requests_total", key)] == 1
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
        with pytest.raises(RuntimeError):
            metrics.start_http_server(0, "127.0.0.1")
    finally:
        metrics.stop_http_server()
    metrics.stop_http_server()  # idempotent


def test_label_sets_are_capped() -> None:
    """Unknown model names from clients must not grow the series without bound."""
    metrics = PrometheusMetrics(max_label_sets=3)
    for i in range(10):
        metrics.request_started(f"nope{i}", "")
        metrics.request_finished(f"nope{i}", "", "not_found", 0.0001, 0)
        metrics.request_ended(f"nope{i}", "")
    models = {labels for (name, labels) in samples(metrics) if name == "kairos_requests_total"}
    assert len({dict(labels)["model"] for labels in models}) == 4  # 3 + "__other__"
    assert value(metrics, "kairos_request_failures_total", model="__other__", version="",
                 reason="not_found", **{"class": "online"}) == 7
    assert value(metrics, "kairos_inflight_requests", model="__other__", version="") == 0


def test_bucket_edges_count_as_less_or_equal(metrics: PrometheusMetrics) -> None:
    metrics.request_finished(M, V, "success", 0.001, 1)  # exactly on the 1 ms edge
    metrics.request_finished(M, V, "success", 11.0, 1)   # beyond the last bucket
    mvc = {"model": M, "version": V, "class": "online"}
    assert value(metrics, "kairos_request_duration_seconds_bucket", **mvc, le="0.0005") == 0
    assert value(metrics, "kairos_request_duration_seconds_bucket", **mvc, le="0.001") == 1
    assert value(metrics, "kairos_request_duration_seconds_bucket", **mvc, le="10.0") == 1
    assert value(metrics, "kairos_request_duration_seconds_bucket", **mvc, le="+Inf") == 2


def test_concurrent_updates_are_not_lost(metrics: PrometheusMetrics) -> None:
    def hammer() -> None:
        for _ in range(2000):
            metrics.request_started(M, V)
            metrics.request_finished(M, V, "success", 0.0003, 2, met_deadline=True)
            metrics.batch_executed(M, V, 2, [0.0001], 0.0002, 0.0002)
            metrics.request_ended(M, V)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(20):  # scrapes while the counts move
        metrics.exposition()
    for thread in threads:
        thread.join()
    mvc = {"model": M, "version": V, "class": "online"}
    assert value(metrics, "kairos_requests_total", **mvc, outcome="success") == 8000
    assert value(metrics, "kairos_inferred_rows_total", **mvc) == 16000
    assert value(metrics, "kairos_request_duration_seconds_count", **mvc) == 8000
    assert value(metrics, "kairos_dispatches_total", model=M, version=V, path="gemm") == 8000
    assert value(metrics, "kairos_inflight_requests", model=M, version=V) == 0


def busy(metrics: PrometheusMetrics) -> PrometheusMetrics:
    metrics.model_state(M, V, "READY")
    metrics.model_loaded(M, V, 0.5)
    metrics.model_slo(M, V, 0.01)
    metrics.request_finished(M, V, "success", 0.0004, 3, met_deadline=True)
    metrics.request_finished('odd "name"\\x', V, "not_found", 0.0001, 1)
    metrics.batch_executed(M, V, 3, [0.0001, 0.0002], 0.0003, 0.00025)
    metrics.queue_depth(M, V, 2, 5)
    return metrics


def test_direct_text_equals_the_registry_view(metrics: PrometheusMetrics) -> None:
    """/metrics is written directly; prometheus_client's view of the registry must agree."""
    busy(metrics)
    direct = samples(metrics)
    registry = {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
                for s in f.samples}
    assert direct == registry
    assert ("kairos_requests_total", (("class", "online"), ("model", 'odd "name"\\x'),
                                      ("outcome", "failure"), ("version", V))) in direct


def test_promtool_accepts_the_exposition(metrics: PrometheusMetrics) -> None:
    """`promtool check metrics` parses the text and lints names, units and help."""
    done = subprocess.run([binary("promtool"), "check", "metrics"], input=busy(metrics).exposition(),
                          capture_output=True, timeout=30)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
