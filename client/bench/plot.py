"""Plots for `kairos bench --plot`: matplotlib is an optional extra (`pip install kairos-serve[plot]`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def require_matplotlib() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend, or a clear error."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(
            "kairos bench --plot needs matplotlib: pip install 'kairos-serve[plot]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(point: dict[str, Any]) -> str:
    if point["mode"] == "open":
        return f"{point['offered_rate']:g} req/s"
    return f"c={point['concurrency']}"


def plot_cdf(ax: Any, points: list[dict[str, Any]], slo_ms: float) -> None:
    for point in points:
        cdf = point.get("latency_cdf_ms") or []
        if cdf:
            fractions = [i / (len(cdf) - 1) for i in range(len(cdf))]
            ax.plot(cdf, fractions, label=_label(point))
    ax.axvline(slo_ms, color="grey", linestyle="--", linewidth=1, label=f"SLO {slo_ms:g} ms")
    ax.set_xscale("log")
    ax.set_xlabel("latency of OK answers (ms, log)")
    ax.set_ylabel("fraction of answers")
    ax.set_title("latency CDF")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")


def plot_goodput(ax: Any, points: list[dict[str, Any]], slo_ms: float) -> None:
    offered = [p["offered_rate"] for p in points]
    ax.plot(offered, offered, color="grey", linestyle=":", linewidth=1, label="offered")
    ax.plot(offered, [p["throughput"] for p in points], marker="o", label="throughput (OK)")
    ax.plot(offered, [p["goodput"] for p in points], marker="s", label=f"goodput@{slo_ms:g}ms")
    ax.set_xlabel("offered load (req/s)")
    ax.set_ylabel("req/s")
    ax.set_title("goodput vs offered load")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def plot_result(result: dict[str, Any], path: Path) -> Path:
    """Latency CDF per point, and goodput vs offered load when the run swept rates."""
    plt = require_matplotlib()
    points = result["points"]
    slo_ms = result["config"]["slo_ms"]
    sweep = len(points) > 1 and all(p["mode"] == "open" for p in points)
    fig, axes = plt.subplots(1, 2 if sweep else 1, figsize=(12 if sweep else 6.5, 4.5))
    axes = list(axes) if sweep else [axes]
    plot_cdf(axes[0], points, slo_ms)
    if sweep:
        plot_goodput(axes[1], points, slo_ms)
    fig.suptitle(f"kairos bench: {result['config']['model']} at {result['config']['url']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
