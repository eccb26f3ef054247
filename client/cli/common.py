"""Shared pieces of the `kairos` subcommands: connection flags, errors, output helpers.

Other subcommands (bench, batch) can reuse `add_connection_arguments` and `client_from_args`
so every command takes the same --url/TLS/token flags.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from .._common import DEFAULT_URL, InferenceServerError
from ..sync_client import InferenceClient

EXIT_OK = 0
EXIT_FAILED = 1  # the request failed, or the server said no
EXIT_USAGE = 2  # the command line or a file it names is wrong


class CommandError(Exception):
    """An expected failure: printed as `error: <message>` without a traceback."""

    exit_code = EXIT_FAILED


class UsageError(CommandError):
    """The command line, or a file it names, is wrong (exit code 2)."""

    exit_code = EXIT_USAGE


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """--url, TLS and token flags; `client_from_args` turns them into a client."""
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--url",
        default=os.environ.get("KAIROS_URL", DEFAULT_URL),
        help=f"server gRPC address host:port (default: $KAIROS_URL or {DEFAULT_URL})",
    )
    group.add_argument("--ssl", action="store_true", help="use TLS with the system's root CAs")
    group.add_argument("--ssl-root-cert", metavar="PEM", help="CA certificate to verify the server")
    group.add_argument("--ssl-client-cert", metavar="PEM", help="client certificate (mutual TLS)")
    group.add_argument("--ssl-client-key", metavar="PEM", help="client private key (mutual TLS)")
    group.add_argument(
        "--token",
        default=os.environ.get("KAIROS_TOKEN"),
        help="bearer token sent as `authorization: Bearer ...` (default: $KAIROS_TOKEN)",
    )


def client_from_args(args: argparse.Namespace, **options: Any) -> InferenceClient:
    """An InferenceClient for the flags `add_connection_arguments` added."""
    for flag in ("ssl_root_cert", "ssl_client_cert", "ssl_client_key"):
        path = getattr(args, flag, None)
        if path and not os.path.isfile(path):
            raise UsageError(f"--{flag.replace('_', '-')} {path}: no such file")
    try:
        return InferenceClient(
            args.url,
            ssl=getattr(args, "ssl", False),
            ssl_root_cert=getattr(args, "ssl_root_cert", None),
            ssl_client_cert=getattr(args, "ssl_client_cert", None),
            ssl_client_key=getattr(args, "ssl_client_key", None),
            token=getattr(args, "token", None),
            **options,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def describe_server_error(error: InferenceServerError, url: str) -> str:
    """One line a person understands: unreachable server, or the server's own message."""
    if error.unreachable:
        return f"cannot reach a server at {url} (is `kairos serve` running?)"
    if error.status == "DEADLINE_EXCEEDED":
        return f"no answer in time from {url}: {error.message}"
    if error.status == "UNIMPLEMENTED":
        return (
            f"the server at {url} does not offer this call ({error.message}); is it an "
            "Open Inference Protocol (KServe V2) gRPC server?"
        )
    if error.status == "UNAUTHENTICATED":
        return f"the server refused the credentials: {error.message} (see --token)"
    return f"{error.message} ({error.status})" if error.message else error.status


def timeout_seconds(timeout_ms: float | None) -> float | None:
    if timeout_ms is None:
        return None
    if timeout_ms <= 0:
        raise UsageError(f"--timeout-ms must be positive, not {timeout_ms:g}")
    return timeout_ms / 1000


def message_dict(message: Message) -> dict[str, Any]:
    """A protobuf message as a JSON-ready dict, keeping the .proto field names."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
