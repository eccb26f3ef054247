"""Start a real Kairos server process on free loopback ports, and always stop it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclass
class ServerProcess:
    process: subprocess.Popen
    grpc_port: int
    metrics_port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None


def wait_for_ports(port_file: Path, process: subprocess.Popen, log: Path, timeout: float) -> dict:
    """The ports a starting server writes to `--port-file`; raises if it dies or times out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
        if port_file.exists() and port_file.stat().st_size:
            with contextlib.suppress(json.JSONDecodeError):
                return json.loads(port_file.read_text())
        time.sleep(0.05)
    raise TimeoutError(f"server did not start within {timeout}s:\n{log.read_text()}")


def wait_serving(address: str, timeout: float = 60.0, credentials=None) -> None:
    """Block until the gRPC health service answers SERVING."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        channel = (
            grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
        )
        with channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=2
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
        time.sleep(0.1)
    raise TimeoutError(f"{address} not SERVING after {timeout}s")


@contextlib.contextmanager
def running_server(
    model_repository: Path | str | None = None,
    *extra_args: str,
    timeout: float = 120.0,
    env: dict | None = None,
    cpu: int | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> Iterator[ServerProcess]:
    """`kairos serve` in a child process on free ports; stopped (SIGTERM, then SIGKILL) on exit.

    With no repository the server serves its built-in demo models. A TLS server
    (`--tls-cert` among the args) is waited for over `credentials` when given.
    """
    workdir = Path(tempfile.mkdtemp(prefix="kairos-server-"))
    port_file = workdir / "ports.json"
    log_path = workdir / "server.log"
    command = [sys.executable, "-m", "kairos.server", "--grpc-port", "0", "--metrics-port", "0",
               "--host", "127.0.0.1", "--port-file", str(port_file)]
    if model_repository is not None:
        command += ["--model-repository", str(model_repository)]
    command += list(extra_args)
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env)
    try:
        ports = wait_for_ports(port_file, process, log_path, timeout)
        server = ServerProcess(process, ports["grpc_port"], ports["metrics_port"], log_path)
        if credentials is not None:
            wait_serving(server.address, timeout, credentials)
        elif "--tls-cert" not in extra_args:
            wait_serving(server.address, timeout)
        yield server
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen, grace: float = 15.0) -> int | None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode
