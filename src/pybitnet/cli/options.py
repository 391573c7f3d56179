"""Options that commands of several modules take."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ModelOption = Annotated[
    Path | None,
    typer.Option(
        "--model",
        "-m",
        help="GGUF model file, or a Hugging Face checkpoint folder (converted once, cached); "
        "default: the embedded model.",
    ),
]
ThreadsOption = Annotated[int | None, typer.Option(help="Kernel threads (default: all cores).")]
OutputHeadOption = Annotated[
    str | None,
    typer.Option(
        "--output-head",
        help="q8: hold the output layer as int8 rows (faster decode; `pybitnet accuracy` "
        "measures the cost).",
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
JsonFileOption = Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")]


def use_threads(threads: int | None) -> None:
    """Set the kernels' thread count when the command was given one."""
    from pybitnet import kernels

    if threads is not None:
        kernels.set_threads(threads)
