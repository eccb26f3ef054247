"""The native load generator (kairos-loadgen, client/loadgen/) against a real `kairos serve`.

Behaviour only (counts add up, statuses are named, the Python side drives it), never speed:
the machine is shared. Without the program the tests skip locally and fail under CI=true,
where `pip install .` must have built it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kairos.client.bench import BenchConfig, native
from kairos.client.bench import cli as bench_cli
from kairos_testing.dependencies import missing
from kairos_testing.server import ServerProcess, running_server

ROOT = Path(__file__).resolve().parents[3]
BUILT = ROOT / "target" / "release" / native.PROGRAM


@pytest.fixture(scope="module")
def loadgen() -> Path:
    try:
        return native.find_loadgen()
    except native.NativeEngineError:
        if BUILT.is_file():
            return BUILT
        missing(native.PROGRAM, "pip install . builds it; or cargo build --release -p kairos-loadgen")


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server() as process:  # the built-in demo models, mlp256 among them
        yield process


def _run(loadgen: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(loadgen), *args], capture_output=True, text=True, timeout=120, check=False)


def _point(loadgen: Path, server: ServerProcess, *args: str) -> dict:
    done = _run(loadgen, "--url", server.address, "--model", "mlp256", "--warmup", "0.2", "--duration", "1", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _counts_add_up(point: dict) -> None:
    assert sum(point["status_counts"].values()) == point["requests"]
    assert point["status_counts"].get("OK", 0) == point["ok"]
    errors = {name: e["count"] for name, e in point["errors"].items()}
    assert errors == {k: v for k, v in point["status_counts"].items() if k != "OK"}
    assert point["goodput"] <= point["throughput"] == pytest.approx(point["ok"] / point["duration_s"], abs=0.01)


def test_open_loop_answers_ok_and_counts_add_up(loadgen: Path, server: ServerProcess) -> None:
    point = _point(loadgen, server, "--rate", "200", "--slo-ms", "2000", "--server-pid", str(server.process.pid))
    assert point["engine"] == "native" and point["mode"] == "open" and point["offered_rate"] == 200.0
    _counts_add_up(point)
    assert point["ok"] == point["requests"] > 100  # ~200 expected in the 1 s window
    assert point["sent"] == pytest.approx(point["requests"], abs=5)
    lat = point["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    assert len(point["latency_cdf_ms"]) == 101
    assert point["lateness_ms"]["p50"] is not None and point["lateness_ms"]["max"] >= 0
    assert point["generator"]["cpu_s"] > 0 and point["server_cpu"]["cpu_us_per_request"] > 0
    assert point["config"]["deadline_ms"] == 2000.0


def test_a_deadline_too_short_to_meet_comes_back_as_deadline_exceeded(loadgen: Path, server: ServerProcess) -> None:
    point = _point(loadgen, server, "--rate", "200", "--arrival", "constant", "--deadline-ms", "0.001")
    _counts_add_up(point)
    assert point["ok"] == 0 and point["goodput"] == 0 and point["requests"] > 100
    # Kairos refuses what it cannot answer in time as RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED.
    assert set(point["errors"]) <= {"DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}
    refused = point["errors"]["DEADLINE_EXCEEDED"]
    assert refused["count"] > 0
    assert refused["p50_ms"] is not None and refused["p50_ms"] <= refused["p99_ms"]


def test_closed_loop_over_two_connections_with_explicit_inputs(loadgen: Path, server: ServerProcess) -> None:
    point = _point(loadgen, server, "--concurrency", "4", "--connections", "2", "--input", "input:FP32:3x256",
                   "--param", "priority=1", "--slo-ms", "2000")
    assert point["mode"] == "closed" and point["concurrency"] == 4 and "lateness_ms" not in point
    _counts_add_up(point)
    assert point["ok"] == point["requests"] > 0
    assert point["rows_per_s"] == pytest.approx(3 * point["throughput"], abs=0.05)


@pytest.mark.parametrize("transport", ["h2", "tonic"])
def test_a_wrong_input_is_refused_by_status_not_by_the_generator(
    loadgen: Path, server: ServerProcess, transport: str
) -> None:
    point = _point(loadgen, server, "--concurrency", "1", "--input", "nope:FP32:1x256", "--slo-ms", "2000",
                   "--transport", transport)
    assert point["generator"]["transport"] == transport
    _counts_add_up(point)
    assert point["ok"] == 0 and set(point["errors"]) == {"INVALID_ARGUMENT"}
    assert "nope" in point["error_messages"]["INVALID_ARGUMENT"]  # the server's message, decoded


def test_bad_arguments_exit_2_and_failures_exit_1_with_one_line(loadgen: Path, server: ServerProcess) -> None:
    for args in (["--rate", "-5"], ["--rate", "10", "--input", "x:FP99:1"], ["--concurrency", "2", "--rate", "5"],
                 ["--rate", "10", "--url", "grpcs://h:1"]):
        done = _run(loadgen, "--model", "mlp256", *args)
        assert done.returncode == 2, (args, done.stderr)
        first = done.stderr.splitlines()[0]
        assert first.startswith(("error: ", "kairos-loadgen: ")) and "panicked" not in done.stderr, first
    missing = _run(loadgen, "--url", server.address, "--model", "no-such-model", "--rate", "10")
    assert missing.returncode == 1 and "NotFound" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    closed = _run(loadgen, "--url", "127.0.0.1:1", "--model", "m", "--rate", "10")
    assert closed.returncode == 1 and closed.stderr.startswith("kairos-loadgen: cannot connect")


def test_kairos_bench_engine_native_sweeps_and_prints_like_python(
    loadgen: Path, server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setenv(native.ENV_VAR, str(loadgen))
    out = tmp_path / "result.json"
    code = bench_cli.main(["--url", server.address, "-m", "mlp256", "--engine", "native", "--sweep", "100,200",
                           "--rows", "2", "--warmup", "0.2", "--duration", "0.5", "--slo-ms", "2000",
                           "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "engine native" in printed and "offered 200 req/s" in printed and "lateness ms" in printed
    result = json.loads(out.read_text())
    assert result["config"]["engine"] == "native" and [p["offered_rate"] for p in result["points"]] == [100, 200]
    for point in result["points"]:
        _counts_add_up(point)
        assert point["ok"] > 0 and point["rows_per_s"] == pytest.approx(2 * point["throughput"], abs=0.05)


def test_the_native_engine_missing_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.ENV_VAR, "/nonexistent/kairos-loadgen")
    with pytest.raises(SystemExit, match="is not an executable file"):
        bench_cli.main(["-m", "mlp256", "--engine", "native", "--rate", "10"])
    monkeypatch.delenv(native.ENV_VAR)
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(native.NativeEngineError, match="pip install"):
        native.find_loadgen()
    with pytest.raises(SystemExit, match="need --engine native"):
        bench_cli.main(["-m", "mlp256", "--rate", "10", "--connections", "2"])


def test_python_engine_options_map_onto_the_program() -> None:
    cfg = BenchConfig(url="h:1", model="m", model_version="2", rates=[50.0], deadline_ms=0.0, rows=4,
                      input_shape=[8], parameters={"priority": 1, "fast": True, "tag": "a b"}, server_pid=7,
                      connections=3, workers=2, arrival="constant")
    argv = native.point_arguments(cfg, rate=50.0, concurrency=None)
    pairs = dict(zip(argv[::2], argv[1::2], strict=True))
    assert pairs["--rate"] == "50.0" and pairs["--deadline-ms"] == "0.0" and pairs["--input-shape"] == "8"
    assert pairs["--connections"] == "3" and pairs["--workers"] == "2" and pairs["--arrival"] == "constant"
    assert pairs["--model-version"] == "2" and pairs["--server-pid"] == "7" and pairs["--rows"] == "4"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--param"] == ["priority=1", "fast=true", "tag=a b"]


def test_gamma_arrivals_and_a_deadline_mix_reach_the_program() -> None:
    from kairos.client.bench.schedule import parse_deadline_mix

    cfg = BenchConfig(url="h:1", model="m", rates=[50.0], arrival="gamma", cv=4.0,
                      deadline_mix=parse_deadline_mix("5:1,50:1"))
    argv = native.point_arguments(cfg, rate=50.0, concurrency=None)
    pairs = dict(zip(argv[::2], argv[1::2], strict=True))
    assert pairs["--arrival"] == "gamma" and pairs["--cv"] == "4.0"
    assert pairs["--deadline-mix"] == "5:0.5,50:0.5"


def test_the_program_sends_gamma_arrivals_with_a_deadline_mix(loadgen: Path, server: ServerProcess) -> None:
    """Each class travels with its own deadline: 1 us cannot be met, 1 s always is."""
    point = _point(loadgen, server, "--rate", "300", "--arrival", "gamma", "--cv", "4",
                   "--deadline-mix", "0.001:0.5,1000:0.5")
    assert point["arrival"] == "gamma" and point["cv"] == 4.0 and point["deadline_mix"] == "0.001:0.5,1000:0.5"
    _counts_add_up(point)
    tight, loose = point["classes"]
    assert (tight["deadline_ms"], loose["deadline_ms"]) == (0.001, 1000.0)
    assert tight["requests"] > 0 and loose["requests"] > 0
    assert tight["requests"] + loose["requests"] == point["requests"]
    assert tight["ok"] == 0 and tight["errors"]["DEADLINE_EXCEEDED"]["count"] == tight["requests"]
    assert loose["ok"] == loose["requests"] and loose["slo_attainment"] == 1.0
    assert point["goodput"] == loose["goodput"]
