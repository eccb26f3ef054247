"""Policies side by side on ONE server, and the GEMV/GEMM split across load.

The same `mlp256` ONNX file is served under four names whose config.yaml differ
only in `scheduling.policy`: `slo` (Kairos), `fixed` with max_queue_delay 1 ms
and 5 ms (Triton-style dynamic batching), and `none` (no batching). At each
offered rate the four are measured back to back (goodput@10ms, 1-row requests).
The `slo` model is also swept from light load up, reading ModelStatistics
batch_stats (and `kairos_dispatches_total` from /metrics) to show the share of
batch-1 (GEMV) executions falling as load grows.

    flock /tmp/kairos-bench.lock taskset -c 1 .venv/bin/python bench/scheduling_policies.py --peak-rate 2890

`--peak-rate` is Kairos's peak rate on mlp256, the offered rate at which its peak goodput
was measured (scheduling_common.PEAK_DEFINITION; from bench/results/scheduling_floor.json
when omitted, and the script refuses when that is missing); rates are fractions of it.
Writes bench/results/scheduling_policies.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from scheduling_common import (
    PENDING_LIMIT_ARGS,
    KairosHandle,
    add_kairos_args,
    measure_kairos,
    measured_peak_rate,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peak-rate", type=float,
                        help="the offered rate (req/s) at which Kairos's peak goodput on mlp256 was "
                        "measured (default: from bench/results/scheduling_floor.json)")
    add_kairos_args(parser, PENDING_LIMIT_ARGS)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternated rounds per rate; each policy's median round is reported")
    parser.add_argument("--fractions", default=",".join(map(str, POLICY_FRACTIONS)))
    args = parser.parse_args()
    peak_rate = args.peak_rate or measured_peak_rate("--peak-rate")
    kairos_args = use_kairos_args(args.kairos_args)
    pin_generator()
    fractions = [float(f) for f in args.fractions.split(",")]
    policy_rates = [round(f * peak_rate, -1) for f in fractions]
    split_rates = [round(f * peak_rate, -1) for f in SPLIT_FRACTIONS]
    out: dict[str, Any] = {"peak_rate_used": peak_rate, "policy_rates": policy_rates,
                           "split_rates": split_rates,
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
                save("scheduling_policies", out)  # partial results survive an interruption
            out["kairos_restarts"] = kairos.restarts
            out["kairos_wedged_points"] = kairos.wedged_points
    out["slo_wins_everywhere"] = all(
        out["policies"]["mlp256-slo"][i]["goodput"] >= max(out["policies"][n][i]["goodput"] for n in POLICIES)
        for i in range(len(policy_rates))
    )
    save("scheduling_policies", out)
    for i, rate in enumerate(policy_rates):
        print(f"{rate:>7g}/s  " + "  ".join(
            f"{n.split('-')[1]} {out['policies'][n][i]['goodput']:.0f}" for n in POLICIES))


if __name__ == "__main__":
    main()
