"""`kairos optimize` on the model zoo: every model gets a variant or a one-line refusal
(exit 2, never a traceback), and the report judges the right output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from kairos.optimize import outputs
from kairos.optimize.cli import main
from kairos_testing import zoo

MODES = ("dynamic", "static", "fp16")


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory) -> Path:
    """A repository of every zoo model, and per model eval.npz (inputs by name + y) and
    calib.npz (256 training rows)."""
    root = tmp_path_factory.mktemp("zoo-optimize")
    zoo.repository(root / "repo")
    d = zoo.digits()
    for name, model in zoo.MODELS.items():
        np.savez(root / f"{name}-eval.npz", y=d.y_test, **model.eval_feeds())
        np.savez(root / f"{name}-calib.npz", **model.feeds(d.x_train[:256]))
    return root


def _quantize(root: Path, name: str, mode: str, *extra: str) -> list[str]:
    args = ["quantize", str(root / "repo" / name), "--mode", mode, "--repeats", "2", "--overwrite", *extra]
    if mode == "static":
        args += ["--calibration", str(root / f"{name}-calib.npz")]
    return args


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_quantize_gives_a_model_or_a_one_line_refusal(zoo_files, name, mode, capsys):
    code = main(_quantize(zoo_files, name, mode, "--eval-data", str(zoo_files / f"{name}-eval.npz")))
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kairos optimize: error: "), err
        return
    suffix = {"dynamic": "int8-dynamic", "static": "int8", "fp16": "fp16"}[mode]
    report = json.loads((zoo_files / "repo" / f"{name}-{suffix}" / "report.json").read_text())
    assert (zoo_files / "repo" / f"{name}-{suffix}" / "1" / "model.onnx").is_file()
    assert report["judged_output"]["role"] in (outputs.SCORES, outputs.LABEL)
    assert report["accuracy"] is not None  # every quantizable zoo model is a labelled classifier


@pytest.mark.parametrize(("name", "reason"), [
    ("sk_forest", "nothing to quantize: the model has no MatMul/Conv/Gemm (it computes with "
                  "TreeEnsembleClassifier)"),
    ("sk_logistic", "nothing to quantize: the model has no MatMul/Conv/Gemm"),
    ("fp16_mlp", "the model computes in fp16"),
])
def test_refusals_say_why(zoo_files, name, reason, capsys):
    assert main(_quantize(zoo_files, name, "dynamic")) == 2
    assert reason in capsys.readouterr().err


def test_the_reported_sklearn_command_now_works(zoo_files, tmp_path, capsys):
    """The issue's command: a skl2onnx MLPClassifier (label INT64 [N] first, probabilities
    second), .npy data and labels, dynamic mode."""
    d = zoo.digits()
    np.save(tmp_path / "x_test.npy", d.x_test)
    np.save(tmp_path / "y_test.npy", d.y_test)
    code = main(["quantize", str(zoo_files / "repo" / "sk_mlp"), "--eval-data", str(tmp_path / "x_test.npy"),
                 "--eval-labels", str(tmp_path / "y_test.npy"), "--mode", "dynamic", "--repeats", "2",
                 "--overwrite"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((zoo_files / "repo" / "sk_mlp-int8-dynamic" / "report.json").read_text())
    assert report["judged_output"] == {"name": "probabilities", "role": "scores"}
    assert report["accuracy"]["baseline"] > 0.95 and report["top1_agreement"] > 0.95
    assert report["outputs"]["label"]["role"] == "label"
    assert "mismatch_fraction" in report["outputs"]["label"]


def test_output_flag_judges_the_label(zoo_files, capsys):
    args = _quantize(zoo_files, "multi_output", "dynamic", "--eval-data",
                     str(zoo_files / "multi_output-eval.npz"), "--output", "label")
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads((zoo_files / "repo" / "multi_output-int8-dynamic" / "report.json").read_text())
    assert report["judged_output"] == {"name": "label", "role": "label"}
    assert report["accuracy"]["baseline"] > 0.9
    assert set(report["outputs"]) == {"logits", "label", "embedding", "lit"}
    assert main([*args[:-1], "nope"]) == 2
    assert "--output nope: the model has no such output (it has logits, label, embedding, lit)" \
        in capsys.readouterr().err


def test_eval_data_is_optional(zoo_files, capsys):
    assert main(_quantize(zoo_files, "encoder", "fp16")) == 0, capsys.readouterr().err
    report = json.loads((zoo_files / "repo" / "encoder-fp16" / "report.json").read_text())
    assert report["eval"]["synthetic"] and report["accuracy"] is None
    assert any("No --eval-data: accuracy was not measured" in note for note in report["notes"])
    assert "1" in report["latency_ms"] and "64" in report["latency_ms"]


def test_fixed_batch_model_is_measured_at_its_batch(zoo_files, capsys):
    args = _quantize(zoo_files, "fixed_batch", "static", "--eval-data", str(zoo_files / "fixed_batch-eval.npz"))
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads((zoo_files / "repo" / "fixed_batch-int8" / "report.json").read_text())
    assert list(report["latency_ms"]) == [str(zoo.FIXED_BATCH)]
    assert report["eval"]["rows"] == len(zoo.digits().y_test)  # ragged last chunk padded, trimmed
    assert report["batch_dependence"]["variant"] is None


def test_roles_and_regression_error():
    probs = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    assert outputs.role(probs) == outputs.SCORES
    assert outputs.role(np.array([1, 0])) == outputs.LABEL
    assert outputs.role(np.ones((2, 1), np.float32)) == outputs.REGRESSION
    assert outputs.judged_output({"label": np.array([0, 1]), "probabilities": probs}) == "probabilities"
    reg = outputs.metrics(np.array([[1.0], [2.0]]), np.array([[1.5], [2.0]]), None)
    assert reg["role"] == "regression" and reg["max_abs_deviation"] == 0.5 and reg["mean_abs_error"] == 0.25
    assert "top1_agreement" not in reg


# -- structured pruning of real graphs ------------------------------------------------------


def _load(name: str):
    import onnx

    return onnx.load(str(zoo.MODELS[name].path()))


def _run(model, feeds):
    return zoo._session(model).run(None, feeds)


@pytest.mark.parametrize("name", ["resnet", "mobilenet", "encoder", "sk_mlp"])
def test_graph_pruning_at_zero_sparsity_keeps_the_function(name):
    from kairos.optimize import prune_graph

    feeds = {k: v[:32] for k, v in zoo.MODELS[name].eval_feeds().items()}
    result = prune_graph.prune(_load(name), 0.0)
    for got, want in zip(_run(result.model, feeds), _run(_load(name), feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_resnet_folds_bn_and_prunes_inside_blocks_only():
    from kairos.optimize import prune_graph

    result = prune_graph.prune(_load("resnet"), 0.25)
    assert result.folded_batchnorms == 6
    assert not any(n.op_type == "BatchNormalization" for n in result.model.graph.node)
    assert [(g["channels_before"], g["channels_after"]) for g in result.pruned] == [(32, 24), (64, 48)]
    # Channels shared through residual adds stay whole, and the reason names the Add.
    assert any(k["stopped_at"].startswith("Add 'residual") for k in result.kept_whole)
    feeds = zoo.MODELS["resnet"].eval_feeds()
    accuracy = np.mean(_run(result.model, feeds)[0].argmax(1) == zoo.digits().y_test)
    assert accuracy > 0.85


def test_mobilenet_depthwise_and_encoder_feed_forward_are_pruned():
    from kairos.optimize import prune_graph

    mobile = prune_graph.prune(_load("mobilenet"), 0.5)
    depthwise = [n for n in mobile.model.graph.node if n.op_type == "Conv"
                 and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert [a.i for a in depthwise[0].attribute if a.name == "group"] == [32]
    encoder = prune_graph.prune(_load("encoder"), 0.5)
    assert [(g["producer"].split("'")[1].split("_")[0], g["channels_after"]) for g in encoder.pruned] == \
        [("ffn", 128)]
    assert any("Reshape" in k["stopped_at"] for k in encoder.kept_whole)  # attention heads kept


@pytest.mark.parametrize(("name", "reason"), [
    ("gru", "cannot prune structurally: the model has no Conv or MatMul by a constant weight to remove "
            "channels from (it computes with GRU 'gru"),
    ("sk_forest", "TreeEnsembleClassifier 'TreeEnsembleClassifier'"),
    ("multi_output", "stopped at Reshape 'reshape"),
])
def test_pruning_refusals_name_the_op(zoo_files, name, reason, capsys):
    args = ["prune", str(zoo_files / "repo" / name), "--repeats", "2", "--overwrite"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert reason in err and len(err.strip().splitlines()) == 1


def test_prune_cli_on_resnet_reports_groups(zoo_files, capsys):
    args = ["prune", str(zoo_files / "repo" / "resnet"), "--sparsity", "0.25", "--repeats", "2", "--overwrite",
            "--eval-data", str(zoo_files / "resnet-eval.npz")]
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads((zoo_files / "repo" / "resnet-pruned25" / "report.json").read_text())
    assert report["pruning"]["folded_batchnorms"] == 6 and len(report["pruning"]["groups_pruned"]) == 2
    assert report["model"]["size_ratio"] < 0.85 and report["accuracy"]["variant"] > 0.85


# -- distillation from any ONNX teacher ------------------------------------------------------


def test_distill_from_a_sklearn_teacher_reports_both_students(zoo_files):
    from kairos.optimize.data import Dataset
    from kairos.optimize.distill import DistillSettings
    from kairos.optimize.pipeline import Measure, distill_model
    from kairos.optimize.train import TrainConfig

    d = zoo.digits()
    out = distill_model(zoo_files / "repo" / "sk_mlp", DistillSettings(hidden=[32]),
                        Dataset(d.x_train, d.y_train, "train"), Measure(Dataset(d.x_test, d.y_test, "test"), 2),
                        cfg=TrainConfig(epochs=4, lr=3e-3, seed=0))
    names = [s["name"] for s in out.report["students"]]
    assert names == ["distilled (soft + hard targets)", "hard labels only"]
    assert all(s["accuracy"] > 0.8 for s in out.report["students"])
    assert out.report["judged_output"]["name"] == "probabilities"


def test_distill_refuses_what_it_cannot_build(zoo_files, capsys):
    train = zoo_files / "encoder-eval.npz"
    args = ["distill", str(zoo_files / "repo" / "encoder"), "--train-data", str(train), "--epochs", "1"]
    assert main(args) == 2
    assert "one-input teachers; this one has inputs input_ids, attention_mask" in capsys.readouterr().err
