"""`kairos batch` against a real Kairos server: 100k rows bit-identical and in order, npy/npz/
Parquet round trips, resume after the client is SIGKILLed and after the server goes away,
bad inputs refused before anything is sent, pieces side by side on several batch threads.

What batch mode needs from the scheduler's core (pieces sized from admitted online budgets,
queued batch rows never making online requests "queue full") is tested on the core itself,
in tests/server/scheduler/test_core.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kairos.client import InferenceClient
from kairos.client.batch import main as batch_main
from kairos.client.batch.checkpoint import checkpoint_path, parts_path
from kairos.client.batch.datasets import arrow_to_numpy
from kairos.server.demo_models import build_mlp
from kairos_testing.models import add_sub, write_model
from kairos_testing.server import running_server

pytestmark = pytest.mark.slow

MLP = "mlp16"
CONFIG = "max_batch_size: 64\nslo_ms: 50\n"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("batch-repo") / "repo"
    write_model(root, MLP, build_mlp((16, 32, 4), seed=16, name=MLP), config=CONFIG)
    write_model(root, "add_sub", add_sub(), config=CONFIG)
    return root


@pytest.fixture(scope="module")
def server(repo: Path):
    with running_server(repo) as process:
        yield process


def reference(repo: Path, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of in-process onnxruntime, one thread, on the same model file."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(repo / model / "1" / "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def features(rows: int, seed: int = 0, width: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, width), dtype=np.float32)


def run_cli(*args: str) -> int:
    return batch_main(["--no-progress", *args])


def scheduler_state(address: str, model: str) -> dict:
    with InferenceClient(address) as client:
        config = client.model_config(model)
    return json.loads(config.parameters["kairos.scheduler"].string_value)


def inference_count(address: str, model: str) -> int:
    with InferenceClient(address) as client:
        stats = client.model_statistics(model)
    return sum(entry.inference_count for entry in stats.model_stats)


def test_100k_rows_bit_identical_and_in_order(server, repo, tmp_path) -> None:
    x = features(100_000)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "y.npy"
    summary = tmp_path / "summary.json"
    # 1000 rows per request: more than max_batch_size, so the scheduler splits every request
    code = run_cli(MLP, "-i", str(tmp_path / "x.npy"), "-o", str(out), "--url", server.address,
                   "--rows-per-request", "1000", "--in-flight", "3", "--summary-json", str(summary))
    assert code == 0
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == (100_000, 4)
    assert np.array_equal(got, reference(repo, MLP, {"input": x})["output"])
    report = json.loads(summary.read_text())
    assert report["rows"] == 100_000 and report["requests"] == 100 and report["retries"] == 0
    assert not checkpoint_path(out).exists() and not parts_path(out).exists()
    state = scheduler_state(server.address, MLP)
    assert max(int(size) for size in state["batch_sizes"]) <= 64  # executed in pieces


def test_npz_round_trip_two_inputs(server, repo, tmp_path) -> None:
    a, b = features(5000, 1, 4), features(5000, 2, 4)
    np.savez(tmp_path / "in.npz", a=a, b=b)
    out = tmp_path / "out.npz"
    assert run_cli("add_sub", "-i", str(tmp_path / "in.npz"), "-o", str(out),
                   "--url", server.address, "-n", "700") == 0
    got = np.load(out)
    want = reference(repo, "add_sub", {"a": a, "b": b})
    assert set(got.files) == {"sum", "difference"}
    for name, value in want.items():
        assert np.array_equal(got[name], value)


def test_parquet_round_trip_and_column_mapping(server, repo, tmp_path) -> None:
    a, b = features(3000, 3, 4), features(3000, 4, 4)
    table = pa.table({
        "a": pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), 4),
        "b": pa.array(list(b), type=pa.list_(pa.float32())),  # variable list, equal lengths
        "row_id": pa.array(np.arange(3000)),  # not a model input: ignored
    })
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=1000)
    out = tmp_path / "out.parquet"
    assert run_cli("add_sub", "-i", str(tmp_path / "in.parquet"), "-o", str(out),
                   "--url", server.address, "-n", "512") == 0
    got = pq.read_table(out)
    want = reference(repo, "add_sub", {"a": a, "b": b})
    for name, value in want.items():
        assert np.array_equal(arrow_to_numpy(out, name, got.column(name)), value)


def test_npy_to_parquet_and_npz_outputs(server, repo, tmp_path) -> None:
    x = features(2000, 5)
    np.save(tmp_path / "x.npy", x)
    want = reference(repo, MLP, {"input": x})["output"]
    assert run_cli(MLP, "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.parquet"),
                   "--url", server.address) == 0
    column = pq.read_table(tmp_path / "y.parquet").column("output")
    assert np.array_equal(arrow_to_numpy("y", "output", column), want)
    assert run_cli(MLP, "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npz"),
                   "--url", server.address) == 0
    assert np.array_equal(np.load(tmp_path / "y.npz")["output"], want)


def test_kairos_command_line_runs_batch(server, repo, tmp_path) -> None:
    """`kairos batch ...` (the main CLI's plugin) is the same command."""
    from kairos.client.cli.main import main as kairos_main

    x = features(300, 9)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "y.npy"
    assert kairos_main(["batch", MLP, "-i", str(tmp_path / "x.npy"), "-o", str(out),
                        "--url", server.address, "--no-progress"]) == 0
    assert np.array_equal(np.load(out), reference(repo, MLP, {"input": x})["output"])


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments, text the error must contain)."""
    np.save(tmp / "f64.npy", features(10).astype(np.float64))
    np.save(tmp / "narrow.npy", features(10, width=15))
    (tmp / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    np.savez(tmp / "only_a.npz", a=features(10, width=4))
    np.savez(tmp / "ab.npz", a=features(10, width=4), b=features(10, width=4))
    pq.write_table(pa.table({"x": pa.array(np.zeros(10, np.float32))}), tmp / "nocol.parquet")
    good = tmp / "good.npy"
    np.save(good, features(10))
    return {
        "missing": ([MLP, "-i", str(tmp / "nope.npy")], "no such file"),
        "corrupt": ([MLP, "-i", str(tmp / "junk.npy")], "cannot read"),
        "dtype": ([MLP, "-i", str(tmp / "f64.npy")], "float64"),
        "shape": ([MLP, "-i", str(tmp / "narrow.npy")], "shape"),
        "npz_missing_input": (["add_sub", "-i", str(tmp / "only_a.npz")], "'b'"),
        "parquet_columns": ([MLP, "-i", str(tmp / "nocol.parquet")], "no column"),
        "unknown_model": (["no-such-model", "-i", str(good)], "no-such-model"),
        "output_format": ([MLP, "-i", str(good), "-o", str(tmp / "y.csv")], "unknown output"),
        "npy_two_outputs": (["add_sub", "-i", str(tmp / "ab.npz")], "holds one array"),
    }


def test_bad_inputs_exit_2_before_sending(server, tmp_path, capsys) -> None:
    before = inference_count(server.address, MLP) + inference_count(server.address, "add_sub")
    for name, (args, message) in _bad_inputs(tmp_path).items():
        if "-o" not in args:
            args = [*args, "-o", str(tmp_path / f"{name}.npy")]
        code = run_cli(*args, "--url", server.address)
        err = capsys.readouterr().err
        assert code == 2, (name, err)
        assert "error:" in err and message in err and "Traceback" not in err, (name, err)
    after = inference_count(server.address, MLP) + inference_count(server.address, "add_sub")
    assert after == before  # nothing was sent


def _start_cli(args: list[str], log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "kairos.client.batch", "--no-progress", *args]
    with open(log, "wb") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)


def _wait_for_progress(out: Path, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert process.poll() is None, f"finished before it could be stopped:\n{log.read_text()}"
        try:
            if json.loads(checkpoint_path(out).read_text())["rows_done"] > 0:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    raise AssertionError(f"no progress in {timeout}s:\n{log.read_text()}")


def test_resume_after_client_sigkill(server, repo, tmp_path) -> None:
    rows = 200_000
    x = features(rows, 6)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "y.npy"
    # small requests and frequent checkpoints: slow enough to be killed mid-run
    args = [MLP, "-i", str(tmp_path / "x.npy"), "-o", str(out), "--url", server.address,
            "--checkpoint-interval-s", "0.02"]
    log = tmp_path / "first.log"
    first = _start_cli([*args, "-n", "40", "-k", "2"], log)
    _wait_for_progress(out, first, log)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    done = json.loads(checkpoint_path(out).read_text())["rows_done"]
    assert 0 < done < rows and not out.exists()  # no silently short output
    summary = tmp_path / "summary.json"
    assert run_cli(*args, "-n", "2000", "--resume", "--summary-json", str(summary)) == 0
    report = json.loads(summary.read_text())
    assert report["resumed_from"] == done and report["rows"] == rows - done
    assert np.array_equal(np.load(out), reference(repo, MLP, {"input": x})["output"])
    assert not checkpoint_path(out).exists()


def test_server_lost_mid_run_leaves_resumable_checkpoint(repo, tmp_path) -> None:
    rows = 200_000
    x = features(rows, 7)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "y.parquet"
    common = [MLP, "-i", str(tmp_path / "x.npy"), "-o", str(out), "--checkpoint-interval-s", "0.02"]
    log = tmp_path / "first.log"
    with running_server(repo) as doomed:
        first = _start_cli([*common, "--url", doomed.address, "-n", "40", "-k", "2",
                            "--max-retries", "3"], log)
        _wait_for_progress(out, first, log)
    assert first.wait(60) == 1, log.read_text()
    text = log.read_text()
    assert "--resume" in text and "Traceback" not in text
    assert not out.exists() and checkpoint_path(out).exists()
    with running_server(repo) as second:
        assert run_cli(*common, "--url", second.address, "-n", "4000", "--resume") == 0
    got = arrow_to_numpy(out, "output", pq.read_table(out).column("output"))
    assert np.array_equal(got, reference(repo, MLP, {"input": x})["output"])


def test_checkpoint_without_resume_is_refused(server, tmp_path, capsys) -> None:
    np.save(tmp_path / "x.npy", features(10))
    out = tmp_path / "y.npy"
    checkpoint_path(out).write_text('{"format": 1, "rows_done": 0}')
    assert run_cli(MLP, "-i", str(tmp_path / "x.npy"), "-o", str(out), "--url", server.address) == 2
    assert "--resume" in capsys.readouterr().err


def test_resume_after_kill_between_output_and_checkpoint_removal(server, repo, tmp_path,
                                                                 monkeypatch) -> None:
    import kairos.client.batch.cli as cli

    x = features(500, 8)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "y.npy"
    args = [MLP, "-i", str(tmp_path / "x.npy"), "-o", str(out), "--url", server.address]

    def killed(output: Path) -> None:
        raise SystemExit(137)

    monkeypatch.setattr(cli, "remove_checkpoint", killed)
    with pytest.raises(SystemExit):
        run_cli(*args)
    assert out.exists() and json.loads(checkpoint_path(out).read_text())["finalizing"]
    monkeypatch.undo()
    assert run_cli(*args, "--resume") == 0
    assert not checkpoint_path(out).exists()
    assert np.array_equal(np.load(out), reference(repo, MLP, {"input": x})["output"])


def test_pieces_side_by_side_on_every_batch_thread_are_bit_identical(tmp_path) -> None:
    """scheduling.batch_threads: 3 runs three pieces at a time on the model's one session
    (its runs are thread-safe); the rows still equal one-thread onnxruntime, in order, and a
    --low-priority client gets them all."""
    root = tmp_path / "repo"
    write_model(root, MLP, build_mlp((16, 32, 4), seed=16, name=MLP),
                config=CONFIG + "scheduling:\n  batch_threads: 3\n")
    x = features(60_000, seed=5)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "y.npy"
    with running_server(root) as server:
        # in a process of its own: --low-priority lowers the whole process for good
        done = subprocess.run([sys.executable, "-m", "kairos.client.batch", MLP, "-i",
                               str(tmp_path / "x.npy"), "-o", str(out), "--url", server.address,
                               "-n", "2000", "-k", "4", "--low-priority", "--no-progress"],
                              capture_output=True, text=True, timeout=300)
        state = scheduler_state(server.address, MLP)
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.load(out), reference(root, MLP, {"input": x})["output"])
    assert state["background_pieces"] == 3 and state["background_running"] == 0
    assert sum(state["batch_sizes"].values()) >= 60_000 // 64  # in pieces of at most 64 rows
