"""`kairos batch MODEL --input FILE --output FILE`: push a dataset through a server.

`register(subparsers)` adds the `batch` subcommand to `kairos`; `main(argv)` runs it alone
(`python -m kairos.client.batch ...`). `run_job(options)` is the library entry point.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._common import InferenceServerError
from ..aio_client import AsyncInferenceClient
from ..cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_connection_arguments,
    describe_server_error,
)
from .checkpoint import (
    CheckpointError,
    check_same_job,
    checkpoint_path,
    load_checkpoint,
    parts_path,
    remove_checkpoint,
    save_checkpoint,
)
from .datasets import DatasetError, DatasetReader, NpyReader, fingerprint, open_dataset
from .engine import BatchFailed, Chunk, EngineStats, RetryPolicy, StreamEngine, describe_stats
from .mapping import InputPlan, TensorSpec, plan_inputs
from .outputs import OutputError, OutputStore, make_store, output_format

EXIT_INTERRUPTED = 130

DESCRIPTION = """\
Stream a whole dataset through a V2 server's ModelStreamInfer as low-priority batch work
(request parameter kairos_class="batch": Kairos runs it only in capacity online traffic
leaves idle), write the outputs in input order, and resume after an interruption."""

EPILOG = """\
inputs:  .npy (one array: the model's only input, or --input-name), .npz (one array per
         input, by name), Parquet (one column per input, by name; a fixed_size_list or
         list column is a [rows, n] tensor, lists of lists [rows, n, m], a scalar column
         [rows], or [rows, 1] when the input's last dim is 1). Dtypes must match the model
         exactly; extra columns are ignored. Files are read in chunks (memory-mapped where
         possible), so memory stays bounded.
outputs: .npy (one output), .npz (all), Parquet (one column per output, same mapping).
         OUT appears only when complete; meanwhile OUT.kairos-parts/ holds the rows and
         OUT.kairos-checkpoint.json how many are done. Rerun with --resume to continue.
deadline: each request carries the `timeout` parameter (--request-timeout-s, default 600 s)
         so slow batch work is not refused for an online-style deadline.
exit codes: 0 done, 1 failed mid-run (resumable), 2 bad arguments or input, 130 interrupted.

example:
  kairos batch mlp256 --input features.parquet --output scores.parquet --rows-per-request 1024
"""


@dataclass
class JobOptions:
    model: str
    input: Path
    output: Path
    version: str = ""
    rows_per_request: int = 1024
    in_flight: int = 3
    resume: bool = False
    input_name: str | None = None
    output_names: list[str] | None = None
    request_timeout_s: float = 600.0
    max_retries: int = 10
    stall_timeout_s: float | None = None  # None: request timeout + 30 s
    checkpoint_interval_s: float = 1.0
    progress: bool | None = None  # None: only on a terminal
    low_priority: bool = False  # run this client at the OS's lowest priority
    client: dict[str, Any] = field(default_factory=dict)  # AsyncInferenceClient arguments


class JobError(Exception):
    """An expected failure with its exit code and a message for people."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


# -- argument parsing ------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `kairos batch` to the `kairos` command line."""
    parser = subparsers.add_parser(
        "batch",
        help="push a dataset through a server (streaming, resumable)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run_from_args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model name")
    parser.add_argument("-i", "--input", required=True, type=Path, help=".npy, .npz or .parquet")
    parser.add_argument("-o", "--output", required=True, type=Path, help=".npy, .npz or .parquet")
    parser.add_argument("--version", default="", help="model version (default: the server's)")
    parser.add_argument("-n", "--rows-per-request", type=int, default=1024, metavar="N",
                        help="rows per request (default 1024)")
    parser.add_argument("-k", "--in-flight", type=int, default=3, metavar="K",
                        help="requests outstanding on the stream (default 3)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT.kairos-checkpoint.json (start fresh if none)")
    parser.add_argument("--input-name", help="model input a .npy file feeds (default: the only one)")
    parser.add_argument("--output-name", action="append", dest="output_names", metavar="NAME",
                        help="keep only this output (repeatable; default: all)")
    parser.add_argument("--request-timeout-s", type=float, default=600.0,
                        help="deadline of each request, sent as the `timeout` parameter")
    parser.add_argument("--max-retries", type=int, default=10,
                        help="consecutive failed attempts without progress before giving up")
    parser.add_argument("--stall-timeout-s", type=float, default=None,
                        help="re-open the stream when no answer comes for this long "
                        "(default: request timeout + 30 s)")
    parser.add_argument("--checkpoint-interval-s", type=float, default=1.0,
                        help="how often the output is flushed and the checkpoint saved")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--low-priority", action="store_true",
                        help="run this client at the OS's lowest priority (SCHED_IDLE on Linux, "
                        "else nice 19): for a job started on the server's own machine, so that "
                        "the client, like the server's batch work, only takes CPU that online "
                        "traffic leaves idle")
    parser.add_argument("--summary-json", type=Path, metavar="FILE",
                        help="also write the summary as JSON to FILE")
    add_connection_arguments(parser)


def options_from_args(args: argparse.Namespace) -> JobOptions:
    for flag in ("rows_per_request", "in_flight"):
        if getattr(args, flag) < 1:
            raise JobError(f"--{flag.replace('_', '-')} must be at least 1", EXIT_USAGE)
    if args.request_timeout_s <= 0:
        raise JobError("--request-timeout-s must be positive", EXIT_USAGE)
    client = {
        "ssl": args.ssl,
        "ssl_root_cert": args.ssl_root_cert,
        "ssl_client_cert": args.ssl_client_cert,
        "ssl_client_key": args.ssl_client_key,
        "token": args.token,
    }
    return JobOptions(
        model=args.model,
        input=args.input,
        output=args.output,
        version=args.version,
        rows_per_request=args.rows_per_request,
        in_flight=args.in_flight,
        resume=args.resume,
        input_name=args.input_name,
        output_names=args.output_names,
        request_timeout_s=args.request_timeout_s,
        max_retries=args.max_retries,
        stall_timeout_s=args.stall_timeout_s,
        checkpoint_interval_s=args.checkpoint_interval_s,
        progress=False if args.no_progress else None,
        low_priority=args.low_priority,
        client={"url": args.url, **client},
    )


def run_from_args(args: argparse.Namespace) -> int:
    """`kairos batch` handler: runs the job, prints the summary, returns the exit code."""
    try:
        options = options_from_args(args)
        summary = asyncio.run(_run_interruptible(options))
    except JobError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"interrupted; {_resume_hint(args.output)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(format_summary(summary))
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary, indent=1) + "\n")
    return EXIT_OK


async def _run_interruptible(options: JobOptions) -> dict[str, Any]:
    """run_job, with SIGTERM treated like Ctrl-C (the checkpoint is saved either way)."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await run_job(options)
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None


def format_summary(summary: dict[str, Any]) -> str:
    return (
        f"kairos batch: {summary['rows']} rows in {summary['seconds']:.2f} s "
        f"({summary['rows_per_s'] or 0:,.0f} rows/s), {summary['requests']} requests, "
        f"{summary['retries']} retries -> {summary['output']}"
    )


def _resume_hint(output: Path) -> str:
    return (f"progress is saved in {checkpoint_path(output)}; rerun the same command with "
            "--resume to continue")


# -- the job ---------------------------------------------------------------------------


async def run_job(options: JobOptions) -> dict[str, Any]:
    """Validate everything, then stream the dataset; the summary dict on success.

    Raises JobError (exit code 2 for bad input found before sending anything, 1 for a
    failure mid-run, after the checkpoint is saved).
    """
    if options.low_priority:
        lower_priority()
    reader, state = _open_local(options)
    try:
        async with AsyncInferenceClient(**options.client) as client:
            plan, outputs = await _check_model(client, options, reader)
            job = _job_identity(options, reader, outputs)
            if state is not None:
                try:
                    check_same_job(state, job, options.output)
                except CheckpointError as exc:
                    raise JobError(str(exc), EXIT_USAGE) from None
            return await _stream(client, options, reader, plan, outputs, job, state)
    finally:
        reader.close()


def lower_priority() -> str:
    """Make this whole process (every thread it starts from now on, and the calling one)
    the OS's last choice; returns the policy it got: "idle", "nice" or "unchanged".

    Linux sets a policy per thread, and threads inherit it from the thread that creates
    them: every thread the process has now is lowered, and this runs before the gRPC
    channel starts its own."""
    threads = _thread_ids()
    try:
        for tid in threads:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        return "idle"
    except (AttributeError, OSError):
        pass
    try:
        for tid in threads:
            os.setpriority(os.PRIO_PROCESS, tid, 19)
        return "nice"
    except (AttributeError, OSError):
        return "unchanged"


def _thread_ids() -> list[int]:
    """This process's threads (Linux: /proc/self/task), else the calling one (0)."""
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def _open_local(options: JobOptions) -> tuple[DatasetReader, dict[str, Any] | None]:
    """The input reader and the checkpoint (when resuming); JobError(2) on local problems."""
    try:
        output_format(options.output)
        if not options.output.parent.is_dir():
            raise OutputError(f"{options.output.parent}: no such folder for the output")
        state = load_checkpoint(options.output)
    except (OutputError, CheckpointError) as exc:
        raise JobError(str(exc), EXIT_USAGE) from None
    if state is not None and not options.resume:
        raise JobError(
            f"{checkpoint_path(options.output)} holds an unfinished run; pass --resume to "
            f"continue it, or delete it and {parts_path(options.output).name} to start over",
            EXIT_USAGE,
        )
    try:
        reader = open_dataset(options.input, options.input_name or "input")
    except DatasetError as exc:
        raise JobError(str(exc), EXIT_USAGE) from None
    if reader.num_rows == 0:
        reader.close()
        raise JobError(f"{options.input}: the dataset has no rows", EXIT_USAGE)
    return reader, state


async def _check_model(
    client: AsyncInferenceClient, options: JobOptions, reader: DatasetReader
) -> tuple[InputPlan, list[str] | None]:
    """Match the dataset to ModelMetadata; the input plan and the outputs to request."""
    try:
        metadata = await client.model_metadata(options.model, options.version, timeout=30)
    except InferenceServerError as error:
        code = EXIT_USAGE if error.status in ("NOT_FOUND", "INVALID_ARGUMENT") else EXIT_FAILED
        raise JobError(describe_server_error(error, client.url), code) from None
    inputs = [TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in metadata.inputs]
    columns = reader.columns
    if options.input.suffix.lower() == ".npy":
        columns = _name_npy_column(reader, inputs, options.input_name)
    try:
        plan = plan_inputs(columns, inputs)
    except DatasetError as exc:
        raise JobError(f"{options.input} does not fit model '{options.model}': {exc}", EXIT_USAGE) from None
    if plan.unused:
        print(f"note: columns not used by the model: {', '.join(plan.unused)}", file=sys.stderr)
    available = [t.name for t in metadata.outputs]
    wanted = options.output_names
    unknown = [name for name in wanted or () if name not in available]
    if unknown:
        raise JobError(f"model '{options.model}' has no output {unknown[0]!r} "
                       f"(outputs: {', '.join(available)})", EXIT_USAGE)
    chosen = wanted or available
    if output_format(options.output) == "npy" and len(chosen) != 1:
        raise JobError(f"{options.output}: a .npy file holds one array but model "
                       f"'{options.model}' has outputs {', '.join(chosen)}; pick one with "
                       "--output-name, or write .npz or .parquet", EXIT_USAGE)
    return plan, wanted


def _name_npy_column(reader: DatasetReader, inputs: list[TensorSpec], input_name: str | None) -> dict:
    """A .npy file's one array, named after the input it feeds."""
    names = [spec.name for spec in inputs]
    if input_name is None and len(names) != 1:
        raise JobError(f"model has inputs {', '.join(names)}: a .npy file feeds one; name it "
                       "with --input-name, or pass an .npz/.parquet with every input", EXIT_USAGE)
    if input_name is not None and input_name not in names:
        raise JobError(f"--input-name {input_name}: the model's inputs are {', '.join(names)}",
                       EXIT_USAGE)
    if isinstance(reader, NpyReader):
        reader.rename(input_name or names[0])
    return reader.columns


def _job_identity(options: JobOptions, reader: DatasetReader, outputs: list[str] | None) -> dict:
    return {
        "model": options.model,
        "version": options.version,
        "input": fingerprint(options.input),
        "input_rows": reader.num_rows,
        "output_format": output_format(options.output),
        "outputs_wanted": outputs,
    }


def _chunks(reader: DatasetReader, plan: InputPlan, start: int, size: int) -> Iterator[Chunk]:
    names = list(dict.fromkeys(plan.columns.values()))
    for index, chunk in enumerate(reader.chunks(start, size, names)):
        yield Chunk(index, start + index * size, plan.apply(chunk))


async def _stream(
    client: AsyncInferenceClient,
    options: JobOptions,
    reader: DatasetReader,
    plan: InputPlan,
    outputs: list[str] | None,
    job: dict[str, Any],
    state: dict[str, Any] | None,
) -> dict[str, Any]:
    store = make_store(options.output, reader.num_rows)
    done = int(state["rows_done"]) if state else 0
    try:
        store.start(state, done)
    except OutputError as exc:
        if state and state.get("finalizing") and options.output.exists():
            # killed after OUT was complete but before the checkpoint was removed
            remove_checkpoint(options.output)
            store.discard()
            return {**describe_stats(EngineStats(), reader.num_rows, 0.0),
                    "output": str(options.output), "resumed_from": done}
        raise JobError(str(exc), EXIT_USAGE) from None
    saver = _CheckpointSaver(options, store, job)
    if state is None:
        saver.save()  # a run killed before its first flush still resumes cleanly
    progress = _progress_bar(options, reader.num_rows, done)

    def on_rows(start: int, result: dict) -> None:
        store.write(start, result)
        saver.maybe_save()

    engine = StreamEngine(
        client,
        options.model,
        _chunks(reader, plan, done, options.rows_per_request),
        on_rows,
        version=options.version,
        outputs=outputs,
        in_flight=options.in_flight,
        timeout_us=int(options.request_timeout_s * 1e6),
        retry=RetryPolicy(max_retries=options.max_retries),
        on_progress=progress.update,
        stall_timeout_s=options.stall_timeout_s,
    )
    started = time.monotonic()
    finalizing = False
    try:
        stats = await engine.run()
        finalizing = True
        saver.save(finalizing)  # every row is flushed; only OUT remains to be made
        store.finalize()
    except (BatchFailed, OutputError, DatasetError, InferenceServerError) as exc:
        saver.save(finalizing)
        raise JobError(f"{exc}\n{_resume_hint(options.output)} "
                       f"({store.rows_written} of {reader.num_rows} rows done)", EXIT_FAILED) from None
    except BaseException:
        saver.save(finalizing)
        raise
    finally:
        progress.close()
    remove_checkpoint(options.output)
    store.discard()
    summary = describe_stats(stats, reader.num_rows, time.monotonic() - started)
    summary.update(output=str(options.output), resumed_from=done)
    return summary


class _CheckpointSaver:
    """Flushes the store and records its written prefix, at most every interval."""

    def __init__(self, options: JobOptions, store: OutputStore, job: dict[str, Any]):
        self.options, self.store, self.job = options, store, job
        self.last = time.monotonic()

    def maybe_save(self) -> None:
        if time.monotonic() - self.last >= self.options.checkpoint_interval_s:
            self.save()

    def save(self, finalizing: bool = False) -> None:
        self.store.flush()  # data first: the checkpoint never claims unflushed rows
        save_checkpoint(
            self.options.output,
            {**self.job, **self.store.state(), "rows_done": self.store.rows_written,
             "finalizing": finalizing},
        )
        self.last = time.monotonic()


def _progress_bar(options: JobOptions, total: int, done: int) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=done,
        unit="row",
        unit_scale=True,
        smoothing=0.1,
        dynamic_ncols=True,
        file=sys.stderr,
        disable=None if options.progress is None else not options.progress,
        desc=options.model,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kairos batch",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m kairos.client.batch ...`: the same as `kairos batch ...`."""
    args = build_parser().parse_args(argv)
    return run_from_args(args)
