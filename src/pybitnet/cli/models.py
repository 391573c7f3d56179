"""`pybitnet convert`, `make-model` and `inspect`: writing and reading model files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pybitnet.cli.console import print_written, resolve_model, status
from pybitnet.cli.options import JsonFlag, flag

OutputOption = Annotated[Path, typer.Option("-o", "--output", help="The GGUF file to write.")]


def convert(
    src: Annotated[
        Path, typer.Argument(help="The checkpoint (hf: its folder; gguf: a model) to convert.")
    ],
    source: Annotated[str, typer.Option("--from", help="Its format: llama2c, hf or gguf.")],
    output: OutputOption,
    tokenizer: Annotated[Path | None, typer.Option(help="Its tokenizer, if separate.")] = None,
    wtype: Annotated[
        str | None,
        typer.Option("--type", help="GGUF type of ternary weights: I2_S (default), TQ2_0, TQ1_0."),
    ] = None,
    embd_type: Annotated[
        str | None,
        typer.Option(
            "--embedding-type",
            help="hf, gguf: GGUF type of the embedding and output head (F16, Q8_0, Q6_K, Q4_K; "
            "gguf re-encodes only these).",
        ),
    ] = None,
) -> None:
    """Convert a checkpoint from another format into a GGUF model."""
    from pybitnet.convert import convert as convert_checkpoint

    path = convert_checkpoint(
        source, src, output, weight_type=wtype, tokenizer=tokenizer, embedding_type=embd_type
    )
    print_written(path)


def make_model(
    output: OutputOption,
    preset: Annotated[str, typer.Option(help="tiny or 2b (bitnet-b1.58-2B-4T's shape).")] = "tiny",
    arch: Annotated[str, typer.Option(help="bitnet-b1.58, bitnet or llama.")] = "bitnet",
    wtype: Annotated[str, typer.Option("--type", help="GGUF type of linear weights.")] = "I2_S",
    embd_type: Annotated[str, typer.Option(help="GGUF type of token_embd.")] = "F16",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    vocab: Annotated[int | None, typer.Option(help="Override: vocabulary size.")] = None,
    dim: Annotated[int | None, typer.Option(help="Override: embedding size.")] = None,
    layers: Annotated[int | None, typer.Option(help="Override: blocks.")] = None,
    heads: Annotated[int | None, typer.Option(help="Override: attention heads.")] = None,
    kv_heads: Annotated[int | None, typer.Option(help="Override: key/value heads.")] = None,
    ffn: Annotated[int | None, typer.Option(help="Override: feed-forward size.")] = None,
    ctx: Annotated[int | None, typer.Option(help="Override: context length.")] = None,
    rope_theta: Annotated[float | None, typer.Option(help="Override: RoPE base.")] = None,
) -> None:
    """Write a synthetic model with seeded random ternary weights (for tests and benchmarks)."""
    from pybitnet.convert.synthetic import make_model as make

    with status(f"writing the {preset} model to {output}"):
        path = make(
            output,
            preset,
            arch=arch,
            weight_type=wtype,
            embd_type=embd_type,
            seed=seed,
            vocab=vocab,
            dim=dim,
            layers=layers,
            heads=heads,
            kv_heads=kv_heads,
            ffn=ffn,
            ctx=ctx,
            rope_theta=rope_theta,
        )
    print_written(path)


def inspect(
    path: Annotated[
        Path | None,
        typer.Argument(
            metavar="PATH",
            help="The GGUF file, or a Hugging Face checkpoint folder (default: the embedded "
            "model).",
        ),
    ] = None,
    json_output: JsonFlag = False,
    sha256: Annotated[bool, flag("--sha256", "Also hash the file (reads it all).")] = False,
) -> None:
    """Describe a GGUF file (architecture, hyperparameters, tensors, tokenizer) from its header."""
    import json

    from pybitnet.data import default_model_path
    from pybitnet.gguf.inspect import inspect_gguf, render

    report = inspect_gguf(resolve_model(path) or default_model_path(), sha256=sha256)
    print(json.dumps(report, ensure_ascii=False)) if json_output else render(report)
