"""`kairos demo`: start a server with the built-in demo models, send it a real request,
show how to send more, and keep serving until Ctrl-C (or stop at once with --exit)."""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from kairos.protos import codec

from ..sync_client import InferenceClient
from .common import CommandError

SHADES = " .:-=+*#%@"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="start a server with the demo models and send it a digit to classify",
        description="Start `kairos serve` with the built-in demo models (digits, digits-int8, "
        "mlp256), classify one of scikit-learn's digits images through it, print how to send "
        "more requests, and keep serving until Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (8001; 0 = any)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="metrics port (8002; 0 = any)")
    parser.add_argument("--model", default="digits", help="digits (default) or digits-int8")
    parser.add_argument("--sample", type=int, help="which digits image to send (default: random)")
    parser.add_argument("--exit", action="store_true", help="stop the server after the request")
    parser.add_argument(
        "--startup-timeout", type=float, default=180.0,
        help="seconds to wait for the server (the first start builds the models)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="kairos-demo-"))
    port_file, log_path = workdir / "ports.json", workdir / "server.log"
    command = [
        sys.executable, "-m", "kairos.server",
        "--host", args.host,
        "--grpc-port", str(args.grpc_port),
        "--metrics-port", str(args.metrics_port),
        "--port-file", str(port_file),
    ]  # fmt: skip
    print("starting `kairos serve` with the built-in demo models "
          "(the first start trains and quantizes them: a few seconds) ...", flush=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    # SIGTERM (a supervisor, `timeout`) must stop the server too, not orphan it.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        ports = _wait_for_ports(process, port_file, log_path, args.startup_timeout)
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
        url = f"{host}:{ports['grpc_port']}"
        print(f"server up at {url} (metrics on port {ports.get('metrics_port')}); log: {log_path}")
        with InferenceClient(url) as client:
            client.wait_until_ready(args.startup_timeout)
            _check_model(client, args.model)
            names, row = _classify_one(client, args.model, args.sample)
        _print_next_steps(url, args.model, names, row)
        if args.exit:
            return 0
        print(f"\nserving until Ctrl-C (server log: {log_path})", flush=True)
        code = process.wait()
        if code in (0, -signal.SIGINT, -signal.SIGTERM):
            # Ctrl-C reaches the whole process group: the server may finish draining first.
            print("\nthe server stopped", file=sys.stderr)
            return 0
        raise CommandError(f"the server stopped by itself (exit code {code}):\n{_tail(log_path)}")
    except KeyboardInterrupt:
        print("\nstopping the server ...", file=sys.stderr)
        return 0
    finally:
        _stop(process)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _wait_for_ports(
    process: subprocess.Popen, port_file: Path, log_path: Path, timeout: float
) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            raise CommandError(_startup_failure(process.returncode, log_path))
        if port_file.exists() and port_file.stat().st_size:
            with contextlib.suppress(json.JSONDecodeError):
                return json.loads(port_file.read_text())
        time.sleep(0.05)
    raise CommandError(f"the server did not start within {timeout:g}s; log: {log_path}")


def _startup_failure(code: int, log_path: Path) -> str:
    log = _tail(log_path, 200)
    if "Failed to bind" in log or "Address already in use" in log:
        return (
            "the server could not listen: a port is already in use (another `kairos serve` "
            "or `kairos demo`?); choose others, e.g. `kairos demo --grpc-port 0 --metrics-port 0` "
            f"for any free ones (server log: {log_path})"
        )
    return f"the server exited during start-up (exit code {code}); its log ends with:\n" + _tail(
        log_path
    )


def _check_model(client: InferenceClient, model: str) -> None:
    """Fail at once, saying why, if the demo model is missing or failed to load (the server
    loads every model before it reports ready)."""
    if client.model_ready(model):
        return
    index = {entry.name: entry for entry in client.repository_index()}
    entry = index.get(model)
    if entry is None:
        raise CommandError(f"the server has no model '{model}'; it has: {', '.join(index)}")
    raise CommandError(f"model '{model}' is {entry.state or 'not ready'}: {entry.reason}")


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits images exactly as the demo model was trained on them."""
    try:
        from kairos.server.demo_models import digits_data  # the training-time preprocessing
    except ImportError:
        from sklearn.datasets import load_digits

        data = load_digits()
        return (data.data / 16.0).astype(np.float32), data.target
    return digits_data()


def _classify_one(
    client: InferenceClient, model: str, sample: int | None
) -> tuple[tuple[str, str], np.ndarray]:
    """Send one digits image; returns (input name, output name) and the image row sent."""
    metadata = client.model_metadata(model)
    tensor, output = metadata.inputs[0], metadata.outputs[0]
    images, labels = _digits()
    index = random.randrange(len(images)) if sample is None else sample
    if not 0 <= index < len(images):
        raise CommandError(f"--sample must be between 0 and {len(images) - 1}")
    row = images[index].astype(codec.DATATYPE_TO_DTYPE[tensor.datatype])
    batch = {tensor.name: row[np.newaxis]}

    started = time.perf_counter()
    probabilities = client.infer(model, batch, timeout=10)[output.name][0]
    first_ms = (time.perf_counter() - started) * 1000
    timings = []
    for _ in range(20):
        started = time.perf_counter()
        client.infer(model, batch, timeout=10)
        timings.append((time.perf_counter() - started) * 1000)

    predicted, label = int(np.argmax(probabilities)), int(labels[index])
    print(f"\nsent digits image #{index} to model '{model}' "
          f"({tensor.name}: {tensor.datatype} {list(row[np.newaxis].shape)}):")
    print(_ascii_image(row))
    verdict = "correct" if predicted == label else "wrong"
    print(f"predicted {predicted} (probability {probabilities[predicted]:.2f}), "
          f"true label {label}: {verdict}")
    print(f"latency: {first_ms:.2f} ms for the first request (includes connecting), "
          f"median {statistics.median(timings):.2f} ms over 20 more")
    return (tensor.name, output.name), row


def _ascii_image(row: np.ndarray) -> str:
    pixels = np.clip(row.astype(np.float64).reshape(8, 8), 0.0, 1.0)
    lines = ["".join(SHADES[int(v * (len(SHADES) - 1))] * 2 for v in line) for line in pixels]
    return "\n".join(f"    |{line}|" for line in lines)


def _print_next_steps(url: str, model: str, names: tuple[str, str], row: np.ndarray) -> None:
    input_name, output_name = names
    values = json.dumps([round(float(v), 4) for v in row])
    print(f"""
send it more requests from another terminal:
  kairos infer {model} --url {url} --input {input_name}='{values}'
  kairos models list --url {url}
  kairos models describe {model} --url {url}

or from Python, with any V2 client, e.g. tritonclient (pip install 'tritonclient[grpc]'):
  import numpy as np
  import tritonclient.grpc as grpcclient
  client = grpcclient.InferenceServerClient("{url}")
  x = np.zeros((1, 64), dtype=np.float32)  # 8x8 images, pixels scaled to [0, 1]
  tensor = grpcclient.InferInput("{input_name}", list(x.shape), "FP32")
  tensor.set_data_from_numpy(x)
  print(client.infer("{model}", [tensor]).as_numpy("{output_name}").argmax(axis=1))

or with the Kairos client:
  from kairos.client import InferenceClient
  print(InferenceClient("{url}").infer("{model}", {{"{input_name}": x}})["{output_name}"])""")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (the server drains), then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
