"""`cnnzoo predict`: the top-k classes of images, with a checkpoint, an .onnx or an OpenVINO IR."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cnnzoo.choices import BACKENDS
from cnnzoo.ensemble import TTA_MODES
from cnnzoo.precision import PRECISION_CHOICES

MODEL_SUFFIXES = (".pt", ".pth", ".onnx", ".xml")  # the leading arguments with these suffixes are the models


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def add_trust_flag(p: argparse.ArgumentParser) -> None:
    """--trust-torchscript, on every command that opens a model file for inference (predict, serve)."""
    p.add_argument("--trust-torchscript", action="store_true",
                   help="accept a TorchScript export (.pt): this file is a program: it runs code when loaded")


def add_precision_flag(p: argparse.ArgumentParser) -> None:
    """--precision, on every command that runs a model file (predict, serve)."""
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                   help="auto (default): the configuration `cnnzoo export --precision` chose and recorded in the "
                        "file, else the file's own (fp32, or int8 for a quantised export); or fp32, bf16, int8")


def _models_and_images(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """MODEL [MODEL ...] IMAGE_OR_DIR ...: the leading arguments that are model files are the ensemble (at least
    one image argument stays an image)."""
    items = [args.model, *args.images]
    n = 1
    while n < len(items) - 1 and Path(items[n]).suffix.lower() in MODEL_SUFFIXES and Path(items[n]).is_file():
        n += 1
    return items[:n], items[n:]


def cmd_predict(args: argparse.Namespace) -> int:
    from cnnzoo.prediction import expand_sources, predict, write_csv
    from cnnzoo.runtime import open_runtime

    models, images = _models_and_images(args)
    paths = expand_sources(images)  # a mistyped path fails before a large model is loaded
    runtimes = [open_runtime(m, args.backend, precision=args.precision, trust_torchscript=args.trust_torchscript)
                for m in models]
    results = predict(runtimes, paths, topk=args.topk, tta=args.tta)
    if args.csv:
        write_csv(results, args.csv)
    if args.json:
        predictions = [r.to_dict() for r in results]
        first = runtimes[0]
        ensemble = {"ensemble": [r.path for r in runtimes]} if len(runtimes) > 1 else {}
        print(json.dumps({"model": first.model_name, "backend": first.backend, **ensemble, "tta": args.tta,
                          "predictions": predictions}, indent=1))
    else:
        for result in (r for r in results if r.ok):
            print(result)
    errors = [r for r in results if not r.ok]
    for result in errors:
        print(f"cnnzoo predict: error: {result.error}", file=sys.stderr)
    return 2 if errors else 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="classify images with a trained model",
        description="Print the top-k classes of each image, with the preprocessing stored in the model file. "
        "Several models (leading .pt/.onnx/.xml arguments, the same classes) are an ensemble averaging their "
        "probabilities. Files that are not images are reported by name (exit code 2) and the others still "
        "predicted.",
        usage="%(prog)s [options] MODEL [MODEL ...] IMAGE_OR_DIR [IMAGE_OR_DIR ...]",
    )
    p.add_argument("model", metavar="MODEL", help="a cnnzoo checkpoint (.pt), an .onnx or an OpenVINO .xml; "
                                                  "more of them after it make an ensemble")
    p.add_argument("images", metavar="IMAGE_OR_DIR", nargs="+", help="image files, or folders of images")
    p.add_argument("--tta", choices=TTA_MODES, default="none",
                   help="test-time augmentation: average the probabilities of mirrored and/or shifted views")
    p.add_argument("--csv", metavar="OUT.csv", help="also write the predictions as CSV (path, class_i, "
                                                     "probability_i, error)")
    p.add_argument("--topk", type=_positive, default=5, help="classes shown per image (default: 5)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of one line per image")
    p.add_argument(
        "--backend",
        choices=("auto", *BACKENDS),
        default="auto",
        help="inference runtime (default: auto, the fastest installed for the file on CPU: "
        "OpenVINO, then ONNX Runtime, for .onnx; torch for a checkpoint)",
    )
    add_precision_flag(p)
    add_trust_flag(p)
    p.set_defaults(handler=cmd_predict)
