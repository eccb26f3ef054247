"""Column -> input mapping rules, output stores (npy/npz/Parquet) and the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from kairos.client.batch.checkpoint import (
    CheckpointError,
    check_same_job,
    checkpoint_path,
    load_checkpoint,
    parts_path,
    save_checkpoint,
)
from kairos.client.batch.datasets import Column, arrow_to_numpy
from kairos.client.batch.mapping import MappingError, TensorSpec, plan_inputs
from kairos.client.batch.outputs import OutputError, make_store, numpy_to_arrow

F32 = np.dtype(np.float32)


def test_plan_matches_names_dtypes_and_shapes() -> None:
    columns = {
        "x": Column("x", F32, (16,)),
        "s": Column("s", F32, ()),
        "extra": Column("extra", np.dtype(np.int64), ()),
    }
    inputs = [TensorSpec("x", "FP32", (-1, 16)), TensorSpec("s", "FP32", (-1, 1))]
    plan = plan_inputs(columns, inputs)
    assert plan.columns == {"x": "x", "s": "s"} and plan.expand == {"s"}
    assert plan.unused == ("extra",)
    out = plan.apply({"x": np.zeros((3, 16), F32), "s": np.zeros(3, F32)})
    assert out["s"].shape == (3, 1)


@pytest.mark.parametrize(
    ("column", "spec", "message"),
    [
        (Column("x", np.dtype(np.float64), (16,)), TensorSpec("x", "FP32", (-1, 16)), "float64"),
        (Column("x", F32, (15,)), TensorSpec("x", "FP32", (-1, 16)), "shape"),
        (Column("x", F32, (4, 4)), TensorSpec("x", "FP32", (-1, 16)), "shape"),
        (Column("y", F32, (16,)), TensorSpec("x", "FP32", (-1, 16)), "no column"),
        (Column("x", F32, (16,)), TensorSpec("x", "FP32", (8, 16)), "batch"),
    ],
)
def test_plan_refuses_mismatches(column: Column, spec: TensorSpec, message: str) -> None:
    with pytest.raises(MappingError, match=message):
        plan_inputs({column.name: column}, [spec])


def test_variable_dims_match_anything() -> None:
    plan = plan_inputs({"x": Column("x", F32, (None,))}, [TensorSpec("x", "FP32", (-1, -1))])
    assert plan.columns == {"x": "x"}


def _write_all(store, outputs: dict[str, np.ndarray], size: int, flush_every: int = 2) -> None:
    rows = len(next(iter(outputs.values())))
    for n, start in enumerate(range(0, rows, size)):
        store.write(start, {k: v[start : start + size] for k, v in outputs.items()})
        if n % flush_every == 0:
            store.flush()


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".parquet"])
def test_store_round_trip(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(2)
    outputs = {"out": rng.standard_normal((1000, 4)).astype(np.float32)}
    if suffix != ".npy":
        outputs["label"] = rng.integers(0, 9, 1000).astype(np.int64)
    target = tmp_path / f"y{suffix}"
    store = make_store(target, 1000)
    store.start(None, 0)
    _write_all(store, outputs, 128)
    store.finalize()
    store.discard()
    assert not parts_path(target).exists()
    if suffix == ".npy":
        np.testing.assert_array_equal(np.load(target), outputs["out"])
    elif suffix == ".npz":
        loaded = np.load(target)
        for name, value in outputs.items():
            np.testing.assert_array_equal(loaded[name], value)
    else:
        table = pq.read_table(target)
        for name, value in outputs.items():
            np.testing.assert_array_equal(arrow_to_numpy(target, name, table.column(name)), value)


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_store_resumes_from_its_state(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(3)
    out = rng.standard_normal((900, 2, 3)).astype(np.float32)
    target = tmp_path / f"y{suffix}"
    first = make_store(target, 900)
    first.start(None, 0)
    first.write(0, {"out": out[:300]})
    first.flush()
    state, done = first.state(), first.rows_written
    first.write(300, {"out": out[300:400] * 0})  # written but never flushed: a crash here
    if suffix == ".parquet":
        first._write_buffer()  # an orphan part file that resume must drop
    second = make_store(target, 900)
    second.start(json.loads(json.dumps(state)), done)
    second.write(300, {"out": out[300:]})
    second.finalize()
    if suffix == ".npy":
        np.testing.assert_array_equal(np.load(target), out)
    else:
        column = pq.read_table(target).column("out")
        np.testing.assert_array_equal(arrow_to_numpy(target, "out", column), out)


def test_store_refuses_out_of_order_and_changed_outputs(tmp_path: Path) -> None:
    store = make_store(tmp_path / "y.npz", 10)
    store.start(None, 0)
    store.write(0, {"a": np.zeros((5, 2), np.float32)})
    with pytest.raises(OutputError, match="in order"):
        store.write(6, {"a": np.zeros((4, 2), np.float32)})
    with pytest.raises(OutputError, match="changed"):
        store.write(5, {"a": np.zeros((5, 3), np.float32)})


def test_numpy_to_arrow_nests_fixed_size_lists() -> None:
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    column = numpy_to_arrow(array)
    assert str(column.type) == "fixed_size_list<item: fixed_size_list<item: float>[4]>[3]"
    np.testing.assert_array_equal(arrow_to_numpy("mem", "c", column), array)


def test_checkpoint_atomic_round_trip_and_job_check(tmp_path: Path) -> None:
    target = tmp_path / "y.npy"
    assert load_checkpoint(target) is None
    job = {"model": "m", "version": "", "input": {"size": 1}, "input_rows": 5,
           "output_format": "npy", "outputs_wanted": None}
    save_checkpoint(target, {**job, "rows_done": 3})
    state = load_checkpoint(target)
    assert state["rows_done"] == 3
    assert not checkpoint_path(target).with_name(checkpoint_path(target).name + ".tmp").exists()
    check_same_job(state, job, target)
    with pytest.raises(CheckpointError, match="different job"):
        check_same_job(state, {**job, "input_rows": 6}, target)
    checkpoint_path(target).write_text("{broken")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(target)
