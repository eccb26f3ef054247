"""Variable-length batching side by side on one server: the zoo's BERT-style encoder under
a Poisson load of 1-row requests of 8-128 tokens (uniform), 20 ms deadline, as three
models of one `kairos serve`: one lane per shape (no padding), padded to the batch's
longest, and padded to length buckets 16/32/64/128. Goodput (answers within 20 ms per
second), p99 of the answers, refusals; and a sample of answers compared with unbatched
onnxruntime runs of the same unpadded request.

Run (server on core 0, this load generator on core 1):
    flock /tmp/kairos-bench.lock .venv/bin/python bench/variable_length.py --write
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from kairos.client import AsyncInferenceClient  # noqa: E402
from kairos.client._common import InferenceServerError  # noqa: E402
from kairos_testing import zoo  # noqa: E402
from kairos_testing.server import running_server  # noqa: E402

COMMAND = "flock /tmp/kairos-bench.lock .venv/bin/python bench/variable_length.py --write"
SECTION = "## Model zoo: variable-length batching of the encoder (padding vs one lane per shape)"
PAD = "  padding: {input_ids: {dim: 1, value: 0}, attention_mask: {dim: 1, value: 0}}\n"
VARIANTS = {
    "encoder": "one lane per shape",
    "encoder_padded": "padded to the longest",
    "encoder_buckets": "padded to buckets 16/32/64/128",
}
DEADLINE_S = 0.020


def config(name: str) -> str:
    text = "slo_ms: 20\nscheduling:\n  policy: slo\n"
    if name != "encoder":
        text += PAD
    if name == "encoder_buckets":
        text += "  padding_buckets: [16, 32, 64, 128]\n"
    return text


def request(rng: np.random.Generator) -> dict[str, np.ndarray]:
    length = int(rng.integers(8, 129))
    ids = rng.integers(1, zoo.VOCAB, (1, length)).astype(np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


async def _one(client, model: str, feeds: dict, keep: list | None) -> tuple[str, float]:
    start = time.perf_counter()
    try:
        out = await client.infer(model, feeds, timeout=DEADLINE_S)
    except InferenceServerError as exc:
        return exc.status, time.perf_counter() - start
    elapsed = time.perf_counter() - start
    if keep is not None and len(keep) < 200:
        keep.append((feeds, out["logits"]))
    return ("ok" if elapsed <= DEADLINE_S else "late"), elapsed


async def load(address: str, model: str, rate: float, duration: float, seed: int,
               keep: list | None) -> dict:
    rng = np.random.default_rng(seed)
    async with AsyncInferenceClient(address) as client:
        await client.infer(model, request(rng), timeout=5)  # connection up
        loop = asyncio.get_running_loop()
        start = loop.time()
        due, tasks = start, []
        while due < start + duration:
            due += rng.exponential(1 / rate)
            await asyncio.sleep(max(0.0, due - loop.time()))
            tasks.append(asyncio.create_task(_one(client, model, request(rng), keep)))
        results = await asyncio.gather(*tasks)
    answered = sorted(t for s, t in results if s in ("ok", "late"))
    counts: dict[str, int] = {}
    for status, _ in results:
        counts[status] = counts.get(status, 0) + 1
    return {"model": model, "offered": rate, "sent": len(results), "counts": counts,
            "goodput": counts.get("ok", 0) / duration,
            "p99_ms": float(np.percentile(answered, 99) * 1e3) if answered else None,
            "p50_ms": float(np.percentile(answered, 50) * 1e3) if answered else None}


def check_equal(samples: list) -> float:
    path = zoo.MODELS["encoder"].path()
    return max(float(np.max(np.abs(zoo.reference(path, feeds)["logits"] - got))) for feeds, got in samples)


def markdown(rows: list[dict], deviation: float, stats: dict) -> str:
    lines = [SECTION, "", f"Command: `{COMMAND}` (server on core 0, load generator on core 1; 1-row "
             "requests, lengths uniform in 8-128 tokens, Poisson arrivals, 20 ms deadline as the gRPC "
             "timeout, policy slo; the three models alternate at each rate on one server).", "",
             "| offered req/s | model | goodput /s | p50 ms | p99 ms | late | refused | executions / requests |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        refused = sum(v for k, v in r["counts"].items() if k not in ("ok", "late"))
        lines.append(f"| {r['offered']:.0f} | {VARIANTS[r['model']]} | {r['goodput']:.0f} | "
                     f"{r['p50_ms'] or 0:.2f} | {r['p99_ms'] or 0:.2f} | {r['counts'].get('late', 0)} | "
                     f"{refused} | {r.get('executions', '?')} / {r['sent']} |")
    lines += ["", f"Answers equal unbatched onnxruntime runs of the unpadded request: max |difference| "
              f"{deviation:.2g} over {stats['samples']} sampled answers of the padded models."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="300,600,900")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "variable_length.json")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    import os

    os.sched_setaffinity(0, {1})
    rows, samples = [], []
    with tempfile.TemporaryDirectory(prefix="kairos-varlen-") as tmp:
        repo = Path(tmp) / "repo"
        for name in [n for n in VARIANTS if n != "encoder"]:
            zoo.repository(repo, ["encoder"], config=config(name))
            (repo / "encoder").rename(repo / name)
        zoo.repository(repo, ["encoder"], config=config("encoder"))
        with running_server(repo, cpu=0) as server:
            from kairos.client import InferenceClient

            with InferenceClient(server.address) as client:
                client.wait_until_ready(120, models=list(VARIANTS))
                for i, rate in enumerate(float(r) for r in args.rates.split(",")):
                    order = list(VARIANTS) if i % 2 == 0 else list(VARIANTS)[::-1]
                    for name in order:
                        before = client.model_statistics(name).model_stats[0].execution_count
                        keep = samples if name != "encoder" else None
                        row = asyncio.run(load(server.address, name, rate, args.duration, int(rate), keep))
                        row["executions"] = client.model_statistics(name).model_stats[0].execution_count - before
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    rows.sort(key=lambda r: (r["offered"], list(VARIANTS).index(r["model"])))
    deviation = check_equal(samples)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows, "max_deviation": deviation}, indent=1) + "\n")
    text = markdown(rows, deviation, {"samples": len(samples)})
    print(text)
    if args.write:
        sys.path.insert(0, str(ROOT / "bench"))
        from model_zoo import write_section

        write_section(text, ROOT / "BENCHMARKS.md")


if __name__ == "__main__":
    main()
