"""Turning per-request records into the numbers a benchmark reports.

A record is (scheduled send time, actual send time, end time, status code, and
with a deadline mix its class), all seconds on one perf_counter clock. Only requests *scheduled* inside the
measurement window count, and every count is divided by the window length, so
throughput and goodput are per second of offered load, not of drain time.

*Admitted* requests are those the server did not refuse at admission
(RESOURCE_EXHAUSTED: it predicted it could not meet the deadline, or its queue
was full); `admitted_attainment` is the share of them answered within the
deadline (a request the server expired, DEADLINE_EXCEEDED, counts as admitted
and missed). With a deadline mix, each request's goodput is judged against its
own class's deadline, and every class gets the same figures of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
CDF_POINTS = 101  # quantiles kept in JSON so plots can be redrawn without raw data
UNFINISHED = -1  # status code of a request still outstanding when the run gave up on it

_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
REFUSED_AT_ADMISSION = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


def status_name(code: int) -> str:
    if code == UNFINISHED:
        return "UNFINISHED"
    return _CODE_NAMES.get(code, f"CODE_{code}")


@dataclass
class Records:
    """Column-wise request records (plain lists: appending is the hot path)."""

    scheduled: list[float] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)
    ended: list[float] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)  # deadline class per request (a mix)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.asarray(self.scheduled, dtype=float),
            np.asarray(self.sent, dtype=float),
            np.asarray(self.ended, dtype=float),
            np.asarray(self.codes, dtype=np.int64),
        )


def percentiles_ms(values_s: np.ndarray) -> dict[str, float | None]:
    """p50/p90/p99/p99.9, mean and max, in milliseconds (None when empty)."""
    keys = [f"p{p:g}" for p in PERCENTILES] + ["mean", "max"]
    if values_s.size == 0:
        return dict.fromkeys(keys)
    qs = np.percentile(values_s, PERCENTILES) * 1e3
    out: dict[str, float | None] = {k: round(float(v), 4) for k, v in zip(keys, qs, strict=False)}
    out["mean"] = round(float(values_s.mean() * 1e3), 4)
    out["max"] = round(float(values_s.max() * 1e3), 4)
    return out


def cdf_ms(values_s: np.ndarray) -> list[float]:
    """Latency at CDF_POINTS evenly spaced quantiles (0..1), in ms."""
    if values_s.size == 0:
        return []
    qs = np.quantile(values_s, np.linspace(0.0, 1.0, CDF_POINTS)) * 1e3
    return [round(float(v), 4) for v in qs]


def summarize(
    records: Records,
    window: tuple[float, float],
    slo_s: float,
    rows: int,
    open_loop: bool,
    mix: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Throughput, latency percentiles, goodput, errors by status and lateness; with
    `mix` (DeadlineClass-like: .deadline_ms, .share) per-class figures under "classes"."""
    scheduled, sent, ended, codes = records.arrays()
    start, end = window
    duration = end - start
    # Achieved send rate: requests actually sent inside the window, whenever scheduled.
    sent_in_window = int(((sent >= start) & (sent < end)).sum())
    measured = (scheduled >= start) & (scheduled < end)
    scheduled, sent, ended, codes = scheduled[measured], sent[measured], ended[measured], codes[measured]
    latency = ended - sent
    if mix:
        classes = np.asarray(records.classes, dtype=np.int64)[measured]
        slo = np.asarray([c.deadline_ms / 1e3 for c in mix])[classes]
    else:
        classes, slo = None, slo_s
    summary = _figures(codes, latency, slo, duration, rows)
    summary["send_rate"] = round(sent_in_window / duration, 2)
    summary = {"duration_s": round(duration, 4), **summary}
    if open_loop:
        summary["lateness_ms"] = _lateness(sent - scheduled)
    if mix and classes is not None:
        summary["classes"] = []
        for index, klass in enumerate(mix):
            mine = classes == index
            figures = _figures(codes[mine], latency[mine], klass.deadline_ms / 1e3, duration, rows)
            figures.pop("latency_cdf_ms")
            summary["classes"].append({"deadline_ms": klass.deadline_ms, "share": klass.share, **figures})
    return summary


def _figures(codes: np.ndarray, latency: np.ndarray, slo: Any, duration: float, rows: int) -> dict[str, Any]:
    ok = codes == grpc.StatusCode.OK.value[0]
    good = ok & (latency <= slo)
    requests = int(codes.size)
    admitted = requests - int((codes == REFUSED_AT_ADMISSION).sum())
    return {
        "requests": requests,
        "ok": int(ok.sum()),
        "throughput": round(ok.sum() / duration, 2),
        "goodput": round(good.sum() / duration, 2),
        "rows_per_s": round(ok.sum() * rows / duration, 2),
        "slo_attainment": round(float(good.sum() / max(1, requests)), 5),
        "admitted": admitted,
        "admitted_attainment": round(float(good.sum() / admitted), 5) if admitted else None,
        "latency_ms": percentiles_ms(latency[ok]),
        "latency_cdf_ms": cdf_ms(latency[ok]),
        "errors": _errors(codes, latency),
    }


def _errors(codes: np.ndarray, latency: np.ndarray) -> dict[str, dict[str, Any]]:
    """Count and answer-time percentiles per non-OK status: is a refusal fast?"""
    out: dict[str, dict[str, Any]] = {}
    for code in np.unique(codes):
        if code == grpc.StatusCode.OK.value[0]:
            continue
        mask = codes == code
        times = latency[mask] if code != UNFINISHED else np.empty(0)
        stats = percentiles_ms(times)
        out[status_name(int(code))] = {"count": int(mask.sum()), "p50_ms": stats["p50"], "p99_ms": stats["p99"]}
    return out


def _lateness(late_s: np.ndarray) -> dict[str, float | None]:
    if late_s.size == 0:
        return {"p50": None, "p99": None, "max": None}
    p50, p99 = np.percentile(late_s, [50, 99]) * 1e3
    return {"p50": round(float(p50), 4), "p99": round(float(p99), 4), "max": round(float(late_s.max() * 1e3), 4)}


def kept_up(summary: dict[str, Any], offered_rate: float, slo_s: float) -> bool:
    """Whether an open-loop generator sent on schedule.

    It fell behind when it sent noticeably fewer requests than scheduled or
    its p99 lateness is a sizeable part of the SLO (then measured latency
    understates what a real client would see).
    """
    lateness = summary.get("lateness_ms") or {}
    p99 = lateness.get("p99")
    if p99 is None:
        return True
    rate_ok = summary["send_rate"] >= 0.97 * offered_rate
    return rate_ok and p99 <= max(2.0, 0.2 * slo_s * 1e3)
