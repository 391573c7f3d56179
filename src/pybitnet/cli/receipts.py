"""`pybitnet bench` (and `bench kernels`), `verify`, `gate` and `report`: measuring, and checking,
comparing and drawing the receipts that hold the measurements."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from pybitnet.cli.console import progress, status
from pybitnet.cli.options import (
    Command,
    JsonFileOption,
    KvCacheOption,
    OutputHeadOption,
    PlainHelp,
    check_draft_tokens,
    flag,
)

ThreadCountsOption = Annotated[
    str | None, typer.Option("-t", help="Thread counts (default: all cores).")
]
ReceiptOption = Annotated[
    Path | None, typer.Option("--receipt", help="Write the receipt (JSON) here.")
]


def gate(
    receipts: Annotated[
        list[Path],
        typer.Argument(
            help="Receipts in pairs, BASELINE CURRENT [BASELINE CURRENT]...: one pair is "
            "compared from its samples; several, measured interleaved, pair by pair (a sign test).",
        ),
    ],
    config: Annotated[Path | None, typer.Option(help="TOML file of thresholds and SLOs.")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Also write Markdown here.")] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json-file", help="Also write a CI check run (JSON) here.")
    ] = None,
) -> None:
    """Compare receipts; exit 0 pass, 1 fail, 3 attention, 2 bad input."""
    from pybitnet.bench.gate import print_report, run_gate, write_report

    report = run_gate(receipts, config)
    print_report(report)
    write_report(report, markdown, json_path)
    raise typer.Exit(report.exit_code)


def verify(
    receipt: Annotated[Path, typer.Argument(help="The receipt to check.")],
    replay: Annotated[bool, flag("--replay", "Also re-run the workload and compare.")] = False,
    model: Annotated[Path | None, typer.Option(help="The model file, if not at its path.")] = None,
    json_path: JsonFileOption = None,
) -> None:
    """Apply every rule of docs/SPEC.md §6 to a receipt; exit 0 pass, 1 fail, 2 bad input."""
    from pybitnet.bench.verify import print_report, verify_receipt, write_json

    report = verify_receipt(receipt, model=model, replay=replay)
    print_report(report)
    if json_path is not None:
        write_json(report, json_path)
    raise typer.Exit(report.exit_code)


def report(
    receipts: Annotated[list[Path], typer.Argument(help="Receipts, in any order.")],
    html: Annotated[Path, typer.Option(help="Write the HTML page here.")],
    markdown: Annotated[Path | None, typer.Option(help="Also write a Markdown summary.")] = None,
) -> None:
    """One self-contained HTML page with plots (and a Markdown summary) of receipts."""
    from pybitnet.bench.report import write_report

    for path in write_report(receipts, html, markdown):
        print(f"wrote {path}")


class _BenchCommands(PlainHelp, TyperGroup):
    pass


bench_app = typer.Typer(
    cls=_BenchCommands,
    help="Measure generation (llama-bench style) or kernels; optionally write a receipt.",
    no_args_is_help=False,
)


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    model: Annotated[Path | None, typer.Option("--model", "-m", help="GGUF model file.")] = None,
    preset: Annotated[
        str | None,
        typer.Option(help="A synthetic model instead (2b or tiny), made once in the cache."),
    ] = None,
    prompt: Annotated[str, typer.Option("-p", help="Prompt lengths (prefill runs).")] = "128",
    generate: Annotated[int, typer.Option("-n", help="Tokens to generate (0: no tg run).")] = 128,
    reps: Annotated[int, typer.Option("-r", help="Repetitions of each run.")] = 5,
    warmup: Annotated[int, typer.Option(help="Untimed repetitions before each run.")] = 1,
    threads: ThreadCountsOption = None,
    batch: Annotated[int, typer.Option("-b", help="Sequences decoded together.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the random prompts and the sampler.")] = 0,
    draft_tokens: Annotated[
        int,
        typer.Option(
            callback=check_draft_tokens,
            help="Decode (tg) with speculative decoding, drafting up to this many tokens a step "
            "by prompt lookup (with -b 1); the receipt records drafts, acceptances and steps.",
        ),
    ] = 0,
    output_head: OutputHeadOption = None,
    kv_cache: KvCacheOption = None,
    json_path: ReceiptOption = None,
) -> None:
    """Benchmark prefill (pp) and decode (tg) of a model; the embedded one by default."""
    if ctx.invoked_subcommand is not None:
        return
    from pybitnet.bench.receipt import write_receipt
    from pybitnet.bench.runner import Workload, preset_model, print_summary, run_bench
    from pybitnet.generate import load

    if model is not None and preset is not None:
        raise typer.BadParameter("give --model or --preset, not both", param_hint="--preset")
    workload = Workload(
        _ints(prompt, "-p"),
        generate,
        reps,
        warmup,
        _thread_counts(threads),
        batch,
        seed,
        draft_tokens,
    )
    with status("loading the model") as stage:
        if preset is not None:  # made once, into the cache: say so, it takes a while
            stage.update(f"the {preset} preset model (made once into the cache)")
        path = preset_model(preset) if preset is not None else model
        m = load(path, output_head=output_head, kv_cache=kv_cache)
    bar, step = progress(workload.steps)
    with bar:
        doc = run_bench(m, workload, step)
    print_summary(doc)
    if json_path is not None:
        write_receipt(doc, json_path)


@bench_app.command("kernels", cls=Command)
def bench_kernels(
    shapes: Annotated[
        str, typer.Option(help="Weight shapes, out x in.")
    ] = "2560x2560,6912x2560,2560x6912",
    formats: Annotated[
        str, typer.Option(help="Ternary formats of the weights.")
    ] = "TQ1_0,TQ2_0,I2_S",
    batches: Annotated[str, typer.Option(help="Activation rows (1: GEMV).")] = "1,16",
    codecs: Annotated[
        str, typer.Option(help="Formats whose numpy quantize/dequantize are timed ('': none).")
    ] = "F32,F16,BF16,Q8_0,Q4_0,Q4_1,TQ1_0,TQ2_0,I2_S",
    codec_shape: Annotated[str, typer.Option(help="The codecs' shape, out x in.")] = "2560x2560",
    threads: ThreadCountsOption = None,
    samples: Annotated[int, typer.Option(help="Timed calls per case.")] = 30,
    warmup: Annotated[int, typer.Option(help="Untimed calls before them.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the random weights and activations.")] = 0,
    json_path: ReceiptOption = None,
) -> None:
    """Microbenchmark the kernels (Criterion-style statistics); write a kernels receipt."""
    from pybitnet.bench.kernels_bench import (
        KernelWorkload,
        case_count,
        print_kernel_summary,
        run_kernel_bench,
    )
    from pybitnet.bench.receipt import write_receipt

    workload = KernelWorkload(
        _shapes(shapes, "--shapes"),
        tuple(formats.split(",")),
        _ints(batches, "--batches"),
        tuple(f for f in codecs.split(",") if f),
        _shapes(codec_shape, "--codec-shape")[0],
        _thread_counts(threads),
        samples,
        warmup,
        seed,
    )
    bar, step = progress(case_count(workload))
    with bar:
        doc = run_kernel_bench(workload, step)
    print_kernel_summary(doc)
    if json_path is not None:
        write_receipt(doc, json_path)


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(
            f"expected integers separated by commas, got {text!r}", param_hint=option
        ) from None


def _shapes(text: str, option: str) -> tuple[tuple[int, int], ...]:
    """OUTxIN,... as (out, in) pairs."""
    try:
        shapes = tuple(tuple(int(d) for d in s.split("x")) for s in text.split(","))
    except ValueError:
        shapes = ((),)
    if any(len(s) != 2 for s in shapes):
        raise typer.BadParameter(f"expected OUTxIN,... got {text!r}", param_hint=option)
    return shapes


def _thread_counts(text: str | None) -> tuple[int, ...]:
    from pybitnet import kernels

    return _ints(text, "-t") if text is not None else (kernels.threads(),)
