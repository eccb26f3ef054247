"""Make int8, fp16, pruned and distilled variants of an fp32 ONNX model, each with a report.

`kairos optimize quantize|prune|distill|report` (argparse).
The main `kairos` CLI calls `register(subparsers)`; `python -m kairos.optimize` calls
`main(argv)`. Input problems print one line `kairos optimize: error: ...` and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from kairos.optimize.errors import OptimizeError

EXIT_USAGE = 2
EXIT_INTERNAL = 1
MAX_MESSAGE = 400


def _one_line(text: str) -> str:
    """Messages from onnxruntime span lines; the CLI's error is one line, of bounded length."""
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_MESSAGE else flat[:MAX_MESSAGE - 3] + "..."


def _common(p: argparse.ArgumentParser, output: bool = True) -> None:
    p.add_argument("model", help="fp32 model: an .onnx file or a repository folder <repo>/<model>")
    p.add_argument("--eval-data", metavar="FILE",
                   help="held-out rows (.npy, or .npz with x/inputs or one array per input name, and "
                   "optional y/labels); without it, size and speed are measured on random inputs "
                   "and accuracy is not")
    p.add_argument("--eval-labels", metavar="FILE", help="labels .npy for --eval-data")
    p.add_argument("--output", metavar="NAME", dest="judged_output",
                   help="the model output to judge (default: probabilities/logits, else a label, "
                   "else a regression output)")
    p.add_argument("--repeats", type=int, default=200, help="timed runs per batch size (default 200)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    p.add_argument("--provider", default="CPUExecutionProvider",
                   help="onnxruntime execution provider to measure on (default CPUExecutionProvider)")
    if output:
        p.add_argument("--repository", metavar="DIR",
                       help="model repository to write into (default: the model's own)")
        p.add_argument("--name", help="variant model name (default: <model>-<technique>)")
        p.add_argument("--version", type=int, default=1, help="version folder (default 1)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing variant")


def _training(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--train-data", required=required, metavar="FILE",
                   help="labelled training rows (.npz with x and y, or .npy with --train-labels)")
    p.add_argument("--train-labels", metavar="FILE")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)


def _add_quantize(sub) -> None:
    p = sub.add_parser("quantize", help="int8 (dynamic / static QDQ) or fp16 variant")
    _common(p)
    p.add_argument("--mode", choices=("dynamic", "static", "fp16"), default="static")
    p.add_argument("--per-channel", action="store_true", help="per-channel weight scales")
    p.add_argument("--weight-type", choices=("qint8", "quint8"), default="qint8",
                   help="dynamic mode weight type (qint8 is faster on VNNI CPUs)")
    p.add_argument("--activation-type", choices=("qint8", "quint8"), default="quint8",
                   help="static mode activation type")
    p.add_argument("--calibration", metavar="FILE", help="calibration rows for static mode (.npy/.npz)")
    p.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax",
                   help="static mode calibration method")
    p.add_argument("--calibration-batch-size", type=int, default=64)
    p.add_argument("--num-bins", type=int, default=2048, help="histogram bins (entropy, percentile)")
    p.add_argument("--num-quantized-bins", type=int, default=128, help="entropy target bins")
    p.add_argument("--percentile", type=float, default=99.999)
    p.set_defaults(optimize_func=_quantize)


def _add_prune(sub) -> None:
    p = sub.add_parser("prune", help="unstructured or structured magnitude pruning")
    _common(p)
    _training(p, required=False)
    p.add_argument("--method", choices=("structured", "unstructured"), default="structured")
    p.add_argument("--sparsity", type=float, default=0.5,
                   help="fraction of hidden units (structured) or weights (unstructured) to remove")
    p.add_argument("--scope", choices=("layer", "global"), default="layer", help="unstructured only")
    p.add_argument("--schedule", choices=("oneshot", "linear", "cubic"), default="cubic")
    p.set_defaults(optimize_func=_prune)


def _add_distill(sub) -> None:
    p = sub.add_parser("distill", help="train a smaller student on the model's soft targets")
    _common(p)
    _training(p, required=True)
    p.add_argument("--hidden", default="128", help="student hidden sizes, comma separated (e.g. 128,64)")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.7, help="weight of the soft-target loss")
    p.add_argument("--augment", choices=("none", "noise", "mixup"), default="none")
    p.add_argument("--augment-factor", type=int, default=1)
    p.set_defaults(optimize_func=_distill)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="re-measure an existing variant against its original")
    _common(p, output=False)
    p.add_argument("--baseline", required=True, help="the fp32 original (.onnx or <repo>/<model>)")
    p.set_defaults(optimize_func=_report)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `optimize` with its subcommands to a parent CLI; its handler is `args.func(args)`,
    which returns the exit code."""
    parser = subparsers.add_parser("optimize", help="quantize, prune or distill ONNX models",
                                   description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="optimize_command", required=True)
    for add in (_add_quantize, _add_prune, _add_distill, _add_report):
        add(sub)
    parser.set_defaults(func=run)
    return parser


def _dataset(path: str | None, labels: str | None):
    from kairos.optimize.data import load_dataset

    return None if path is None else load_dataset(path, labels)


def _measure(args: argparse.Namespace):
    from kairos.optimize.pipeline import Measure

    if args.repeats < 1:
        raise OptimizeError("--repeats must be >= 1")
    from kairos.optimize.runtime import check_provider

    check_provider(args.provider)
    return Measure(_dataset(args.eval_data, args.eval_labels), args.repeats, args.threads, args.provider,
                   args.judged_output)


def _dest(args: argparse.Namespace):
    from kairos.optimize.pipeline import Destination

    return Destination(args.repository, args.name, args.version, args.overwrite)


def _train_config(args: argparse.Namespace, **extra: float):
    from kairos.optimize.train import TrainConfig

    return TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed, **extra)


def _quantize(args: argparse.Namespace):
    from kairos.optimize.pipeline import quantize_model

    return quantize_model(args.model, args.mode, _measure(args), _dest(args),
                          _dataset(args.calibration, None), args.method, args.per_channel,
                          args.calibration_batch_size, args.weight_type, args.activation_type,
                          args.num_bins, args.num_quantized_bins, args.percentile)


def _prune(args: argparse.Namespace):
    from kairos.optimize.pipeline import prune_model
    from kairos.optimize.prune import PruneSettings

    settings = PruneSettings(args.method, args.sparsity, args.scope, args.schedule)
    train = _dataset(args.train_data, args.train_labels)
    cfg = _train_config(args) if train is not None else None
    return prune_model(args.model, settings, _measure(args), _dest(args), train, cfg)


def _hidden(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise OptimizeError(f"--hidden must be comma-separated integers, not '{text}'") from None


def _distill(args: argparse.Namespace):
    from kairos.optimize.distill import DistillSettings
    from kairos.optimize.pipeline import distill_model

    settings = DistillSettings(_hidden(args.hidden), args.augment, args.augment_factor)
    cfg = _train_config(args, temperature=args.temperature, alpha=args.alpha)
    train = _dataset(args.train_data, args.train_labels)
    return distill_model(args.model, settings, train, _measure(args), _dest(args), cfg)


def _report(args: argparse.Namespace):
    from kairos.optimize.pipeline import report_model

    return report_model(args.model, args.baseline, _measure(args))


def run(args: argparse.Namespace) -> int:
    """Run the parsed subcommand; input errors become one line on stderr and exit code 2."""
    try:
        output = args.optimize_func(args)
    except OptimizeError as exc:
        print(f"kairos optimize: error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - a bug of ours: one line, the traceback on request
        if os.environ.get("KAIROS_DEBUG"):
            raise
        print(f"kairos optimize: internal error: {type(exc).__name__}: {_one_line(str(exc))} "
              "(a bug in Kairos; set KAIROS_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    print(output.report_md.read_text())
    print(f"wrote {output.model_path}\n      {output.report_json}\n      {output.report_md}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kairos")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["optimize", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)
