"""`cnnzoo explain`: what a trained network looks at in one image, as a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

# Spelled out here (equal to cnnzoo.explanation.METHODS, a test checks it) so that --help does not import torch.
METHODS = ("cam", "gradcam", "gradcam++", "saliency", "guided-backprop", "deconvnet", "features")


def cmd_explain(args: argparse.Namespace) -> int:
    from cnnzoo.explanation import explain

    result = explain(args.checkpoint, args.image, method=args.method, target=args.target, layer=args.layer)
    out = result.save(args.out or f"{Path(args.image).stem}_{args.method}.png")
    print(f"{result.title()} -> {out}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explain",
        help="heat map of what a network looks at",
        description="Explain one prediction of a checkpoint: a heat map (or feature grid) overlaid on the image, "
        "with the predicted class and probability in the title, written as a PNG.",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="a cnnzoo checkpoint (.pt)")
    p.add_argument("image", metavar="IMAGE", help="an image file")
    p.add_argument("--method", choices=METHODS, default="gradcam", help="explanation method (default: gradcam)")
    p.add_argument("--target", metavar="CLASS", help="class name or index to explain (default: the predicted one)")
    p.add_argument("--layer", metavar="NAME", help="module name (default: the model's cam_layer)")
    p.add_argument("--out", metavar="FILE.png", help="output file (default: IMAGE-STEM_METHOD.png)")
    p.set_defaults(handler=cmd_explain)
