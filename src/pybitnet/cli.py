"""The `pybitnet` command: a thin layer over the Python API.

Each subcommand parses its options, calls one API function, and prints. Errors that pybitnet
raises for bad input are shown as one line and exit with status 2.
"""

from __future__ import annotations

import sys

import typer

from pybitnet.errors import PyBitnetError

app = typer.Typer(
    name="pybitnet",
    help="Fast, correct and honestly measured inference for ternary (BitNet b1.58) models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def main() -> None:
    try:
        app()
    except PyBitnetError as exc:
        print(f"pybitnet: error: {exc}", file=sys.stderr)
        sys.exit(2)
