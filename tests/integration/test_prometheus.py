"""Kairos's metrics, scraped by a real Prometheus, agree with what a client sent.

A real server (built-in demo models) and a real Prometheus scraping it every second;
a client sends `mlp256` requests at a fixed rate for a few seconds, then we ask
Prometheus's HTTP API: request counts and rate, the latency histogram's counts and
buckets, and the GEMV/GEMM split. How fast Kairos is belongs to the benchmarks
(BENCHMARKS.md), not to this test.
"""

from __future__ import annotations

import bisect
import time

import grpc
import numpy as np
import pytest
from kairos.protos import grpc_service_pb2_grpc
from kairos.protos.codec import build_request
from kairos.server.metrics.prometheus import LATENCY_BUCKETS
from kairos_testing.prometheus import PrometheusProcess, running_prometheus
from kairos_testing.server import running_server

pytestmark = pytest.mark.slow

MODEL = "mlp256"
RATE = 120.0  # requests per second: a small share of one core, so the rate is exact
LOAD_S = 8.0
WARMUP = 20
# Every 4th request carries MULTI_ROWS rows, so both dispatch paths (GEMV and GEMM)
# occur, and the tail is mostly compute the server sees rather than the ~1 ms of
# gRPC stack (client and server side) that only the client's clock includes.
MULTI_ROW_EVERY = 4
MULTI_ROWS = 64


def requests_for(count: int) -> list:
    rng = np.random.default_rng(0)
    single = build_request(MODEL, {"input": rng.random((1, 256), dtype=np.float32)})
    multi = build_request(MODEL, {"input": rng.random((MULTI_ROWS, 256), dtype=np.float32)})
    return [multi if i % MULTI_ROW_EVERY == MULTI_ROW_EVERY - 1 else single for i in range(count)]


def fixed_rate_load(stub, rate: float, seconds: float) -> tuple[list[float], list[float]]:
    """Send at `rate`/s on a fixed schedule (late sends go at once).

    Returns each request's send time (unix seconds) and latency (seconds)."""
    requests = requests_for(int(rate * seconds))
    sent_at: list[float] = []
    latencies: list[float] = []
    origin = time.perf_counter()
    for i, request in enumerate(requests):
        delay = origin + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent_at.append(time.time())
        sent = time.perf_counter()
        stub.ModelInfer(request, timeout=10)
        latencies.append(time.perf_counter() - sent)
    return sent_at, latencies


def bucket_index(seconds: float) -> int:
    """Index of the histogram bucket holding `seconds` (len = the +Inf bucket)."""
    return bisect.bisect_left(LATENCY_BUCKETS, seconds)


def scrapes_within(prom: PrometheusProcess, start: float, end: float) -> tuple[float, float]:
    """Timestamps of the first and last scrapes of Kairos taken between start and end."""
    span = int(end - start + 5)
    series = prom.api("query", query=f"up[{span}s]", time=end)["result"]
    stamps = [float(t) for t, _ in series[0]["values"] if start < float(t) <= end]
    assert len(stamps) >= 3, f"too few scrapes during the load: {stamps}"
    return stamps[0], stamps[-1]


def expected_rows(requests: int) -> int:
    """Rows of the first `requests` of a `requests_for` sequence."""
    multi = sum(1 for i in range(requests) if i % MULTI_ROW_EVERY == MULTI_ROW_EVERY - 1)
    return requests + (MULTI_ROWS - 1) * multi


def measure(prom: PrometheusProcess, stub, sent_before: int) -> tuple[list[float], int, float]:
    """One fixed-rate load; checks the counts and the rate; (client latencies, requests
    sent so far, the time the last scrape holding them all was queried)."""
    counted = f'sum(kairos_requests_total{{model="{MODEL}"}})'
    prom.wait_for(counted, lambda r: bool(r) and float(r[0]["value"][1]) >= sent_before)
    sent_at, latencies = fixed_rate_load(stub, RATE, LOAD_S)
    end = time.time()
    sent = sent_before + len(latencies)
    # Every request is counted, exactly, once a scrape after the load lands.
    prom.wait_for(counted, lambda r: bool(r) and float(r[0]["value"][1]) == sent)
    query_at = time.time()

    # rate() over the load matches the rate the client sent at (it falls behind its
    # schedule when the machine is busy, so count what it really sent). The window is
    # laid on two scrapes inside the load: a scrape missing at a window's edge would
    # make rate() extrapolate less and read low.
    first, last = scrapes_within(prom, sent_at[0], end)
    window = last - first
    sent_rate = sum(1 for t in sent_at if first < t <= last) / window
    observed_rate = prom.value(
        f'sum(rate(kairos_requests_total{{model="{MODEL}"}}[{int(window * 1000) + 1}ms]))', last)
    assert observed_rate == pytest.approx(sent_rate, rel=0.10), (observed_rate, sent_rate)

    # Every execution took exactly one of the two paths, and both occurred.
    gemv = prom.value(f'sum(kairos_dispatches_total{{model="{MODEL}",path="gemv"}})', query_at)
    gemm = prom.value(f'sum(kairos_dispatches_total{{model="{MODEL}",path="gemm"}})', query_at)
    executions = prom.value(f'sum(kairos_executions_total{{model="{MODEL}"}})', query_at)
    assert gemv + gemm == executions
    assert gemv > 0 and gemm > 0
    rows = prom.value(f'sum(kairos_inferred_rows_total{{model="{MODEL}"}})', query_at)
    assert rows == expected_rows(sent_before) + expected_rows(len(latencies))
    return latencies, sent, query_at


def histogram(prom: PrometheusProcess, at: float) -> tuple[list[tuple[float, float]], float, float]:
    """The online latency histogram as scraped: (le, cumulative count) by le, count, sum."""
    selector = f'{{model="{MODEL}",class="online"}}'
    series = prom.query(f"sum by (le) (kairos_request_duration_seconds_bucket{selector})", at)
    buckets = sorted((float(s["metric"]["le"]), float(s["value"][1])) for s in series)
    count = prom.value(f"sum(kairos_request_duration_seconds_count{selector})", at)
    total = prom.value(f"sum(kairos_request_duration_seconds_sum{selector})", at)
    return buckets, count, total


def test_prometheus_sees_the_load_the_client_sent() -> None:
    """Behaviour, not speed: every request is counted once by the counters and by the
    latency histogram, the histogram's buckets are the documented ones and cumulative,
    and what the server measured for each request fits inside what the client measured
    for it (its clock starts later and stops earlier, on the same machine)."""
    with running_server(None) as server, running_prometheus(
        [f"127.0.0.1:{server.metrics_port}"], interval="1s"
    ) as prom, grpc.insecure_channel(server.address) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        client_latencies = []
        for request in requests_for(WARMUP):
            started = time.perf_counter()
            stub.ModelInfer(request, timeout=10)
            client_latencies.append(time.perf_counter() - started)
        latencies, sent, query_at = measure(prom, stub, WARMUP)
        client_latencies += latencies
        buckets, count, total = histogram(prom, query_at)
        assert server.alive(), server.log()

    assert count == sent == len(client_latencies)  # the histogram counted every request
    bounds = [le for le, _ in buckets]
    assert bounds == [*LATENCY_BUCKETS, float("inf")]  # the documented buckets, +Inf last
    cumulative = [value for _, value in buckets]
    assert cumulative == sorted(cumulative) and cumulative[-1] == count  # cumulative, whole
    # Each server observation is at most its request's client latency: the sum is at most
    # the client's sum, and every observation lies at or below the client's slowest.
    assert 0 < total <= sum(client_latencies), (total, sum(client_latencies))
    slowest = bucket_index(max(client_latencies))
    if slowest < len(LATENCY_BUCKETS):
        assert cumulative[slowest] == count, (max(client_latencies), buckets)
