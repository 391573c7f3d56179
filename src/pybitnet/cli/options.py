"""Options that commands of several modules take, and the checks that turn a bad value into one
line naming the option as the user typed it, before any work starts."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import click
import typer
from typer.core import TyperCommand

ModelOption = Annotated[
    Path | None,
    typer.Option(
        "--model",
        "-m",
        help="GGUF model file, or a Hugging Face checkpoint folder (converted once, cached); "
        "default: the embedded model.",
    ),
]


def fail(option: str, message: str) -> NoReturn:
    """Exit 2 with "Invalid value for OPTION: MESSAGE" (click's usage-error line)."""
    raise typer.BadParameter(message, param_hint=option)


def within(low: float, high: float | None = None) -> Callable[[Any], Any]:
    """An option callback that refuses a value outside [low, high], naming the value."""
    span = f"from {low} to {high}" if high is not None else f"{low} or more"

    def check(value: Any) -> Any:
        if value is not None and (value < low or (high is not None and value > high)):
            raise typer.BadParameter(f"{value} is out of range: it must be {span}")
        return value

    return check


def check_draft_tokens(value: int) -> int:
    """The --draft-tokens callback of run, serve and bench: 0 to MAX_DRAFT_TOKENS."""
    from pybitnet.speculative import MAX_DRAFT_TOKENS  # numpy: imported when a command runs only

    return within(0, MAX_DRAFT_TOKENS)(value)


def _cap_threads(threads: int | None) -> int | None:
    cores = os.cpu_count() or 1
    within(1)(threads)
    if threads is not None and threads > cores:
        typer.echo(f"pybitnet: --threads {threads}: this machine has {cores} cores; using {cores}",
                   err=True)  # fmt: skip
        return cores
    return threads


def _check_output_head(head: str | None) -> str | None:
    from pybitnet.engine.forward import OUTPUT_HEADS  # the engine only when a command loads one

    if head not in OUTPUT_HEADS:
        fail(
            "--output-head",
            f"expected one of {', '.join(filter(None, OUTPUT_HEADS))}, got {head!r}",
        )
    return head


def _check_kv_cache(kv_cache: str | None) -> str | None:
    from pybitnet.kernels.layout import KV_CACHE_TYPES  # numpy only when a command runs

    if kv_cache is not None and kv_cache not in KV_CACHE_TYPES:
        fail("--kv-cache", f"expected one of {', '.join(KV_CACHE_TYPES)}, got {kv_cache!r}")
    return kv_cache


ThreadsOption = Annotated[
    int | None,
    typer.Option(callback=_cap_threads, help="Kernel threads (default: all cores)."),
]
OutputHeadOption = Annotated[
    str | None,
    typer.Option(
        "--output-head",
        callback=_check_output_head,
        help="q8: hold the output layer as int8 rows; q6_k, q4_k: requantize it to that "
        "format at load (faster decode; `pybitnet accuracy` measures the cost).",
    ),
]

KvCacheOption = Annotated[
    str | None,
    typer.Option(
        "--kv-cache",
        callback=_check_kv_cache,
        help="The KV cache's element type: f16 (the default), f32, or q8_0 (ggml's 8-bit "
        "blocks); `pybitnet accuracy` measures each one's cost.",
    ),
]


class PlainHelp:
    """Help in click's words: ARG and [ARG] in the usage line (typer writes {arg}), and no
    <bool> after --help. Mixed into the app's group and command classes."""

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        pieces = super().collect_usage_pieces(ctx)  # type: ignore[misc]
        return [re.sub(r"\{(\w+)\}", lambda m: m[1].upper(), p) for p in pieces]

    def get_help_option(self, ctx: click.Context) -> click.Option | None:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class Command(PlainHelp, TyperCommand):
    pass


def flag(name: str, help: str) -> Any:
    """A boolean flag; the empty metavar keeps typer's help from showing a <bool> value that the
    flag does not take."""
    return typer.Option(name, metavar="", help=help)


JsonFlag = Annotated[bool, flag("--json", "Print one JSON object to stdout.")]
JsonFileOption = Annotated[
    Path | None, typer.Option("--json-file", help="Also write the report as JSON here.")
]

# The sampling options of `run` and `chat`, defined once.
MaxTokensOption = Annotated[
    int, typer.Option(callback=within(1), help="Tokens to generate at most.")
]
TemperatureOption = Annotated[float, typer.Option(callback=within(0.0), help="0 means greedy.")]
TopKOption = Annotated[
    int, typer.Option(callback=within(0), help="Keep the k likeliest tokens (0: off).")
]
TopPOption = Annotated[
    float, typer.Option(callback=within(0.0, 1.0), help="Nucleus sampling mass (1: off).")
]
MinPOption = Annotated[
    float, typer.Option(callback=within(0.0, 1.0), help="Drop tokens below min_p * p_max (0: off).")
]
RepeatPenaltyOption = Annotated[
    float, typer.Option(callback=within(0.0), help="Penalty on recent tokens (1: off).")
]
SeedOption = Annotated[int | None, typer.Option(help="Sampling seed (default: random).")]
StopOption = Annotated[list[str] | None, typer.Option(help="Stop string (repeatable).")]


def read_text(path: Path, option: str) -> str:
    """A UTF-8 text file, or one line naming the option, the file and the first bad byte."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start]
        fail(option, f"{path} is not UTF-8 text (byte {byte:#04x} at offset {exc.start})")
    except OSError as exc:
        fail(option, f"cannot read {path}: {exc.strerror}")


def read_prompt(prompt: str | None, path: Path | None) -> str:
    """The prompt as typed, from stdin when it is -, or from the -f file."""
    import sys

    if (prompt is None) == (path is None):
        fail("PROMPT", "give a prompt, - to read it from stdin, or -f FILE (one of them)")
    if path is not None:
        return read_text(path, "-f")
    return sys.stdin.read() if prompt == "-" else prompt


def use_threads(threads: int | None) -> None:
    """Set the kernels' thread count when the command was given one."""
    from pybitnet import kernels

    if threads is not None:
        kernels.set_threads(threads)
