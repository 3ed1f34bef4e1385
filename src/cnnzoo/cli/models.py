"""`cnnzoo models` and `cnnzoo summary`: the registry and the layer-by-layer analysis."""

from __future__ import annotations

import argparse
import sys

from cnnzoo.cli import input_size_arg
from cnnzoo.errors import UserError


def cmd_models(args: argparse.Namespace) -> int:
    from cnnzoo import catalog

    if args.update_readme:  # measure every network afresh: the cache and the README's copy are rewritten from it
        rows = catalog.measure_table()
        catalog.write_cache(rows)
        changed = catalog.update_readme(args.update_readme, catalog.render_markdown(rows))
        print(f"{args.update_readme}: {'updated' if changed else 'already up to date'} ({len(rows)} models)")
        return 0
    cached = catalog.cache_is_current()
    rows = catalog.model_table(args.pattern)  # without the cache, every network is built and traced: ~20 s
    if not rows:
        raise UserError(f"no model matches {args.pattern!r}")
    print(catalog.render_markdown(rows) if args.markdown else catalog.render_text(rows))
    if not cached:
        print("cnnzoo models: measured every network, as the model sources changed since the table was cached "
              "(`make readme-table` refreshes the cache)", file=sys.stderr)  # fmt: skip
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    import torch

    from cnnzoo.registry import create_model, model_info
    from cnnzoo.summary import summarize

    info = model_info(args.model)
    input_size = args.input_size or info.input_size
    if len(input_size) == 2:  # HxW: the model's own channels
        input_size = (info.input_size[0], *input_size)
    with torch.device("meta"):  # shapes only: no weights, no arithmetic
        model = create_model(args.model, num_classes=args.num_classes, in_chans=input_size[0],
                             small_input=args.small_input or None)
    summary = summarize(model, input_size, args.model, depth=args.depth)
    print({"table": summary.table, "json": summary.to_json, "csv": summary.to_csv}[args.format]())
    return 0


def _depth(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list the registered networks",
                              description="List the registered networks.")
    p.add_argument("pattern", nargs="?", default="*", help="glob pattern, e.g. 'resnet*'")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--update-readme", metavar="FILE",
                   help="measure every network, rewrite the cached table and the table between FILE's markers")
    p.set_defaults(handler=cmd_models)

    p = subparsers.add_parser("summary", help="layer-by-layer table of a network",
                              description="Output shape, kernel, stride, padding, groups, parameters, MACs, receptive "
                                          "field and jump of every layer.")
    p.add_argument("model")
    p.add_argument("--input-size", type=input_size_arg, metavar="CxHxW", help="default: the model's own")
    p.add_argument("--num-classes", type=int, help="default: the model's own")
    p.add_argument("--small-input", action="store_true", help="3x3 stride-1 stem for 32x32 images")
    p.add_argument("--depth", type=_depth, metavar="N",
                   help="fold rows into modules N levels deep (1: stages, 2: blocks), as the papers' tables do")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.set_defaults(handler=cmd_summary)
