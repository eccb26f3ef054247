"""`kairos bench` against the floor server (bench/floor_server.py) in a child process.

Behaviour only: the machine is shared, so nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kairos.client.bench import BenchConfig, run
from kairos.client.bench import cli as bench_cli

ROOT = Path(__file__).resolve().parents[3]
FLOOR = ROOT / "bench" / "floor_server.py"


@pytest.fixture(scope="module")
def floor_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    port_file = tmp_path_factory.mktemp("floor") / "port.json"
    process = subprocess.Popen(
        [sys.executable, str(FLOOR), "--port", "0", "--port-file", str(port_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"floor server did not start: {process.stderr.read().decode()}")
            time.sleep(0.05)
        yield f"127.0.0.1:{json.loads(port_file.read_text())['grpc_port']}", process.pid
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def floor(floor_process: tuple[str, int]) -> str:
    return floor_process[0]


def _config(url: str, **changes) -> BenchConfig:
    base = {"url": url, "model": "mlp256", "duration_s": 0.4, "warmup_s": 0.1, "slo_ms": 1000.0}
    return BenchConfig(**{**base, **changes})


def test_closed_loop_answers_everything_within_the_slo(floor: str) -> None:
    result = run(_config(floor, concurrency=4), loop="asyncio")
    (point,) = result["points"]
    assert point["mode"] == "closed" and point["concurrency"] == 4
    assert point["ok"] == point["requests"] > 0
    assert point["errors"] == {}
    assert point["goodput"] == point["throughput"] > 0
    assert point["latency_ms"]["p50"] <= point["latency_ms"]["p99"] <= point["latency_ms"]["max"]
    assert point["generator"]["cpu_us_per_request"] > 0
    # The floor answers ModelStatistics with no models: no batch counts, but no failure.
    assert point["server_batches"]["executions"] == 0


def test_open_loop_sweep_reports_one_point_per_rate_with_lateness(floor: str) -> None:
    result = run(_config(floor, rates=[100.0, 200.0], rows=3), loop="auto")
    assert [p["offered_rate"] for p in result["points"]] == [100.0, 200.0]
    for point in result["points"]:
        assert point["mode"] == "open" and point["ok"] > 0
        assert point["lateness_ms"]["p50"] is not None
        assert point["rows_per_s"] == pytest.approx(3 * point["throughput"])
    assert result["config"]["deadline_ms"] == 1000.0  # the SLO travels as the gRPC deadline


def test_a_deadline_shorter_than_the_answer_is_counted_by_status(floor: str) -> None:
    config = _config(floor, rates=[200.0], deadline_ms=5.0, parameters={"delay_ms": 50.0})
    result = run(config, loop="asyncio")
    (point,) = result["points"]
    assert point["ok"] == 0 and point["goodput"] == 0
    assert point["errors"]["DEADLINE_EXCEEDED"]["count"] == point["requests"] > 0
    # Cut at the deadline, not answered late (ok == 0 above); never before it passed.
    assert point["errors"]["DEADLINE_EXCEEDED"]["p50_ms"] >= 4.0


def test_requests_above_grpcs_default_4_mib_limit_are_sent_and_answered(floor: str) -> None:
    # 8,192 rows x 256 FP32 = 8 MiB per request.
    (point,) = run(_config(floor, concurrency=1, rows=8192, duration_s=0.3), loop="asyncio")["points"]
    assert point["ok"] > 0 and point["errors"] == {}


def test_bursty_arrivals_run(floor: str) -> None:
    result = run(_config(floor, rates=[200.0], burst=bench_cli.parse_burst("batch:5")), loop="asyncio")
    assert result["points"][0]["burst"] == "batch:5"
    assert result["points"][0]["ok"] > 0


def test_gamma_arrivals_with_a_deadline_mix_give_each_class_its_deadline(floor: str) -> None:
    """Answers take 20 ms: the 5 ms class is cut at its deadline, the 1 s class answered."""
    from kairos.client.bench.schedule import parse_deadline_mix

    cfg = _config(floor, rates=[200.0], arrival="gamma", cv=4.0, parameters={"delay_ms": 20.0},
                  deadline_mix=parse_deadline_mix("5:0.5,1000:0.5"))
    (point,) = run(cfg, loop="asyncio")["points"]
    assert point["arrival"] == "gamma" and point["cv"] == 4.0 and point["deadline_mix"] == "5:0.5,1000:0.5"
    tight, loose = point["classes"]
    assert tight["requests"] > 0 and loose["requests"] > 0
    assert tight["requests"] + loose["requests"] == point["requests"]
    assert tight["ok"] == 0 and tight["errors"]["DEADLINE_EXCEEDED"]["count"] == tight["requests"]
    assert tight["errors"]["DEADLINE_EXCEEDED"]["p50_ms"] < 15.0
    assert loose["ok"] == loose["requests"] and loose["goodput"] == point["goodput"]


@pytest.mark.parametrize("argv, message", [
    (["--rate", "10", "--arrival", "gamma"], "--cv"),
    (["--rate", "10", "--cv", "4"], "--arrival gamma"),
    (["-c", "1", "--deadline-mix", "5:1"], "open loop"),
    (["--rate", "10", "--deadline-mix", "5:1", "--deadline-ms", "3"], "--deadline-ms"),
    (["--rate", "10", "--arrival", "gamma", "--cv", "4", "--burst", "batch:2"], "--burst"),
])
def test_arrival_and_mix_flags_are_checked(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        bench_cli.main(["--url", "127.0.0.1:1", "-m", "m", *argv])


def test_cli_writes_json_and_a_plot(floor: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    plot = tmp_path / "bench.png"
    code = bench_cli.main([
        "--url", floor, "-m", "mlp256", "--sweep", "100,150", "--duration", "0.3", "--warmup", "0.1",
        "--json", "--plot", str(plot),
    ])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["points"]) == 2
    assert plot.stat().st_size > 1000


def test_cli_prints_a_human_summary(floor: str, capsys: pytest.CaptureFixture) -> None:
    code = bench_cli.main(["--url", floor, "-m", "mlp256", "-c", "1", "--duration", "0.3",
                           "--warmup", "0.1", "--deadline-ms", "0", "--param", "delay_ms=1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "concurrency 1" in out and "goodput@10ms" in out and "deadline none" in out


def test_an_unknown_model_is_a_clear_error(floor: str, capsys: pytest.CaptureFixture) -> None:
    code = bench_cli.main(["--url", floor, "-m", "nope", "-c", "1", "--duration", "0.2"])
    assert code == 1
    assert "not found" in capsys.readouterr().err


def test_register_adds_the_bench_subcommand() -> None:
    parser = argparse.ArgumentParser(prog="kairos")
    bench_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "-m", "m", "--rate", "50", "--burst", "onoff:5:5"])
    assert args.command == "bench" and args.rate == 50.0 and args.burst.kind == "onoff"
    assert callable(args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "-m", "m", "--rate", "5", "-c", "2"])  # one mode only


def test_urls_with_a_scheme_are_accepted() -> None:
    assert bench_cli.plain_address("grpc://127.0.0.1:8001/") == "127.0.0.1:8001"
    assert bench_cli.plain_address("localhost:9") == "localhost:9"
    with pytest.raises(SystemExit, match="TLS"):
        bench_cli.plain_address("grpcs://h:1")


def test_python_m_runs_the_generator(floor: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kairos.client.bench", "--url", floor, "-m", "mlp256", "-c", "2",
         "--duration", "0.3", "--warmup", "0.1", "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["points"][0]["ok"] > 0


def _process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_server_cpu_and_foreign_cpu_are_reported_for_a_local_server(floor_process: tuple[str, int]) -> None:
    """The server CPU reported is the server process's, over the measured window only: at
    most what /proc says the floor used during the whole run (two clock ticks of slack)."""
    url, pid = floor_process
    config = _config(url, concurrency=2, server_pid=pid)
    before = _process_cpu_s(pid)
    (point,) = run(config, loop="asyncio")["points"]
    used = _process_cpu_s(pid) - before
    server = point["server_cpu"]
    assert server["cpu_us_per_request"] > 0 and server["cpu_util"] > 0
    reported = server["cpu_util"] * config.duration_s  # the window is the measured duration
    assert reported <= used * 1.1 + 2 / os.sysconf("SC_CLK_TCK"), (reported, used, server)
    assert point["machine"]["server_known"] and point["machine"]["others_cores"] >= 0
