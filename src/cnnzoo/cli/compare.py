"""`cnnzoo compare` and `cnnzoo chart`: the zoo (or your runs) side by side, as a table and as a chart."""

from __future__ import annotations

import argparse
import sys

FORMATS = ("markdown", "csv", "json")
# Spelled out here (equal to cnnzoo.compare.BACKENDS, a test checks it) so that --help does not import torch.
BACKENDS = ("torch", "onnxruntime", "openvino", "cuda")


def _backends(text: str) -> list[str]:
    chosen = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in chosen if b not in BACKENDS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"backends are a comma list of {', '.join(BACKENDS)}, not {text!r}")
    return chosen


def cmd_compare(args: argparse.Namespace) -> int:
    from cnnzoo.compare import DOCS_TIMED, compare, write_docs

    timed = args.timed.split(",") if args.timed else (DOCS_TIMED if args.update_docs else None)
    result = compare(args.targets, timing=not args.no_timing, timed=timed, backends=args.backends,
                     cache_dir=args.cache, threads=args.threads, progress=True, curves=args.out)
    if args.update_docs:
        print(f"{write_docs(args.update_docs, result)}: {len(result.rows)} networks", file=sys.stderr)
    else:
        print(result.render(args.format))
    if getattr(result, "curves", None):
        print(f"curves -> {result.curves}", file=sys.stderr)
    return 0


def cmd_chart(args: argparse.Namespace) -> int:
    from cnnzoo.compare import chart

    print(f"chart -> {chart(args.targets, args.out, progress=True)}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare", help="networks (or training runs) side by side",
        description="With model names or glob patterns (default: every network): Keras' applications table: "
        "weight size, published ImageNet top-1/top-5, parameters, depth, MACs and the time per batch-1 inference "
        "step measured here on each backend. With run folders: best and last validation top-1, size, training "
        "time and speed of each run, and one PNG overlaying their curves.")
    p.add_argument("targets", nargs="*", metavar="PATTERN|RUN", help="model names or patterns ('resnet*'), or run "
                                                                       "folders")
    p.add_argument("--format", choices=FORMATS, default="markdown")
    p.add_argument("--no-timing", action="store_true", help="the static columns only (fast: nothing is run)")
    p.add_argument("--timed", metavar="PATTERN,...", help="time only these networks (default: all chosen)")
    p.add_argument("--backends", type=_backends, metavar="B,...",
                   help=f"backends to time, of {', '.join(BACKENDS)} (default: every available one)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="intra-op threads of every CPU backend (default: each library's own; 1 is steadiest on a "
                        "busy machine)")
    p.add_argument("--cache", metavar="DIR", help="where ONNX exports are kept (default ~/.cache/cnnzoo/exports)")
    p.add_argument("--out", default="runs_compare.png", metavar="FILE.png", help="runs: the curves PNG")
    p.add_argument("--update-docs", metavar="FILE.md",
                   help="write the Markdown page (docs/models.md); times cnnzoo.compare.DOCS_TIMED unless --timed")
    p.set_defaults(handler=cmd_compare)

    p = subparsers.add_parser(
        "chart", help="accuracy against compute, as a bubble chart PNG",
        description="Top-1 against GMACs (log axis), bubble area proportional to parameters, coloured by family: "
        "from published ImageNet figures (networks matching PATTERNs, default all), or from run folders (their "
        "best validation top-1).")
    p.add_argument("targets", nargs="*", metavar="PATTERN|RUN", help="model names or patterns, or run folders")
    p.add_argument("--out", default="accuracy_vs_macs.png", metavar="FILE.png")
    p.set_defaults(handler=cmd_chart)
