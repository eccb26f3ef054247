"""Every variant `kairos optimize` produces loads and answers in a real Kairos server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from kairos.optimize import runtime
from kairos.optimize.data import Dataset
from kairos.optimize.distill import DistillSettings
from kairos.optimize.pipeline import Destination, distill_model, prune_model, quantize_model
from kairos.optimize.prune import PruneSettings
from kairos.optimize.train import TrainConfig


@pytest.fixture(scope="module")
def variant_repo(teacher, digits, tmp_path_factory) -> Path:
    """One repository holding the teacher and one variant of each kind."""
    import shutil

    from kairos.optimize.pipeline import Measure

    repo = tmp_path_factory.mktemp("served") / "repo"
    shutil.copytree(teacher.repo, repo)
    measure, model = Measure(digits.test, repeats=3), repo / "mlp"
    calibration = Dataset(digits.train.x[:300], source="calibration")
    quick = TrainConfig(epochs=2, seed=0)
    quantize_model(model, "dynamic", measure)
    quantize_model(model, "static", measure, calibration=calibration, method="entropy")
    quantize_model(model, "fp16", measure)
    prune_model(model, PruneSettings("structured", 0.5), measure, train_data=digits.train, cfg=quick)
    prune_model(model, PruneSettings("unstructured", 0.5), measure)
    distill_model(model, DistillSettings(hidden=[32]), digits.train, measure, Destination(),
                  TrainConfig(epochs=10, lr=3e-3, seed=0))
    return repo


VARIANTS = ["mlp-int8-dynamic", "mlp-int8", "mlp-fp16", "mlp-pruned50", "mlp-sparse50", "mlp-distilled"]


def test_every_variant_answers_in_the_server(variant_repo: Path, digits) -> None:
    from kairos.client import InferenceClient
    from kairos_testing.server import running_server

    rows = digits.test.x[:8]
    with running_server(variant_repo) as server, InferenceClient(server.address) as client:
        client.wait_until_ready(60, models=["mlp", *VARIANTS])
        for name in VARIANTS:
            assert (variant_repo / name / "report.json").is_file()
            served = client.infer(name, {"pixels": rows}, timeout=30)["logits"]
            local = runtime.run(runtime.make_session(variant_repo / name / "1" / "model.onnx"), rows)
            assert served.shape == (8, 10), name
            # Dynamic int8 may batch these rows with others' differently; others are exact.
            np.testing.assert_allclose(served, local, rtol=1e-4, atol=0.1 if "dynamic" in name else 1e-4,
                                       err_msg=name)
            assert np.mean(served.argmax(1) == digits.test.y[:8]) >= 0.75, name
