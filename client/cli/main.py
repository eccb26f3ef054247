"""`kairos`: the command line (serve, infer, models, demo, and the optional bench/optimize/batch).

Subcommands owned elsewhere plug in through a module with
`register(subparsers: argparse._SubParsersAction) -> None`, which adds its subparser and
sets `func` on it (`parser.set_defaults(func=handler)`, `handler(args) -> int`). A module that
is missing or fails to import leaves a placeholder that explains why, instead of breaking
every other command. Each module is imported only when its command runs (or for the
top-level help), so `kairos infer` does not pay for importing the optimizer.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from .._common import InferenceServerError
from .common import EXIT_FAILED, EXIT_USAGE, CommandError, describe_server_error

# Subcommands registered by other packages: (name, module, help shown when not loaded).
PLUGINS: tuple[tuple[str, str, str], ...] = (
    ("bench", "kairos.client.bench.cli", "load generator: throughput and latency of a server"),
    ("batch", "kairos.client.batch.cli", "push a dataset through a server (streaming, resumable)"),
    ("optimize", "kairos.optimize.cli", "make int8/fp16/pruned/distilled variants of a model"),
)
BUILTIN = ("serve", "infer", "models", "demo")
# Commands that could not be set up in the last `build_parser`, and why.
_UNAVAILABLE: dict[str, str] = {}


def _requested_command(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not a flag)."""
    return next((word for word in argv if not word.startswith("-")), None)


def _placeholder(subparsers: argparse._SubParsersAction, name: str, reason: str) -> None:
    """A subcommand that only explains why the real one is unavailable (`main` answers it
    before parsing, so whatever flags follow it are not rejected first)."""
    _UNAVAILABLE[name] = reason
    if name not in subparsers.choices:
        subparsers.add_parser(name, help=f"(unavailable) {reason}", add_help=False)


def _register_plugin(
    subparsers: argparse._SubParsersAction, name: str, module_name: str, load: bool, help: str
) -> None:
    if not load:
        # Not the command being run: list it without importing its module.
        subparsers.add_parser(name, help=help, add_help=False)
        return
    try:
        module = importlib.import_module(module_name)
        module.register(subparsers)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            _placeholder(subparsers, name, f"{module_name} is not part of this installation")
        else:
            _placeholder(subparsers, name, f"it needs the missing package '{exc.name}' ({exc})")
    except Exception as exc:  # a broken plugin must not take the whole CLI down
        _placeholder(subparsers, name, f"{module_name} failed to load: {type(exc).__name__}: {exc}")


def _add_serve(subparsers: argparse._SubParsersAction, load: bool) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the Kairos server (built-in demo models unless --model-repository)",
        description="Run the Kairos inference server until Ctrl-C or SIGTERM.",
    )
    if not load:
        return
    try:
        # Imported only for `kairos serve`: the client never loads server code otherwise.
        from kairos.server.app import add_arguments
    except Exception as exc:
        _placeholder(subparsers, "serve", f"the server package cannot be imported ({exc})")
        return
    add_arguments(parser)
    parser.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from kairos.server.app import serve

    return int(serve(args) or 0)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The `kairos` parser; `argv` says which subcommand's module needs importing."""
    from . import demo, infer, models

    requested = _requested_command(argv)
    _UNAVAILABLE.clear()
    parser = argparse.ArgumentParser(
        prog="kairos",
        description="Kairos: a latency-aware Open Inference Protocol (KServe V2) server and client.",
        epilog="Run `kairos COMMAND --help` for a command's options. Start with `kairos demo`.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_serve(subparsers, load=requested == "serve")
    infer.register(subparsers)
    models.register(subparsers)
    demo.register(subparsers)
    load_all = requested not in {name for name, _, _ in PLUGINS} | set(BUILTIN)
    for name, module_name, help in PLUGINS:
        _register_plugin(subparsers, name, module_name, load_all or requested == name, help)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kairos-serve")
    except PackageNotFoundError:
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    command = _requested_command(argv)
    if command in _UNAVAILABLE:
        print(f"error: `kairos {command}` is not available: {_UNAVAILABLE[command]}", file=sys.stderr)
        return EXIT_FAILED
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int | None] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(func(args) or 0)
    except InferenceServerError as error:
        url = getattr(args, "url", "the server")
        print(f"error: {describe_server_error(error, url)}", file=sys.stderr)
        return EXIT_FAILED
    except CommandError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `kairos ... | head`: the reader left; not an error worth a traceback.
        sys.stderr.close()
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
