"""`cnnzoo import`: a torchvision or timm weight file as a cnnzoo checkpoint, with its class names and the
preprocessing its publisher evaluated it with (cnnzoo.importing), for evaluate, predict, export, explain and serve."""

from __future__ import annotations

import argparse

from cnnzoo.artifact import INTERPOLATIONS
from cnnzoo.cli import input_size_arg


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def _stated(args: argparse.Namespace) -> dict:
    """The preprocessing the user stated, as InputSpec fields."""
    stated = {key: getattr(args, key) for key in ("resize_size", "interpolation", "mean", "std")}
    stated["input_size"] = args.input_size
    return {key: value for key, value in stated.items() if value is not None}


def cmd_import(args: argparse.Namespace) -> int:
    from cnnzoo.importing import import_weights, read_class_names

    classes = read_class_names(args.classes) if args.classes else None
    print(import_weights(args.model, args.weights, args.out, classes=classes, preprocessing=_stated(args)))
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import", help="a torchvision/timm weight file as a cnnzoo model (classes, preprocessing)",
        description="Pack a torchvision or timm weight file (.pth, .pt, .safetensors; tensors only, never "
                    "unpickled) into a cnnzoo checkpoint with its class names and the preprocessing its publisher "
                    "evaluated it with: torchvision's transforms of that very weights file, timm's default "
                    "configuration, or the stated one. evaluate, predict, export, explain and serve take the "
                    "result as they take a trained model.")
    p.add_argument("model", help="the registered network the file holds (cnnzoo models)")
    p.add_argument("weights", help="the weight file")
    p.add_argument("--out", default=None, help="the checkpoint to write (default: MODEL.pt beside the weights)")
    p.add_argument("--classes", default=None, metavar="FILE",
                   help="class names, one per line in index order (default: ImageNet-1k's for 1000 classes)")
    g = p.add_argument_group("preprocessing, when the weights' own differs from the published one")
    g.add_argument("--input-size", type=input_size_arg, default=None, metavar="HxW", help="the centre crop")
    g.add_argument("--resize-size", type=int, default=None, metavar="N", help="the shorter side before the crop")
    g.add_argument("--interpolation", choices=INTERPOLATIONS, default=None)
    g.add_argument("--mean", type=_floats, default=None, metavar="R,G,B")
    g.add_argument("--std", type=_floats, default=None, metavar="R,G,B")
    p.set_defaults(handler=cmd_import)
