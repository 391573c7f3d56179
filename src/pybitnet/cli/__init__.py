"""The `pybitnet` command: a thin layer over the Python API.

Each subcommand parses its options, calls one API function, and prints. Errors that pybitnet
raises for bad input are shown as one line and exit with status 2. The commands live by role:
generation.py (run, chat, serve), evaluation.py (perplexity, accuracy), models.py (convert,
make-model, inspect), receipts.py (gate, verify, report, bench); console.py and options.py hold
what they share. They are registered here, in the order `pybitnet --help` lists them.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from pybitnet.cli.evaluation import accuracy, perplexity
from pybitnet.cli.generation import chat, run, serve
from pybitnet.cli.models import convert, inspect, make_model
from pybitnet.cli.options import Command, PlainHelp
from pybitnet.cli.receipts import bench_app, gate, report, verify
from pybitnet.errors import PyBitnetError


class _Commands(PlainHelp, TyperGroup):
    """Turns a PyBitnetError (bad input the API found) into one line and exit status 2, as
    click does for a bad option, in the `pybitnet` command and in tests' CliRunner alike."""

    def invoke(self, ctx: typer.Context) -> object:
        try:
            return super().invoke(ctx)
        except PyBitnetError as exc:
            typer.echo(f"pybitnet: error: {exc}", err=True)
            raise typer.Exit(2) from None


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import version

        typer.echo(f"pybitnet {version('pybitnet')}")
        raise typer.Exit()


app = typer.Typer(
    name="pybitnet",
    cls=_Commands,
    help="Fast, correct and honestly measured inference for ternary (BitNet b1.58) models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command(cls=Command)(run)
app.command(cls=Command)(chat)
app.command(cls=Command)(serve)
app.command(cls=Command)(perplexity)
app.command(cls=Command)(accuracy)
app.command(cls=Command)(convert)
app.command("make-model", cls=Command)(make_model)
app.command(cls=Command)(gate)
app.command(cls=Command)(inspect)
app.command(cls=Command)(verify)
app.command(cls=Command)(report)
app.add_typer(bench_app, name="bench")


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", metavar="", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Fast, correct and honestly measured inference for ternary (BitNet b1.58) models."""


def main() -> None:
    app()
