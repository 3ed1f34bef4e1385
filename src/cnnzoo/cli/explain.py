"""`cnnzoo explain`: what a trained network looks at in one image, or what it has learnt (textbook figures)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnnzoo.errors import UserError

# Spelled out here (equal to cnnzoo.explanation.METHODS and cnnzoo.visualize.VISUALIZATIONS, a test checks them)
# so that --help does not import torch.
METHODS = ("cam", "gradcam", "gradcam++", "saliency", "guided-backprop", "deconvnet", "features")
VISUALIZATIONS = ("top-activations", "filters")  # about the network, over a folder or none: no IMAGE


def _top_activations(args: argparse.Namespace):
    from cnnzoo.images import skipped_warning
    from cnnzoo.visualize import top_activations

    result = top_activations(args.checkpoint, args.data, layer=args.layer, maps=args.maps, top=args.top)
    if result.skipped:  # the figure is drawn from the others, and its title counts only those
        print(f"warning: {skipped_warning(result.skipped, args.data)}", file=sys.stderr)
    return result


def _filters(args: argparse.Namespace):
    from cnnzoo.visualize import first_layer_filters

    return first_layer_filters(args.checkpoint)


_VISUALIZE = {"top-activations": _top_activations, "filters": _filters}


def _refuse_own_input(out: str | Path | None, *inputs: str | None) -> None:
    """The output must not be a file this command reads: the checkpoint (a run folder's last.pt) or the image."""
    if out is None:
        return
    out = Path(out)
    for source in filter(None, inputs):
        path = Path(source) / "last.pt" if Path(source).is_dir() else Path(source)
        if path.resolve() == out.resolve() or (path.exists() and out.exists() and path.samefile(out)):
            raise UserError(f"--out {out} is this command's own input {source}; choose another file")


def cmd_explain(args: argparse.Namespace) -> int:
    if args.method in _VISUALIZE:
        if args.image is not None:
            raise UserError(f"--method {args.method} shows the network, not one image: drop IMAGE")
        _refuse_own_input(args.out, args.checkpoint)
        result = _VISUALIZE[args.method](args)
        print(f"{args.method} of {result.model_name} {result.layer} -> "
              f"{result.save(args.out or f'{result.model_name}_{args.method}.png')}")
        return 0
    from cnnzoo.explanation import explain

    if args.image is None:
        raise UserError(f"--method {args.method} explains one image: give IMAGE")
    out = args.out or f"{Path(args.image).stem}_{args.method}.png"
    _refuse_own_input(out, args.checkpoint, args.image)
    result = explain(args.checkpoint, args.image, method=args.method, target=args.target, layer=args.layer)
    out = result.save(out)
    print(f"{result.title()} -> {out}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explain",
        help="heat map of what a network looks at; its top activations and filters",
        description="Explain one prediction of a checkpoint: a heat map (or feature grid) overlaid on the image, "
        "with the predicted class and probability in the title, written as a PNG. Or, without IMAGE, show the "
        "network: --method top-activations (Zeiler & Fergus' figure: each feature map's strongest activations "
        "over --data, as deconvnet reconstructions beside their input patches) or --method filters (the first "
        "layer's kernels, AlexNet's figure 3).",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="a cnnzoo checkpoint (.pt)")
    p.add_argument("image", metavar="IMAGE", nargs="?", help="an image file (not with top-activations, filters)")
    p.add_argument("--method", choices=METHODS + VISUALIZATIONS, default="gradcam",
                   help="explanation method (default: gradcam)")
    p.add_argument("--target", metavar="CLASS", help="class name or index to explain (default: the predicted one)")
    p.add_argument("--layer", metavar="NAME", help="module name (default: the model's cam_layer)")
    p.add_argument("--data", metavar="DIR", help="top-activations: a folder of images to search")
    p.add_argument("--maps", type=int, default=16, help="top-activations: feature maps shown (default 16)")
    p.add_argument("--top", type=int, default=9, help="top-activations: activations per map (default 9)")
    p.add_argument("--out", metavar="FILE.png", help="output file (default: IMAGE-STEM_METHOD.png, MODEL_METHOD.png)")
    p.set_defaults(handler=cmd_explain)
