"""A model's settings: `<repo>/<model>/config.yaml` (or `.toml`), all optional.

```yaml
max_batch_size: 64          # 0 = no batching; default 64 when the ONNX batch dim is dynamic
slo_ms: 10                  # default latency objective for requests without a deadline
providers: [CUDAExecutionProvider, CPUExecutionProvider]   # preference order
intra_op_threads: 1
inter_op_threads: 1
graph_optimization: all     # disable | basic | extended | all
allow_spinning: false       # onnxruntime intra-op thread spinning
version_policy: {latest: 1} # or "all", or {specific: [1, 3]}
warmup_runs: 3
scheduling:
  policy: slo               # slo | fixed | none
  max_queue_delay_ms: 1     # fixed policy: longest wait for a preferred batch
  busy_hold_ms: 1           # slo: longest hold of a short queue while the event loop is busy
  preferred_batch_sizes: [8, 16]
  max_queued_rows: 4096     # admission bound; beyond it RESOURCE_EXHAUSTED
  executors: 1              # concurrent model executions
  latency_quantile: 0.95    # which quantile of observed service time L(b) predicts
  profile: true             # sweep batch sizes at load to learn L(b)
  profile_budget_s: 2       # longest the sweep may take
  execution: auto           # auto | inline | thread: where batches run
  inline_max_ms: 2          # auto: batches predicted this short run on the event loop
  early_refusal: null       # refuse what cannot meet its deadline; null = on for slo
  batch_threads: 0          # batch-class pieces side by side; 0 = cores / intra_op_threads
  padding: {input_ids: {dim: 1, value: 0}}   # variable-length batching (scheduler/padding.py)
  padding_buckets: [16, 32, 64, 128]
variants:                   # a model group: this model is the reference (scheduler/variants.py)
  reference: fp32           # the name the reference is reported by (default: reference)
  accuracy_budget: 0.01     # most agreement the group may give up on average (0..1)
  members:                  # other models of this repository (what `kairos optimize` writes)
    int8: {model: mlp256-int8}            # accuracy: top1_agreement of its report.json
    pruned: {model: mlp256-pruned, accuracy: 0.97}   # or declared
```
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib
import yaml

CONFIG_NAMES = ("config.yaml", "config.yml", "config.toml")
GRAPH_LEVELS = ("disable", "basic", "extended", "all")
POLICIES = ("slo", "fixed", "none")


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and field."""


@dataclass
class SchedulingSettings:
    policy: str = "slo"
    max_queue_delay_ms: float = 1.0
    busy_hold_ms: float = 1.0
    preferred_batch_sizes: list[int] = field(default_factory=list)
    max_queued_rows: int = 4096
    executors: int = 1
    latency_quantile: float = 0.95
    profile: bool = True
    # Where batches run: auto | inline (event-loop thread) | thread (executor pool).
    execution: str = "auto"
    # auto mode: batches predicted to take at most this long run inline.
    inline_max_ms: float = 2.0
    # Refuse at admission when the deadline cannot be met; None: on for policy slo only.
    early_refusal: bool | None = None
    # Longest time the load-time profiling sweep of L(b) may take.
    profile_budget_s: float = 2.0
    # Batch-class pieces run side by side on this many lowest-priority threads; 0: one
    # per core the server may use, divided by intra_op_threads.
    batch_threads: int = 0
    # Variable-length batching (scheduler/padding.py): {input: {dim, value}}, length
    # buckets, and outputs to cut back to each request's length ({output: dim}).
    padding: dict | None = None
    padding_buckets: list | None = None
    padded_outputs: dict | None = None


@dataclass
class VariantMember:
    name: str
    model: str  # the repository model folder it is served from
    accuracy: float | None = None  # None: read from the member's report.json


@dataclass
class VariantGroup:
    reference: str = "reference"
    accuracy_budget: float = 0.0
    members: list[VariantMember] = field(default_factory=list)


@dataclass
class VersionPolicy:
    kind: str = "latest"  # latest | all | specific
    latest: int = 1
    specific: list[int] = field(default_factory=list)

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of those on disk (sorted ascending)."""
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in set(self.specific)]
        return ordered[-self.latest :] if self.latest > 0 else []


@dataclass
class ModelSettings:
    max_batch_size: int | None = None
    slo_ms: float | None = None
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    graph_optimization: str = "all"
    allow_spinning: bool = False
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    warmup_runs: int = 3
    scheduling: SchedulingSettings = field(default_factory=SchedulingSettings)
    variants: VariantGroup | None = None


def _fraction(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{what} must be a number in [0, 1], not {value!r}")
    return float(value)


def _variant_group(data: Any, where: str) -> VariantGroup | None:
    if data is None:
        return None
    where = f"{where}: variants"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping")
    unknown = set(data) - {"reference", "accuracy_budget", "members"}
    if unknown:
        raise ConfigError(f"{where}: unknown setting '{sorted(unknown)[0]}' "
                          "(known: accuracy_budget, members, reference)")
    reference = data.get("reference", "reference")
    if not isinstance(reference, str) or not reference:
        raise ConfigError(f"{where}: reference must be a name")
    budget = _fraction(data.get("accuracy_budget", 0.0), f"{where}: accuracy_budget")
    members = data.get("members")
    if not isinstance(members, dict) or not members:
        raise ConfigError(f"{where}: members must map variant names to {{model: NAME}}")
    group = VariantGroup(reference, budget)
    for name, spec in members.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("model"), str):
            raise ConfigError(f"{where}: member '{name}' needs model: <a model of this repository>")
        if set(spec) - {"model", "accuracy"}:
            raise ConfigError(f"{where}: member '{name}': known settings are model and accuracy")
        accuracy = spec.get("accuracy")
        if accuracy is not None:
            accuracy = _fraction(accuracy, f"{where}: member '{name}': accuracy")
        if name == reference:
            raise ConfigError(f"{where}: member '{name}' has the reference's name")
        group.members.append(VariantMember(str(name), spec["model"], accuracy))
    return group


def _version_policy(value: Any, where: str) -> VersionPolicy:
    if value in (None, "latest"):
        return VersionPolicy()
    if value == "all":
        return VersionPolicy(kind="all")
    if isinstance(value, dict) and len(value) == 1:
        ((kind, arg),) = value.items()
        if kind == "latest" and isinstance(arg, int) and arg >= 1:
            return VersionPolicy(kind="latest", latest=arg)
        if kind == "specific" and isinstance(arg, list) and all(isinstance(v, int) for v in arg):
            return VersionPolicy(kind="specific", specific=list(arg))
    raise ConfigError(
        f"{where}: version_policy must be 'latest', 'all', {{latest: N}} or {{specific: [..]}}, "
        f"not {value!r}"
    )


def _typed(cls: type, data: dict, where: str) -> dict:
    """Check keys and value types of `data` against dataclass `cls`."""
    known = {f.name: f for f in fields(cls)}
    out = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown setting '{key}' (known: {', '.join(sorted(known))})")
        default = known[key].default
        if default is None or default is MISSING:  # no simple default type (or a default_factory)
            out[key] = value
            continue
        expected = type(default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: '{key}' must be {expected.__name__}, not {value!r}")
        out[key] = value
    return out


def parse_settings(data: dict | None, where: str = "config") -> ModelSettings:
    """ModelSettings from a parsed config mapping, with clear errors."""
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    policy = _version_policy(data.pop("version_policy", None), where)
    variants = _variant_group(data.pop("variants", None), where)
    scheduling_data = data.pop("scheduling", None) or {}
    if not isinstance(scheduling_data, dict):
        raise ConfigError(f"{where}: 'scheduling' must be a mapping")
    scheduling = SchedulingSettings(**_typed(SchedulingSettings, scheduling_data, f"{where}: scheduling"))
    values = _typed(ModelSettings, data, where)
    settings = ModelSettings(**values, version_policy=policy, scheduling=scheduling,
                             variants=variants)
    _validate(settings, where)
    return settings


def _validate(settings: ModelSettings, where: str) -> None:
    if settings.max_batch_size is not None and (
        not isinstance(settings.max_batch_size, int) or settings.max_batch_size < 0
    ):
        raise ConfigError(f"{where}: max_batch_size must be an integer >= 0")
    if settings.slo_ms is not None and (
        not isinstance(settings.slo_ms, int | float) or settings.slo_ms <= 0
    ):
        raise ConfigError(f"{where}: slo_ms must be a positive number")
    if not isinstance(settings.providers, list) or not all(isinstance(p, str) for p in settings.providers):
        raise ConfigError(f"{where}: providers must be a list of onnxruntime provider names")
    if settings.graph_optimization not in GRAPH_LEVELS:
        raise ConfigError(f"{where}: graph_optimization must be one of {', '.join(GRAPH_LEVELS)}")
    if settings.intra_op_threads < 0 or settings.inter_op_threads < 0:
        raise ConfigError(f"{where}: thread counts must be >= 0")
    sched = settings.scheduling
    if sched.policy not in POLICIES:
        raise ConfigError(f"{where}: scheduling.policy must be one of {', '.join(POLICIES)}")
    if sched.batch_threads < 0:
        raise ConfigError(f"{where}: scheduling.batch_threads must be >= 0 (0: one per core)")
    if sched.executors < 1:
        raise ConfigError(f"{where}: scheduling.executors must be >= 1")
    if sched.max_queued_rows < 1:
        raise ConfigError(f"{where}: scheduling.max_queued_rows must be >= 1")
    if sched.max_queue_delay_ms < 0 or sched.busy_hold_ms < 0:
        raise ConfigError(f"{where}: scheduling.max_queue_delay_ms and busy_hold_ms must be >= 0")
    if sched.execution not in ("auto", "inline", "thread"):
        raise ConfigError(f"{where}: scheduling.execution must be one of auto, inline, thread")
    if sched.early_refusal is not None and not isinstance(sched.early_refusal, bool):
        raise ConfigError(f"{where}: scheduling.early_refusal must be true or false")
    if not 0.5 <= sched.latency_quantile < 1.0:
        raise ConfigError(f"{where}: scheduling.latency_quantile must be in [0.5, 1)")


def load_settings(model_dir: Path) -> ModelSettings:
    """Settings from the model folder's config file, or defaults when it has none."""
    for name in CONFIG_NAMES:
        path = model_dir / name
        if not path.is_file():
            continue
        try:
            if path.suffix == ".toml":
                data = tomllib.loads(path.read_text())
            else:
                data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: cannot parse: {exc}") from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        return parse_settings(data, str(path))
    return ModelSettings()
