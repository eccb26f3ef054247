"""Overload: goodput at 2x peak (twice the peak rate), and what a refusal costs.

"Peak" as in scheduling_common.PEAK_DEFINITION: each part finds its own peak goodput by
sweeping the offered rate, then offers twice the rate at which that peak was measured.


1. Model-bound (`mlp-heavy`: FP32 [batch,1024] -> 3x8192 ReLU -> 10, SLO 250 ms):
   find Kairos's peak goodput by sweeping the offered rate, then offer 2x that
   rate; goodput must stay >= 0.9x peak, the excess refused fast.
2. Front-end-bound (`mlp256`, SLO 10 ms): the same at 2x mlp256's peak
   (goodput >= 0.5x peak), Kairos started with `--kairos-args` (default
   `--max-pending-rpcs 4`: gRPC's core sheds calls beyond 4 waiting ones); then
   Kairos without those flags, and the floor, at the same 2x rate.
3. The CPU a refusal costs the server: server CPU per request at a fixed rate
   for answered requests (floor and Kairos) and for requests Kairos refuses
   (`timeout` parameter of 1 us, no gRPC deadline: refused at admission).

    flock /tmp/kairos-bench.lock taskset -c 1 .venv/bin/python bench/scheduling_overload.py

Writes bench/results/scheduling_overload.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from scheduling_common import (
    PENDING_LIMIT_ARGS,
    KairosHandle,
    add_kairos_args,
    config,
    floor_server,
    measure,
    measure_kairos,
    measured_peak_rate,
    mlp256_file,
    mlp_heavy_file,
    models_folder,
    pin_generator,
    save,
    use_kairos_args,
    write_model,
)

HEAVY = "mlp-heavy"
HEAVY_SLO_MS = 250.0
LIGHT = "mlp256"


def point(target, model: str, label: str, **changes: Any) -> dict[str, Any]:
    """One point on Kairos (restarted if found wedged) or on the floor."""
    if isinstance(target, KairosHandle):
        return measure_kairos(target, model, label=label, **changes)
    return measure(config(target, model, **changes), label=label)


def find_peak(target, model: str, rates: list[float], duration: float, slo_ms: float,
              label: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    points = [point(target, model, f"{label} sweep", rates=[r], duration_s=duration, slo_ms=slo_ms)
              for r in rates]
    return points, max(points, key=lambda p: p["goodput"])


def model_bound(args: argparse.Namespace, repo: Path) -> dict[str, Any]:
    write_model(repo, HEAVY, mlp_heavy_file(models_folder()),
                f"max_batch_size: 32\nslo_ms: {HEAVY_SLO_MS:g}\nintra_op_threads: 1\n")
    with KairosHandle(repo, [HEAVY]) as kairos:
        # The most it answers at all: closed loop, no deadline, a full batch in flight.
        closed = point(kairos, HEAVY, "heavy closed c=32", concurrency=32, deadline_ms=0,
                       slo_ms=HEAVY_SLO_MS, duration_s=args.duration)
        capacity = closed["throughput"]
        # the low rates show the GEMV -> GEMM transition; the high ones find the peak
        rates = [round(capacity * f, 1) for f in (0.05, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)]
        sweep, best = find_peak(kairos, HEAVY, rates, args.duration, HEAVY_SLO_MS, "heavy")
        peak_rate = best["offered_rate"]
        over = point(kairos, HEAVY, "heavy 2x", rates=[2 * peak_rate], duration_s=args.duration,
                     slo_ms=HEAVY_SLO_MS)
        restarts = kairos.restarts
    return {"closed_c32": closed, "sweep": sweep, "peak_goodput": best["goodput"],
            "peak_rate": peak_rate, "overload": over, "kairos_restarts": restarts,
            "ratio": round(over["goodput"] / best["goodput"], 4) if best["goodput"] else None}


def front_end_bound(args: argparse.Namespace, repo: Path) -> dict[str, Any]:
    """Kairos with `--kairos-args` (default: gRPC's core sheds beyond 4 waiting calls)
    finds its peak and takes 2x that rate; Kairos without them takes the same 2x rate,
    and so does the floor."""
    write_model(repo, LIGHT, mlp256_file(models_folder()), "max_batch_size: 64\nslo_ms: 10\n")
    with floor_server() as floor, KairosHandle(repo, [LIGHT]) as kairos:
        rates = light_rates(args.light_rates)
        sweep, best = find_peak(kairos, LIGHT, rates, args.duration, 10.0, "mlp256")
        peak_rate = best["offered_rate"]
        over = point(kairos, LIGHT, "mlp256 2x", rates=[2 * peak_rate], duration_s=args.duration)
        floor_over = point(floor, LIGHT, "floor 2x", rates=[2 * peak_rate], duration_s=args.duration)
        refusal = refusal_cost(floor, kairos, args.cost_rate, args.duration)
        restarts = kairos.restarts
    plain_args = use_kairos_args("")
    with KairosHandle(repo, [LIGHT]) as plain:
        plain_over = point(plain, LIGHT, "mlp256 2x, no flags", rates=[2 * peak_rate], duration_s=args.duration)
    return {"sweep": sweep, "peak_goodput": best["goodput"], "peak_rate": peak_rate,
            "overload": over, "floor_overload": floor_over, "kairos_restarts": restarts,
            "ratio": round(over["goodput"] / best["goodput"], 4) if best["goodput"] else None,
            "refusal_cost": refusal, "kairos_args": args.kairos_args,
            "without_kairos_args": {"kairos_args": " ".join(plain_args), "overload": plain_over,
                                    "ratio": round(plain_over["goodput"] / best["goodput"], 4)
                                    if best["goodput"] else None}}


def light_rates(text: str | None) -> list[float]:
    if text:
        return [float(r) for r in text.split(",")]
    peak_rate = measured_peak_rate("--light-rates")
    return [round(peak_rate * f, -1) for f in (0.6, 0.8, 0.9, 1.0, 1.1, 1.3)]


def refusal_cost(floor, kairos, rate: float, duration: float) -> dict[str, Any]:
    """Server CPU per request: answered (floor, Kairos) vs refused at admission (Kairos)."""
    answered_floor = measure(config(floor, LIGHT, rates=[rate], duration_s=duration), label="cost floor ok")
    answered = point(kairos, LIGHT, "cost kairos ok", rates=[rate], duration_s=duration)
    # Refused on purpose (timeout 1 us): measured directly, a wedge check would misfire.
    refused = measure(config(kairos.server, LIGHT, rates=[rate], duration_s=duration, deadline_ms=0,
                             parameters={"timeout": 1}), label="cost kairos refused")

    def cost(point: dict[str, Any]) -> float | None:
        return point.get("server_cpu", {}).get("cpu_us_per_request")

    return {"rate": rate, "floor_ok_us": cost(answered_floor), "kairos_ok_us": cost(answered),
            "kairos_refused_us": cost(refused), "refused_errors": refused["errors"],
            "points": {"floor_ok": answered_floor, "kairos_ok": answered, "kairos_refused": refused}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--light-rates", help="mlp256 offered rates swept to find its peak goodput "
                        "(default: 0.6-1.3x the peak rate in bench/results/scheduling_floor.json; "
                        "refuses to guess when that file is missing)")
    parser.add_argument("--cost-rate", type=float, default=1000.0, help="rate for the refusal-cost points")
    parser.add_argument("--skip-heavy", action="store_true")
    add_kairos_args(parser, PENDING_LIMIT_ARGS)
    parser.add_argument("--skip-light", action="store_true")
    args = parser.parse_args()
    if not args.skip_light:
        args.light_rates = ",".join(str(r) for r in light_rates(args.light_rates))  # or refuse
    pin_generator()
    out: dict[str, Any] = {}
    if not args.skip_light:
        use_kairos_args(args.kairos_args)
        with tempfile.TemporaryDirectory(prefix="kairos-bench-repo-") as tmp:
            out["front_end_bound"] = front_end_bound(args, Path(tmp))
        out["front_end_bound"]["command"] = " ".join(sys.argv)
        save("scheduling_overload", out, merge=True)
    if not args.skip_heavy:
        use_kairos_args("")  # closed loop c=32 finds its capacity: no shedding there
        with tempfile.TemporaryDirectory(prefix="kairos-bench-repo-") as tmp:
            out["model_bound"] = model_bound(args, Path(tmp))
        out["model_bound"]["command"] = " ".join(sys.argv)
        save("scheduling_overload", out, merge=True)
    for key in ("model_bound", "front_end_bound"):
        if key in out:
            part = out[key]
            print(f"{key}: peak goodput {part['peak_goodput']}/s at {part['peak_rate']}/s; "
                  f"at 2x: {part['overload']['goodput']}/s = {part['ratio']}x")


if __name__ == "__main__":
    main()
