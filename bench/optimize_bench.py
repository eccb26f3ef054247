"""Latency of optimized variants against fp32, measured side by side in one process.

Model: a 64 -> 2048 -> 2048 -> 10 ReLU MLP (He-initialised, seed 0; latency does not depend
on trained weights). Variants: an identical fp32 copy (control), dynamic int8, static QDQ int8, fp16, structured pruning
(half the hidden units removed), unstructured pruning (50% and 90% of weights zeroed).
All sessions: CPUExecutionProvider, 1 intra-op thread, ORT_ENABLE_ALL, no spinning. Models
take turns (rotating order) of --block consecutive timed runs (after one untimed run);
median of --repeats runs per model and batch size. --block 20 (default) is the warm-cache
latency of a model served steadily; --block 1 makes every run follow the other models'
runs, so weights come from memory rather than cache.

Run (one benchmark on the machine at a time, pinned to one core):
    flock /tmp/kairos-bench.lock taskset -c 1 .venv/bin/python bench/optimize_bench.py
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
from kairos.optimize import quantize as q
from kairos.optimize.graph import build_model, random_mlp, save_model
from kairos.optimize.prune import PruneSettings, prune_oneshot
from kairos.optimize.runtime import measure_latency


def make_variants(folder: Path, sizes: list[int], calib: np.ndarray) -> dict[str, Path]:
    mlp = random_mlp(sizes, seed=0)
    fp32 = save_model(build_model(mlp), folder / "fp32.onnx")
    model = build_model(mlp)
    # A byte-identical copy of fp32 is timed too: its ratio shows the method's own noise.
    paths = {"fp32": fp32, "fp32 copy (control)": save_model(model, folder / "control.onnx"),
             "int8 dynamic": folder / "dyn.onnx", "int8 static QDQ": folder / "static.onnx",
             "fp16": folder / "fp16.onnx"}
    q.dynamic_int8(model, paths["int8 dynamic"])
    q.static_int8(model, paths["int8 static QDQ"], calib, "minmax")
    q.fp16(model, paths["fp16"])
    pruned = {"structured 50% units": PruneSettings("structured", 0.5),
              "unstructured 50% weights": PruneSettings("unstructured", 0.5, "layer", "oneshot"),
              "unstructured 90% weights": PruneSettings("unstructured", 0.9, "layer", "oneshot")}
    for name, settings in pruned.items():
        paths[name] = save_model(build_model(prune_oneshot(mlp, settings)), folder / f"{len(paths)}.onnx")
    return paths


def table(latency: dict[str, dict[int, float]], paths: dict[str, Path], batches: list[int]) -> str:
    head = "| variant | file MB | " + " | ".join(f"batch {b} ms (median) | vs fp32" for b in batches) + " |"
    lines = [head, "|---|---|" + "---|---|" * len(batches)]
    for name, row in latency.items():
        cells = [f"{row[b]:.4f} | {latency['fp32'][b] / row[b]:.2f}x" for b in batches]
        lines.append(f"| {name} | {paths[name].stat().st_size / 1e6:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,2048,2048,10")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--block", type=int, default=20,
                        help="consecutive runs per model turn: 20 = warm caches (a model served "
                             "steadily), 1 = every run after the other models' (cold weights)")
    parser.add_argument("--json", type=Path, help="also write the medians here")
    args = parser.parse_args()
    sizes = [int(v) for v in args.sizes.split(",")]
    batches = [int(v) for v in args.batches.split(",")]
    rng = np.random.default_rng(0)
    x = rng.random((256, sizes[0]), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="kairos-bench-") as tmp:
        paths = make_variants(Path(tmp), sizes, x[:200])
        latency = measure_latency(paths, x, tuple(batches), args.repeats, warmup=30, block=args.block)
        print(f"model {' -> '.join(map(str, sizes))}, {args.repeats} runs per cell in turns of "
              f"{args.block} consecutive runs per model, "
              f"1 intra-op thread, CPUExecutionProvider, {platform.processor() or platform.machine()}\n")
        print(table(latency, paths, batches))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"sizes": sizes, "repeats": args.repeats, "median_ms": latency},
                                        indent=2))


if __name__ == "__main__":
    main()
