"""Loads, reloads and unloads models at run time, without restarting the server.

Each model folder holds an optional config and numbered version folders. A
model that fails to load is UNAVAILABLE with its reason while every other model
keeps serving. A reload builds the new versions fully (session, warm-up,
latency profiling) before swapping them in, then drains the old ones, so no
accepted request fails across a reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backend.onnx_backend import ModelLoadError, OnnxBackend
from ..errors import InvalidInput, KairosError, ModelNotFound, ModelUnavailable, short
from ..metrics import NULL_METRICS, MetricsSink
from ..types import ModelSignature
from .config import ConfigError, ModelSettings, VariantGroup, VariantMember, load_settings

log = logging.getLogger("kairos.repository")

MODEL_FILE = "model.onnx"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_VERSION = re.compile(r"^[0-9]{1,18}$")

DispatcherFactory = Callable[..., Any]


def _default_dispatcher_factory() -> DispatcherFactory:
    from ..scheduler.factory import make_dispatcher

    return make_dispatcher


def check_model_name(name: str) -> None:
    """Refuse names that could reach outside the repository (`..`, `/`, absolute paths)."""
    if not _NAME.fullmatch(name or "") or ".." in name:
        raise InvalidInput(
            f"invalid model name '{short(name)}': use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit"
        )


def check_version(version: str) -> None:
    if version and not _VERSION.fullmatch(version):
        raise InvalidInput(f"invalid model version '{short(version)}': versions are whole numbers")


@dataclass
class ServedVersion:
    """A loaded, ready model version."""

    model: str
    version: str
    backend: OnnxBackend
    dispatcher: Any
    settings: ModelSettings
    load_seconds: float = 0.0

    @property
    def signature(self) -> ModelSignature:
        return self.backend.signature


@dataclass
class ModelState:
    name: str
    served: dict[str, ServedVersion]
    latest: str | None
    failed: dict[str, str]
    reason: str


@dataclass
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str = ""


@dataclass
class _Model:
    name: str
    state: str = "UNAVAILABLE"
    reason: str = "not loaded"
    served: dict[str, ServedVersion] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def latest(self) -> ServedVersion | None:
        if not self.served:
            return None
        return self.served[max(self.served, key=int)]


class ModelRepository:
    def __init__(
        self,
        root: Path,
        *,
        metrics: MetricsSink = NULL_METRICS,
        dispatcher_factory: DispatcherFactory | None = None,
    ) -> None:
        self.root = root.resolve()
        self.metrics = metrics
        self._factory = dispatcher_factory or _default_dispatcher_factory()
        self._models: dict[str, _Model] = {}
        # Called with a model's name whenever what it serves or its state changes
        # (the native front end republishes the model's signatures from it).
        self.listeners: list[Callable[[str], None]] = []

    # ---- discovery -------------------------------------------------------------------

    def _model_dir(self, name: str) -> Path:
        check_model_name(name)
        path = self.root / name
        # A symlinked model folder must still resolve inside the repository.
        if not path.resolve().is_relative_to(self.root):
            raise InvalidInput(f"model '{short(name)}' points outside the model repository")
        return path

    def names_on_disk(self) -> list[str]:
        if not self.root.is_dir():
            return []
        names = []
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and _NAME.fullmatch(entry.name) and ".." not in entry.name:
                # A folder symlinked from outside the repository is not a model (and must
                # not stop the others loading).
                if entry.resolve().is_relative_to(self.root):
                    names.append(entry.name)
                else:
                    log.warning("ignoring %s: it points outside the model repository", entry)
        return names

    def _versions_on_disk(self, folder: Path) -> list[int]:
        versions = []
        for entry in folder.iterdir():
            inside = entry.resolve().is_relative_to(self.root)
            if entry.is_dir() and _VERSION.fullmatch(entry.name) and inside:
                versions.append(int(entry.name))
        return versions

    # ---- load / unload ---------------------------------------------------------------

    async def load_all(self) -> None:
        for name in self.names_on_disk():
            # A failure is recorded with its reason; the other models keep loading.
            with contextlib.suppress(ModelUnavailable):
                await self.load(name)

    async def load(self, name: str) -> None:
        """Load or reload a model; raises ModelUnavailable with the reason if it fails."""
        folder = self._model_dir(name)
        if not folder.is_dir():
            raise ModelNotFound(f"model '{short(name)}' is not in the model repository")
        record = self._models.setdefault(name, _Model(name))
        async with record.lock:
            if not record.served:
                record.state, record.reason = "LOADING", ""
                self._changed(name)
            self.metrics.model_state(name, "", "LOADING")
            try:
                fresh, failed = await asyncio.to_thread(self._build_versions, name, folder)
            except (ConfigError, ModelLoadError) as exc:
                fresh, failed = {}, {"": str(exc)}
            for served in fresh.values():
                await _maybe_await(getattr(served.dispatcher, "start", None))
            old = record.served
            if fresh or not old:
                record.served = fresh
            record.failed = failed
            self._set_state(record)
            self._changed(name)
            if fresh:
                await self._retire(name, [v for k, v in old.items() if fresh.get(k) is not v])
            if not fresh:
                raise ModelUnavailable(f"model '{name}' failed to load: {record.reason}")

    def _build_versions(
        self, name: str, folder: Path
    ) -> tuple[dict[str, ServedVersion], dict[str, str]]:
        settings = load_settings(folder)
        wanted = settings.version_policy.select(self._versions_on_disk(folder))
        if not wanted:
            raise ModelLoadError("no version folder (e.g. 1/model.onnx) matches the version policy")
        fresh, failed = {}, {}
        for number in wanted:
            version = str(number)
            try:
                fresh[version] = self._build_version(name, version, folder / version, settings)
            except (ModelLoadError, KairosError) as exc:  # the model's fault (load, warm-up, profile)
                log.warning("model %s version %s failed to load: %s", name, version, exc)
                failed[version] = str(exc)
                self.metrics.model_state(name, version, "UNAVAILABLE")
            except Exception as exc:  # a bug (ours or a library's): keep the traceback
                log.exception("model %s version %s failed to load (unexpected error)", name, version)
                failed[version] = f"unexpected error: {type(exc).__name__}: {exc}"
                self.metrics.model_state(name, version, "UNAVAILABLE")
        return fresh, failed

    def _build_version(
        self, name: str, version: str, folder: Path, settings: ModelSettings
    ) -> ServedVersion:
        started = time.monotonic()
        if not (folder / MODEL_FILE).resolve().is_relative_to(self.root):
            raise ModelLoadError(f"{MODEL_FILE} points outside the model repository")
        backend = OnnxBackend(folder / MODEL_FILE, settings, label=f"{name}/{version}")
        backend.warm_up(settings.warmup_runs)
        group = {}
        if settings.variants is not None:
            group = {
                "variants": self._variant_runners(name, settings.variants, backend),
                "accuracy_budget": settings.variants.accuracy_budget,
            }
        dispatcher = self._factory(
            model=name,
            version=version,
            runner=backend,
            settings=settings.scheduling,
            max_batch_size=backend.signature.max_batch_size,
            metrics=self.metrics,
            **group,
        )
        dispatcher.prepare()
        seconds = time.monotonic() - started
        self.metrics.model_loaded(name, version, seconds)
        self.metrics.model_slo(name, version, settings.slo_ms / 1000 if settings.slo_ms else None)
        self.metrics.model_state(name, version, "READY")
        log.info("loaded %s version %s on %s in %.2fs", name, version, backend.provider, seconds)
        return ServedVersion(name, version, backend, dispatcher, settings, seconds)

    def _variant_runners(
        self, name: str, group: VariantGroup, reference: OnnxBackend
    ) -> list[tuple[str, float, OnnxBackend]]:
        """(name, accuracy, backend) of a model group: the reference, then each member
        loaded from its own model folder (latest version, its own config)."""
        runners = [(group.reference, 1.0, reference)]
        for member in group.members:
            folder = self._model_dir(member.model)
            if member.model == name or not folder.is_dir():
                raise ModelLoadError(f"variant '{member.name}': no other model '{member.model}' "
                                     "in the repository")
            settings = load_settings(folder)
            versions = self._versions_on_disk(folder)
            if not versions:
                raise ModelLoadError(f"variant '{member.name}': {member.model} has no version folder")
            path = folder / str(max(versions)) / MODEL_FILE
            backend = OnnxBackend(path, settings, label=f"{name}:{member.name}")
            _check_same_signature(member.name, reference, backend)
            backend.warm_up(settings.warmup_runs)
            runners.append((member.name, _member_accuracy(member, folder), backend))
        return runners

    def _changed(self, name: str) -> None:
        for listener in self.listeners:
            listener(name)

    def known_names(self) -> list[str]:
        """Every model name on disk or ever loaded."""
        return sorted(set(self.names_on_disk()) | set(self._models))

    def model_state(self, name: str) -> ModelState:
        """What a name serves now: ready versions, the latest, failed ones, and why
        none is served (for the native front end's table)."""
        record = self._models.get(name)
        if record is None:
            return ModelState(name, {}, None, {}, "not loaded")
        latest = record.latest()
        return ModelState(name, dict(record.served), latest.version if latest else None,
                          dict(record.failed), record.reason or record.state)

    def _set_state(self, record: _Model) -> None:
        if record.served:
            record.state = "READY"
            record.reason = "; ".join(f"version {v}: {r}" for v, r in record.failed.items())
        else:
            record.state = "UNAVAILABLE"
            record.reason = "; ".join(
                (f"version {v}: {r}" if v else r) for v, r in record.failed.items()
            ) or "not loaded"

    async def _retire(self, name: str, versions: list[ServedVersion]) -> None:
        for served in versions:
            self.metrics.model_state(name, served.version, "UNLOADING")
            await served.dispatcher.close(drain=True)
            self.metrics.model_state(name, served.version, "UNLOADED")

    async def unload(self, name: str) -> None:
        """Stop serving a model; requests already accepted finish first."""
        check_model_name(name)
        record = self._models.get(name)
        if record is None:
            if not self._model_dir(name).is_dir():
                raise ModelNotFound(f"model '{short(name)}' is not in the model repository")
            return
        async with record.lock:
            old, record.served, record.failed = record.served, {}, {}
            record.state, record.reason = "UNLOADING", ""
            self._changed(name)
            await self._retire(name, list(old.values()))
            record.state, record.reason = "UNAVAILABLE", "unloaded"
            self._changed(name)

    async def close(self) -> None:
        for name in list(self._models):
            await self.unload(name)

    # ---- lookup ----------------------------------------------------------------------

    def resolve(self, name: str, version: str = "") -> ServedVersion:
        """The ready version a request should use, or NOT_FOUND / UNAVAILABLE."""
        record = self._models.get(name)
        if record is None:
            check_model_name(name)
            if (self.root / name).is_dir():
                raise ModelUnavailable(f"model '{name}' is not loaded")
            raise ModelNotFound(f"unknown model '{short(name)}'")
        if version:
            served = record.served.get(version)
            if served is not None:
                return served
            check_version(version)
            if version in record.failed:
                raise ModelUnavailable(
                    f"model '{name}' version {version} failed to load: {record.failed[version]}"
                )
            raise ModelNotFound(f"model '{name}' has no version {short(version)}")
        served = record.latest()
        if served is None:
            raise ModelUnavailable(f"model '{name}' is not ready: {record.reason or record.state}")
        return served

    def versions(self, name: str) -> list[str]:
        record = self._models.get(name)
        return sorted(record.served, key=int) if record else []

    def served_versions(self) -> list[ServedVersion]:
        return [v for record in self._models.values() for v in record.served.values()]

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        entries = []
        for name in sorted(set(self.names_on_disk()) | set(self._models)):
            record = self._models.get(name)
            if record is None:
                entries.append(IndexEntry(name, "", "UNAVAILABLE", "not loaded"))
                continue
            for version in sorted(record.served, key=int):
                entries.append(IndexEntry(name, version, "READY"))
            for version, reason in record.failed.items():
                entries.append(IndexEntry(name, version, "UNAVAILABLE", reason))
            if not record.served and not record.failed:
                entries.append(IndexEntry(name, "", record.state, record.reason))
        if ready_only:
            entries = [e for e in entries if e.state == "READY"]
        return entries


def _member_accuracy(member: VariantMember, folder: Path) -> float:
    """Declared, else the top-1 agreement `kairos optimize` measured (report.json)."""
    if member.accuracy is not None:
        return member.accuracy
    report = folder / "report.json"
    try:
        agreement = json.loads(report.read_text()).get("top1_agreement")
    except (OSError, ValueError, AttributeError):
        agreement = None
    if not isinstance(agreement, int | float) or not 0.0 <= agreement <= 1.0:
        raise ModelLoadError(f"variant '{member.name}': no accuracy declared and no top1_agreement "
                             f"in {member.model}/report.json (run kairos optimize report)")
    return float(agreement)


def _check_same_signature(name: str, reference: OnnxBackend, member: OnnxBackend) -> None:
    """A variant answers the same requests: same inputs and outputs (names, types, shapes)."""
    ours, theirs = reference.signature, member.signature
    if (ours.inputs, ours.outputs) != (theirs.inputs, theirs.outputs):
        raise ModelLoadError(f"variant '{name}' has other inputs or outputs than the reference")
    if ours.max_batch_size != theirs.max_batch_size:
        raise ModelLoadError(f"variant '{name}' batches differently (max_batch_size "
                             f"{theirs.max_batch_size}, reference {ours.max_batch_size})")


async def _maybe_await(hook: Callable[[], Any] | None) -> None:
    if hook is None:
        return
    result = hook()
    if asyncio.iscoroutine(result):
        await result
