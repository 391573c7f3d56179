"""`pybitnet perplexity` and `accuracy`: how well a model, and each compute path, predicts text."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pybitnet.cli.console import load_model, status
from pybitnet.cli.options import (
    JsonFileOption,
    JsonFlag,
    ModelOption,
    ThreadsOption,
    fail,
    read_text,
    use_threads,
    within,
)

ContextOption = Annotated[
    int, typer.Option("-c", "--ctx", callback=within(2), help="Tokens per chunk.")
]


def perplexity(
    text_file: Annotated[
        Path, typer.Argument(metavar="TEXT_FILE", help="The text to score.", exists=True)
    ],
    model: ModelOption = None,
    ctx: ContextOption = 128,
    threads: ThreadsOption = None,
    json_output: JsonFlag = False,
) -> None:
    """Perplexity by llama-perplexity's procedure (comparable with its figures)."""
    import json

    from pybitnet.eval.perplexity import print_report, text_perplexity

    text = read_text(text_file, "TEXT_FILE")
    m = load_model(model, threads)
    if ctx > m.n_ctx:
        fail("-c", f"{ctx} tokens per chunk; {m.path.name} holds {m.n_ctx} tokens of context")
    result = text_perplexity(m, text, ctx)
    print(json.dumps(vars(result))) if json_output else print_report(result)


def accuracy(
    model: ModelOption = None,
    preset: Annotated[
        str | None, typer.Option(help="A synthetic model instead (tiny or 2b), made in a temp dir.")
    ] = None,
    text_file: Annotated[
        Path | None,
        typer.Option("--text", exists=True, help="Text to score (default: a built-in story)."),
    ] = None,
    ctx: ContextOption = 128,
    threads: ThreadsOption = None,
    json_path: JsonFileOption = None,
) -> None:
    """Every ternary path (I2_S, TQ2_0, TQ1_0) and output head (q8, q6_k, q4_k) against
    float64."""
    from pybitnet.eval.accuracy import measure_accuracy, print_report, write_json

    use_threads(threads)
    text = read_text(text_file, "--text") if text_file is not None else None
    with status("measuring") as spinner:
        report = measure_accuracy(model, preset=preset, text=text, n_ctx=ctx, step=spinner.update)
    print_report(report)
    if json_path is not None:
        write_json(report, json_path)
