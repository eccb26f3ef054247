"""The `kairos` command line.

A few tests run the installed entry point in a subprocess (help, serve, demo, a request and an
unreachable server), proving the console script works; the rest call `main()` in-process through
the `cli` fixture, the same code minus a Python start-up each, to keep the suite fast.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import pytest
from kairos.client.cli import main as cli_main

# The console script the package installs, beside this interpreter (a venv's bin/) or on
# PATH. No fallback to `python -m`: a missing or broken console script must fail these tests.
KAIROS = shutil.which("kairos", path=os.path.dirname(sys.executable)) or shutil.which("kairos")
ENTRY = [KAIROS] if KAIROS else []
# One laid-out row of the latency table L(b), as `models describe` prints it.
LATENCY_ROW = re.compile(r'^      \{"batch_size": \d+, "predicted_s": [0-9.e+-]+, "observations": \d+\}$')


def kairos(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The installed `kairos` console script in a subprocess."""
    assert KAIROS, f"the `kairos` console script is not installed (beside {sys.executable} or on PATH)"
    env = {k: v for k, v in os.environ.items() if k not in ("KAIROS_URL", "KAIROS_TOKEN")}
    result = subprocess.run(
        [*ENTRY, *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    # Expected failures are one readable line, never a traceback.
    assert "Traceback" not in result.stderr, result.stderr
    return result


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """`kairos ARGS...` in-process: exit code and captured output, like `kairos()`."""
    monkeypatch.delenv("KAIROS_URL", raising=False)
    monkeypatch.delenv("KAIROS_TOKEN", raising=False)

    def run(*args: str) -> Run:
        capsys.readouterr()
        try:
            code = cli_main.main(list(args))
        except SystemExit as exit_:  # argparse: --help, usage errors
            code = exit_.code if isinstance(exit_.code, int) else 1
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


# -- help and usage ---------------------------------------------------------------------------


def test_the_console_script_is_installed_and_runs_this_package():
    assert KAIROS, f"the `kairos` console script is not installed (beside {sys.executable} or on PATH)"
    with open(KAIROS, "rb") as script:
        first_line = script.readline().decode(errors="replace")
    assert first_line.startswith("#!") and "python" in first_line, first_line
    result = kairos("--help")
    assert result.returncode == 0 and "usage: kairos" in result.stdout


def assert_describe_layout(stdout: str, policy: str) -> None:
    """`models describe` text: Kairos's parameters laid out, the scheduler's JSON one field a
    line and its latency table one row a line (the layout a real Kairos server sends)."""
    lines = stdout.splitlines()
    assert "config parameters:" in lines, stdout
    assert f"  kairos.policy: {policy}" in lines, stdout
    start = lines.index("  kairos.scheduler:")
    assert f'    policy: "{policy}"' in lines[start:], stdout
    table = lines.index("    latency_table:", start)
    rows = []
    for line in lines[table + 1:]:
        if not line.startswith("      "):
            break
        rows.append(line)
    assert rows and all(LATENCY_ROW.match(row) for row in rows), rows
    assert any(line.startswith('    queue: {"requests": ') for line in lines[start:]), stdout


def assert_describe_json(document: dict, model: str, policy: str) -> dict:
    """`models describe --json`: metadata, config and statistics as the server sent them;
    the scheduler parameter is JSON with the policy and L(b). Returns that scheduler state."""
    assert set(document) == {"metadata", "config", "statistics"}
    assert document["metadata"]["name"] == model and document["config"]["name"] == model
    parameters = document["config"]["parameters"]
    assert parameters["kairos.policy"] == {"string_value": policy}
    scheduler = json.loads(parameters["kairos.scheduler"]["string_value"])
    assert scheduler["policy"] == policy
    table = scheduler["latency_table"]
    assert table and all(set(row) == {"batch_size", "predicted_s", "observations"} for row in table)
    sizes = [row["batch_size"] for row in table]
    assert sizes == sorted(sizes) and sizes[0] == 1
    return scheduler


def test_help_lists_every_command():
    result = kairos("--help")
    assert result.returncode == 0
    for command in ("serve", "infer", "models", "demo", "bench", "batch", "optimize"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["infer"], "--input"),
        (["models"], "describe"),
        (["models", "describe"], "--json"),
        (["demo"], "--exit"),
        (["serve"], "--model-repository"),  # flags come from kairos.server.app.add_arguments
    ],
)
def test_subcommand_help(command, expected):
    result = kairos(*command, "--help")
    assert result.returncode == 0 and expected in result.stdout


def test_usage_errors_exit_2(cli):
    assert cli().returncode == 2
    assert cli("no-such-command").returncode == 2
    result = cli("infer", "digits")
    assert result.returncode == 2 and "--input" in result.stderr


def test_unavailable_plugin_explains_itself(monkeypatch, tmp_path, capsys):
    (tmp_path / "kairos_broken_plugin.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(
        cli_main,
        "PLUGINS",
        (
            ("ghost", "kairos.client.no_such_module", "missing"),
            ("broken", "kairos_broken_plugin", "broken"),
        ),
    )
    assert cli_main.main(["ghost", "--anything"]) == 1
    assert "`kairos ghost` is not available" in capsys.readouterr().err
    assert cli_main.main(["broken"]) == 1
    assert "boom at import" in capsys.readouterr().err
    # The other commands still work.
    with pytest.raises(SystemExit) as shown:
        cli_main.main(["models", "--help"])
    assert shown.value.code == 0


# -- against the third-party-style fake server (typed contents) -------------------------------


def test_infer_json_literal_takes_dtype_from_metadata(fake_server, cli):
    fake_server.state.typed_outputs = True
    result = cli(
        "infer", "identity", "--url", fake_server.address,
        "--input", "x=[[1, 2], [3, 4]]", "--input", "ids=[7, 8]", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    outputs = {o["name"]: o for o in json.loads(result.stdout)["outputs"]}
    assert outputs["x_out"]["datatype"] == "FP32"  # JSON ints sent as the model's FP32
    assert outputs["x_out"]["shape"] == [2, 2] and outputs["x_out"]["data"] == [1, 2, 3, 4]
    assert outputs["ids_out"]["datatype"] == "INT64" and outputs["ids_out"]["data"] == [7, 8]


def test_infer_adds_batch_dimension_and_prints(fake_server, cli):
    result = cli(
        "infer", "identity", "--url", fake_server.address, "--input", "x=[1.5, 2]",
        "--input", "ids=[1]", "--id", "r1", "--parameter", "tag=demo",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "x_out  FP32 [1, 2]" in result.stdout
    assert "[[1.5 2. ]]" in result.stdout


def test_infer_server_errors_exit_1_with_server_message(fake_server, free_port, cli):
    missing = cli("infer", "nope", "--url", fake_server.address, "--input", "x=[1]")
    assert missing.returncode == 1
    assert "model 'nope' version '' not found" in missing.stderr

    rejected = cli(
        "infer", "identity", "--url", fake_server.address, "--input", "x=[[1, 2]]",
        "--input", "ids=[1]", "--parameter", "fail=true",
    )  # fmt: skip
    assert rejected.returncode == 1 and "input 'x'" in rejected.stderr
    assert "INVALID_ARGUMENT" in rejected.stderr

    url = f"127.0.0.1:{free_port}"
    refused = kairos("infer", "identity", "--url", url, "--input", "x=[1]")
    assert refused.returncode == 1
    assert f"cannot reach a server at {url} (is `kairos serve` running?)" in refused.stderr
    listing = cli("models", "list", "--url", url)
    assert listing.returncode == 1 and "cannot reach a server" in listing.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("x=/no/such/file.npy", "/no/such/file.npy does not exist"),
        ("x=[[1, 2]", "neither a .npy/.json file nor a JSON literal"),
        ("x=[[1], [2, 3]]", "not a rectangular array"),
        ('x=[["a", "b"]]', "wants FP32 numbers, got text"),
        ("x=[[1, 2, 3]]", "does not fit the model's [-1, 2]"),
        ("y=[1]", "model 'identity' has no input 'y'; its inputs: x (FP32 [-1, 2])"),
        ("[[1, 2]]", "model 'identity' has 2 inputs, so each --input needs NAME="),
    ],
)
def test_infer_bad_input_exit_2_naming_it(fake_server, value, message, cli):
    result = cli("infer", "identity", "--url", fake_server.address, "--input", value)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr


def test_infer_bad_npy_file(fake_server, tmp_path, cli):
    bad = tmp_path / "bad.npy"
    bad.write_text("not numpy")
    result = cli("infer", "identity", "--url", fake_server.address, "--input", f"x={bad}")
    assert result.returncode == 2 and f"cannot read {bad} as .npy" in result.stderr


def test_models_describe_lays_out_json_parameters(fake_server, cli):
    result = cli("models", "describe", "identity", "--url", fake_server.address)
    assert result.returncode == 0, result.stderr
    assert_describe_layout(result.stdout, "slo")
    assert '      {"batch_size": 1, "predicted_s": 0.0002, "observations": 40}' in result.stdout
    assert "  kairos.slo_ms: 20" in result.stdout
    assert "inference_count: 3" in result.stdout
    as_json = json.loads(cli("models", "describe", "identity", "--json", "--url",
                             fake_server.address).stdout)
    assert_describe_json(as_json, "identity", "slo")


# -- against a real Kairos server -------------------------------------------------------------


def test_infer_npy_json_file_and_output_dir(kairos_server, tmp_path, cli):
    data = np.arange(8, dtype=np.float32).reshape(2, 4) / 7
    np.save(tmp_path / "x.npy", data)
    result = kairos(
        "infer", "identity_fp32", "--url", kairos_server.address,
        "--input", f"input={tmp_path / 'x.npy'}", "--output-dir", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "identity_fp32 (version 1) answered in" in result.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "output.npy"), data)

    (tmp_path / "ids.json").write_text("[[1, 2, 3]]")
    cast = cli(
        "infer", "cast_int64_fp32", "--url", kairos_server.address,
        "--input", str(tmp_path / "ids.json"), "--json",
    )  # fmt: skip
    assert cast.returncode == 0, cast.stderr
    assert json.loads(cast.stdout)["outputs"][0]["data"] == [1.0, 2.0, 3.0]

    text = cli(
        "infer", "identity_bytes", "--url", kairos_server.address,
        "--input", 'input=[["hi", "there"]]', "--json",
    )  # fmt: skip
    assert text.returncode == 0, text.stderr
    assert json.loads(text.stdout)["outputs"][0]["data"] == ["hi", "there"]


def test_infer_wrong_dtype_in_file_is_refused(kairos_server, tmp_path, cli):
    np.save(tmp_path / "floats.npy", np.ones((1, 4), np.float64))
    result = cli(
        "infer", "identity_int64", "--url", kairos_server.address,
        "--input", f"input={tmp_path / 'floats.npy'}",
    )  # fmt: skip
    assert result.returncode == 2 and "holds float64, the model wants INT64" in result.stderr


def test_models_list_describe_unload_load(kairos_server, cli):
    url = ["--url", kairos_server.address]
    listing = cli("models", "list", *url)
    assert listing.returncode == 0, listing.stderr
    lines = {line.split()[0]: line for line in listing.stdout.splitlines()[1:]}
    assert "READY" in lines["identity_fp32"] and "UNAVAILABLE" in lines["broken"]

    described = cli("models", "describe", "add_sub", *url)
    assert described.returncode == 0, described.stderr
    assert "  a  FP32 [-1, 4]" in described.stdout
    assert "config:" in described.stdout and "statistics:" in described.stdout
    assert_describe_layout(described.stdout, "slo")  # the real server's layout
    as_json = json.loads(cli("models", "describe", "add_sub", "--json", *url).stdout)
    scheduler = assert_describe_json(as_json, "add_sub", "slo")
    assert scheduler["max_batch_size"] == as_json["config"]["max_batch_size"] == 64
    inputs = as_json["metadata"]["inputs"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in inputs] == [
        ("a", "FP32", ["-1", "4"]), ("b", "FP32", ["-1", "4"])
    ]

    unloaded = cli("models", "unload", "identity_fp64", *url)
    try:
        assert unloaded.returncode == 0 and "unloaded identity_fp64" in unloaded.stdout
        ready = cli("models", "list", "--ready", *url).stdout
        assert "identity_fp64" not in ready
    finally:
        loaded = cli("models", "load", "identity_fp64", *url)
    assert loaded.returncode == 0 and "loaded identity_fp64" in loaded.stdout

    missing = cli("models", "describe", "no_such_model", *url)
    assert missing.returncode == 1 and "no_such_model" in missing.stderr


def test_demo_classifies_a_digit_and_exits():
    result = kairos(
        "demo", "--exit", "--grpc-port", "0", "--metrics-port", "0", "--sample", "0",
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "true label 0" in result.stdout
    assert "predicted 0" in result.stdout  # the demo classifier gets image #0 right
    assert "kairos infer digits --url 127.0.0.1:" in result.stdout
    assert "tritonclient.grpc" in result.stdout


def test_serve_runs_the_server_until_sigterm(tmp_path, cli):
    from kairos_testing.models import identity, write_model
    from kairos_testing.server import stop_process

    assert KAIROS, "the `kairos` console script is not installed"
    write_model(tmp_path / "repo", "identity", identity())
    port_file = tmp_path / "ports.json"
    log = tmp_path / "serve.log"
    with open(log, "wb") as output:
        server = subprocess.Popen(
            [*ENTRY, "serve", "--model-repository", str(tmp_path / "repo"), "--host", "127.0.0.1",
             "--grpc-port", "0", "--metrics-port", "0", "--port-file", str(port_file)],
            stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.stat().st_size):
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "kairos serve did not start"
            time.sleep(0.05)
        url = f"127.0.0.1:{json.loads(port_file.read_text())['grpc_port']}"
        listing = cli("models", "list", "--url", url)
        assert listing.returncode == 0 and "identity" in listing.stdout
    finally:
        code = stop_process(server)
    assert code == 0  # SIGTERM drains and exits cleanly


def test_a_server_without_the_v2_service_is_named_as_such(cli):
    from concurrent import futures

    import grpc

    bare = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = bare.add_insecure_port("127.0.0.1:0")
    bare.start()
    try:
        result = cli("models", "list", "--url", f"127.0.0.1:{port}")
    finally:
        bare.stop(grace=None)
    assert result.returncode == 1
    assert "is it an Open Inference Protocol (KServe V2) gRPC server?" in result.stderr


def test_timeout_token_and_url_from_environment(fake_server, cli, monkeypatch):
    late = cli(
        "infer", "identity", "--url", fake_server.address, "--input", "x=[[1, 2]]",
        "--input", "ids=[1]", "--parameter", "sleep_ms=500", "--timeout-ms", "50",
    )  # fmt: skip
    assert late.returncode == 1 and "no answer in time" in late.stderr

    monkeypatch.setenv("KAIROS_URL", fake_server.address)
    monkeypatch.setenv("KAIROS_TOKEN", "from-env")
    assert cli("models", "list").returncode == 0
    assert fake_server.state.seen_metadata[-1]["authorization"] == "Bearer from-env"
    assert cli("models", "list", "--token", "flag").returncode == 0
    assert fake_server.state.seen_metadata[-1]["authorization"] == "Bearer flag"
