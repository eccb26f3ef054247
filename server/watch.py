"""`--watch`: poll the model repository and reload models whose files changed.

Polling (not inotify) works on every filesystem, including network and
container volumes. A change is acted on only once a model's files look the same
on two polls in a row, so a model still being copied in is not loaded half
written. Reloading goes through `ModelRepository.load`, which builds the new
versions before swapping them in and drains the old ones: no accepted request
fails. A model folder that disappears is unloaded (its requests drain first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from .errors import KairosError
from .repository import ModelRepository

log = logging.getLogger("kairos.watch")

# (relative path, size, mtime in ns) of every file under a model folder.
Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(folder: Path) -> Fingerprint:
    """What a model folder holds now; changes whenever a file is added, removed or rewritten."""
    entries = []
    for root, _dirs, files in os.walk(folder, followlinks=False):
        for name in files:
            path = Path(root, name)
            with contextlib.suppress(OSError):  # removed while we looked: the next poll sees it
                stat = path.stat()
                entries.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


class RepositoryWatcher:
    """Reloads changed models every `interval` seconds until stopped."""

    def __init__(self, repository: ModelRepository, interval: float = 2.0) -> None:
        self.repository = repository
        self.interval = interval
        self.reloads = 0
        self._seen: dict[str, Fingerprint] = {}
        self._pending: dict[str, Fingerprint | None] = {}
        self._task: asyncio.Task | None = None

    def snapshot(self) -> dict[str, Fingerprint]:
        root = self.repository.root
        return {name: fingerprint(root / name) for name in self.repository.names_on_disk()}

    def start(self) -> None:
        """Begin watching from what is on disk now (call after the initial load)."""
        self._seen = self.snapshot()
        self._task = asyncio.create_task(self._run(), name="kairos-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll()
            except Exception:  # noqa: BLE001 - a watcher failure must not stop serving
                log.exception("repository watch failed; trying again next poll")

    async def poll(self) -> list[str]:
        """One pass: act on changes that were stable since the last pass; returns those names."""
        current = await asyncio.to_thread(self.snapshot)
        acted = []
        for name in sorted(set(current) | set(self._seen)):
            now = current.get(name)
            if now == self._seen.get(name):
                self._pending.pop(name, None)
                continue
            if name in self._pending and self._pending[name] == now:
                await self._apply(name, now)
                acted.append(name)
            else:
                self._pending[name] = now  # changed: wait one more poll for it to settle
        return acted

    async def _apply(self, name: str, now: Fingerprint | None) -> None:
        self._pending.pop(name, None)
        self._seen[name] = now
        if now is None:
            self._seen.pop(name, None)
            log.info("watch: model folder %s removed; unloading", name)
            action = self.repository.unload(name)
        else:
            log.info("watch: model %s changed on disk; reloading", name)
            action = self.repository.load(name)
        try:
            await action
            self.reloads += 1
        except KairosError as exc:
            # The old versions keep serving when the new ones fail to load.
            log.warning("watch: %s", exc)
