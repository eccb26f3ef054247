"""Kairos behind a real Envoy on this machine: goodput@SLO for 1, 2 and 3 replicas,
Envoy's added latency against direct connections, and 2x aggregate overload.

    flock /tmp/kairos-bench.lock .venv/bin/python bench/envoy_replicas.py \
        --out bench/results/envoy_replicas.json [--write]

`--write` replaces this script's generated section of BENCHMARKS.md with the figures.

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
import time
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
    parser.add_argument("--write", action="store_true", help="replace the BENCHMARKS.md section")
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
    if args.write:
        write_section(render(results, " ".join(["python", "bench/envoy_replicas.py", *(argv or sys.argv[1:])])))
    print(json.dumps({n: {k: v for k, v in e.items() if k != "sweep"}
                      for n, e in results["replicas"].items()}, indent=1))
    return 0


BEGIN = "<!-- BEGIN generated by bench/envoy_replicas.py -->"
END = "<!-- END generated by bench/envoy_replicas.py -->"


def _ms(point: dict, key: str) -> str:
    value = (point.get("latency_ms") or {}).get(key)
    return "-" if value is None else f"{value:.3f}"


def render(results: dict, command: str) -> str:
    """The BENCHMARKS.md section: exactly the figures of one run."""
    replicas = results["replicas"]
    lines = [BEGIN, f"Measured {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} by:", "",
             f"    {command}", "",
             f"Replicas, Envoy and the `kairos bench` client (Python engine) share this machine's 2 "
             f"cores; mlp256, 1 row, {results['slo_ms']:g} ms deadline = SLO; replicas' transport: "
             f"{results['transport']}.", "",
             "| replicas | peak goodput@SLO /s | sweep (offered: goodput) |", "|---|---|---|"]
    for count, entry in replicas.items():
        sweep = ", ".join(f"{p['send_rate']:.0f}: {p['goodput']:.0f}" for p in entry["sweep"])
        lines.append(f"| {count} | {entry['peak_goodput']:.0f} | {sweep} |")
    one = replicas.get("1") or replicas.get(1)
    if one and "c1_direct" in one:
        lines += ["", "| concurrency 1, one replica | p50 ms | p99 ms |", "|---|---|---|",
                  f"| direct | {_ms(one['c1_direct'], 'p50')} | {_ms(one['c1_direct'], 'p99')} |",
                  f"| through Envoy | {_ms(one['c1_envoy'], 'p50')} | {_ms(one['c1_envoy'], 'p99')} |"]
    three = replicas.get("3") or replicas.get(3)
    if three and "overload_2x" in three:
        over = three["overload_2x"]
        lines += ["", f"2x overload, 3 replicas: {over['offered']}/s offered, goodput "
                  f"{over['goodput']:.0f}/s = {over['goodput_vs_peak']}x of peak; errors "
                  f"{json.dumps(over.get('errors'))}."]
    return "\n".join([*lines, END])


def write_section(section: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n## Beyond one machine: Kairos replicas behind Envoy\n\n" + section + "\n"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
