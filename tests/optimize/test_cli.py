"""The command line: subcommands end to end, and bad input as one line with exit code 2."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from kairos.optimize import cli


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_quantize_static_from_the_command_line(repo: Path, digits, capsys) -> None:
    code, out, err = _run(capsys, "quantize", str(repo / "mlp"), "--mode", "static",
                          "--calibration", str(digits.files["calib"]), "--method", "percentile",
                          "--eval-data", str(digits.files["test"]), "--repeats", "3")
    assert code == 0, err
    report = json.loads((repo / "mlp-int8" / "report.json").read_text())
    assert report["technique"] == "quantize-static" and report["settings"]["calibration"] == "percentile"
    assert "| file size |" in out and str(repo / "mlp-int8" / "1" / "model.onnx") in out


def test_report_replaces_stale_speed_warnings(repo: Path, digits, capsys) -> None:
    code, _, err = _run(capsys, "quantize", str(repo / "mlp"), "--mode", "fp16", "--eval-data",
                        str(digits.files["test"]), "--repeats", "3")
    assert code == 0, err
    path = repo / "mlp-fp16" / "report.json"
    stale = json.loads(path.read_text())
    stale["warnings"] = ["fp16 quantization measured no real speed-up on X: stale numbers", "keep me"]
    path.write_text(json.dumps(stale))
    code, _, err = _run(capsys, "report", str(repo / "mlp-fp16"), "--baseline", str(repo / "mlp"),
                        "--eval-data", str(digits.files["test"]), "--repeats", "3")
    assert code == 0, err
    warnings = json.loads(path.read_text())["warnings"]
    assert "keep me" in warnings and not any("stale numbers" in w for w in warnings)


def test_prune_and_report_subcommands(repo: Path, digits, capsys) -> None:
    code, _, err = _run(capsys, "prune", str(repo / "mlp"), "--sparsity", "0.5", "--train-data",
                        str(digits.files["train"]), "--epochs", "2", "--eval-data",
                        str(digits.files["test_x"]), "--eval-labels", str(digits.files["test_y"]),
                        "--repeats", "3", "--name", "mlp-small")
    assert code == 0, err
    code, _, err = _run(capsys, "report", str(repo / "mlp-small"), "--baseline", str(repo / "mlp"),
                        "--eval-data", str(digits.files["test"]), "--repeats", "3")
    assert code == 0, err
    report = json.loads((repo / "mlp-small" / "report.json").read_text())
    assert report["technique"] == "prune-structured" and report["pruning"]["hidden_sizes_after"] == [256, 256]


@pytest.mark.parametrize("problem", ["missing_model", "garbage_model", "shape_mismatch", "bad_hidden",
                                     "unsupported_op", "no_such_provider"])
def test_bad_input_is_one_clear_line(problem: str, repo: Path, digits, tmp_path: Path, capsys,
                                     teacher) -> None:
    model, data = str(repo / "mlp"), str(digits.files["test"])
    args = ["quantize", model, "--mode", "dynamic", "--eval-data", data]
    expected = ""
    if problem == "missing_model":
        args[1], expected = str(tmp_path / "nope.onnx"), "model not found"
    elif problem == "garbage_model":
        (tmp_path / "m" / "1").mkdir(parents=True)
        (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"\x00garbage")
        args[1], expected = str(tmp_path / "m"), "cannot read ONNX model"
    elif problem == "shape_mismatch":
        np.save(tmp_path / "wide.npy", np.zeros((3, 65), np.float32))
        args[-1], expected = str(tmp_path / "wide.npy"), "rows have shape [65]"
    elif problem == "no_such_provider":
        args += ["--provider", "NoSuchExecutionProvider"]
        expected = "execution provider NoSuchExecutionProvider is not available"
    elif problem == "bad_hidden":
        args = ["distill", model, "--hidden", "32,x", "--train-data", str(digits.files["train"]),
                "--eval-data", data]
        expected = "--hidden must be comma-separated integers"
    else:
        args = ["prune", _pool_model(tmp_path), "--eval-data", str(_image_data(tmp_path)),
                "--repository", str(tmp_path / "r")]
        expected = "operator 'MaxPool'"
    code, _, err = _run(capsys, *args)
    assert code == 2
    assert err.startswith("kairos optimize: error: ") and expected in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "r" / "pool-pruned50").exists()  # a failed run leaves no model folder


def _pool_model(tmp_path: Path) -> str:
    from onnx import TensorProto, helper

    node = helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[3, 3])
    graph = helper.make_graph([node], "c",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 3, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path = tmp_path / "pool.onnx"
    path.write_bytes(model.SerializeToString())
    return str(path)


def _image_data(tmp_path: Path) -> Path:
    np.save(tmp_path / "img.npy", np.zeros((2, 1, 5, 5), np.float32))
    return tmp_path / "img.npy"


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "kairos.optimize", "quantize", str(tmp_path / "x.onnx"),
                             "--eval-data", str(tmp_path / "d.npy")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == f"kairos optimize: error: data file not found: {tmp_path / 'd.npy'}"


def test_register_adds_optimize_to_a_parent_cli() -> None:
    parser = argparse.ArgumentParser(prog="kairos")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["optimize", "prune", "m.onnx", "--eval-data", "d.npy", "--method",
                              "unstructured", "--scope", "global"])
    assert args.func is cli.run and args.optimize_command == "prune" and args.scope == "global"
    with pytest.raises(SystemExit):
        parser.parse_args(["optimize", "quantize", "m.onnx", "--eval-data", "d", "--mode", "int4"])
