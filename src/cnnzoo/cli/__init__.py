"""The `cnnzoo` command: argparse sub-commands, each a thin layer over one library call.

Each module of this package defines ``add_commands(subparsers)``; handlers import heavy libraries (torch)
only when they run, so that `cnnzoo serve model.onnx` and `--help` start without torch.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from cnnzoo.artifact import parse_input_size
from cnnzoo.errors import UserError

__all__ = ["main", "build_parser"]

try:
    from importlib.metadata import version as _version

    __version__ = _version("cnnzoo")
except Exception:  # running from a source tree without installing
    __version__ = "0+unknown"


def input_size_arg(text: str) -> tuple[int, ...]:
    """argparse type of every --input-size (cnnzoo.artifact.parse_input_size): 'CxHxW' (3x224x224), or 'HxW' / 'H'
    to keep the channels of the model or the data. Commas work as separators too."""
    try:
        return parse_input_size(text)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


class _Parser(argparse.ArgumentParser):
    """A usage mistake is one line (which command, what is wrong, where help is) and exit code 2, not the usage
    block argparse prints (21 lines for `train`)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cnnzoo", description="The classic image-classification CNNs.")
    parser.add_argument("--version", action="version", version=f"cnnzoo {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{module.name}").add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # a usage mistake: one line, SystemExit(2)
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
