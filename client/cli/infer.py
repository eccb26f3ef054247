"""`kairos infer MODEL --input NAME=VALUE ...`: one request, outputs printed (or saved)."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from kairos.protos import codec
from kairos.protos import grpc_service_pb2 as pb

from .common import (
    UsageError,
    add_connection_arguments,
    client_from_args,
    print_json,
    timeout_seconds,
)

TensorMetadata = pb.ModelMetadataResponse.TensorMetadata

EXAMPLES = """\
VALUE is a .npy file, a .json file, or a JSON literal; JSON takes the datatype the model's
metadata declares, and a single example without the batch dimension gets one added.

examples:
  kairos infer digits --input input='[[0,0,0.3,0.8,0.8,0.2,0,0, ...]]'
  kairos infer mlp256 --input input=batch.npy --output-dir out/
  kairos infer my-model --input tokens=ids.json --input mask='[[1,1,0]]' --json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "infer",
        help="send one inference request and print the outputs",
        description="Send one ModelInfer request to a V2 server and print the outputs.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="model name")
    parser.add_argument(
        "-i",
        "--input",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an input tensor; repeat for each input (NAME= may be left out for a "
        "single-input model)",
    )
    parser.add_argument("--version", default="", help="model version (default: the server's choice)")
    parser.add_argument(
        "-o", "--output", action="append", default=None, metavar="NAME",
        help="return only this output (repeatable; default: all)",
    )
    parser.add_argument("--timeout-ms", type=float, default=None, help="deadline for the request")
    parser.add_argument("--id", default="", help="request id (echoed by the server)")
    parser.add_argument(
        "--parameter", action="append", default=[], metavar="KEY=VALUE",
        help="request parameter, e.g. priority=1 (VALUE is JSON if it parses, else a string)",
    )
    parser.add_argument("--output-dir", type=Path, help="also save each output as NAME.npy here")
    parser.add_argument("--json", action="store_true", help="print the response as JSON")
    add_connection_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.input:
        raise UsageError("give at least one --input NAME=VALUE (see `kairos infer --help`)")
    specs = [split_input_spec(spec) for spec in args.input]
    names = [name for name, _ in specs]
    if len(set(names)) != len(names):
        raise UsageError("each input may be given once (and NAME= may be left out only once)")
    raw_values = {name: (value, load_value(name or "input", value)) for name, value in specs}
    timeout = timeout_seconds(args.timeout_ms)
    parameters = dict(parse_parameter(item) for item in args.parameter)
    with client_from_args(args) as client:
        metadata = client.model_metadata(args.model, args.version, timeout=timeout)
        inputs = {}
        for name, (source, value) in raw_values.items():
            spec = _input_metadata(metadata, name, args.model)
            inputs[spec.name] = to_array(spec, value, source)
        started = time.perf_counter()
        result = client.infer_response(
            args.model,
            inputs,
            version=args.version,
            outputs=args.output,
            timeout=timeout,
            request_id=args.id,
            parameters=parameters,
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
    if args.output_dir is not None:
        save_outputs(result.outputs, args.output_dir)
    if args.json:
        print_json(response_json(result.model_name, result.model_version, result.id, result.outputs))
    else:
        print_outputs(result.model_name, result.model_version, result.outputs, elapsed_ms)
    return 0


# -- reading inputs --------------------------------------------------------------------------


def split_input_spec(spec: str) -> tuple[str | None, str]:
    """`NAME=VALUE` -> (NAME, VALUE); a bare VALUE (single-input models) -> (None, VALUE)."""
    name, sep, value = spec.partition("=")
    if not sep or not name or any(ch in name for ch in "[{\"'/ "):
        return None, spec
    return name, value


def load_value(name: str, value: str) -> Any:
    """A numpy array from a .npy file, or the parsed JSON of a .json file or literal."""
    path = Path(value)
    if value.endswith(".npy"):
        try:
            return np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise UsageError(f"--input {name}: file {path} does not exist") from None
        except (OSError, ValueError) as exc:
            raise UsageError(f"--input {name}: cannot read {path} as .npy: {exc}") from None
    if value.endswith(".json") or _is_file(path):
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise UsageError(f"--input {name}: file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--input {name}: cannot read {path}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise UsageError(f"--input {name}: {path} is not valid JSON: {exc}") from None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"--input {name}: '{_shorten(value)}' is neither a .npy/.json file nor a JSON "
            f"literal ({exc})"
        ) from None


def _input_metadata(metadata: pb.ModelMetadataResponse, name: str | None, model: str) -> Any:
    known = ", ".join(
        f"{t.name} ({t.datatype} {list(t.shape)})" for t in metadata.inputs
    ) or "none"
    if name is None:
        if len(metadata.inputs) != 1:
            raise UsageError(
                f"model '{model}' has {len(metadata.inputs)} inputs, so each --input needs "
                f"NAME=; its inputs: {known}"
            )
        return metadata.inputs[0]
    for tensor in metadata.inputs:
        if tensor.name == name:
            return tensor
    raise UsageError(f"model '{model}' has no input '{name}'; its inputs: {known}")


def to_array(spec: Any, value: Any, source: str) -> np.ndarray:
    """`value` (array or JSON) as the datatype and rank the model declares for this input."""
    label = f"--input {spec.name}"
    dtype = codec.DATATYPE_TO_DTYPE.get(spec.datatype)
    if dtype is None:
        raise UsageError(f"{label}: the model wants {spec.datatype}, which the CLI cannot send")
    if isinstance(value, np.ndarray):
        array = _cast_array(label, value, dtype, spec.datatype)
    else:
        array = _json_array(label, value, dtype, spec.datatype)
    declared = list(spec.shape)
    if declared and array.ndim == len(declared) - 1 and declared[0] == -1:
        array = array[np.newaxis]  # one example: add the batch dimension
    if len(declared) != array.ndim:
        raise UsageError(
            f"{label}: {_shorten(source)} has shape {list(array.shape)}, but the model wants "
            f"{spec.datatype} {declared} (-1: any size)"
        )
    for got, want in zip(array.shape, declared, strict=True):
        if want >= 0 and got != want:
            raise UsageError(
                f"{label}: shape {list(array.shape)} does not fit the model's {declared}"
            )
    return array


def _cast_array(label: str, array: np.ndarray, dtype: np.dtype, datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return _bytes_array(label, array.tolist())
    if array.dtype == dtype:
        return array
    if not np.can_cast(array.dtype, dtype, casting="same_kind"):
        raise UsageError(f"{label}: the file holds {array.dtype}, the model wants {datatype}")
    print(f"note: {label}: converting {array.dtype} to {datatype}", file=sys.stderr)
    return array.astype(dtype)


def _json_array(label: str, value: Any, dtype: np.dtype, datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return _bytes_array(label, value)
    try:
        generic = np.array(value)
    except ValueError as exc:  # ragged nesting
        raise UsageError(f"{label}: not a rectangular array ({exc})") from None
    if generic.dtype.kind not in "biuf":
        got = "text" if generic.dtype.kind in "US" else "non-numeric values"
        raise UsageError(f"{label}: the model wants {datatype} numbers, got {got}")
    try:
        array = generic.astype(dtype)
    except (OverflowError, ValueError) as exc:
        raise UsageError(f"{label}: values do not fit {datatype}: {exc}") from None
    if dtype.kind in "biu" and not np.array_equal(array, generic):
        raise UsageError(f"{label}: the model wants {datatype}; some values do not fit it exactly")
    return array


def _bytes_array(label: str, value: Any) -> np.ndarray:
    generic = np.array(value, dtype=object)
    flat = [
        item.encode("utf-8") if isinstance(item, str) else item for item in generic.reshape(-1)
    ]
    if not all(isinstance(item, bytes) for item in flat):
        raise UsageError(f"{label}: the model wants BYTES; give strings")
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(generic.shape)


def parse_parameter(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise UsageError(f"--parameter {item}: expected KEY=VALUE")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    if not isinstance(value, bool | int | float | str):
        value = text
    return key, value


# -- showing outputs -------------------------------------------------------------------------


def print_outputs(
    model: str, version: str, outputs: dict[str, np.ndarray], elapsed_ms: float
) -> None:
    print(f"{model} (version {version or '?'}) answered in {elapsed_ms:.2f} ms")
    with np.printoptions(precision=4, suppress=True, threshold=200, linewidth=100):
        for name, array in outputs.items():
            print(f"\n{name}  {codec.datatype_of(array)} {list(array.shape)}")
            print(array)


def response_json(
    model: str, version: str, request_id: str, outputs: dict[str, np.ndarray]
) -> dict[str, Any]:
    """The response in the V2 REST response shape (data flattened in row-major order)."""
    return {
        "model_name": model,
        "model_version": version,
        "id": request_id,
        "outputs": [
            {
                "name": name,
                "datatype": codec.datatype_of(array),
                "shape": list(array.shape),
                "data": _json_data(array),
            }
            for name, array in outputs.items()
        ],
    }


def _json_data(array: np.ndarray) -> list:
    flat = array.reshape(-1)
    if flat.dtype == object:
        return [
            item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
            for item in flat
        ]
    return flat.tolist()


def save_outputs(outputs: dict[str, np.ndarray], folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, array in outputs.items():
            path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.npy"
            if array.dtype == object:  # BYTES: fixed-width bytes, loadable without pickle
                array = array.astype(np.bytes_)
            np.save(path, array, allow_pickle=False)
            print(f"saved {name} to {path}", file=sys.stderr)
    except OSError as exc:
        raise UsageError(f"--output-dir {folder}: {exc}") from None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a long JSON literal is not a valid file name
        return False


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
