"""`cnnzoo plot RUN [RUN ...]`: the loss and top-1 curves of training runs overlaid in one PNG (cnnzoo.plots)."""

from __future__ import annotations

import argparse


def cmd_plot(args: argparse.Namespace) -> int:
    from cnnzoo.compare import load_run
    from cnnzoo.plots import plot_runs

    runs = [load_run(path) for path in args.runs]
    labels = [r.label for r in runs]
    if len(set(labels)) < len(labels):  # runs/a/x and runs/b/x: tell them apart by their parent folder
        labels = [f"{r.path.parent.name}/{r.label}" for r in runs]
    print(plot_runs({label: run.epochs for label, run in zip(labels, runs)}, args.out))
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plot", help="overlay the training curves of runs in one PNG",
        description="Loss and top-1 per epoch of each run folder (its metrics.jsonl), one colour per run, training "
        "dashed and validation solid; the loss axis is logarithmic when the losses span more than a decade.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders written by `cnnzoo train`")
    p.add_argument("--out", default="runs.png", metavar="FILE.png", help="where the PNG goes (default runs.png)")
    p.set_defaults(handler=cmd_plot)
