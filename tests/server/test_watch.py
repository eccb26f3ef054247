"""`--watch` polling logic, without a server: a change is acted on once it has
been stable for one poll; removal unloads; a failed reload is logged, not raised."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kairos.server.errors import ModelUnavailable
from kairos.server.watch import RepositoryWatcher, fingerprint


class FakeRepository:
    def __init__(self, root: Path, fail: bool = False) -> None:
        self.root = root
        self.fail = fail
        self.calls: list[tuple[str, str]] = []

    def names_on_disk(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    async def load(self, name: str) -> None:
        self.calls.append(("load", name))
        if self.fail:
            raise ModelUnavailable(f"model '{name}' failed to load: broken")

    async def unload(self, name: str) -> None:
        self.calls.append(("unload", name))


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def watching(root: Path, fail: bool = False) -> tuple[FakeRepository, RepositoryWatcher]:
    """A watcher over `root` that has already seen its current contents."""
    repository = FakeRepository(root, fail=fail)
    watcher = RepositoryWatcher(repository)
    watcher._seen = watcher.snapshot()
    return repository, watcher


def polls(watcher: RepositoryWatcher, count: int) -> list[list[str]]:
    async def run() -> list[list[str]]:
        return [await watcher.poll() for _ in range(count)]

    return asyncio.run(run())


def test_fingerprint_changes_with_content_and_files(tmp_path: Path):
    write(tmp_path / "m" / "1" / "model.onnx", b"a")
    before = fingerprint(tmp_path / "m")
    write(tmp_path / "m" / "1" / "model.onnx", b"ab")
    assert fingerprint(tmp_path / "m") != before
    changed = fingerprint(tmp_path / "m")
    write(tmp_path / "m" / "2" / "model.onnx", b"ab")
    assert fingerprint(tmp_path / "m") != changed


def test_nothing_changed_nothing_done(tmp_path: Path):
    write(tmp_path / "m" / "1" / "model.onnx", b"a")
    repository, watcher = watching(tmp_path)
    assert polls(watcher, 3) == [[], [], []]
    assert repository.calls == []


def test_a_change_is_reloaded_once_stable(tmp_path: Path):
    write(tmp_path / "m" / "1" / "model.onnx", b"a")
    repository, watcher = watching(tmp_path)
    write(tmp_path / "m" / "1" / "model.onnx", b"new weights")
    assert polls(watcher, 1) == [[]]  # seen once: maybe still being written
    assert polls(watcher, 2) == [["m"], []]  # stable: reloaded exactly once
    assert repository.calls == [("load", "m")]
    assert watcher.reloads == 1


def test_a_file_still_changing_waits(tmp_path: Path):
    write(tmp_path / "m" / "1" / "model.onnx", b"a")
    repository, watcher = watching(tmp_path)
    for size in range(1, 4):  # a copy in progress: different on every poll
        write(tmp_path / "m" / "1" / "model.onnx", b"x" * size)
        assert polls(watcher, 1) == [[]]
    assert polls(watcher, 1) == [["m"]]
    assert repository.calls == [("load", "m")]


def test_new_and_removed_models(tmp_path: Path):
    write(tmp_path / "old" / "1" / "model.onnx", b"a")
    repository, watcher = watching(tmp_path)
    write(tmp_path / "new" / "1" / "model.onnx", b"b")
    (tmp_path / "old" / "1" / "model.onnx").unlink()
    (tmp_path / "old" / "1").rmdir()
    (tmp_path / "old").rmdir()
    polls(watcher, 2)
    assert sorted(repository.calls) == [("load", "new"), ("unload", "old")]


def test_a_failed_reload_is_not_retried_until_the_files_change_again(tmp_path: Path):
    write(tmp_path / "m" / "1" / "model.onnx", b"a")
    repository, watcher = watching(tmp_path, fail=True)
    write(tmp_path / "m" / "1" / "model.onnx", b"broken")
    polls(watcher, 4)
    assert repository.calls == [("load", "m")]
    assert watcher.reloads == 0
