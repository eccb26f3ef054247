"""Side by side in one run: the floor vs Kairos (grpc.aio) on `mlp256` (1 row, SLO 10 ms).

- floor c=1 p50 and Kairos c=1 p50, alternated `--repeats` times (medians);
- floor peak req/s (closed loop, no deadline, the best of a few concurrencies);
- Kairos peak goodput@10ms and the peak rate where it was measured (see PEAK_DEFINITION
  in scheduling_common.py): open-loop sweep of the offered rate (fractions of the
  floor's closed-loop peak req/s), with the floor swept over the same rates, and the
  GEMV/GEMM split (ModelStatistics batch_stats) at every point;
- the generator's own capacity: open loop at `--generator-rate` against the raw
  floor, with its lateness (it must keep up at >= 5,000 req/s on one core).

    flock /tmp/kairos-bench.lock taskset -c 1 .venv/bin/python bench/scheduling_floor.py

Writes bench/results/scheduling_floor.json; bench/scheduling_report.py turns it into figures.
"""

from __future__ import annotations

import argparse
import json
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
    median,
    mlp256_file,
    models_folder,
    pin_generator,
    save,
    use_kairos_args,
    write_model,
)

MODEL = "mlp256"
SWEEP_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2)


def c1_latency(floor, kairos: KairosHandle, repeats: int, duration: float) -> dict[str, Any]:
    """c=1 p50 of both, alternated so drift in the machine hits both alike."""
    points: dict[str, list] = {"floor": [], "kairos": []}
    for i in range(repeats):
        points["floor"].append(measure(config(floor, MODEL, concurrency=1, duration_s=duration),
                                       label=f"floor c=1 #{i}"))
        points["kairos"].append(measure_kairos(kairos, MODEL, label=f"kairos c=1 #{i}",
                                               concurrency=1, duration_s=duration))
    p50 = {name: median([p["latency_ms"]["p50"] for p in pts]) for name, pts in points.items()}
    return {"points": points, "p50_ms": p50, "delta_ms": round(p50["kairos"] - p50["floor"], 4)}


def peak_throughput(server, concurrencies: tuple[int, ...], duration: float, label: str) -> dict[str, Any]:
    """Closed loop without deadline: the most req/s the server answers."""
    points = []
    for c in concurrencies:
        changes = {"concurrency": c, "deadline_ms": 0, "duration_s": duration}
        if isinstance(server, KairosHandle):
            points.append(measure_kairos(server, MODEL, label=f"{label} peak c={c}", **changes))
        else:
            points.append(measure(config(server, MODEL, **changes), label=f"{label} peak c={c}"))
    best = max(points, key=lambda p: p["throughput"])
    return {"points": points, "peak_rps": best["throughput"], "at_concurrency": best["concurrency"]}


def sweep(server, rates: list[float], duration: float, label: str) -> list[dict[str, Any]]:
    if isinstance(server, KairosHandle):
        return [measure_kairos(server, MODEL, label=f"{label} sweep", rates=[r], duration_s=duration)
                for r in rates]
    return [measure(config(server, MODEL, rates=[r], duration_s=duration), label=f"{label} sweep")
            for r in rates]


def generator_capacity(rate: float, duration: float) -> dict[str, Any]:
    """Open loop at `rate` against the raw floor: did the generator send on schedule?"""
    with floor_server(raw=True) as raw:
        point = measure(config(raw, MODEL, rates=[rate], duration_s=duration), label="generator")
    gen = point.get("generator", {})
    return {"offered_rate": rate, "send_rate": point["send_rate"], "kept_up": point["kept_up"],
            "lateness_ms": point["lateness_ms"], "generator": gen, "point": point}


PARTS = ("c1", "peaks", "generator")


def measure_parts(args: argparse.Namespace, parts: set[str]) -> dict[str, Any]:
    """The asked parts; "peaks" is the peaks and both sweeps (they share their rates)."""
    out: dict[str, Any] = {}
    fractions = [float(f) for f in args.fractions.split(",")]
    with tempfile.TemporaryDirectory(prefix="kairos-bench-repo-") as tmp:
        repo = Path(tmp)
        write_model(repo, MODEL, mlp256_file(models_folder()), "max_batch_size: 64\nslo_ms: 10\n")
        if parts & {"c1", "peaks"}:
            with floor_server() as floor, KairosHandle(repo, [MODEL]) as kairos:
                if "c1" in parts:
                    out["c1"] = c1_latency(floor, kairos, args.repeats, args.duration)
                if "peaks" in parts:
                    out.update(peaks_and_sweeps(floor, kairos, fractions, args.duration))
                out["kairos_restarts"] = kairos.restarts
                out["kairos_wedged_points"] = kairos.wedged_points
    if "generator" in parts:
        out["generator_capacity"] = generator_capacity(args.generator_rate, args.duration)
    return out


def peaks_and_sweeps(floor, kairos: KairosHandle, fractions: list[float], duration: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["floor_peak"] = peak_throughput(floor, (8, 32), duration, "floor")
    out["kairos_closed_peak"] = peak_throughput(kairos, (8, 32), duration, "kairos")
    rates = [round(f * out["floor_peak"]["peak_rps"], -1) for f in fractions]
    out["rates"] = rates
    out["kairos_sweep"] = sweep(kairos, rates, duration, "kairos")
    out["floor_sweep"] = sweep(floor, rates, duration, "floor")
    best = max(out["kairos_sweep"], key=lambda p: p["goodput"])
    out["kairos_peak_goodput"] = best["goodput"]
    out["kairos_peak_goodput_rate"] = best["offered_rate"]
    out["ratio_peak_goodput_to_floor_peak"] = round(best["goodput"] / out["floor_peak"]["peak_rps"], 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="c=1 alternations")
    add_kairos_args(parser, PENDING_LIMIT_ARGS)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per point")
    parser.add_argument("--generator-rate", type=float, default=5000.0)
    parser.add_argument("--fractions", default=",".join(map(str, SWEEP_FRACTIONS)),
                        help="sweep rates as fractions of the floor's peak")
    parser.add_argument("--only", default=",".join(PARTS),
                        help="comma-separated parts to (re)measure: c1, peaks, generator; "
                        "the others are kept from the previous results file")
    args = parser.parse_args()
    kairos_args = use_kairos_args(args.kairos_args)
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    if not parts <= set(PARTS):
        raise SystemExit(f"--only takes {', '.join(PARTS)}")
    pin_generator()
    out = measure_parts(args, parts)
    out.update({"model": MODEL, "slo_ms": 10.0, "rows": 1, "kairos_args": kairos_args})
    out[f"command_{'_'.join(sorted(parts))}"] = " ".join(sys.argv)
    path = save("scheduling_floor", out, merge=True)
    data = json.loads(path.read_text())
    if "c1" in data and "floor_peak" in data:
        print(f"floor c=1 p50 {data['c1']['p50_ms']['floor']} ms, Kairos {data['c1']['p50_ms']['kairos']} ms "
              f"(+{data['c1']['delta_ms']} ms); floor peak {data['floor_peak']['peak_rps']}/s; Kairos peak "
              f"goodput {data['kairos_peak_goodput']}/s = {data['ratio_peak_goodput_to_floor_peak']}x")


if __name__ == "__main__":
    main()
