"""A short soak (bench/soak.py's mix for ~20 s): fails on memory growth per request, on
any unexpected status, and on any request of the mix not answered as it should be. The
10-minute run and its figures are in BENCHMARKS.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
# What the short soak shows here: ~35k requests in 20 s, RSS +1.2 MiB after warm-up,
# 50-105 B per request (allocator steps and reloads, not a leak). A leak of 0.5 KiB per request
# that reaches the scheduler is ~400 B per request of the mix: this bound catches it.
MAX_GROWTH_PER_REQUEST_B = 200
# Fewer requests after warm-up than this and a leak of that size would hide in the noise.
MIN_REQUESTS_AFTER_WARMUP = 10_000


def _load_soak():
    spec = importlib.util.spec_from_file_location("kairos_bench_soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_short_soak_serves_every_request_with_bounded_memory(capsys):
    soak = _load_soak()
    lines: list[str] = []
    result = soak.soak(duration=20, interval=1, warmup=6, reload_every=5, log=lines.append)
    with capsys.disabled():
        print(f"\nshort soak: {result.requests} requests ({result.warm_requests} in warm-up), "
              f"{result.reloads} reloads, outcomes {result.outcomes}; RSS after warm-up "
              f"{result.warm_rss_kib / 1024:.1f} MiB, final {result.final_rss_kib / 1024:.1f} MiB, "
              f"drift {result.drift:+.1%}, {result.growth_per_request_b:+.0f} B per request")
    assert not [k for k in result.outcomes if k.startswith("UNEXPECTED")], result.errors
    # Every unary request of the seeded mix got exactly the answer its kind must get.
    unary = {k: n for k, n in result.outcomes.items() if not k.startswith("stream_")}
    assert unary == dict(soak.expected_outcomes(result.requests)), result.errors
    # Every streamed request was answered; only load refusals may replace an answer.
    streamed = {k: n for k, n in result.outcomes.items() if k.startswith("stream_")}
    assert sum(streamed.values()) == soak.STREAM_BURST * result.streams > 0
    refusals = ("stream_RESOURCE_EXHAUSTED", "stream_DEADLINE_EXCEEDED")
    assert set(streamed) <= {"stream_ok", *refusals}, result.errors
    assert streamed.get("stream_ok", 0) >= 0.9 * sum(streamed.values()), streamed
    assert result.requests - result.warm_requests >= MIN_REQUESTS_AFTER_WARMUP
    assert result.growth_per_request_b < MAX_GROWTH_PER_REQUEST_B, "\n".join(lines)
