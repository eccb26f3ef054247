"""`kairos optimize` end to end on scikit-learn's digits: what each variant keeps and costs.

Trains the teacher MLP 64 -> 512 -> 512 -> 10 (fixed stratified 70/30 split, seed 0), then
runs every technique through the same pipeline functions the CLI calls and prints one
table from the reports they write (accuracy on the 540 held-out rows, top-1 agreement with
the fp32 teacher, file size, latency at batch 1 and 64 measured side by side).

Run:
    flock /tmp/kairos-bench.lock taskset -c 1 .venv/bin/python bench/optimize_digits.py
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from kairos.optimize.data import Dataset
from kairos.optimize.distill import DistillSettings
from kairos.optimize.graph import build_model, random_mlp, save_model
from kairos.optimize.pipeline import Measure, Output, distill_model, prune_model, quantize_model
from kairos.optimize.prune import PruneSettings
from kairos.optimize.train import TrainConfig, train_mlp
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def split() -> tuple[Dataset, Dataset]:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    return Dataset(x_tr, y_tr, "digits-train"), Dataset(x_te, y_te, "digits-test")


def run_all(repo: Path, train: Dataset, measure: Measure) -> dict[str, Output]:
    model, tune = repo / "mlp", TrainConfig(epochs=6, seed=0)
    calib = Dataset(train.x[:300], source="300 training rows")
    out = {"int8 dynamic": quantize_model(model, "dynamic", measure),
           "int8 dynamic per-channel": quantize_model(model, "dynamic", measure, per_channel=True,
                                                      dest=_named("mlp-int8-dynamic-pc"))}
    for method in ("minmax", "entropy", "percentile"):
        out[f"int8 static QDQ {method}"] = quantize_model(model, "static", measure, calibration=calib,
                                                          method=method, dest=_named(f"mlp-int8-{method}"))
    out["fp16"] = quantize_model(model, "fp16", measure)
    out["structured 50% units, cubic, 6 epochs"] = prune_model(
        model, PruneSettings("structured", 0.5), measure, train_data=train, cfg=tune)
    out["unstructured 80% global, 6 epochs"] = prune_model(
        model, PruneSettings("unstructured", 0.8, "global"), measure, train_data=train, cfg=tune)
    kd = TrainConfig(epochs=20, lr=3e-3, seed=0, temperature=4.0, alpha=0.7)
    out["distilled 64-32-10, T=4, alpha=0.7"] = distill_model(
        model, DistillSettings(hidden=[32]), train, measure, cfg=kd)
    kd_mix = TrainConfig(epochs=20, lr=3e-3, seed=0, temperature=4.0, alpha=0.9)
    out["distilled 64-32-10, T=4, alpha=0.9, mixup transfer set x2"] = distill_model(
        model, DistillSettings(hidden=[32], augment="mixup", augment_factor=2), train, measure,
        dest=_named("mlp-distilled-mixup"), cfg=kd_mix)
    return out


def _named(name: str):
    from kairos.optimize.pipeline import Destination

    return Destination(name=name)


def table(outputs: dict[str, Output]) -> str:
    lines = ["| variant | accuracy (fp32 -> variant) | top-1 agreement | size vs fp32 | "
             "batch 1 speed-up | batch 64 speed-up |", "|---|---|---|---|---|---|"]
    for name, o in outputs.items():
        r = o.report
        acc = r["accuracy"]
        lines.append(f"| {name} | {acc['baseline'] * 100:.2f}% -> {acc['variant'] * 100:.2f}% "
                     f"({acc['delta_points']:+.2f}) | {r['top1_agreement'] * 100:.2f}% | "
                     f"{r['model']['size_ratio']:.3f}x | {r['latency_ms']['1']['speedup']:.2f}x | "
                     f"{r['latency_ms']['64']['speedup']:.2f}x |")
    lines += ["", "| distillation run | student | accuracy | top-1 agreement with teacher |",
              "|---|---|---|---|"]
    for name, o in outputs.items():
        lines += [f"| {name} | {s['name']} | {s['accuracy'] * 100:.2f}% | {s['top1_agreement'] * 100:.2f}% |"
                  for s in o.report.get("students", [])]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    train, test = split()
    teacher = train_mlp(random_mlp([64, 512, 512, 10], seed=0), train.x, train.y,
                        TrainConfig(epochs=15, seed=0))
    with tempfile.TemporaryDirectory(prefix="kairos-digits-") as tmp:
        repo = Path(tmp)
        save_model(build_model(teacher), repo / "mlp" / "1" / "model.onnx")
        outputs = run_all(repo, train, Measure(test, repeats=args.repeats))
        print(table(outputs))
        shutil.rmtree(repo, ignore_errors=True)


if __name__ == "__main__":
    main()
