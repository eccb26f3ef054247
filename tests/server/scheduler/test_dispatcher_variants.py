"""A model group's dispatcher on real onnxruntime sessions: a batch runs on the variant the
policy chose, and the request learns which one served it.

Deterministic: the variants' L(b) are taught by hand (fp32 far too slow for the deadline,
int8 fast), not profiled, so the choice does not depend on this machine's speed."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from kairos.server.backend.onnx_backend import OnnxBackend
from kairos.server.errors import Refused
from kairos.server.metrics import NULL_METRICS
from kairos.server.repository.config import ModelSettings, SchedulingSettings
from kairos.server.scheduler.factory import make_dispatcher
from kairos.server.types import InferenceRequest
from kairos_testing.models import model_group_repository

X = np.random.default_rng(2).standard_normal((2, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    repo = model_group_repository(tmp_path_factory.mktemp("group"))
    return [OnnxBackend(repo / name / "1" / "model.onnx", ModelSettings()) for name in ("mlp", "mlp-int8")]


def dispatcher(backends):
    fp32, int8 = backends
    made = make_dispatcher(
        model="mlp", version="1", runner=fp32, settings=SchedulingSettings(profile=False),
        max_batch_size=64, metrics=NULL_METRICS,
        variants=[("fp32", 1.0, fp32), ("int8", 0.98, int8)], accuracy_budget=0.05,
    )
    slow, fast = (v.latency for v in made.core.variants.variants)
    for rows in slow.buckets:
        for _ in range(5):
            slow.observe(rows, 1.0)
            fast.observe(rows, 1e-4)
    return made


def request(min_accuracy: float = 0.0) -> InferenceRequest:
    now = time.monotonic()
    return InferenceRequest(model="mlp", version="1", inputs={"input": X}, outputs=None, rows=2,
                            deadline=now + 0.5, arrival=now, min_accuracy=min_accuracy)


def test_a_batch_runs_on_the_variant_chosen_for_it(backends):
    async def main():
        made = dispatcher(backends)
        await made.start()
        first = request()
        result = await made.submit(first)
        await made.close()
        return made, first, result

    made, served, result = asyncio.run(main())
    assert served.served_by == "int8"  # fp32's L(b) of 1 s cannot make a 0.5 s deadline
    expected = backends[1].run({"input": X}, None)
    for name, value in expected.items():
        np.testing.assert_array_equal(result[name], value)
    assert made.describe()["variants"]["variants"][1]["rows"] == 2
    assert made.single_latency() < 0.5  # the fastest variant's L(1), not fp32's 1 s


def test_a_floor_above_every_fast_variant_is_refused_rather_than_served_lower(backends):
    async def main():
        made = dispatcher(backends)
        await made.start()
        # the first may run at once; the second waits for the loop: a queue, so the idle
        # server's probe (which admits one predicted-late request) does not apply
        queued = [made.enqueue(request()) for _ in range(2)]
        with pytest.raises(Refused, match="cannot meet deadline"):
            made.enqueue(request(min_accuracy=0.99))
        await asyncio.gather(*(ticket.waiter for ticket in queued))
        assert [t.request.served_by for t in queued] == ["int8", "int8"]
        await made.close()

    asyncio.run(main())
