"""The checkpoint beside the output: which rows are done, so `--resume` continues there.

`OUT.kairos-checkpoint.json` records the job (model, input fingerprint, output format and
tensor specs) and `rows_done`: the length of the contiguous prefix of rows whose outputs
are flushed to the parts folder. Rows past it may be partly written; a resumed run
rewrites them, so no row is missing and none is counted twice. Writes are atomic
(temporary file, fsync, rename): a crash leaves the old checkpoint or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

CHECKPOINT_SUFFIX = ".kairos-checkpoint.json"
PARTS_SUFFIX = ".kairos-parts"
FORMAT_VERSION = 1


def checkpoint_path(output: Path) -> Path:
    return output.with_name(output.name + CHECKPOINT_SUFFIX)


def parts_path(output: Path) -> Path:
    return output.with_name(output.name + PARTS_SUFFIX)


class CheckpointError(ValueError):
    """A checkpoint that is unreadable or belongs to a different job."""


def load_checkpoint(output: Path) -> dict[str, Any] | None:
    """The saved state, or None when there is no checkpoint."""
    path = checkpoint_path(output)
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a kairos batch checkpoint of format {FORMAT_VERSION}")
    return state


def save_checkpoint(output: Path, state: dict[str, Any]) -> None:
    """Atomically replace the checkpoint with `state`."""
    path = checkpoint_path(output)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as handle:
        json.dump({**state, "format": FORMAT_VERSION}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_dir(path.parent)


def remove_checkpoint(output: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        checkpoint_path(output).unlink()
    _fsync_dir(output.parent)


def check_same_job(state: dict[str, Any], job: dict[str, Any], output: Path) -> None:
    """Refuse to resume when the checkpoint was written for a different job."""
    for key in ("model", "version", "input", "input_rows", "output_format", "outputs_wanted"):
        if state.get(key) != job.get(key):
            raise CheckpointError(
                f"{checkpoint_path(output)} belongs to a different job ({key}: checkpoint has "
                f"{state.get(key)!r}, this run has {job.get(key)!r}); remove it and its "
                f"{parts_path(output).name} folder to start over"
            )


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
