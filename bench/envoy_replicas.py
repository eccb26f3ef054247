"""Kairos behind a real Envoy on this machine: goodput@SLO for 1, 2 and 3 replicas,
Envoy's added latency against direct connections, and 2x aggregate overload.

    flock /tmp/kairos-bench.lock .venv/bin/python bench/envoy_replicas.py \
        --out bench/results/envoy_replicas.json

Every process (replicas, Envoy, the `kairos bench` client) shares this machine's cores,
so more replicas add processes, not cores: the figures say what Envoy and the
retry/health machinery cost and whether overload stays clean, not how Kairos scales on
more machines. Replicas serve the built-in demo models; the load is `mlp256`, 1 row,
10 ms SLO (each request's deadline), the deploy/envoy config (generated for these ports).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from kairos_testing.envoy import Envoy, Replica, config_module, free_port, running_envoy  # noqa: E402

KAIROS = str(Path(sys.executable).parent / "kairos")
SLO_MS = 10.0


def bench(url: str, *load: str, duration: float) -> list[dict]:
    """`kairos bench` against url; its JSON points."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [KAIROS, "bench", "--url", url, "-m", "mlp256", "--slo-ms", str(SLO_MS),
                   "--duration", str(duration), "--warmup", "1", "--no-server-stats",
                   "--json", out.name, *load]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}")
        data = json.loads(Path(out.name).read_text())
    return data["points"] if isinstance(data, dict) and "points" in data else data


@contextlib.contextmanager
def replicas_behind_envoy(count: int) -> Iterator[tuple[Envoy, list[Replica]]]:
    workdir = Path(tempfile.mkdtemp(prefix="kairos-envoy-bench-"))
    replicas = [Replica([], workdir) for _ in range(count)]
    module = config_module()
    settings = module.EnvoySettings(upstreams=[("127.0.0.1", r.grpc_port) for r in replicas],
                                    listen=("127.0.0.1", free_port()),
                                    admin=("127.0.0.1", free_port()))
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ready(180)
        with running_envoy(module.render(settings), settings.listen[1], settings.admin[1]) as envoy:
            yield envoy, replicas
    finally:
        for replica in replicas:
            replica.stop()


def summary(point: dict) -> dict:
    return {k: point.get(k) for k in ("send_rate", "throughput", "goodput", "slo_attainment",
                                        "latency_ms", "errors", "machine")}


def peak(url: str, rates: list[int], duration: float) -> tuple[float, list[dict]]:
    points = bench(url, "--sweep", ",".join(map(str, rates)), duration=duration)
    return max(p["goodput"] for p in points), [summary(p) for p in points]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "envoy_replicas.json")
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--rates", default="400,800,1200,1600,2000")
    parser.add_argument("--transport", choices=("native", "aio"), default=None,
                        help="the replicas' --transport (default: kairos serve's)")
    args = parser.parse_args(argv)
    if args.transport:
        os.environ["KAIROS_TEST_TRANSPORT"] = args.transport  # read by kairos_testing's Replica
    rates = [int(r) for r in args.rates.split(",")]
    results: dict = {"slo_ms": SLO_MS, "transport": args.transport or "default", "replicas": {}}
    for count in (1, 2, 3):
        with replicas_behind_envoy(count) as (envoy, replicas):
            best, points = peak(envoy.address, rates, args.duration)
            entry = {"peak_goodput": best, "sweep": points}
            if count == 1:
                direct = bench(replicas[0].address, "--concurrency", "1", duration=args.duration)[0]
                proxied = bench(envoy.address, "--concurrency", "1", duration=args.duration)[0]
                entry["c1_direct"], entry["c1_envoy"] = summary(direct), summary(proxied)
            if count == 3:
                over = bench(envoy.address, "--rate", str(int(2 * best)), duration=args.duration)[0]
                entry["overload_2x"] = {"offered": int(2 * best), **summary(over),
                                        "goodput_vs_peak": round(over["goodput"] / best, 3)}
            results["replicas"][count] = entry
            print(f"{count} replica(s): peak goodput {best:.0f}/s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps({n: {k: v for k, v in e.items() if k != "sweep"}
                      for n, e in results["replicas"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
