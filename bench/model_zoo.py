"""The model zoo through Kairos: served correctly with batching, and what each `kairos
optimize` technique gives on it (or the one-line reason it refuses).

For every zoo model (tests/kairos_testing/zoo.py): 12 concurrent requests through a real
`kairos serve` (fixed policy, 30 ms queue delay, so they batch) compared with onnxruntime
in this process; then dynamic int8, static QDQ int8 (256 training rows calibrate), fp16,
structured pruning (25%) and distillation (one hidden layer of 64, 10 epochs) through the
same pipeline functions the CLI calls, measured on the 450 held-out digits rows, latency at
batch 1 and 32 side by side with fp32 (1 intra-op thread, medians).

Run:
    flock /tmp/kairos-bench.lock taskset -c 1 .venv/bin/python bench/model_zoo.py --write
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from kairos.optimize.data import Dataset  # noqa: E402
from kairos.optimize.distill import DistillSettings  # noqa: E402
from kairos.optimize.errors import OptimizeError  # noqa: E402
from kairos.optimize.pipeline import (  # noqa: E402
    Destination,
    Measure,
    distill_model,
    prune_model,
    quantize_model,
)
from kairos.optimize.prune import PruneSettings  # noqa: E402
from kairos.optimize.train import TrainConfig  # noqa: E402
from kairos_testing import zoo  # noqa: E402
from kairos_testing.server import running_server  # noqa: E402

BATCHING = "scheduling:\n  policy: fixed\n  max_queue_delay_ms: 30\n  profile: false\nwarmup_runs: 1\n"
COMMAND = "flock /tmp/kairos-bench.lock taskset -c 1 .venv/bin/python bench/model_zoo.py --write"
SECTION = "## Model zoo: serving and `kairos optimize` on the architectures users bring"
MODES = ("dynamic", "static", "fp16")


def served(repo: Path) -> dict[str, dict[str, Any]]:
    """Per model: did 12 concurrent (batched) requests equal onnxruntime, and in how many runs."""
    from kairos.client import InferenceClient

    results = {}
    with running_server(repo) as server, InferenceClient(server.address) as client, \
            ThreadPoolExecutor(12) as pool:
        client.wait_until_ready(120, models=list(zoo.MODELS))
        for name, model in zoo.MODELS.items():
            requests = zoo.requests(model, 12, seed=7)
            before = client.model_statistics(name).model_stats[0].execution_count
            answers = list(pool.map(lambda feeds, n=name: client.infer(n, feeds, timeout=60), requests))
            runs = client.model_statistics(name).model_stats[0].execution_count - before
            ok = all(_equal(zoo.reference(model.path(), feeds), got) for feeds, got in zip(requests, answers, strict=True))
            results[name] = {"equal": ok, "requests": len(requests), "executions": runs}
    return results


def _equal(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> bool:
    for name, want in expected.items():
        have = got.get(name)
        if have is None or have.dtype != want.dtype or have.shape != want.shape:
            return False
        if np.issubdtype(want.dtype, np.floating):
            if not np.allclose(have, want, rtol=1e-4, atol=1e-5):
                return False
        elif not np.array_equal(have, want):
            return False
    return True


def _dataset(feeds: dict[str, np.ndarray], y: np.ndarray | None, source: str) -> Dataset:
    first = next(iter(feeds.values()))
    return Dataset(first.astype(np.float32), y, source, dict(feeds), by_name=True)


def _summary(out) -> dict[str, Any]:
    r = out.report
    return {"accuracy": r["accuracy"], "agreement": r["top1_agreement"], "judged": r["judged_output"],
            "size_ratio": r["model"]["size_ratio"], "latency_ms": r["latency_ms"],
            "students": r.get("students"), "pruning": r.get("pruning")}


def _try(make) -> dict[str, Any]:
    try:
        return _summary(make())
    except OptimizeError as exc:
        return {"refused": str(exc)}


def optimize(repo: Path, name: str, repeats: int) -> dict[str, Any]:
    model, d = zoo.MODELS[name], zoo.digits()
    measure = Measure(_dataset(model.eval_feeds(), d.y_test, "digits test (450 rows)"), repeats,
                      batch_sizes=(1, 32))
    calib = _dataset(model.feeds(d.x_train[:256]), None, "256 training rows")
    train = _dataset(model.train_feeds(), d.y_train, "digits train")
    where = repo / name
    result = {mode: _try(lambda m=mode: quantize_model(where, m, measure, Destination(overwrite=True),
                                                       calibration=calib)) for mode in MODES}
    result["prune"] = _try(lambda: prune_model(where, PruneSettings("structured", 0.25), measure,
                                               Destination(overwrite=True)))
    result["distill"] = _try(lambda: distill_model(where, DistillSettings(hidden=[64]), train, measure,
                                                   Destination(overwrite=True),
                                                   TrainConfig(epochs=10, lr=3e-3, seed=0)))
    return result


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def _refused(r: dict[str, Any]) -> str:
    return "refused: " + r["refused"].split("; and as a chain")[0].replace("|", "/")


def _quant_cell(r: dict[str, Any]) -> str:
    if "refused" in r:
        return _refused(r)
    acc = r["accuracy"]
    quality = (f"acc {_pct(acc['variant'])} (fp32 {_pct(acc['baseline'])})" if acc else
               f"agree {_pct(r['agreement'])}")
    lat = "; ".join(f"b{b} {row['variant']:.3f} / {row['baseline']:.3f} ms" for b, row in r["latency_ms"].items())
    return f"{quality}, size {r['size_ratio']:.2f}x, {lat}"


def _prune_cell(r: dict[str, Any]) -> str:
    if "refused" in r:
        return _refused(r)
    acc = r["accuracy"]
    groups = (r.get("pruning") or {}).get("groups_pruned")
    what = f"{len(groups)} channel groups" if groups is not None else "hidden units (chain, one-shot)"
    return f"{what}: acc {_pct(acc['variant'])} (fp32 {_pct(acc['baseline'])}), size {r['size_ratio']:.2f}x"


def _distill_cell(r: dict[str, Any]) -> str:
    if "refused" in r:
        return _refused(r)
    soft, hard = r["students"]
    return f"student {_pct(soft['accuracy'])} vs hard-label {_pct(hard['accuracy'])} (teacher {_pct(r['accuracy']['baseline'])})"


def markdown(serving: dict, results: dict) -> str:
    lines = [SECTION, "", f"Command: `{COMMAND}` (one process on core 1; the server in it too).", "",
             "Every zoo model (tests/kairos_testing/zoo.py, built in code, trained on scikit-learn's "
             "digits; the encoder reads each digit as 10-50 pixel tokens). *Served*: 12 concurrent requests "
             "of 1-4 rows (the fixed-batch model: 8) through a real `kairos serve` with batching on "
             "(fixed policy, 30 ms queue delay), every output equal to onnxruntime run in-process "
             "(float rtol 1e-4, ints and labels exact); `runs` = model executions for the 12. Quantize "
             "cells: accuracy on the 450 held-out rows (fp32 beside it), file size vs fp32, median "
             "latency variant / fp32 at batch 1 and 32 (1 intra-op thread, CPU, 50 runs each, "
             "alternating). Prune: structured 25%, one-shot, no fine-tuning. Distill: one hidden "
             "layer of 64 (a 3x3 conv of 8 channels in front for images), 10 epochs, T=4, alpha=0.7, "
             "vs the same student on hard labels.", "",
             "| model | served (runs for 12) | int8 dynamic | int8 static QDQ | fp16 | prune | distill |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        s = serving[name]
        lines.append(f"| {name} | {'yes' if s['equal'] else 'NO'} ({s['executions']}) | "
                     + " | ".join(_quant_cell(r[m]) for m in MODES)
                     + f" | {_prune_cell(r['prune'])} | {_distill_cell(r['distill'])} |")
    return "\n".join(lines) + "\n"


ANALYSIS = "What it shows"  # the hand-written reading under the table, kept on rewrite


def write_section(text: str, path: Path) -> None:
    """Replace the section `text` starts with (its first line) in BENCHMARKS.md, or append
    it, keeping the hand-written analysis below its table."""
    doc = path.read_text()
    section = text.splitlines()[0]
    if section in doc:
        start = doc.index(section)
        end = doc.find("\n## ", start + len(section))
        old = doc[start:end] if end >= 0 else doc[start:]
        if ANALYSIS in old:
            text = text.rstrip("\n") + "\n\n" + old[old.index(ANALYSIS):].rstrip("\n") + "\n"
        doc = doc[:start] + text + (doc[end:] if end >= 0 else "")
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    path.write_text(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "model_zoo.json")
    parser.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kairos-zoo-bench-") as tmp:
        repo = zoo.repository(Path(tmp) / "repo", config=BATCHING)
        serving = served(repo)
        results = {name: optimize(repo, name, args.repeats) for name in zoo.MODELS}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"served": serving, "optimize": results}, indent=1, default=str) + "\n")
    text = markdown(serving, results)
    print(text)
    if args.write:
        write_section(text, ROOT / "BENCHMARKS.md")


if __name__ == "__main__":
    main()
