"""Micro-benchmark of scheduler overhead (no gRPC, no onnxruntime).

    taskset -c 0 python -m kairos.server.scheduler.microbench [--compute-us 190] [--n 3000]

1. The pure core: admit + next_batch + finish per request, alone (c=1) and in
   batches of 32.
2. The asyncio dispatcher at concurrency 1 with a runner that burns a fixed
   compute time in GIL-releasing numpy calls (as onnxruntime releases the GIL),
   in `inline` and `thread` execution, against calling the runner directly in
   the coroutine. Overhead = p50 of submit-to-result minus p50 of the direct call;
   back to back (each request the moment the last one returned) and with an idle
   gap between requests (as at c=1 over a network, where eager dispatch applies).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Mapping

import numpy as np

from ..metrics import MetricsSink
from ..repository.config import SchedulingSettings
from ..types import InferenceRequest
from .core import SchedulerCore
from .factory import make_dispatcher
from .latency import LatencyModel


class SpinRunner:
    """Burns `compute_s` of CPU per run in numpy calls that release the GIL."""

    def __init__(self, compute_s: float):
        self.compute_s = compute_s
        self._a = np.ones(4096, np.float32)
        self._b = np.empty_like(self._a)

    def run(self, inputs: Mapping[str, np.ndarray], outputs: list[str] | None) -> dict[str, np.ndarray]:
        end = time.perf_counter() + self.compute_s
        a, b = self._a, self._b
        while time.perf_counter() < end:
            np.multiply(a, 1.0001, out=b)
        x = inputs["x"]
        return {"y": x + 1}

    def example_inputs(self, rows: int, like: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        return {"x": np.zeros((rows, 256), np.float32)}


def _request(now: float, x: np.ndarray, slo: float = 1.0) -> InferenceRequest:
    # A generous deadline: this measures overhead, and a preempted process (shared
    # machine) must not turn samples into refusals.
    return InferenceRequest(
        model="m", version="1", inputs={"x": x}, outputs=None, rows=x.shape[0],
        deadline=now + slo, arrival=now,
    )


def bench_core(n: int) -> dict[str, float]:
    """µs of core work per request: alone, and in batches of 32."""
    latency = LatencyModel(64)
    for b in latency.buckets:
        for _ in range(20):
            latency.observe(b, 0.0002 + 0.00001 * b)
    core = SchedulerCore(latency=latency, max_batch_size=64)
    x = np.zeros((1, 256), np.float32)
    requests = [_request(0.0, x) for _ in range(32)]
    now = 0.0
    t0 = time.perf_counter()
    for _ in range(n):
        core.admit(requests[0], now)
        batch = core.next_batch(now)
        core.finish(batch, now, 0.0002)
    alone = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    rounds = max(1, n // 32)
    for _ in range(rounds):
        for request in requests:
            core.admit(request, now)
        batch = core.next_batch(now)
        core.finish(batch, now, 0.00052)
    batched = (time.perf_counter() - t0) / (rounds * 32)
    return {"core_alone_us": alone * 1e6, "core_batched_us": batched * 1e6}


async def _c1(submit, n: int, x: np.ndarray, gap_s: float = 0.0) -> list[float]:
    """Concurrency 1; with gap_s, the loop idles that long between requests (as a
    server waits for the client's next request), which enables eager dispatch."""
    samples = []
    for _ in range(n):
        if gap_s:
            await asyncio.sleep(gap_s)
        request = _request(time.monotonic(), x)
        t0 = time.perf_counter()
        await submit(request)
        samples.append(time.perf_counter() - t0)
    return samples


async def bench_dispatcher(compute_s: float, n: int, gap_s: float) -> dict[str, float]:
    runner = SpinRunner(compute_s)
    x = np.zeros((1, 256), np.float32)
    bare = []
    for _ in range(n):
        t0 = time.perf_counter()
        runner.run({"x": x}, None)
        bare.append(time.perf_counter() - t0)

    async def direct(request):
        return runner.run(request.inputs, request.outputs)

    out = {"compute_p50_us": statistics.median(bare) * 1e6}
    for label, gap in (("back_to_back", 0.0), ("gap", gap_s)):
        out[f"direct_{label}_p50_us"] = statistics.median(await _c1(direct, n, x, gap)) * 1e6
    for mode in ("inline", "inline_no_eager", "thread"):
        dispatcher = make_dispatcher(
            model="m", version="1", runner=runner, max_batch_size=64, metrics=MetricsSink(),
            settings=SchedulingSettings(execution=mode.split("_")[0], profile_budget_s=0.5),
        )
        if mode == "inline_no_eager":
            dispatcher._eager_gap = lambda: float("inf")
        dispatcher.prepare()
        await dispatcher.start()
        await _c1(dispatcher.submit, 200, x)  # warm
        for label, gap in (("back_to_back", 0.0), ("gap", gap_s)):
            samples = await _c1(dispatcher.submit, n, x, gap)
            key = f"{mode}_{label}"
            out[f"{key}_p50_us"] = statistics.median(samples) * 1e6
            out[f"{key}_p99_us"] = float(np.percentile(samples, 99)) * 1e6
            out[f"{key}_overhead_us"] = out[f"{key}_p50_us"] - out[f"direct_{label}_p50_us"]
        await dispatcher.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compute-us", type=float, default=190.0)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--gap-us", type=float, default=300.0, help="idle time between requests")
    args = parser.parse_args()
    result = bench_core(args.n * 10)
    result.update(asyncio.run(bench_dispatcher(args.compute_us / 1e6, args.n, args.gap_us / 1e6)))
    print(json.dumps({k: round(v, 2) for k, v in result.items()}, indent=2))


if __name__ == "__main__":
    main()
