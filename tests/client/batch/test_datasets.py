"""Readers: chunks in order from any start row, memory-mapped where possible, clear errors."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kairos.client.batch.datasets import DatasetError, open_dataset


def _collect(reader, start: int, size: int, names) -> dict[str, np.ndarray]:
    chunks = list(reader.chunks(start, size, names))
    assert all(len(next(iter(c.values()))) == size for c in chunks[:-1])
    return {name: np.concatenate([c[name] for c in chunks]) for name in names}


def test_npy_is_memory_mapped_and_chunked(tmp_path: Path) -> None:
    x = np.arange(1000 * 3, dtype=np.float32).reshape(1000, 3)
    np.save(tmp_path / "x.npy", x)
    reader = open_dataset(tmp_path / "x.npy", "input")
    assert reader.num_rows == 1000
    assert reader.columns["input"].row_shape == (3,)
    first = next(reader.chunks(0, 64, ["input"]))["input"]
    assert isinstance(first.base, np.memmap) or isinstance(first, np.memmap)
    np.testing.assert_array_equal(_collect(reader, 130, 64, ["input"])["input"], x[130:])


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_members_read_from_any_row(tmp_path: Path, compressed: bool) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((777, 4)).astype(np.float32)
    b = rng.integers(0, 9, size=(777,), dtype=np.int64)
    (np.savez_compressed if compressed else np.savez)(tmp_path / "d.npz", a=a, b=b)
    reader = open_dataset(tmp_path / "d.npz")
    assert reader.num_rows == 777 and set(reader.columns) == {"a", "b"}
    if not compressed:  # stored members are mapped, not read
        assert reader._members["a"]._mapped is not None
    got = _collect(reader, 100, 128, ["a", "b"])
    np.testing.assert_array_equal(got["a"], a[100:])
    np.testing.assert_array_equal(got["b"], b[100:])
    reader.close()


def test_npz_different_row_counts_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", a=np.zeros((3, 2)), b=np.zeros((4,)))
    with pytest.raises(DatasetError, match="different row counts"):
        open_dataset(tmp_path / "d.npz")


def _parquet(path: Path, table: pa.Table, row_group_size: int) -> None:
    pq.write_table(table, path, row_group_size=row_group_size)


def test_parquet_columns_map_to_tensors_and_resume_mid_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1000, 5)).astype(np.float32)
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 5)
    ragged_free = pa.array([list(row) for row in x[:, :2]], type=pa.list_(pa.float32()))
    scalar = pa.array(np.arange(1000, dtype=np.int64))
    table = pa.table({"x": fixed, "pair": ragged_free, "id": scalar, "tag": ["t"] * 1000})
    _parquet(tmp_path / "d.parquet", table, row_group_size=300)
    reader = open_dataset(tmp_path / "d.parquet")
    assert reader.num_rows == 1000
    assert reader.columns["x"].row_shape == (5,) and reader.columns["x"].dtype == np.float32
    assert reader.columns["pair"].row_shape == (None,)
    assert reader.columns["id"].row_shape == ()
    assert reader.columns["tag"].dtype == np.object_
    # start inside the second row group, chunks straddling row groups
    got = _collect(reader, 450, 128, ["x", "pair", "id", "tag"])
    np.testing.assert_array_equal(got["x"], x[450:])
    np.testing.assert_array_equal(got["pair"], x[450:, :2])
    np.testing.assert_array_equal(got["id"], np.arange(450, 1000))
    assert got["tag"][0] == b"t"


def test_parquet_nulls_and_ragged_lists_refused(tmp_path: Path) -> None:
    _parquet(tmp_path / "n.parquet", pa.table({"v": pa.array([1.0, None], pa.float32())}), 10)
    with pytest.raises(DatasetError, match="null"):
        list(open_dataset(tmp_path / "n.parquet").chunks(0, 10, ["v"]))
    ragged = pa.array([[1.0], [1.0, 2.0]], type=pa.list_(pa.float32()))
    _parquet(tmp_path / "r.parquet", pa.table({"v": ragged}), 10)
    with pytest.raises(DatasetError, match="different lengths"):
        list(open_dataset(tmp_path / "r.parquet").chunks(0, 10, ["v"]))


def test_unreadable_inputs_are_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        open_dataset(tmp_path / "missing.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(DatasetError, match="cannot read"):
        open_dataset(tmp_path / "junk.npy")
    (tmp_path / "junk.npz").write_bytes(b"PK nope")
    with pytest.raises(DatasetError, match="cannot read"):
        open_dataset(tmp_path / "junk.npz")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 nope")
    with pytest.raises(DatasetError, match="cannot read"):
        open_dataset(tmp_path / "junk.parquet")
    with pytest.raises(DatasetError, match="unknown input format"):
        open_dataset(tmp_path / "data.csv")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError):
        open_dataset(tmp_path / "obj.npy")
    with zipfile.ZipFile(tmp_path / "empty.npz", "w"):
        pass
    with pytest.raises(DatasetError, match="no arrays"):
        open_dataset(tmp_path / "empty.npz")
