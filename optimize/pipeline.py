"""One call per `kairos optimize` subcommand: make the variant, measure it, write the report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from kairos.optimize import quantize as q
from kairos.optimize import report as rp
from kairos.optimize.data import Dataset, check_fits, feeds_for
from kairos.optimize.errors import DataError, OptimizeError, UnsupportedGraphError
from kairos.optimize.graph import Mlp, build_model, load_onnx, read_mlp, save_model
from kairos.optimize.prune import PruneSettings, prune_finetune, prune_oneshot, weight_sparsity
from kairos.optimize.repository import Source, Target, prepare_target, resolve_source


@dataclass
class Output:
    """Where the variant went (`<repo>/<name>/<version>/model.onnx`) and what it measured."""

    model_path: Path
    report: dict[str, Any]
    report_json: Path
    report_md: Path


@dataclass
class Destination:
    repository: Path | str | None = None
    name: str | None = None
    version: int = 1
    overwrite: bool = False


@dataclass
class Measure:
    eval_data: Dataset | None  # None: random inputs, accuracy not measured
    repeats: int = 200
    threads: int = 1
    provider: str = "CPUExecutionProvider"
    output: str | None = None  # the output to judge (default: picked by role)
    batch_sizes: tuple[int, ...] = (1, 64)


@contextmanager
def _start(model: Path | str, dest: Destination, suffix: str, *datasets: tuple[Dataset | None, str]
           ) -> Iterator[tuple[Source, onnx.ModelProto, Target]]:
    """Check the inputs, then make the variant's folder; removed again if anything fails."""
    source = resolve_source(model)
    proto = load_onnx(source.path)
    for data, what in datasets:
        if data is not None:
            check_fits(data, proto, what)
    target = prepare_target(source, dest.repository, dest.name, suffix, dest.version, dest.overwrite)
    try:
        yield source, proto, target
    except BaseException:
        target.discard()
        raise


def _finish(source: Source, target: Target, technique: str, settings: dict, measure: Measure,
            warnings: list[str], notes: list[str] | None = None, slow_what: str | None = None,
            **extra: Any) -> Output:
    measured = rp.compare(source.path, target.model_path, measure.eval_data, measure.repeats,
                          measure.batch_sizes, threads=measure.threads, provider=measure.provider,
                          output=measure.output)
    if measure.eval_data is None:
        notes = [*(notes or []), rp.NO_EVAL_NOTE]
    if slow_what:
        warnings = [*warnings, rp.slow_warning(measured, slow_what)]
    report = rp.make_report(target.model_dir.name, technique, settings, measured, warnings, notes, **extra)
    report["model"]["version"] = target.version
    json_path, md_path = rp.write_report(report, target.model_dir)
    return Output(target.model_path, report, json_path, md_path)


def quantize_model(model: Path | str, mode: str, measure: Measure, dest: Destination | None = None,
                   calibration: Dataset | None = None, method: str = "minmax", per_channel: bool = False,
                   calibration_batch_size: int = 64, weight_type: str = "qint8",
                   activation_type: str = "quint8", num_bins: int = 2048,
                   num_quantized_bins: int = 128, percentile: float = 99.999) -> Output:
    """`kairos optimize quantize`: mode is dynamic | static | fp16."""
    dest = dest or Destination()
    if mode not in ("dynamic", "static", "fp16"):
        raise OptimizeError(f"unknown quantization mode '{mode}' (dynamic | static | fp16)")
    if mode == "static" and calibration is None:
        raise DataError("static quantization needs calibration data: pass --calibration FILE")
    suffix = {"dynamic": "int8-dynamic", "static": "int8", "fp16": "fp16"}[mode]
    calib_check = (calibration if mode == "static" else None, "calibration data")
    with _start(model, dest, suffix, (measure.eval_data, "evaluation data"), calib_check) as (
            source, proto, target):
        q.check_quantizable(proto, mode)
        settings: dict[str, Any] = {"mode": mode}
        notes: list[str] = []
        extra: dict[str, Any] = {}
        if mode == "dynamic":
            settings |= {"per_channel": per_channel, "weight_type": weight_type}
            warnings = q.dynamic_int8(proto, target.model_path, per_channel, weight_type)
            notes.append(rp.DYNAMIC_INT8_NOTE)
        elif mode == "static":
            settings |= _static_settings(method, per_channel, len(calibration), calibration_batch_size,
                                         activation_type, num_bins, num_quantized_bins, percentile)
            ranges = q.static_int8(proto, target.model_path, feeds_for(calibration, proto), method, per_channel,
                                   calibration_batch_size, activation_type, num_bins=num_bins,
                                   num_quantized_bins=num_quantized_bins, percentile=percentile)
            extra["calibration_ranges"] = q.range_summary(ranges)
            warnings = [w for w in [_graph_level_warning(target)] if w]
        else:
            warnings = q.fp16(proto, target.model_path, measure.provider)
        return _finish(source, target, f"quantize-{mode}", settings, measure, warnings, notes,
                       slow_what=f"{mode} quantization", **extra)


def _graph_level_warning(target: Target) -> str | None:
    """Static QDQ is fast only when onnxruntime fuses it (graph_optimization: all)."""
    import yaml

    config = target.model_dir / "config.yaml"
    try:
        level = (yaml.safe_load(config.read_text()) or {}).get("graph_optimization", "all")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    if level == "all":
        return None
    return (f"{config} sets graph_optimization: {level}; static QDQ models then run "
            "dequantize -> fp32 -> quantize and are slower than fp32: set it to 'all'")


def _static_settings(method: str, per_channel: bool, rows: int, batch_size: int, activation_type: str,
                     num_bins: int, num_quantized_bins: int, percentile: float) -> dict[str, Any]:
    settings = {"format": "QDQ", "calibration": method, "per_channel": per_channel,
                "calibration_rows": rows, "calibration_batch_size": batch_size,
                "activation_type": activation_type, "weight_type": "qint8"}
    if method != "minmax":
        settings |= {"num_bins": num_bins, "num_quantized_bins": num_quantized_bins}
    if method == "percentile":
        settings["percentile"] = percentile
    return settings


def _shapes(mlp: Mlp) -> list[list[int]]:
    return [list(p.weight.shape) for p in mlp.param_layers()]


def prune_model(model: Path | str, settings: PruneSettings, measure: Measure,
                dest: Destination | None = None, train_data: Dataset | None = None,
                cfg: Any = None) -> Output:
    """`kairos optimize prune`: fine-tunes on `train_data` when given (and cfg.epochs > 0)."""
    from kairos.optimize.train import TrainConfig

    dest, cfg = dest or Destination(), cfg or TrainConfig()
    settings.check()
    pct = int(round(settings.sparsity * 100))
    suffix = f"pruned{pct}" if settings.method == "structured" else f"sparse{pct}"
    with _start(model, dest, suffix, (measure.eval_data, "evaluation data"),
                (train_data, "training data")) as (source, proto, target):
        try:
            original = read_mlp(proto)
        except UnsupportedGraphError as chain_error:
            if settings.method != "structured":
                raise UnsupportedGraphError(f"unstructured pruning works on MLP/CNN chains only: "
                                            f"{chain_error}") from None
            try:
                return _prune_graph(source, proto, target, settings, measure, train_data)
            except UnsupportedGraphError as graph_error:
                raise UnsupportedGraphError(f"{graph_error}; and as a chain: {chain_error}") from None
        if train_data is not None and cfg.epochs > 0:
            if train_data.y is None:
                raise DataError(f"fine-tuning needs labels: {train_data.source} has none")
            history: list[float] = []
            pruned = prune_finetune(original, train_data.x, train_data.y, settings, cfg, history)
            tuning = {"epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size, "seed": cfg.seed,
                      "rows": len(train_data), "sparsity_per_epoch": history}
        else:
            pruned, tuning = prune_oneshot(original, settings), None
        save_model(build_model(pruned), target.model_path)
        info = {"weight_shapes_before": _shapes(original), "weight_shapes_after": _shapes(pruned),
                "hidden_sizes_before": original.hidden_sizes(), "hidden_sizes_after": pruned.hidden_sizes(),
                "weight_sparsity": weight_sparsity(pruned)}
        notes = []
        if settings.method == "unstructured":
            notes.append("Unstructured zeros keep every matrix shape; onnxruntime's CPU kernels are "
                         "dense, so expect no speed-up and no smaller file (see latency above).")
        return _finish(source, target, f"prune-{settings.method}", asdict(settings) | {"fine_tuning": tuning},
                       measure, [], notes, slow_what=f"{settings.method} pruning", pruning=info)


GRAPH_PRUNE_NOTE = ("Pruned one-shot on the ONNX graph (batch norm folded, channel groups between "
                    "weighted layers removed; groups tied to residual adds, reshapes or outputs kept "
                    "whole). The graph is outside the chain subset Kairos fine-tunes in torch, so no "
                    "fine-tuning ran{unused}.")


def _prune_graph(source: Source, proto: onnx.ModelProto, target: Target, settings: PruneSettings,
                 measure: Measure, train_data: Dataset | None) -> Output:
    """Structured pruning of a graph outside the chain subset (see prune_graph.py)."""
    from kairos.optimize import prune_graph

    result = prune_graph.prune(proto, settings.sparsity)
    save_model(result.model, target.model_path)
    info = {"rewrite": "graph", "folded_batchnorms": result.folded_batchnorms,
            "groups_pruned": result.pruned, "groups_kept_whole": result.kept_whole}
    unused = "; --train-data was not used" if train_data is not None else ""
    return _finish(source, target, "prune-structured", asdict(settings) | {"fine_tuning": None}, measure,
                   [], [GRAPH_PRUNE_NOTE.format(unused=unused)], slow_what="structured pruning", pruning=info)


def distill_model(model: Path | str, settings: Any, train_data: Dataset, measure: Measure,
                  dest: Destination | None = None, cfg: Any = None) -> Output:
    """`kairos optimize distill`: writes the distilled student; the report holds it and the
    same student trained on hard labels alone."""
    from kairos.optimize import distill as ds
    from kairos.optimize.train import TrainConfig

    dest, cfg = dest or Destination(), cfg or TrainConfig()
    if train_data.y is None:
        raise DataError(f"distillation needs labelled training data: {train_data.source} has no labels")
    with _start(model, dest, "distilled", (measure.eval_data, "evaluation data"),
                (train_data, "training data")) as (source, proto, target):
        distilled, hard = ds.distill(source.path, train_data.x, train_data.y, settings, cfg, measure.output)
        save_model(ds.match_input_dtype(build_model(distilled), proto), target.model_path)
        students = [_student("distilled (soft + hard targets)", distilled, target.model_path, source, measure),
                    _student("hard labels only", hard, None, source, measure)]
        config = asdict(settings) | {"temperature": cfg.temperature, "alpha": cfg.alpha, "epochs": cfg.epochs,
                                     "lr": cfg.lr, "batch_size": cfg.batch_size, "seed": cfg.seed}
        return _finish(source, target, "distill", config, measure, [], students=students)


def _student(name: str, mlp: Mlp, path: Path | None, source: Source, measure: Measure) -> dict[str, Any]:
    """A student's accuracy and agreement with the teacher (written to a temp file if unsaved)."""
    import tempfile

    from kairos.optimize import runtime
    from kairos.optimize.distill import teacher_scores

    data = measure.eval_data
    feeds = rp.eval_feeds(source.path, data)
    with tempfile.TemporaryDirectory(prefix="kairos-student-") as tmp:
        path = path or save_model(build_model(mlp), Path(tmp) / "student.onnx")
        out = runtime.run(runtime.make_session(path), next(iter(feeds.values())))
        size = path.stat().st_size
    base = teacher_scores(source.path, feeds, measure.output)
    metrics = rp.output_metrics(base, out, None if data is None else data.y)
    return {"name": name, "hidden": mlp.hidden_sizes(), "size_bytes": size,
            "accuracy": metrics.get("accuracy"), "top1_agreement": metrics["top1_agreement"],
            "max_abs_deviation": metrics["max_abs_deviation"]}


def report_model(variant: Path | str, baseline: Path | str, measure: Measure) -> Output:
    """`kairos optimize report`: re-measure an existing variant against its original and
    rewrite its report (keeping the technique and settings recorded when it was made)."""
    var, base = resolve_source(variant), resolve_source(baseline)
    if measure.eval_data is not None:
        check_fits(measure.eval_data, load_onnx(base.path), "evaluation data")
        check_fits(measure.eval_data, load_onnx(var.path), "evaluation data")
    folder = var.model_dir or var.path.parent
    previous = _previous_report(folder / "report.json")
    measured = rp.compare(base.path, var.path, measure.eval_data, measure.repeats, measure.batch_sizes,
                          threads=measure.threads, provider=measure.provider, output=measure.output)
    technique = previous.get("technique", "unknown")
    # Speed warnings quote measurements: replace the old ones with this run's.
    warnings = [w for w in previous.get("warnings", []) if rp.SLOW_MARK not in w]
    warnings.append(rp.slow_warning(measured, technique))
    report = rp.make_report(var.name, technique, previous.get("settings", {}),
                            measured, warnings, previous.get("notes"),
                            **{k: previous[k] for k in ("pruning", "students", "calibration_ranges")
                               if k in previous})
    json_path, md_path = rp.write_report(report, folder)
    return Output(var.path, report, json_path, md_path)


def _previous_report(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def accuracy_of(path: Path, data: Dataset) -> float:
    """Top-1 accuracy of the model at `path` on labelled `data`."""
    from kairos.optimize import runtime

    out = runtime.run(runtime.make_session(path), data.x)
    return float(np.mean(out.argmax(1) == data.y))
