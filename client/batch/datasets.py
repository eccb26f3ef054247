"""Dataset readers for `kairos batch`: `.npy`, `.npz` and Parquet, read in chunks of rows.

Memory stays bounded whatever the file size: `.npy` files (and the uncompressed members of
an `.npz`, which `np.savez` writes) are memory-mapped, so a chunk costs only the pages it
touches; compressed `.npz` members are decompressed sequentially; Parquet is read one record
batch at a time, skipping whole row groups on resume.

Every reader describes its columns (`Column`: dtype and the shape of one row) before any
data is read, so a mismatch with the model is reported before a request is sent.
"""

from __future__ import annotations

import abc
import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

SUFFIXES = (".npy", ".npz", ".parquet", ".pq")


class DatasetError(ValueError):
    """A dataset that cannot be read as asked (missing, corrupt, wrong types)."""


@dataclass(frozen=True)
class Column:
    """One named array of a dataset: its dtype and the shape of one row (None: varies)."""

    name: str
    dtype: np.dtype
    row_shape: tuple[int | None, ...]


def fingerprint(path: Path) -> dict[str, Any]:
    """What identifies an input file's content cheaply (a resumed run must read the same)."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def open_dataset(path: Path, npy_name: str = "input") -> DatasetReader:
    """The reader for `path`, chosen by suffix; DatasetError if it cannot be opened."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DatasetError(f"{path}: unknown input format '{suffix}' (use .npy, .npz or .parquet)")
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    if not os.access(path, os.R_OK):
        raise DatasetError(f"{path}: not readable (permission denied)")
    try:
        if suffix == ".npy":
            return NpyReader(path, npy_name)
        if suffix == ".npz":
            return NpzReader(path)
        return ParquetReader(path)
    except DatasetError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(f"{path}: cannot read it as {suffix}: {exc}") from None


class DatasetReader(abc.ABC):
    """Base: `columns`, `num_rows`, and `chunks(start, size)` of dicts name -> array."""

    path: Path
    columns: dict[str, Column]
    num_rows: int

    @abc.abstractmethod
    def chunks(
        self, start: int, size: int, names: Sequence[str]
    ) -> Iterator[dict[str, np.ndarray]]:
        """Consecutive chunks of `size` rows (the last may be shorter) from row `start`."""

    def close(self) -> None:  # noqa: B027 - a no-op unless the reader holds open files
        """Release open files (mappings go with their arrays)."""


def _row_count(path: Path, arrays: dict[str, tuple[np.dtype, tuple[int, ...]]]) -> int:
    counts = {name: shape[0] for name, (_, shape) in arrays.items() if shape}
    scalars = [name for name, (_, shape) in arrays.items() if not shape]
    if scalars:
        raise DatasetError(f"{path}: array '{scalars[0]}' is a scalar; rows need a first dimension")
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{name}: {rows}" for name, rows in counts.items())
        raise DatasetError(f"{path}: arrays have different row counts ({listing})")
    return next(iter(counts.values()), 0)


class NpyReader(DatasetReader):
    """One memory-mapped array; `name` is the model input it feeds."""

    def __init__(self, path: Path, name: str):
        self.path = path
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if not isinstance(array, np.ndarray):
            raise DatasetError(f"{path}: not a .npy array")
        self._array = array
        self.columns = {name: Column(name, array.dtype, tuple(array.shape[1:]))}
        self.num_rows = _row_count(path, {name: (array.dtype, array.shape)})

    def rename(self, name: str) -> None:
        """Feed the model input `name` (the array itself has no name)."""
        (column,) = self.columns.values()
        self.columns = {name: Column(name, column.dtype, column.row_shape)}

    def chunks(self, start: int, size: int, names: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
        (name,) = self.columns
        for begin in range(start, self.num_rows, size):
            yield {name: self._array[begin : begin + size]}


class _NpzMember:
    """One `.npy` inside an `.npz`: memory-mapped when stored, else read sequentially."""

    def __init__(self, path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo):
        self.path, self.archive, self.info = path, archive, info
        with archive.open(info) as stream:
            version = np.lib.format.read_magic(stream)
            shape, fortran, dtype = _read_header(stream, version)
            self.header_size = stream.tell()
        if dtype.hasobject:
            raise DatasetError(f"{path}: array '{info.filename}' holds Python objects (pickled)")
        self.shape, self.dtype, self.fortran = tuple(shape), dtype, fortran
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self._mapped = self._map() if info.compress_type == zipfile.ZIP_STORED else None
        self._stream: BinaryIO | None = None
        self._position = 0  # row the sequential stream is at

    def _map(self) -> np.ndarray | None:
        if self.fortran or not self.shape:
            return None
        with open(self.path, "rb") as raw:
            raw.seek(self.info.header_offset)
            local = raw.read(30)
        if local[:4] != b"PK\x03\x04":
            return None
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        offset = self.info.header_offset + 30 + name_len + extra_len + self.header_size
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=offset, shape=self.shape)

    def read(self, start: int, stop: int) -> np.ndarray:
        if self._mapped is not None:
            return self._mapped[start:stop]
        if self.fortran:
            raise DatasetError(
                f"{self.path}: compressed Fortran-ordered array '{self.info.filename}' cannot be "
                "read in chunks; save it C-ordered (np.ascontiguousarray) or uncompressed"
            )
        if self._stream is None or start < self._position:
            self.close()
            self._stream = self.archive.open(self.info)
            self._stream.seek(self.header_size)
            self._position = 0
        if start > self._position:
            self._stream.seek((start - self._position) * self.row_bytes, os.SEEK_CUR)
        data = self._stream.read((stop - start) * self.row_bytes)
        self._position = stop
        if len(data) != (stop - start) * self.row_bytes:
            raise DatasetError(f"{self.path}: array '{self.info.filename}' is truncated")
        return np.frombuffer(data, dtype=self.dtype).reshape((stop - start, *self.shape[1:]))

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


def _read_header(stream: BinaryIO, version: tuple[int, int]) -> tuple:
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(stream)
    raise DatasetError(f"unsupported .npy format version {version}")


class NpzReader(DatasetReader):
    """Several named arrays with the same number of rows (one per model input)."""

    def __init__(self, path: Path):
        self.path = path
        self._archive = zipfile.ZipFile(path)
        self._members: dict[str, _NpzMember] = {}
        for info in self._archive.infolist():
            if info.filename.endswith(".npy"):
                self._members[info.filename[: -len(".npy")]] = _NpzMember(path, self._archive, info)
        if not self._members:
            raise DatasetError(f"{path}: the archive holds no arrays")
        self.columns = {
            name: Column(name, m.dtype, tuple(m.shape[1:])) for name, m in self._members.items()
        }
        self.num_rows = _row_count(path, {n: (m.dtype, m.shape) for n, m in self._members.items()})

    def chunks(self, start: int, size: int, names: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
        for begin in range(start, self.num_rows, size):
            stop = min(begin + size, self.num_rows)
            yield {name: self._members[name].read(begin, stop) for name in names}

    def close(self) -> None:
        for member in self._members.values():
            member.close()
        self._archive.close()


class ParquetReader(DatasetReader):
    """Columns of a Parquet file, read one record batch at a time.

    Column types map to arrays as: a scalar column -> [rows]; a fixed-size list or a list
    column (every row the same length) -> [rows, n]; lists of lists -> [rows, n, m]; string or
    binary -> BYTES. Nulls are refused.
    """

    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        self.path = path
        self._file = pq.ParquetFile(path)
        self.num_rows = self._file.metadata.num_rows
        self.columns = {
            field.name: _arrow_column(path, field) for field in self._file.schema_arrow
        }

    def chunks(self, start: int, size: int, names: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
        import pyarrow as pa

        metadata = self._file.metadata
        first, skip = 0, start
        while first < metadata.num_row_groups and skip >= metadata.row_group(first).num_rows:
            skip -= metadata.row_group(first).num_rows
            first += 1
        groups = list(range(first, metadata.num_row_groups))
        pending: list[pa.RecordBatch] = []
        held = 0
        batches = self._file.iter_batches(batch_size=size, row_groups=groups, columns=list(names))
        for batch in batches:
            if skip:
                dropped = min(skip, batch.num_rows)
                batch, skip = batch.slice(dropped), skip - dropped
            pending.append(batch)
            held += batch.num_rows
            while held >= size:
                table = pa.Table.from_batches(pending)
                yield self._arrays(table.slice(0, size), names)
                rest = table.slice(size)
                pending, held = rest.to_batches(), rest.num_rows
        if held:
            yield self._arrays(pa.Table.from_batches(pending), names)

    def _arrays(self, table: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
        return {name: arrow_to_numpy(self.path, name, table.column(name)) for name in names}

    def close(self) -> None:
        self._file.close()


def _arrow_column(path: Path, field: Any) -> Column:
    """A Parquet column's dtype and row shape from the schema alone."""
    import pyarrow as pa

    kind, row_shape = field.type, []
    while pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind):
        row_shape.append(kind.list_size if pa.types.is_fixed_size_list(kind) else None)
        kind = kind.value_type
    if pa.types.is_string(kind) or pa.types.is_binary(kind) or pa.types.is_large_string(kind):
        dtype = np.dtype(np.object_)
    else:
        try:
            dtype = np.dtype(kind.to_pandas_dtype())
        except (NotImplementedError, TypeError):
            dtype = None
        if dtype is None or dtype.kind not in "biuf":
            raise DatasetError(f"{path}: column '{field.name}' has type {field.type}, which no "
                               "model input can take (numbers, lists of numbers or strings)")
    return Column(field.name, dtype, tuple(row_shape))


def arrow_to_numpy(path: Path | str, name: str, column: Any) -> np.ndarray:
    """A (chunked) Arrow column as a numpy array of shape [rows, *row_shape]."""
    import pyarrow as pa
    import pyarrow.compute as pc

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:
        raise DatasetError(f"{path}: column '{name}' has {array.null_count} null values")
    kind = array.type
    if pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind):
        rows = len(array)
        if pa.types.is_fixed_size_list(kind):
            width = kind.list_size
        else:
            lengths = pc.list_value_length(array)
            low, high = pc.min_max(lengths).values()
            width = low.as_py() or 0
            if rows and low.as_py() != high.as_py():
                raise DatasetError(f"{path}: column '{name}' has lists of different lengths "
                                   f"({low.as_py()} to {high.as_py()}); a tensor needs one")
        inner = arrow_to_numpy(path, name, array.flatten())
        return inner.reshape((rows, width, *inner.shape[1:]))
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind):
        values = [v if isinstance(v, bytes) else v.encode("utf-8") for v in array.to_pylist()]
        result = np.empty(len(values), dtype=np.object_)
        result[:] = values
        return result
    return array.to_numpy(zero_copy_only=False)
