"""onnxruntime sessions configured as the server runs them, and side-by-side latency."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from kairos.optimize.errors import OptimizeError

PROVIDER = "CPUExecutionProvider"
ORT_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def check_provider(provider: str) -> None:
    available = ort.get_available_providers()
    if provider not in available:
        raise OptimizeError(f"execution provider {provider} is not available in this onnxruntime "
                            f"(available: {', '.join(available)})")


def make_session(path: Path | str, threads: int = 1, provider: str = PROVIDER) -> ort.InferenceSession:
    """A session like the server's default: full graph optimisation (static QDQ needs it to
    fuse into integer kernels), `threads` intra-op threads, no spinning."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    check_provider(provider)
    try:
        return ort.InferenceSession(str(path), options, providers=[provider])
    except Exception as exc:  # onnxruntime raises its own exception types per failure
        raise OptimizeError(f"onnxruntime cannot load {path}: {exc}") from None


def session_batch(session: ort.InferenceSession) -> int | None:
    """The fixed batch size of a session whose inputs' first dim is a number (else None)."""
    dims = [i.shape[0] if i.shape else None for i in session.get_inputs()]
    return dims[0] if dims and all(isinstance(d, int) and d > 0 for d in dims) else None


def run_all(session: ort.InferenceSession, feeds: dict[str, np.ndarray],
            batch_size: int = 256) -> dict[str, np.ndarray]:
    """Every output, by name, for all rows of `feeds`, computed `batch_size` rows at a time
    (a fixed-batch model in chunks of its batch, the last one padded and trimmed)."""
    fixed = session_batch(session)
    step = fixed or batch_size
    rows = len(next(iter(feeds.values())))
    names = [o.name for o in session.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    try:
        for i in range(0, rows, step):
            chunk = {k: v[i:i + step] for k, v in feeds.items()}
            got = len(next(iter(chunk.values())))
            if fixed and got < fixed:
                chunk = {k: rows_for_batch(v, fixed) for k, v in chunk.items()}
            for name, value in zip(names, session.run(names, chunk), strict=True):
                parts[name].append(value[:got] if fixed else value)
    except Exception as exc:  # onnxruntime's own exception types (wrong dtype, shape, ...)
        raise OptimizeError(f"onnxruntime could not run the model on inputs "
                            f"{', '.join(feeds)}: {exc}") from None
    return {n: np.concatenate(p) if p[0].ndim else p[0] for n, p in parts.items()}


def run(session: ort.InferenceSession, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The first output for all rows of `x` (a one-input model, cast to its input type), as float32."""
    first = session.get_inputs()[0]
    out = run_all(session, {first.name: x.astype(ORT_NUMPY.get(first.type, x.dtype), copy=False)}, batch_size)
    return next(iter(out.values())).astype(np.float32, copy=False)


def rows_for_batch(x: np.ndarray, batch: int) -> np.ndarray:
    """`batch` rows taken from `x`, repeated when `x` is shorter."""
    reps = -(-batch // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:batch])


def measure_latency(paths: dict[str, Path], x: np.ndarray | dict[str, np.ndarray], batch_sizes: tuple[int, ...] = (1, 64),
                    repeats: int = 200, warmup: int = 20, threads: int = 1,
                    block: int = 20, provider: str = PROVIDER) -> dict[str, dict[int, float]]:
    """Median milliseconds per run for each model and batch size.

    Models take turns (order rotating) in blocks of `block` consecutive timed runs, each
    block after one untimed run, so noise from other processes hits all models alike.
    block > 1 measures warm caches, as a server running one model steadily sees; block=1
    interleaves single runs, so every run first refetches weights the others evicted.
    """
    sessions = {key: make_session(path, threads, provider) for key, path in paths.items()}
    result: dict[str, dict[int, float]] = {key: {} for key in sessions}
    for batch in batch_sizes:
        feed = {k: rows_for_batch(v, batch) for k, v in x.items()} if isinstance(x, dict) \
            else rows_for_batch(x, batch)
        samples = _interleaved(sessions, feed, repeats, warmup, max(1, min(block, repeats)))
        for key, times in samples.items():
            result[key][batch] = statistics.median(times) * 1e3
    return result


def _interleaved(sessions: dict[str, ort.InferenceSession], feed: np.ndarray | dict[str, np.ndarray],
                 repeats: int, warmup: int, block: int) -> dict[str, list[float]]:
    keys = list(sessions)
    feeds = {k: feed if isinstance(feed, dict) else {s.get_inputs()[0].name: feed}
             for k, s in sessions.items()}
    for k in keys:
        for _ in range(warmup):
            sessions[k].run(None, feeds[k])
    times: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(-(-repeats // block)):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            if block > 1:
                sessions[k].run(None, feeds[k])  # bring this model's weights back in, untimed
            for _ in range(block):
                start = time.perf_counter()
                sessions[k].run(None, feeds[k])
                times[k].append(time.perf_counter() - start)
    return {k: v[:repeats] for k, v in times.items()}
