"""The servers bench/frontend_compare.py puts side by side, each started pinned to core 0.

- `kairos`: `kairos serve` with its defaults (native Rust front end), the demo models.
- `kairos-aio`: the same with `--transport aio` (the grpc.aio front end, kept for comparison).
- `floor`: bench/floor_server.py, a bare grpc.aio V2 server answering a constant reply.
- `mlserver`: MLServer 1.7.1, adaptive batching, `mlp256` through onnxruntime
  (bench/peer_runtimes/mlserver_onnx.py), from .bench-venvs/mlserver.
- `triton`: Triton 2.51's `tritonserver` from the nvidia-pytriton 0.7.0 wheel, dynamic
  batching, a python-backend model running onnxruntime (bench/peer_runtimes/triton_model.py),
  from .bench-venvs/triton.
- `heavy`: `kairos serve` (native) with the compute-bound `mlp-heavy` only.

MLServer and Triton serve the very ONNX file Kairos's demo repository holds for `mlp256`.
`bash bench/setup_peers.sh` creates the two peer environments. Every server runs in its own
session (process group), so stopping it stops its worker / stub processes too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / ".bench-venvs"
RUNTIMES = Path(__file__).resolve().parent / "peer_runtimes"
SERVER_CORE = 0
MODEL = "mlp256"
HEAVY = "mlp-heavy"
INPUT_WIDTH = {MODEL: 256, HEAVY: 1024}
SERVERS = ("kairos", "kairos-aio", "floor", "mlserver", "triton", "heavy")
PEERS = {"mlserver": VENVS / "mlserver", "triton": VENVS / "triton"}


class PeerMissing(RuntimeError):
    """A peer's environment is not installed (bench/setup_peers.sh makes it)."""


@dataclass
class Running:
    """A started server: its process (group leader), ports and log."""

    name: str
    process: subprocess.Popen
    grpc_port: int
    model: str
    log: Path
    metrics_port: int | None = None
    settings: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def metrics_url(self) -> str | None:
        return f"http://127.0.0.1:{self.metrics_port}/metrics" if self.metrics_port else None

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


# ---------------------------------------------------------------- models


def mlp256_file() -> Path:
    """The ONNX file Kairos's demo repository serves as `mlp256` (generated on first use)."""
    from kairos.server.demo_models import demo_repository

    return demo_repository() / MODEL / "1" / "model.onnx"


def cache_dir() -> Path:
    """Where the benchmark keeps what it builds (the mlp-heavy model, peer repositories)."""
    from kairos.server.demo_models import _cache_root

    folder = _cache_root() / "frontend-bench"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def mlp_heavy_file(seed: int = 1024) -> Path:
    """mlp-heavy (FP32 [batch,1024] -> 3x8192 ReLU -> 10, ~570 MB), built once with onnx.helper."""
    import onnx
    from kairos.server.demo_models import MLP_HEAVY_SIZES, build_mlp

    path = cache_dir() / f"mlp-heavy-seed{seed}.onnx"
    if not path.exists():
        print(f"building {path.name} (~570 MB of seeded random weights)", flush=True)
        partial = path.with_suffix(".partial")
        onnx.save(build_mlp(MLP_HEAVY_SIZES, seed=seed, name=HEAVY), partial)
        partial.replace(path)
    return path


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def heavy_repository(workdir: Path, slo_ms: float) -> Path:
    repo = workdir / "repo"
    _link(mlp_heavy_file(), repo / HEAVY / "1" / "model.onnx")
    (repo / HEAVY / "config.yaml").write_text(f"max_batch_size: 64\nslo_ms: {slo_ms:g}\n")
    return repo


def mlserver_repository(workdir: Path, max_batch_size: int, max_batch_time_s: float) -> Path:
    repo = workdir / "repo"
    folder = repo / MODEL
    _link(mlp256_file(), folder / "model.onnx")
    shutil.copyfile(RUNTIMES / "mlserver_onnx.py", folder / "mlserver_onnx.py")
    settings = {
        "name": MODEL,
        "implementation": "mlserver_onnx.OnnxModel",
        "max_batch_size": max_batch_size,
        "max_batch_time": max_batch_time_s,
        "parameters": {"uri": "./model.onnx", "version": "1"},
        # MLServer's ModelMetadata lists only what the settings declare (clients build requests from it).
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, INPUT_WIDTH[MODEL]]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}],
    }
    (folder / "model-settings.json").write_text(json.dumps(settings, indent=2))
    return repo


TRITON_CONFIG = """name: "{model}"
backend: "python"
max_batch_size: {max_batch_size}
input [ {{ name: "input" data_type: TYPE_FP32 dims: [ {width} ] }} ]
output [ {{ name: "output" data_type: TYPE_FP32 dims: [ 10 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""


def triton_repository(workdir: Path, max_batch_size: int, delay_us: int) -> Path:
    repo = workdir / "repo"
    folder = repo / MODEL
    _link(mlp256_file(), folder / "1" / "model.onnx")
    shutil.copyfile(RUNTIMES / "triton_model.py", folder / "1" / "model.py")
    (folder / "config.pbtxt").write_text(TRITON_CONFIG.format(
        model=MODEL, max_batch_size=max_batch_size, width=INPUT_WIDTH[MODEL], delay_us=delay_us))
    return repo


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(command: list[str], log: Path, env: dict | None = None,
           cwd: Path | None = None) -> subprocess.Popen:
    """`taskset -c 0 command` in its own session (so its children can be stopped with it)."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            ["taskset", "-c", str(SERVER_CORE), *command], stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, cwd=cwd,
            start_new_session=True,
        )


def stop(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM to the server's process group, SIGKILL after `grace` seconds."""
    if process.poll() is not None:
        _kill_group(process.pid, signal.SIGKILL)  # leftovers of a dead leader
        return
    _kill_group(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        _kill_group(process.pid, signal.SIGKILL)
        process.wait(10)
    _kill_group(process.pid, signal.SIGKILL)


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_port_file(port_file: Path, process: subprocess.Popen, log: Path, timeout: float) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        if port_file.exists() and port_file.stat().st_size:
            with contextlib.suppress(json.JSONDecodeError):
                return json.loads(port_file.read_text())
        time.sleep(0.05)
    raise TimeoutError(f"no port file within {timeout:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")


def wait_model_ready(server: Running, timeout: float) -> float:
    """Until ModelReady(model) answers true over gRPC; the seconds it took."""
    import grpc
    from kairos.protos import grpc_service_pb2 as pb
    from kairos.protos import grpc_service_pb2_grpc as pb_grpc

    start = time.monotonic()
    with grpc.insecure_channel(server.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() - start < timeout:
            if server.process.poll() is not None:
                raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
            with contextlib.suppress(grpc.RpcError):
                if stub.ModelReady(pb.ModelReadyRequest(name=server.model), timeout=2).ready:
                    return round(time.monotonic() - start, 2)
            time.sleep(0.2)
    raise TimeoutError(f"{server.model} not ready on {server.name} after {timeout:.0f} s:\n{server.log_tail()}")


def _python_bin(venv: Path, program: str) -> Path:
    path = venv / "bin" / program
    if not path.exists():
        raise PeerMissing(f"{path} is missing: run `bash bench/setup_peers.sh` first")
    return path


def _kairos_program() -> str:
    beside = Path(sys.executable).parent / "kairos"
    return str(beside) if beside.exists() else "kairos"


@dataclass
class Options:
    """Settings of the servers (the peers' batching, mlp-heavy's SLO)."""

    mlserver_max_batch_size: int = 64
    mlserver_max_batch_time_ms: float = 1.0
    triton_max_batch_size: int = 64
    triton_delay_us: int = 500
    heavy_slo_ms: float = 250.0
    start_timeout_s: float = 300.0


@contextlib.contextmanager
def started(name: str, options: Options) -> Iterator[Running]:
    """Start server `name` on core 0, wait until its model is ready; always stopped after."""
    workdir = Path(tempfile.mkdtemp(prefix=f"kairos-frontend-{name}-"))
    log = workdir / "server.log"
    launch = {"kairos": _kairos, "kairos-aio": _kairos, "heavy": _kairos, "floor": _floor,
              "mlserver": _mlserver, "triton": _triton}[name]
    began = time.monotonic()
    server = launch(name, workdir, log, options)
    try:
        server.settings["ready_after_s"] = wait_model_ready(server, options.start_timeout_s)
        server.settings["started_in_s"] = round(time.monotonic() - began, 2)
        yield server
    finally:
        stop(server.process)
        shutil.rmtree(workdir, ignore_errors=True)


def _kairos(name: str, workdir: Path, log: Path, options: Options) -> Running:
    port_file = workdir / "ports.json"
    command = [_kairos_program(), "serve", "--host", "127.0.0.1", "--grpc-port", "0",
               "--metrics-port", "0", "--port-file", str(port_file)]
    model = MODEL
    if name == "kairos-aio":
        command += ["--transport", "aio"]
    if name == "heavy":
        command += ["--model-repository", str(heavy_repository(workdir, options.heavy_slo_ms))]
        model = HEAVY
    process = _spawn(command, log)
    ports = _wait_port_file(port_file, process, log, options.start_timeout_s)
    settings = {"command": " ".join(command[:2] + [a for a in command[2:] if "/" not in a])}
    return Running(name, process, ports["grpc_port"], model, log, ports.get("metrics_port"), settings)


def _floor(name: str, workdir: Path, log: Path, options: Options) -> Running:
    port_file = workdir / "ports.json"
    command = [sys.executable, str(ROOT / "bench" / "floor_server.py"), "--host", "127.0.0.1",
               "--port", "0", "--port-file", str(port_file)]
    process = _spawn(command, log)
    ports = _wait_port_file(port_file, process, log, 60)
    return Running(name, process, ports["grpc_port"], MODEL, log, None,
                   {"command": "python bench/floor_server.py"})


def _mlserver(name: str, workdir: Path, log: Path, options: Options) -> Running:
    program = _python_bin(PEERS["mlserver"], "mlserver")
    repo = mlserver_repository(workdir, options.mlserver_max_batch_size,
                               options.mlserver_max_batch_time_ms / 1e3)
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    env = {"MLSERVER_HOST": "127.0.0.1", "MLSERVER_GRPC_PORT": str(grpc_port),
           "MLSERVER_HTTP_PORT": str(http_port), "MLSERVER_METRICS_PORT": str(metrics_port),
           "MLSERVER_METRICS_DIR": str(workdir / "metrics")}
    process = _spawn([str(program), "start", str(repo)], log, env=env, cwd=workdir)
    settings = {"command": "mlserver start <repo>", "max_batch_size": options.mlserver_max_batch_size,
                "max_batch_time_ms": options.mlserver_max_batch_time_ms}
    return Running(name, process, grpc_port, MODEL, log, None, settings)


def triton_paths(venv: Path | None = None) -> dict[str, Path]:
    """The tritonserver binary, backends, stub and libraries inside the pytriton wheel."""
    venv = venv or PEERS["triton"]
    python = _python_bin(venv, "python")
    site = Path(subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    libdir = subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"], text=True).strip()
    dist = site / "pytriton" / "tritonserver"
    version = subprocess.check_output(
        [str(python), "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"], text=True).strip()
    return {"dist": dist, "stub": dist / "python_backend_stubs" / version / "triton_python_backend_stub",
            "libs": site / "nvidia_pytriton.libs", "libpython": Path(libdir), "site": site,
            "bin": venv / "bin"}


def _triton(name: str, workdir: Path, log: Path, options: Options) -> Running:
    paths = triton_paths()
    server_dir = workdir / "tritonserver"  # as pytriton does: the tree, with this Python's stub
    shutil.copytree(paths["dist"], server_dir, ignore=shutil.ignore_patterns("python_backend_stubs"))
    shutil.copy(paths["stub"], server_dir / "backends" / "python" / "triton_python_backend_stub")
    repo = triton_repository(workdir, options.triton_max_batch_size, options.triton_delay_us)
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    command = [str(server_dir / "bin" / "tritonserver"), f"--model-repository={repo}",
               f"--backend-directory={server_dir / 'backends'}",
               f"--cache-directory={server_dir / 'caches'}",
               f"--grpc-port={grpc_port}", f"--http-port={http_port}", f"--metrics-port={metrics_port}",
               "--grpc-address=127.0.0.1", "--http-address=127.0.0.1", "--log-verbose=0"]
    # The stub must load this interpreter's libpython3.11 (first), not Debian's.
    ld_path = ":".join(str(p) for p in (paths["libpython"], paths["libs"]))
    env = {"LD_LIBRARY_PATH": f"{ld_path}:{os.environ.get('LD_LIBRARY_PATH', '')}".rstrip(":"),
           "PATH": f"{paths['bin']}:{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(paths["site"])}
    process = _spawn(command, log, env=env, cwd=workdir)
    settings = {"command": "tritonserver --model-repository=<repo> (python backend)",
                "max_batch_size": options.triton_max_batch_size,
                "max_queue_delay_microseconds": options.triton_delay_us}
    return Running(name, process, grpc_port, MODEL, log, None, settings)


# ---------------------------------------------------------------- checks


def check_inference(server: Running, onnx_path: Path | None) -> dict:
    """One real ModelInfer; its output against in-process onnxruntime on the same file.

    `onnx_path` None (the floor): only the reply's shape is checked (it answers zeros).
    """
    import grpc
    from kairos.protos import codec
    from kairos.protos import grpc_service_pb2_grpc as pb_grpc

    width = INPUT_WIDTH[server.model]
    row = np.random.default_rng(7).standard_normal((1, width)).astype(np.float32)
    request = codec.build_request(server.model, {"input": row})
    with grpc.insecure_channel(server.url) as channel:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    outputs = codec.decode_response_outputs(reply)
    got = outputs.get("output")
    if got is None:
        raise AssertionError(f"{server.name}: no 'output' in the reply (got {sorted(outputs)})")
    result = {"shape": list(got.shape), "raw_output_contents": len(reply.raw_output_contents) > 0}
    if onnx_path is None:
        if got.shape != (1, 10):
            raise AssertionError(f"{server.name}: reply shape {got.shape}, expected (1, 10)")
        result["compared"] = "shape only (constant reply)"
        return result
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {session.get_inputs()[0].name: row})
    difference = float(np.max(np.abs(got.astype(np.float32) - expected)))
    result.update(max_abs_difference=difference, compared="onnxruntime in-process")
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
        raise AssertionError(f"{server.name}: output differs from onnxruntime by {difference:g}")
    return result
