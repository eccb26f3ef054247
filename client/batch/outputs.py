"""Output stores for `kairos batch`: rows written in order, flushed, finalized into OUT.

While a job runs its outputs live in the parts folder beside OUT (`OUT.kairos-parts/`), so
OUT itself only ever appears complete:
- `.npy` / `.npz`: one preallocated memory-mapped `.npy` per output (the row count is known);
  at the end the `.npy` is renamed to OUT, or the arrays are packed (uncompressed, so they
  can be memory-mapped) into OUT.
- Parquet: each flush closes a part file holding a contiguous range of rows; at the end the
  parts are copied, in order, into OUT. Output columns: [rows] -> scalar column,
  [rows, n] -> fixed_size_list<n>, [rows, n, m] -> fixed_size_list of fixed_size_list.

`state()` is what the checkpoint needs to reopen the store on `--resume`.
"""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import parts_path

# Parquet output: rows buffered before a row group is written.
ROW_GROUP_ROWS = 65536


class OutputError(ValueError):
    """Outputs that cannot be stored as asked (shape or dtype changed between requests)."""


def output_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        return suffix[1:]
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise OutputError(f"{path}: unknown output format '{suffix}' (use .npy, .npz or .parquet)")


def _spec(array: np.ndarray) -> dict[str, Any]:
    return {"dtype": array.dtype.str, "row_shape": list(array.shape[1:])}


class OutputStore(abc.ABC):
    """Base class: `write(start, outputs)` in row order, `flush()`, `finalize()`."""

    def __init__(self, output: Path, total_rows: int):
        self.output = output
        self.total_rows = total_rows
        self.parts = parts_path(output)
        self.rows_written = 0
        self.specs: dict[str, dict[str, Any]] = {}

    def start(self, state: dict[str, Any] | None, rows_done: int) -> None:
        """Begin a fresh job (state None: the parts folder is emptied) or reopen one."""
        if state is None:
            shutil.rmtree(self.parts, ignore_errors=True)
            self.parts.mkdir(parents=True)
        else:
            self.specs = state.get("specs", {})
            self.rows_written = rows_done
            self._reopen(state)

    def write(self, start: int, outputs: dict[str, np.ndarray]) -> None:
        if start != self.rows_written:
            raise OutputError(f"rows must be written in order: got row {start}, expected {self.rows_written}")
        if not self.specs:
            self.specs = {name: _spec(array) for name, array in outputs.items()}
            self._create()
        rows = self._check(outputs)
        self._write(start, outputs)
        self.rows_written += rows

    def _check(self, outputs: dict[str, np.ndarray]) -> int:
        if set(outputs) != set(self.specs):
            raise OutputError(f"the server returned outputs {sorted(outputs)}, earlier {sorted(self.specs)}")
        counts = set()
        for name, array in outputs.items():
            if _spec(array) != self.specs[name]:
                raise OutputError(
                    f"output '{name}' changed: {array.dtype} rows of {list(array.shape[1:])}, "
                    f"earlier {self.specs[name]}"
                )
            counts.add(array.shape[0])
        if len(counts) != 1:
            raise OutputError(f"outputs have different row counts: {sorted(counts)}")
        return counts.pop()

    def state(self) -> dict[str, Any]:
        return {"specs": self.specs}

    @abc.abstractmethod
    def _reopen(self, state: dict[str, Any]) -> None:
        """Resume from a checkpoint `state`: reopen the parts written so far."""

    @abc.abstractmethod
    def _create(self) -> None:
        """Start a new output: create the parts folder and files."""

    @abc.abstractmethod
    def _write(self, start: int, outputs: dict[str, np.ndarray]) -> None:
        """Store the outputs of rows `start`.. (called in row order)."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Make everything written so far durable (before a checkpoint)."""

    @abc.abstractmethod
    def finalize(self) -> None:
        """Assemble the parts into OUT, atomically."""

    def discard(self) -> None:
        """Remove the parts folder (after finalize)."""
        shutil.rmtree(self.parts, ignore_errors=True)


class NumpyStore(OutputStore):
    """`.npy` (exactly one output) or `.npz` (any number) through preallocated memmaps."""

    def __init__(self, output: Path, total_rows: int, packed: bool):
        super().__init__(output, total_rows)
        self.packed = packed
        self._arrays: dict[str, np.ndarray] = {}

    def _file(self, index: int) -> Path:
        return self.parts / f"output-{index}.npy"

    def _create(self) -> None:
        if not self.packed and len(self.specs) != 1:
            raise OutputError(f"a .npy file holds one array but the model returned {len(self.specs)} "
                              "outputs; pick one with --output-name, or write .npz/.parquet")
        for index, (name, spec) in enumerate(self.specs.items()):
            shape = (self.total_rows, *spec["row_shape"])
            self._arrays[name] = np.lib.format.open_memmap(
                self._file(index), mode="w+", dtype=np.dtype(spec["dtype"]), shape=shape
            )

    def _reopen(self, state: dict[str, Any]) -> None:
        for index, (name, spec) in enumerate(self.specs.items()):
            path = self._file(index)
            try:
                array = np.lib.format.open_memmap(path, mode="r+")
            except (OSError, ValueError) as exc:
                raise OutputError(f"cannot reopen {path} to resume: {exc}") from None
            if array.shape != (self.total_rows, *spec["row_shape"]) or array.dtype.str != spec["dtype"]:
                raise OutputError(f"{path} does not match the checkpoint; start over without --resume")
            self._arrays[name] = array

    def _write(self, start: int, outputs: dict[str, np.ndarray]) -> None:
        for name, array in outputs.items():
            self._arrays[name][start : start + len(array)] = array

    def flush(self) -> None:
        for array in self._arrays.values():
            array.flush()

    def finalize(self) -> None:
        self.flush()
        if not self._arrays:  # an empty dataset: nothing was written
            self._empty()
            return
        if self.packed:
            temporary = self.output.with_name(self.output.name + ".tmp")
            with zipfile.ZipFile(temporary, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                for name, array in self._arrays.items():
                    with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, array, allow_pickle=False)
            os.replace(temporary, self.output)
        else:
            (path,) = (self._file(0),)
            self._arrays.clear()
            os.replace(path, self.output)
        self._arrays.clear()

    def _empty(self) -> None:
        if self.packed:
            np.savez(self.output)
        else:
            raise OutputError("the dataset has no rows: nothing to write")


class ParquetStore(OutputStore):
    """Parquet through part files, one per flush, merged in order at the end."""

    def __init__(self, output: Path, total_rows: int):
        super().__init__(output, total_rows)
        self._done_parts: list[list] = []  # [start, stop, file name]
        self._buffer: list[Any] = []
        self._buffered = 0
        self._writer: Any = None
        self._part_start = 0
        self._schema: Any = None

    def _create(self) -> None:
        self._part_start = self.rows_written

    def _reopen(self, state: dict[str, Any]) -> None:
        self._done_parts = [list(part) for part in state.get("parts", [])]
        covered = self._done_parts[-1][1] if self._done_parts else 0
        if covered != self.rows_written:
            raise OutputError("the checkpoint's parquet parts do not cover its rows; start over")
        keep = {part[2] for part in self._done_parts}
        for path in self.parts.glob("part-*.parquet"):
            if path.name not in keep:  # written after the last checkpoint: redone now
                path.unlink()
        for name in keep:
            if not (self.parts / name).is_file():
                raise OutputError(f"{self.parts / name} is missing; start over without --resume")
        self._part_start = self.rows_written

    def _write(self, start: int, outputs: dict[str, np.ndarray]) -> None:
        import pyarrow as pa

        table = pa.table({name: numpy_to_arrow(array) for name, array in outputs.items()})
        self._buffer.append(table)
        self._buffered += table.num_rows
        if self._buffered >= ROW_GROUP_ROWS:
            self._write_buffer()

    def _write_buffer(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._buffer:
            return
        table = pa.concat_tables(self._buffer)
        self._buffer, self._buffered = [], 0
        if self._writer is None:
            name = f"part-{self._part_start:012d}.parquet"
            self._writer = pq.ParquetWriter(self.parts / name, table.schema)
            self._writer_name = name
        self._writer.write_table(table, row_group_size=max(1, table.num_rows))

    def flush(self) -> None:
        self._write_buffer()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._done_parts.append([self._part_start, self.rows_written, self._writer_name])
            self._part_start = self.rows_written

    def state(self) -> dict[str, Any]:
        return {**super().state(), "parts": self._done_parts}

    def finalize(self) -> None:
        import pyarrow.parquet as pq

        self.flush()
        temporary = self.output.with_name(self.output.name + ".tmp")
        writer = None
        try:
            for _start, _stop, name in self._done_parts:
                part = pq.ParquetFile(self.parts / name)
                for group in range(part.metadata.num_row_groups):
                    table = part.read_row_group(group)
                    if writer is None:
                        writer = pq.ParquetWriter(temporary, table.schema)
                    writer.write_table(table)
                part.close()
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise OutputError("the dataset has no rows: nothing to write")
        os.replace(temporary, self.output)

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            if self._writer is not None:
                self._writer.close()
        super().discard()


def numpy_to_arrow(array: np.ndarray) -> Any:
    """[rows] -> a plain column; [rows, n, ...] -> nested fixed-size lists."""
    import pyarrow as pa

    if array.ndim == 1:
        if array.dtype == np.object_:
            return pa.array(list(array), type=pa.binary())
        return pa.array(array)
    flat = numpy_to_arrow(np.ascontiguousarray(array).reshape((-1, *array.shape[2:])))
    return pa.FixedSizeListArray.from_arrays(flat, array.shape[1])


def make_store(output: Path, total_rows: int) -> OutputStore:
    fmt = output_format(output)
    if fmt == "parquet":
        return ParquetStore(output, total_rows)
    return NumpyStore(output, total_rows, packed=fmt == "npz")
