"""`kairos models list|load|unload|describe`: the server's model repository."""

from __future__ import annotations

import argparse
import json

from google.protobuf import text_format

from .common import (
    add_connection_arguments,
    client_from_args,
    message_dict,
    print_json,
    timeout_seconds,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list, load, unload or describe the server's models",
        description="Inspect and control the models of a running server (any V2 server with "
        "the repository extension).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="every model in the repository and its state")
    listing.add_argument("--ready", action="store_true", help="only models ready to serve")
    listing.add_argument("--json", action="store_true", help="print JSON")
    _common(listing)
    listing.set_defaults(func=run_list)

    load = actions.add_parser("load", help="load, or reload, a model from the repository")
    load.add_argument("model")
    _common(load)
    load.set_defaults(func=run_load)

    unload = actions.add_parser("unload", help="unload a model (it stays in the repository)")
    unload.add_argument("model")
    _common(unload)
    unload.set_defaults(func=run_unload)

    describe = actions.add_parser(
        "describe", help="a model's metadata, configuration and statistics"
    )
    describe.add_argument("model")
    describe.add_argument("--version", default="", help="model version (default: latest)")
    describe.add_argument("--json", action="store_true", help="print JSON")
    _common(describe)
    describe.set_defaults(func=run_describe)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout-ms", type=float, default=None, help="deadline for each call")
    add_connection_arguments(parser)


def run_list(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        models = client.repository_index(ready=args.ready, timeout=timeout_seconds(args.timeout_ms))
    if args.json:
        print_json([message_dict(model) for model in models])
        return 0
    if not models:
        print("no models" + (" ready" if args.ready else " in the repository"))
        return 0
    rows = [("MODEL", "VERSION", "STATE", "REASON")]
    rows += [(m.name, m.version or "-", m.state or "-", m.reason) for m in models]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[3]]).rstrip())
    return 0


def run_load(args: argparse.Namespace) -> int:
    timeout = timeout_seconds(args.timeout_ms)
    with client_from_args(args) as client:
        client.load_model(args.model, timeout=timeout)
        ready = client.model_ready(args.model, timeout=timeout)
    print(f"loaded {args.model}" + ("" if ready else " (but it is not ready yet)"))
    return 0


def run_unload(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        client.unload_model(args.model, timeout=timeout_seconds(args.timeout_ms))
    print(f"unloaded {args.model}")
    return 0


def run_describe(args: argparse.Namespace) -> int:
    timeout = timeout_seconds(args.timeout_ms)
    with client_from_args(args) as client:
        metadata = client.model_metadata(args.model, args.version, timeout=timeout)
        config = client.model_config(args.model, args.version, timeout=timeout)
        statistics = client.model_statistics(args.model, args.version, timeout=timeout)
    if args.json:
        print_json(
            {
                "metadata": message_dict(metadata),
                "config": message_dict(config),
                "statistics": message_dict(statistics),
            }
        )
        return 0
    versions = ", ".join(metadata.versions) or "-"
    print(f"model {metadata.name}  versions: {versions}  platform: {metadata.platform or '-'}")
    for title, tensors in (("inputs", metadata.inputs), ("outputs", metadata.outputs)):
        print(f"{title}:")
        for tensor in tensors:
            print(f"  {tensor.name}  {tensor.datatype} {list(tensor.shape)}")
    # Printed whole, so whatever a server adds shows up without this command knowing about it;
    # only `parameters` get their own section, since Kairos puts JSON there (the scheduler's
    # state and latency table L(b)), which text format would print as one escaped string.
    parameters = {key: value.string_value for key, value in sorted(config.parameters.items())}
    config.ClearField("parameters")
    print("\nconfig:")
    print(_indent(text_format.MessageToString(config)) or "  (empty)")
    if parameters:
        print("config parameters:")
        for key, value in parameters.items():
            print(_indent(_render_parameter(key, value)))
    print("statistics:")
    print(_indent(text_format.MessageToString(statistics)) or "  (none)")
    return 0


def _render_parameter(key: str, value: str) -> str:
    """`key: value`, with a JSON object value laid out one field per line, and lists of
    records (such as a latency table) one record per line."""
    try:
        parsed = json.loads(value)
    except ValueError:
        return f"{key}: {value}"
    if not isinstance(parsed, dict):
        return f"{key}: {value}"
    lines = [f"{key}:"]
    for field, item in parsed.items():
        if field == "variants" and isinstance(item, dict) and isinstance(item.get("variants"), list):
            lines += _variant_table(item)
        elif isinstance(item, list) and item and all(isinstance(row, dict) for row in item):
            lines.append(f"  {field}:")
            lines += [f"    {json.dumps(row)}" for row in item]
        else:
            lines.append(f"  {field}: {json.dumps(item)}")
    return "\n".join(lines)


def _variant_table(group: dict) -> list[str]:
    """A model group: its budget, then one line per variant with accuracy, share of
    served rows and L(b) in ms at each profiled batch size."""
    spent, budget = group.get("accuracy_spent"), group.get("accuracy_budget")
    lines = [f"  variants: (accuracy spent {spent} of budget {budget}, now on "
             f"{group.get('current')}, {group.get('switches')} switches)"]
    rows = group["variants"]
    sizes = [entry.get("batch_size") for entry in (rows[0].get("latency_table") or [])]
    header = f"    {'variant':<12} {'accuracy':>8} {'share':>7} {'rows':>9}  L(b) ms at b = "
    lines.append(header + " ".join(f"{b:>6}" for b in sizes))
    for row in rows:
        latency = " ".join(f"{entry.get('predicted_s', 0) * 1e3:>6.3f}"
                           for entry in row.get("latency_table") or [])
        lines.append(f"    {str(row.get('name'))[:12]:<12} {row.get('accuracy', 0):>8.4f} "
                     f"{row.get('share', 0):>7.2%} {row.get('rows', 0):>9}  {' ' * 15}{latency}")
    return lines


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.rstrip().splitlines())
