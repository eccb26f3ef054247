"""Figures and the generated BENCHMARKS.md block of the scheduling benchmarks, from
bench/results/scheduling_*.json.

    .venv/bin/python bench/scheduling_report.py            # plots into docs/, block into BENCHMARKS.md

Only the text between this script's markers in BENCHMARKS.md is replaced (the
file is re-read just before writing), so other sections stay as they are. The block
holds only what this script writes from the results; hand-written analysis belongs
outside it and cites the command and table of every figure it quotes. Results that
are missing are reported as not measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kairos.client.bench.plot import require_matplotlib
from scheduling_common import PEAK_DEFINITION, RESULTS, ROOT

DOCS = ROOT / "docs"
BENCHMARKS = ROOT / "BENCHMARKS.md"
START = "<!-- scheduling-bench:start (written by bench/scheduling_report.py) -->"
END = "<!-- scheduling-bench:end -->"
# Every command ran with KAIROS_BENCH_REPEATS=1 (the default) unless it says otherwise.
LOCK = "flock /tmp/kairos-bench.lock taskset -c 1 .venv/bin/python"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


# ---------------------------------------------------------------- figures


def _cdf(ax, points: list[dict], label: str) -> None:
    best = min(points, key=lambda p: p["latency_ms"]["p50"])  # a representative repeat
    cdf = best["latency_cdf_ms"]
    ax.plot(cdf, [i / (len(cdf) - 1) for i in range(len(cdf))], label=f"{label} (p50 {best['latency_ms']['p50']:.3f} ms)")


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_floor(data: dict[str, Any], path: Path) -> None:
    plt = require_matplotlib()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    _cdf(left, data["c1"]["points"]["floor"], "floor")
    _cdf(left, data["c1"]["points"]["kairos"], "Kairos")
    left.set_xscale("log")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    left.xaxis.set_major_formatter(ScalarFormatter())
    left.xaxis.set_minor_formatter(NullFormatter())
    left.set(xlabel="latency (ms, log)", ylabel="fraction", title="c=1 latency CDF, mlp256, 1 row")
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    for key, label in (("floor_sweep", "floor"), ("kairos_sweep", "Kairos")):
        pts = data[key]
        right.plot([p["offered_rate"] for p in pts], [p["goodput"] for p in pts], marker="o", label=f"{label} goodput@10ms")
    rates = data["rates"]
    right.plot(rates, rates, ":", color="grey", label="offered")
    right.axhline(data["floor_peak"]["peak_rps"], color="grey", linestyle="--", linewidth=1, label="floor peak (closed loop)")
    right.axhline(0.85 * data["floor_peak"]["peak_rps"], color="red", linestyle="--", linewidth=1, label="target 0.85x floor peak")
    right.set(xlabel="offered load (req/s, Poisson)", ylabel="req/s", title="goodput@10ms vs offered load")
    right.grid(True, alpha=0.3)
    right.legend(fontsize="small")
    _save(plt, fig, path)


def plot_overload(data: dict[str, Any], path: Path) -> None:
    plt = require_matplotlib()
    parts = [(k, t) for k, t in (("model_bound", "mlp-heavy, SLO 250 ms"), ("front_end_bound", "mlp256, SLO 10 ms")) if k in data]
    fig, axes = plt.subplots(1, len(parts), figsize=(6.5 * len(parts), 4.5), squeeze=False)
    for ax, (key, title) in zip(axes[0], parts, strict=False):
        part = data[key]
        pts = sorted(part["sweep"] + [part["overload"]], key=lambda p: p["offered_rate"])
        rates = [p["offered_rate"] for p in pts]
        ax.plot(rates, [p["goodput"] for p in pts], marker="o", label="goodput")
        refused = [sum(e["count"] for e in p["errors"].values()) / p["duration_s"] for p in pts]
        ax.plot(rates, refused, marker="x", label="refused/failed per s")
        ax.plot(rates, rates, ":", color="grey", label="offered")
        ax.axvline(part["overload"]["offered_rate"], color="grey", linestyle="--", linewidth=1, label="2x peak rate")
        ax.axhline(0.9 * part["peak_goodput"] if key == "model_bound" else 0.5 * part["peak_goodput"],
                   color="red", linestyle="--", linewidth=1, label="target")
        ax.set(xlabel="offered load (req/s)", ylabel="req/s", title=f"overload: {title}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    _save(plt, fig, path)


def plot_policies(data: dict[str, Any], path: Path) -> None:
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, pts in data["policies"].items():
        ax.plot([p["offered_rate"] for p in pts], [p["goodput"] for p in pts], marker="o", label=name.split("-", 1)[1])
    rates = data["policy_rates"]
    ax.plot(rates, rates, ":", color="grey", label="offered")
    ax.set(xlabel="offered load (req/s)", ylabel="goodput@10ms (req/s)", title="policies on one server, mlp256, 1 row")
    ax.grid(True, alpha=0.3)
    ax.legend()
    _save(plt, fig, path)


def split_points(data: dict[str, Any]) -> list[dict[str, Any]]:
    pts = data["slo_low_load"] + data["policies"]["mlp256-slo"]
    return sorted([p for p in pts if (p.get("server_batches") or {}).get("executions")], key=lambda p: p["offered_rate"])


def plot_split(data: dict[str, Any], path: Path) -> None:
    plt = require_matplotlib()
    pts = split_points(data)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rates = [p["offered_rate"] for p in pts]
    ax.plot(rates, [100 * p["server_batches"]["gemv_share_executions"] for p in pts], marker="o", label="batch-1 (GEMV) % of executions")
    ax.plot(rates, [100 * p["server_batches"]["gemv_share_rows"] for p in pts], marker="s", label="% of rows served by batch 1")
    ax.set(xlabel="offered load (req/s)", ylabel="%", ylim=(0, 105), title="GEMV/GEMM split, slo policy, mlp256")
    twin = ax.twinx()
    twin.plot(rates, [p["server_batches"]["mean_batch_rows"] for p in pts], color="green", marker="^", label="mean batch (rows)")
    twin.set_ylabel("mean batch size (rows)")
    ax.grid(True, alpha=0.3)
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize="small", loc="center left")
    _save(plt, fig, path)


# ---------------------------------------------------------------- text


def verdict(ok: bool) -> str:
    return "**reached**" if ok else "**not reached**"


def floor_section(d: dict[str, Any]) -> list[str]:
    c1, fp = d["c1"], d["floor_peak"]["peak_rps"]
    peak, ratio = d["kairos_peak_goodput"], d["ratio_peak_goodput_to_floor_peak"]
    gen = d["generator_capacity"]
    floor_good = max(p["goodput"] for p in d["floor_sweep"])
    lines = [
        "### Floor vs Kairos (mlp256, 1 row, SLO 10 ms)",
        "",
        *[f"    {LOCK} {cmd}" for key, cmd in sorted(d.items()) if key.startswith("command_")],
        "",
        "(where there are several commands, a later one re-measured the parts it names; the table "
        f"quotes the latest. Kairos flags: `{' '.join(d.get('kairos_args') or []) or 'none'}`)",
        "",
        "| figure | floor | Kairos | target | |",
        "|---|---|---|---|---|",
        f"| c=1 p50 (median of {len(c1['points']['floor'])} alternated runs) | {c1['p50_ms']['floor']:.3f} ms | "
        f"{c1['p50_ms']['kairos']:.3f} ms (+{c1['delta_ms']:.3f}) | <= floor + 0.300 ms | {verdict(c1['delta_ms'] <= 0.3)} |",
        f"| peak req/s (closed loop, no deadline) | {fp:.0f} | {d['kairos_closed_peak']['peak_rps']:.0f} | | |",
        f"| peak goodput@10ms (open-loop sweep) | {floor_good:.0f} | {peak:.0f} "
        f"(at {d['kairos_peak_goodput_rate']:.0f}/s offered) = {ratio:.2f}x the floor's closed-loop peak, "
        f"{peak / floor_good:.2f}x its open-loop peak goodput | >= 0.85x | {verdict(ratio >= 0.85)} |",
        "",
        "Sweep (offered req/s: goodput floor / Kairos, Kairos server CPU us/request):",
        "",
        "| offered | floor goodput | Kairos goodput | Kairos p99 ms | Kairos refused/expired | Kairos server CPU us per offered request | batch-1 share |",
        "|---|---|---|---|---|---|---|",
    ]
    for f, k in zip(d["floor_sweep"], d["kairos_sweep"], strict=False):
        refused = sum(e["count"] for e in k["errors"].values())
        share = (k.get("server_batches") or {}).get("gemv_share_executions")
        lines.append(
            f"| {k['offered_rate']:.0f} | {f['goodput']:.0f} | {k['goodput']:.0f} | {k['latency_ms']['p99']} | {refused} | "
            f"{k.get('server_cpu', {}).get('cpu_us_per_request')} | {'-' if share is None else f'{share * 100:.1f}%'} |")
    g = gen["generator"]
    lines += [
        "",
        f"Generator capacity: open loop at {gen['offered_rate']:.0f} req/s against the raw floor "
        f"(`bench/floor_server.py --raw`): sent {gen['send_rate']:.0f} req/s "
        f"({gen['send_rate'] / gen['offered_rate'] * 100:.1f}% of schedule), lateness p50 {gen['lateness_ms']['p50']} ms / "
        f"p99 {gen['lateness_ms']['p99']} ms, generator CPU {g.get('cpu_util', 0) * 100:.0f}% of its core "
        f"({g.get('cpu_us_per_request')} us/request); kept up by the generator's own test "
        f"(>= 97% sent, p99 lateness <= 2 ms): {gen['kept_up']}.",
        "",
        "![floor vs Kairos](docs/bench_floor_vs_kairos.png)",
        "",
    ]
    return lines


def overload_section(d: dict[str, Any]) -> list[str]:
    commands = sorted({d[k]["command"] for k in ("model_bound", "front_end_bound") if k in d and "command" in d[k]})
    commands = commands or [d.get("command", "bench/scheduling_overload.py")]
    lines = ["### Overload at 2x peak", "", *[f"    {LOCK} {c}" for c in commands], ""]
    for key, title, target in (("model_bound", "model-bound: mlp-heavy, SLO 250 ms", 0.9),
                               ("front_end_bound", "front-end-bound: mlp256, SLO 10 ms", 0.5)):
        if key not in d:
            lines += [f"- {title}: not measured", ""]
            continue
        part = d[key]
        over = part["overload"]
        errs = ", ".join(f"{n} {e['count']} (p50 {e['p50_ms']} ms, p99 {e['p99_ms']} ms)" for n, e in over["errors"].items())
        late = over["ok"] - round(over["goodput"] * over["duration_s"])
        lines += [
            f"- **{title}**: peak goodput {part['peak_goodput']:.1f}/s (at {part['peak_rate']:.0f}/s offered); at "
            f"2x = {over['offered_rate']:.0f}/s offered: goodput {over['goodput']:.1f}/s = **{part['ratio']:.2f}x** peak "
            f"(target >= {target}x: {verdict((part['ratio'] or 0) >= target)}); answered late: {late}; "
            f"refusals: {errs or 'none'}; generator lateness p99 {over['lateness_ms']['p99']} ms.",
        ]
        if part.get("kairos_args"):
            lines.append(f"  Kairos flags: `{part['kairos_args']}`.")
        if "without_kairos_args" in part:
            plain = part["without_kairos_args"]
            po = plain["overload"]
            lines.append(f"  The same 2x rate on Kairos without those flags: goodput {po['goodput']:.1f}/s = "
                         f"**{plain['ratio']:.2f}x** peak; errors "
                         + ", ".join(f"{n} {e['count']}" for n, e in po["errors"].items()) + ".")
        if key == "model_bound" and part["sweep"][0].get("server_batches"):
            lines += ["", "  GEMV/GEMM split along this sweep (where the model, not the front end, is the "
                      "bottleneck):", "",
                      "  | offered | goodput | executions | batch-1 share | mean batch |", "  |---|---|---|---|---|"]
            for p in sorted(part["sweep"] + [part["overload"]], key=lambda p: p["offered_rate"]):
                b = p["server_batches"]
                lines.append(f"  | {p['offered_rate']:.0f} | {p['goodput']:.1f} | {b['executions']} | "
                             f"{b['gemv_share_executions'] * 100:.1f}% | {b['mean_batch_rows']} |")
            lines.append("")
        if key == "front_end_bound" and "floor_overload" in part:
            fo = part["floor_overload"]
            lines.append(f"  The floor at the same {fo['offered_rate']:.0f}/s: goodput {fo['goodput']:.1f}/s.")
        if "refusal_cost" in part:
            rc = part["refusal_cost"]
            lines.append(
                f"  CPU per request at {rc['rate']:.0f}/s: floor answer {rc['floor_ok_us']} us, Kairos answer "
                f"{rc['kairos_ok_us']} us, Kairos refusal {rc['kairos_refused_us']} us ({', '.join(rc['refused_errors'])}).")
        lines.append("")
    lines += ["![overload](docs/bench_overload.png)", ""]
    return lines


def _policy_rates_basis(d: dict[str, Any]) -> str:
    if "peak_rate_used" in d:
        return f"rates are fractions of the peak rate, {d['peak_rate_used']:.0f} req/s offered"
    # Results written before "peak" had one definition: fractions of the peak goodput.
    return (f"rates are fractions of {d['peak_used']:.0f} req/s, the peak goodput then "
            "(these results predate the peak-rate basis)")


def policies_section(d: dict[str, Any]) -> list[str]:
    names = list(d["policies"])
    lines = [
        "### Policies on one server (goodput@10ms, mlp256, 1 row)",
        "",
        f"    {LOCK} {d.get('command', 'bench/scheduling_policies.py')}",
        "",
        f"({_policy_rates_basis(d)}; "
        f"Kairos flags: `{' '.join(d.get('kairos_args') or []) or 'none'}`"
        + (f"; median of {d['rounds']} alternated rounds, every round in brackets)" if d.get("rounds", 1) > 1
           else ")"),
        "",
        "| offered | " + " | ".join(n.split("-", 1)[1] for n in names) + " | slo best? |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for i, rate in enumerate(d["policy_rates"]):
        goods = [d["policies"][n][i]["goodput"] if i < len(d["policies"][n]) else None for n in names]
        if None in goods:
            continue
        best = goods[0] >= max(goods)
        rounds = d.get("policies_rounds")
        cells = [f"{g:.0f}" if not rounds else f"{g:.0f} ({'/'.join(f'{r:.0f}' for r in rounds[n][i])})"
                 for g, n in zip(goods, names, strict=True)]
        lines.append(f"| {rate:.0f} | " + " | ".join(cells) + f" | {'yes' if best else '**no**'} |")
    lines += ["", "![policies](docs/bench_policies.png)", "", "GEMV/GEMM split (slo policy):", "",
              "| offered | executions | batch-1 share | rows in batch 1 | mean batch |", "|---|---|---|---|---|"]
    for p in split_points(d):
        b = p["server_batches"]
        lines.append(f"| {p['offered_rate']:.0f} | {b['executions']} | {b['gemv_share_executions'] * 100:.1f}% | "
                     f"{b['gemv_share_rows'] * 100:.1f}% | {b['mean_batch_rows']} |")
    lines += ["", "![GEMV/GEMM split](docs/bench_gemv_split.png)", ""]
    return lines


def profile_section(d: dict[str, Any]) -> list[str]:
    what = "refusing every request (timeout 1 us)" if d.get("refused") else "answering"
    lines = [
        f"### Where the server's CPU goes (py-spy, {d['rate']:.0f} req/s offered, {what})",
        "",
        f"    {LOCK} {d.get('command', 'bench/scheduling_profile.py')}",
        "",
        "" if d.get("refused") else
        f"(offered rate {d['rate']:.0f} req/s: the peak rate in scheduling_floor.json when this ran, "
        "unless the command gives --rate)",
        "",
        f"Server CPU {d['server_cpu_us_per_request']} us per request ({d['throughput']:.0f}/s answered, "
        f"{(d.get('server_cpu_util') or 0) * 100:.0f}% of core 0). py-spy sees Python frames only: time in gRPC's "
        "Cython/C core shows as the event loop frame that ran it, onnxruntime as Session.run.",
        "",
        "| part | us/request | share |", "|---|---|---|",
    ]
    for part, us in d["us_per_request"].items():
        lines.append(f"| {part} | {us} | {d['share'][part] * 100:.1f}% |")
    return lines + [""]


def section() -> str:
    lines = [
        START,
        "## Scheduling: Kairos (grpc.aio) vs floor (`kairos bench`)",
        "",
        "Setting: 2 vCPU VM; server pinned to core 0 (`taskset -c 0`), the load generator (one asyncio "
        "process, `kairos.client.bench`) to core 1; 1-row requests; every request carries the SLO as its "
        "gRPC deadline; Poisson arrivals for open loop; each point 2 s warm-up + the measured window; the "
        "floor is `bench/floor_server.py` (grpc.aio, constant mlp256-shaped reply). The machine is shared: "
        "each point waits for idle cores, records CPU used by other processes, and is repeated when that "
        "exceeds 0.15 core. Raw results: `bench/results/scheduling_*.json` (git-ignored).",
        "",
        f"Definition used by every script and table here: {PEAK_DEFINITION}.",
        "",
    ]
    for name, render in (("scheduling_floor", floor_section), ("scheduling_overload", overload_section),
                         ("scheduling_policies", policies_section), ("scheduling_profile", profile_section),
                         ("scheduling_profile_refusal", profile_section)):
        data = load(name)
        if data is None:
            lines += [f"### {name}: not measured yet", ""]
            continue
        lines += render(data)
        lines.append(f"_({name} finished {data.get('finished_at')})_")
        lines.append("")
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    current = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n\n"
    if START in current and END in current:
        head, rest = current.split(START, 1)
        _, tail = rest.split(END, 1)
        current = head + text.rstrip("\n") + tail
    else:
        current = current.rstrip("\n") + "\n\n" + text
    BENCHMARKS.write_text(current)


def main() -> None:
    DOCS.mkdir(exist_ok=True)
    for name, plot, out in (("scheduling_floor", plot_floor, "bench_floor_vs_kairos.png"),
                            ("scheduling_overload", plot_overload, "bench_overload.png"),
                            ("scheduling_policies", plot_policies, "bench_policies.png"),
                            ("scheduling_policies", plot_split, "bench_gemv_split.png")):
        data = load(name)
        if data is not None:
            plot(data, DOCS / out)
            print(f"wrote docs/{out}")
    write_section(section())
    print(f"updated {BENCHMARKS}")


if __name__ == "__main__":
    main()
