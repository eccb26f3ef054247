"""Model groups {fp32, static int8} against fp32 alone, on one Kairos server, side by side.

For each model (`mlp256`, front-end heavy, 10 ms deadline; `mlp4096` = 1024 -> 4096 ->
4096 -> 10, compute-bound, 250 ms deadline) the server holds three names:
`<m>-fp32` (fp32 alone), `<m>-int8` (the int8 model, quantized here with onnxruntime's
static QDQ quantizer; its top-1 agreement with fp32 measured on 4,096 random rows and
written to report.json as `kairos optimize` does), and `<m>`: the group {fp32, int8}
with an accuracy budget.

Each name gets an open-loop Poisson sweep (native load generator, pinned to core 1;
the server on core 0), up in rate until two points in a row miss the target; a point
that misses is measured once more and the better try kept (the machine is shared).
The figure per name is the *sustained rate*: the highest offered rate of the sweep at
which >= 99% of the requests sent were answered within their deadline (refusals count
as misses). For the group, every point also records,
from the server's /metrics, the share of rows each variant served, the agreement
with fp32 those rows carry (share-weighted), and variant switches per second.
Then the group at half of fp32's sustained rate: the share fp32 served there.

    flock /tmp/kairos-bench.lock .venv/bin/python bench/model_groups.py --write
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from kairos.client.bench.runner import parse_prometheus
from kairos.server.demo_models import quantize_int8
from kairos.server.scheduler.latency import bucket_sizes
from kairos.server.scheduler.simulator import merge, poisson, simulate
from scheduling_common import (
    ROOT,
    config,
    kairos_server,
    measure,
    mlp256_file,
    models_folder,
    onnx_file,
    pin_generator,
    save,
    wait_ready,
    write_model,
)

BENCHMARKS = ROOT / "BENCHMARKS.md"
START = "<!-- model-groups:start (written by bench/model_groups.py) -->"
END = "<!-- model-groups:end -->"
TARGET = 0.99  # share of requests that must meet the deadline
BUDGET = 0.02
MODELS = {
    # name: (input width, file maker, deadline ms, sweep rates as multiples of a first guess)
    "mlp256": (256, mlp256_file, 10.0, 3000.0),
    "mlp4096": (1024, lambda folder: onnx_file(folder, "mlp4096", (1024, 4096, 4096, 10), 4096),
                250.0, 1200.0),
}
STEPS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.3, 2.6, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0)


def int8_twin(fp32: Path, width: int) -> tuple[Path, float]:
    """The static int8 model beside `fp32`, and its top-1 agreement with it."""
    int8 = fp32.with_name(fp32.stem + "-int8.onnx")
    rng = np.random.default_rng(0)
    if not int8.exists():
        quantize_int8(fp32, int8, rng.standard_normal((256, width)).astype(np.float32), "input")
    x = np.random.default_rng(1).standard_normal((4096, width)).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    out = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
           for p in (fp32, int8)]
    return int8, float(np.mean(out[0].argmax(1) == out[1].argmax(1)))


def build_repository(repo: Path) -> dict[str, dict[str, Any]]:
    facts = {}
    folder = models_folder()
    for name, (width, make, deadline, _) in MODELS.items():
        fp32 = make(folder)
        int8, agreement = int8_twin(fp32, width)
        base = f"max_batch_size: 64\nslo_ms: {deadline:g}\n"
        write_model(repo, f"{name}-fp32", fp32, base)
        write_model(repo, f"{name}-int8", int8, base)
        (repo / f"{name}-int8" / "report.json").write_text(json.dumps({"top1_agreement": agreement}))
        group = (f"{base}variants:\n  reference: fp32\n  accuracy_budget: {BUDGET}\n"
                 f"  members:\n    int8: {{model: {name}-int8}}\n")
        write_model(repo, name, fp32, group)
        facts[name] = {"agreement": agreement, "deadline_ms": deadline}
    return facts


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return parse_prometheus(reply.read().decode())


def variant_counts(before: dict[str, float], after: dict[str, float], model: str) -> dict[str, Any]:
    """Rows per variant and switches of `model` between two scrapes."""
    rows = {}
    for key, value in after.items():
        match = re.match(r'kairos_variant_rows_total\{(.*)\}', key)
        if match and f'model="{model}"' in match.group(1):
            variant = re.search(r'variant="([^"]*)"', match.group(1)).group(1)
            rows[variant] = value - before.get(key, 0.0)
    switches_key = f'kairos_variant_switches_total{{model="{model}",version="1"}}'
    return {"rows": rows, "switches": after.get(switches_key, 0.0) - before.get(switches_key, 0.0)}


def point(server, name: str, rate: float, deadline: float, duration: float,
          agreement: float | None) -> dict[str, Any]:
    before = scrape(server.metrics_url)
    started = time.monotonic()
    result = measure(config(server, name, rates=[rate], slo_ms=deadline, duration_s=duration,
                            warmup_s=1.0, engine="native", metrics_url=None),
                     label=f"{name} r={rate:g}")
    elapsed = time.monotonic() - started
    out = {"rate": rate, "attainment": result["slo_attainment"], "goodput": result["goodput"],
           "p99_ms": result["latency_ms"]["p99"], "errors": {k: v["count"] for k, v in result["errors"].items()},
           "disturbed": result.get("disturbed")}
    if agreement is not None:
        counts = variant_counts(before, scrape(server.metrics_url), name)
        total = sum(counts["rows"].values()) or 1.0
        share = {k: round(v / total, 5) for k, v in counts["rows"].items()}
        out.update(share=share, switches_per_s=round(counts["switches"] / elapsed, 2),
                   served_agreement=round(share.get("fp32", 0.0) + share.get("int8", 0.0) * agreement, 5))
    return out


def sweep(server, name: str, guess: float, deadline: float, duration: float,
          agreement: float | None) -> dict[str, Any]:
    """Rates up from half the guess until two points in a row miss the target."""
    points, misses = [], 0
    for step in STEPS:
        p = point(server, name, round(guess * step), deadline, duration, agreement)
        if p["attainment"] < TARGET:  # the machine is shared: a missed point is measured again
            again = point(server, name, p["rate"], deadline, duration, agreement)
            again["first_try"] = {"attainment": p["attainment"], "errors": p["errors"]}
            p = max(p, again, key=lambda q: q["attainment"])
        points.append(p)
        misses = misses + 1 if p["attainment"] < TARGET else 0
        if misses == 2:
            break
    sustained = max((p["rate"] for p in points if p["attainment"] >= TARGET), default=0)
    return {"points": points, "sustained_rate": sustained}


def run_model(server, name: str, facts: dict[str, Any], duration: float) -> dict[str, Any]:
    _, _, deadline, guess = MODELS[name]
    alone = sweep(server, f"{name}-fp32", guess, deadline, duration, None)
    group = sweep(server, name, guess, deadline, duration, facts["agreement"])
    half = point(server, name, round(alone["sustained_rate"] / 2), deadline, duration, facts["agreement"])
    ratio = group["sustained_rate"] / alone["sustained_rate"] if alone["sustained_rate"] else None
    return {**facts, "fp32_alone": alone, "group": group, "half_of_fp32": half,
            "ratio": round(ratio, 3) if ratio else None}


# ---------------------------------------------------------------- the same policy, simulated


def measured_service(path: Path, width: int, runs: int = 30) -> dict[int, float]:
    """Median in-process onnxruntime time (1 thread) per bucket batch size."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).standard_normal((64, width)).astype(np.float32)
    out = {}
    for rows in bucket_sizes(64):
        feed = {"input": x[:rows]}
        for _ in range(3):
            session.run(None, feed)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - t0)
        out[rows] = float(np.median(times))
    return out


def interpolated(table: dict[int, float]):
    sizes = sorted(table)
    return lambda rows: float(np.interp(rows, sizes, [table[b] for b in sizes]))


def simulated(name: str, agreement: float, duration: float = 0.3) -> dict[str, Any]:
    """The discrete-event simulator on this model's measured L(b) (no front-end cost):
    sustained rate of fp32 alone and of the group, the fp32 share at half of fp32's
    rate, and a trace where half the requests set a floor above int8's agreement."""
    width, make, deadline, _ = MODELS[name]
    fp32 = make(models_folder())
    int8, _ = int8_twin(fp32, width)
    tables = {"fp32": measured_service(fp32, width), "int8": measured_service(int8, width)}
    fp32_service, int8_service = interpolated(tables["fp32"]), interpolated(tables["int8"])
    group = [("fp32", 1.0, fp32_service), ("int8", agreement, int8_service)]
    slo = deadline / 1e3
    capacity = 64 / tables["fp32"][64]

    def attain(rate: float, variants: bool, trace=None) -> Any:
        trace = trace or poisson(rate, duration, slo, seed=11)
        if variants:
            return simulate(trace, max_batch_size=64, variants=group, accuracy_budget=BUDGET, duration=duration)
        return simulate(trace, max_batch_size=64, service=fp32_service, duration=duration)

    def sustained(variants: bool) -> tuple[float, list]:
        best, rows = 0.0, []
        for step in (0.6, 0.8, 1.0, 1.2, 1.5, 1.8, 2.1, 2.5, 3.0, 3.5, 4.0):
            rate = round(capacity * step)
            result = attain(rate, variants)
            rows.append((rate, round(result.attainment(), 5)))
            if result.attainment() >= TARGET:
                best = rate
        return best, rows

    alone, alone_rows = sustained(False)
    both, both_rows = sustained(True)
    at = attain(both, True)
    ok = max(1, at.count("ok"))
    int8_share = sum(1 for o in at.outcomes if o.status == "ok" and o.variant == "int8") / ok
    half = attain(round(alone / 2), True)
    half_ok = max(1, half.count("ok"))
    floors = merge(poisson(both / 2, duration, slo, seed=12),
                   poisson(both / 2, duration, slo, seed=13, min_accuracy=min(1.0, agreement + 0.001)))
    floored = attain(0, True, trace=floors)
    strict = {r.t for r in floors if r.min_accuracy > 0}
    violations = sum(1 for o in floored.outcomes if o.arrival in strict and o.status == "ok" and o.variant != "fp32")
    return {
        "service_ms": {k: {b: round(v * 1e3, 4) for b, v in t.items()} for k, t in tables.items()},
        "fp32_alone_sustained": alone, "group_sustained": both,
        "ratio": round(both / alone, 3) if alone else None,
        "sweep_fp32": alone_rows, "sweep_group": both_rows,
        "int8_share_at_group_sustained": round(int8_share, 4),
        "served_agreement_at_group_sustained": round(1 - int8_share * (1 - agreement), 5),
        "switches_per_s_at_group_sustained": round(at.core.variants.switches / duration, 1),
        "fp32_share_at_half": round(sum(1 for o in half.outcomes if o.status == "ok" and o.variant == "fp32")
                                    / half_ok, 5),
        "floor_requests": len(strict), "floor_violations": violations,
    }


def render(data: dict[str, Any]) -> str:
    lines = [START, "", "## Model groups: variant choice under load ({fp32, static int8} vs fp32 alone)", "",
             f"Generated by `{data['command']}` ({data['finished_at']}). One Kairos server (native front "
             "end, core 0), native load generator (core 1), open-loop Poisson, 1 row per request, "
             f"accuracy budget {BUDGET}. Sustained rate = the highest offered rate of the sweep at which "
             f">= {TARGET:.0%} of the requests sent met their deadline (refusals count as misses).", "",
             "| model | deadline | int8 agreement | fp32 alone sustained | group sustained | ratio | "
             "fp32 share at half of fp32's rate | served agreement at the group's sustained rate | "
             "switches/s (max over the sweep) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, m in data["models"].items():
        group = m["group"]
        at = next((p for p in group["points"] if p["rate"] == group["sustained_rate"]), {})
        switches = max((p.get("switches_per_s", 0) for p in group["points"]), default=0)
        lines.append(
            f"| {name} | {m['deadline_ms']:g} ms | {m['agreement']:.4f} | {m['fp32_alone']['sustained_rate']:,}/s | "
            f"{group['sustained_rate']:,}/s | {m['ratio']}x | {m['half_of_fp32']['share'].get('fp32', 0):.2%} | "
            f"{at.get('served_agreement', '-')} | {switches} |")
    lines += ["", "Sweeps (attainment; for the group, the int8 share of rows):", ""]
    for name, m in data["models"].items():
        for label, key in (("fp32 alone", "fp32_alone"), ("group", "group")):
            cells = []
            for p in m[key]["points"]:
                extra = f", int8 {p['share'].get('int8', 0):.0%}" if "share" in p else ""
                cells.append(f"{p['rate']:,}/s: {p['attainment']:.4f}{extra}")
            lines.append(f"- {name} {label}: " + "; ".join(cells))
    lines += ["", "The same policy in the discrete-event simulator, on each model's L(b) measured in "
              "process (onnxruntime, 1 thread; no front-end cost), 0.3 s Poisson traces:", "",
              "| model | fp32 alone sustained | group sustained | ratio | int8 share there | served agreement "
              "there | switches/s there | fp32 share at half of fp32's rate | floor requests, served below "
              "their floor |", "|---|---|---|---|---|---|---|---|---|"]
    for name, sim in data.get("simulated", {}).items():
        lines.append(
            f"| {name} | {sim['fp32_alone_sustained']:,}/s | {sim['group_sustained']:,}/s | {sim['ratio']}x | "
            f"{sim['int8_share_at_group_sustained']:.2%} | {sim['served_agreement_at_group_sustained']} | "
            f"{sim['switches_per_s_at_group_sustained']} | {sim['fp32_share_at_half']:.2%} | "
            f"{sim['floor_requests']:,}, {sim['floor_violations']} |")
    lines += ["", END]
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    current = BENCHMARKS.read_text()
    if START in current and END in current:
        head, rest = current.split(START, 1)
        current = head + text.rstrip("\n") + rest.split(END, 1)[1]
    else:
        current = current.rstrip("\n") + "\n\n" + text
    BENCHMARKS.write_text(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds measured per point")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--write", action="store_true", help="write the BENCHMARKS.md section")
    args = parser.parse_args()
    pin_generator()
    repo = Path(tempfile.mkdtemp(prefix="kairos-groups-"))
    facts = build_repository(repo)
    chosen = [m for m in args.models.split(",") if m]
    sims = {name: simulated(name, facts[name]["agreement"]) for name in chosen}
    results = {}
    with kairos_server(repo) as server:
        for name in chosen:
            for model in (name, f"{name}-fp32"):
                wait_ready(server, model)
        for name in chosen:
            results[name] = run_model(server, name, facts[name], args.duration)
    save("model_groups", {"models": results, "simulated": sims})
    data = json.loads((ROOT / "bench" / "results" / "model_groups.json").read_text())
    text = render(data)
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    sys.exit(main())
