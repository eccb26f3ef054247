"""Start a real Prometheus on a free loopback port, query its HTTP API, always stop it.

Uses the `prometheus` binary of Debian's `prometheus` package (promtool comes with it).
Queries go through urllib, so nothing beyond the standard library is needed.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .dependencies import missing
from .server import stop_process


def binary(name: str) -> str:
    """Path of `prometheus`/`promtool`; the test fails without it."""
    path = shutil.which(name)
    if path is None:
        missing(name, "apt-get install prometheus")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Loopback only: never through an HTTP proxy the environment may name.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class QueryError(RuntimeError):
    """Prometheus answered a query with an error (e.g. the expression does not parse)."""


@dataclass
class PrometheusProcess:
    process: subprocess.Popen
    port: int
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>; the `data` of a success, QueryError otherwise."""
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        try:
            with _OPENER.open(f"{self.url}/api/v1/{path}?{query}", timeout=10) as reply:
                body = json.load(reply)
        except urllib.error.HTTPError as error:
            body = json.load(error)
        if body.get("status") != "success":
            raise QueryError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """Instant vector (or scalar as a one-element list) at `at` (unix time; None = now)."""
        data = self.api("query", query=expr, time=at)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def value(self, expr: str, at: float | None = None) -> float:
        """The single value of a query that must return one series."""
        result = self.query(expr, at)
        if len(result) != 1:
            raise QueryError(f"{expr!r} returned {len(result)} series: {result}")
        return float(result[0]["value"][1])

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def wait_for(self, expr: str, predicate, timeout: float = 20.0) -> list[dict]:
        """Poll `expr` until predicate(result) holds (e.g. a scrape has happened)."""
        end = time.monotonic() + timeout
        result: list[dict] = []
        while time.monotonic() < end:
            result = self.query(expr)
            if predicate(result):
                return result
            time.sleep(0.2)
        raise TimeoutError(f"{expr!r} never satisfied the condition; last {result}\n{self.log()}")


def write_config(path: Path, targets: Sequence[str], interval: str, rule_files: Sequence[Path]) -> None:
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {"job_name": "kairos", "scrape_interval": interval, "scrape_timeout": interval,
             "static_configs": [{"targets": list(targets)}]},
        ],
    }
    # JSON is YAML, so no YAML writer is needed.
    path.write_text(json.dumps(config, indent=2))


@contextlib.contextmanager
def running_prometheus(
    targets: Sequence[str] = (),
    *,
    interval: str = "1s",
    rule_files: Sequence[Path] = (),
    timeout: float = 30.0,
) -> Iterator[PrometheusProcess]:
    """Prometheus scraping `targets` (host:port) every `interval`, stopped on exit."""
    executable = binary("prometheus")
    workdir = Path(tempfile.mkdtemp(prefix="kairos-prometheus-"))
    config = workdir / "prometheus.yml"
    write_config(config, targets, interval, rule_files)
    port = free_port()
    command = [
        executable, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h",
        "--log.level=warn",
    ]
    with open(workdir / "prometheus.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    prom = PrometheusProcess(process, port, workdir)
    try:
        _wait_ready(prom, timeout)
        yield prom
    finally:
        stop_process(process, grace=10.0)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_ready(prom: PrometheusProcess, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if prom.process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {prom.process.returncode}:\n{prom.log()}")
        with contextlib.suppress(OSError), _OPENER.open(f"{prom.url}/-/ready", timeout=2) as reply:
            if reply.status == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"prometheus not ready after {timeout}s:\n{prom.log()}")


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
             "and", "or", "unless", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Series names a PromQL expression selects (a small lexer, enough for our dashboards
    and rules: no `__name__` matchers)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # string literals
    text = re.sub(r"\{[^}]*\}", "", text)                     # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)                    # range / subquery
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+\w+", " ", text)
    text = re.sub(r"(?<![\w:])\d+(\.\d+)?([eE][+-]?\d+)?", " ", text)  # numbers
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end():].lstrip().startswith("(") or match.group().lower() in _KEYWORDS:
            continue  # a function or aggregation, or an operator word
        names.add(match.group())
    return names
