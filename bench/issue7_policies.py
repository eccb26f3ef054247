"""Issue 7, policies side by side on ONE server, and the GEMV/GEMM split across load.

The same `mlp256` ONNX file is served under four names whose config.yaml differ
only in `scheduling.policy`: `slo` (Kairos), `fixed` with max_queue_delay 1 ms
and 5 ms (Triton-style dynamic batching), and `none` (no batching). At each
offered rate the four are measured back to back (goodput@10ms, 1-row requests).
The `slo` model is also swept from light load up, reading ModelStatistics
batch_stats (and `kairos_dispatches_total` from /metrics) to show the share of
batch-1 (GEMV) executions falling as load grows.

    flock /tmp/kairos-bench.lock taskset -c 1 .venv/bin/python bench/issue7_policies.py --peak 1600

`--peak` is Kairos's peak goodput on mlp256 (from issue7_floor.json when omitted);
rates are fractions of it. Writes bench/results/issue7_policies.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from issue7_common import (
    PENDING_LIMIT_ARGS,
    RESULTS,
    KairosHandle,
    add_kairos_args,
    measure_kairos,
    mlp256_file,
    models_folder,
    pin_generator,
    save,
    use_kairos_args,
    write_model,
)

POLICIES = {
    "mlp256-slo": "scheduling: {policy: slo}",
    "mlp256-fixed1": "scheduling: {policy: fixed, max_queue_delay_ms: 1}",
    "mlp256-fixed5": "scheduling: {policy: fixed, max_queue_delay_ms: 5}",
    "mlp256-none": "scheduling: {policy: none}",
}
POLICY_FRACTIONS = (0.5, 0.7, 0.9, 1.0, 1.1, 1.3, 1.6)
SPLIT_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.35)  # added below the policy rates for the split plot


def known_peak() -> float | None:
    path = RESULTS / "issue7_floor.json"
    if path.exists():
        return json.loads(path.read_text()).get("kairos_peak_goodput")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peak", type=float, help="Kairos peak goodput on mlp256, req/s")
    add_kairos_args(parser, PENDING_LIMIT_ARGS)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternated rounds per rate; each policy's median round is reported")
    parser.add_argument("--fractions", default=",".join(map(str, POLICY_FRACTIONS)))
    args = parser.parse_args()
    kairos_args = use_kairos_args(args.kairos_args)
    pin_generator()
    peak = args.peak or known_peak()
    if not peak:
        raise SystemExit("give --peak (or run bench/issue7_floor.py first)")
    fractions = [float(f) for f in args.fractions.split(",")]
    policy_rates = [round(f * peak, -1) for f in fractions]
    split_rates = [round(f * peak, -1) for f in SPLIT_FRACTIONS]
    out: dict[str, Any] = {"peak_used": peak, "policy_rates": policy_rates, "split_rates": split_rates,
                           "policies": {name: [] for name in POLICIES}, "slo_low_load": [],
                           "kairos_args": kairos_args}
    with tempfile.TemporaryDirectory(prefix="kairos-bench-repo-") as tmp:
        repo = Path(tmp)
        source = mlp256_file(models_folder())
        for name, scheduling in POLICIES.items():
            write_model(repo, name, source, f"max_batch_size: 64\nslo_ms: 10\n{scheduling}\n")
        with KairosHandle(repo, list(POLICIES)) as kairos:
            for rate in split_rates:  # light load: the slo model only (the split plot)
                out["slo_low_load"].append(measure_kairos(
                    kairos, "mlp256-slo", label="slo low", rates=[rate], duration_s=args.duration))
            out["rounds"] = args.rounds
            out["policies_rounds"] = {name: [] for name in POLICIES}
            for rate in policy_rates:
                rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in POLICIES}
                for _ in range(args.rounds):  # policies alternate, back to back at the same rate
                    for name in POLICIES:
                        rounds[name].append(measure_kairos(
                            kairos, name, label=name, rates=[rate], duration_s=args.duration))
                for name, points in rounds.items():  # keep the median round
                    out["policies"][name].append(sorted(points, key=lambda p: p["goodput"])[len(points) // 2])
                    out["policies_rounds"][name].append([p["goodput"] for p in points])
                save("issue7_policies", out)  # partial results survive an interruption
            out["kairos_restarts"] = kairos.restarts
            out["kairos_wedged_points"] = kairos.wedged_points
    out["slo_wins_everywhere"] = all(
        out["policies"]["mlp256-slo"][i]["goodput"] >= max(out["policies"][n][i]["goodput"] for n in POLICIES)
        for i in range(len(policy_rates))
    )
    save("issue7_policies", out)
    for i, rate in enumerate(policy_rates):
        print(f"{rate:>7g}/s  " + "  ".join(
            f"{n.split('-')[1]} {out['policies'][n][i]['goodput']:.0f}" for n in POLICIES))


if __name__ == "__main__":
    main()
