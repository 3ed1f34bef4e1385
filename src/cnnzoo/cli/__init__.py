"""The `cnnzoo` command: argparse sub-commands, each a thin layer over one library call.

Each module of this package defines ``add_commands(subparsers)``; handlers import heavy libraries (torch)
only when they run, so that `cnnzoo serve model.onnx` and `--help` start without torch.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from cnnzoo.errors import UserError

__all__ = ["main", "build_parser"]

try:
    from importlib.metadata import version as _version

    __version__ = _version("cnnzoo")
except Exception:  # running from a source tree without installing
    __version__ = "0+unknown"


def input_size_arg(text: str) -> tuple[int, ...]:
    """argparse type of every --input-size: 'CxHxW' (3x224x224), or 'HxW' / 'H' to keep the channels of the
    model or the data. Commas work as separators too."""
    try:
        size = tuple(int(p) for p in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"input size must look like 3x224x224, 224x224 or 224, not {text!r}") from None
    size = size * 2 if len(size) == 1 else size
    if len(size) not in (2, 3) or min(size) < 1:
        raise argparse.ArgumentTypeError(f"input size must be CxHxW, HxW or H with positive sizes, not {text!r}")
    return size


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnnzoo", description="The classic image-classification CNNs.")
    parser.add_argument("--version", action="version", version=f"cnnzoo {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{module.name}").add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args) or 0
    except UserError as err:
        print(f"cnnzoo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"cnnzoo {args.command}: error: no such file: {err.filename or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cnnzoo {args.command}: interrupted", file=sys.stderr)
        return 130
