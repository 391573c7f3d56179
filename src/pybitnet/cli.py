"""The `pybitnet` command: a thin layer over the Python API.

Each subcommand parses its options, calls one API function, and prints. Errors that pybitnet
raises for bad input are shown as one line and exit with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pybitnet.errors import PyBitnetError

app = typer.Typer(
    name="pybitnet",
    help="Fast, correct and honestly measured inference for ternary (BitNet b1.58) models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


ModelOption = Annotated[
    Path | None, typer.Option("--model", "-m", help="GGUF model file (default: the embedded one).")
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


def _load(model: Path | None, threads: int | None, output_head: str | None = None):
    """Loads a model, with a spinner on stderr while it loads."""
    from rich.console import Console

    from pybitnet import kernels
    from pybitnet.generate import load

    if threads is not None:
        kernels.set_threads(threads)
    with Console(stderr=True).status("loading model", spinner="dots"):
        return load(model, output_head=output_head)


def _print_profile(prof, seconds: float) -> None:
    """The kernel registry's calls and time for a run, and the time spent outside kernels."""
    from rich.console import Console
    from rich.table import Table

    table = Table("kernel", "calls", "ms", "share", title="kernel profile", title_justify="left")
    stats = prof.stats()
    for s in sorted(stats, key=lambda s: -s["seconds"]):
        share = s["seconds"] / seconds
        table.add_row(s["id"], str(s["calls"]), f"{s['seconds'] * 1e3:.1f}", f"{share:.1%}")
    outside = seconds - sum(s["seconds"] for s in stats)
    table.add_row("(outside kernels)", "", f"{outside * 1e3:.1f}", f"{outside / seconds:.1%}")
    Console(stderr=True).print(table)


@app.command()
def run(
    prompt: Annotated[str, typer.Argument(help="The text to continue.")],
    model: ModelOption = None,
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate at most.")] = 128,
    temperature: Annotated[float, typer.Option(help="0 means greedy.")] = 0.8,
    top_k: Annotated[int, typer.Option(help="Keep the k likeliest tokens (0: off).")] = 40,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass (1: off).")] = 0.95,
    min_p: Annotated[float, typer.Option(help="Drop tokens below min_p * p_max (0: off).")] = 0.05,
    repeat_penalty: Annotated[float, typer.Option(help="Penalty on recent tokens (1: off).")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Sampling seed (default: random).")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop string (repeatable).")] = None,
    threads: ThreadsOption = None,
    output_head: OutputHeadOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    profile: Annotated[
        bool, typer.Option("--profile", help="Print each kernel's calls and time to stderr.")
    ] = False,
) -> None:
    """Continue PROMPT; stdout carries the continuation only (streamed)."""
    import json
    import time

    from pybitnet import kernels
    from pybitnet.sampling import Sampler, SamplerConfig

    m = _load(model, threads, output_head)
    sampler_config = SamplerConfig(temperature, top_k, top_p, min_p, repeat_penalty, seed=seed)
    seed = Sampler(sampler_config).seed  # the seed actually used, so a run can be replayed
    options = dict(
        max_tokens=max_tokens,
        stop=stop or (),
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repeat_penalty=repeat_penalty,
        seed=seed,
    )
    start = time.perf_counter()
    with kernels.profile() as prof:
        if json_output:
            done = m.complete(prompt, **options)
            report = dict(model=str(m.path), prompt=prompt, seed=seed, **vars(done))
            print(json.dumps(report, ensure_ascii=False))
        else:
            for piece in m.stream(prompt, **options):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
    if profile:
        _print_profile(prof, time.perf_counter() - start)


@app.command()
def chat(
    model: ModelOption = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Tokens per reply at most.")] = 512,
    temperature: Annotated[float, typer.Option(help="0 means greedy.")] = 0.8,
    seed: Annotated[int | None, typer.Option(help="Sampling seed (default: random).")] = None,
    threads: ThreadsOption = None,
    output_head: OutputHeadOption = None,
) -> None:
    """Chat interactively; /reset clears the history, /exit (or end of input) quits."""
    m = _load(model, threads, output_head)
    base = [{"role": "system", "content": system}] if system else []
    history = list(base)
    print("pybitnet chat: /reset clears the history, /exit quits.", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if line.strip() == "/exit":
            break
        if line.strip() == "/reset":
            history = list(base)
            continue
        history.append({"role": "user", "content": line})
        reply = ""
        prompt = m.render_chat(history)
        options = dict(max_tokens=max_tokens, temperature=temperature, seed=seed)
        for piece in m.stream(prompt, parse_special=True, **options):
            reply += piece
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": reply})


@app.command()
def serve(
    model: ModelOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    api_key: Annotated[
        str | None, typer.Option(envvar="PYBITNET_API_KEY", help="Require it on /v1 routes.")
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Sequences decoded together.")] = 8,
    max_queue: Annotated[int, typer.Option(help="Requests waiting at most (then 429).")] = 64,
    ctx: Annotated[int | None, typer.Option(help="Tokens of context per sequence.")] = None,
    cors_origin: Annotated[
        list[str] | None, typer.Option(help="Allow this browser origin (repeatable; default none).")
    ] = None,
    threads: ThreadsOption = None,
    output_head: OutputHeadOption = None,
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API, with a chat page at /."""
    from pybitnet import kernels
    from pybitnet.server import ServerConfig
    from pybitnet.server import serve as run_server

    if threads is not None:
        kernels.set_threads(threads)
    config = ServerConfig(max_batch, max_queue, api_key, cors_origins=tuple(cors_origin or ()))
    run_server(model, host=host, port=port, n_ctx=ctx, output_head=output_head, config=config)


@app.command()
def perplexity(
    text_file: Annotated[Path, typer.Argument(help="The text to score.", exists=True)],
    model: ModelOption = None,
    ctx: Annotated[int, typer.Option("-c", "--ctx", help="Tokens per chunk.")] = 128,
    threads: ThreadsOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Perplexity by llama-perplexity's procedure (comparable with its figures)."""
    import json

    from pybitnet.eval.perplexity import perplexity as compute

    m = _load(model, threads)
    tokens = m.tokenize(text_file.read_text(encoding="utf-8"))
    bos = m.tokenizer.bos_id if m.tokenizer.add_bos else None
    result = compute(m.logits, tokens, ctx, bos)
    if json_output:
        print(json.dumps(vars(result)))
        return
    print(",".join(f"[{i + 1}]{p:.4f}" for i, p in enumerate(result.running_ppl)))
    print(f"Final estimate: PPL = {result.ppl:.4f} +/- {result.stderr:.5f}")


@app.command()
def accuracy(
    model: ModelOption = None,
    preset: Annotated[
        str | None, typer.Option(help="A synthetic model instead (tiny or 2b), made in a temp dir.")
    ] = None,
    text_file: Annotated[
        Path | None,
        typer.Option("--text", exists=True, help="Text to score (default: a built-in story)."),
    ] = None,
    ctx: Annotated[int, typer.Option("-c", "--ctx", help="Tokens per chunk.")] = 128,
    threads: ThreadsOption = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")] = None,
) -> None:
    """Every ternary path (I2_S, TQ2_0, TQ1_0) and the q8 output head against float64."""
    from rich.console import Console

    from pybitnet import kernels
    from pybitnet.eval.accuracy import measure_accuracy, print_report, write_json

    if threads is not None:
        kernels.set_threads(threads)
    text = text_file.read_text(encoding="utf-8") if text_file is not None else None
    with Console(stderr=True).status("measuring", spinner="dots") as status:
        report = measure_accuracy(model, preset=preset, text=text, n_ctx=ctx, step=status.update)
    print_report(report)
    if json_path is not None:
        write_json(report, json_path)


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="The checkpoint to convert.")],
    source: Annotated[str, typer.Option("--from", help="Its format: llama2c.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The GGUF file to write.")],
    tokenizer: Annotated[Path | None, typer.Option(help="Its tokenizer file, if separate.")] = None,
    wtype: Annotated[str, typer.Option("--type", help="GGUF type of ternary weights.")] = "I2_S",
) -> None:
    """Convert a checkpoint from another format into a GGUF model."""
    from pybitnet.convert import convert as convert_checkpoint

    path = convert_checkpoint(source, src, output, weight_type=wtype, tokenizer=tokenizer)
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")


@app.command("make-model")
def make_model(
    output: Annotated[Path, typer.Option("-o", "--output", help="The GGUF file to write.")],
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

    shape = dict(
        vocab=vocab,
        dim=dim,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        ffn=ffn,
        ctx=ctx,
        rope_theta=rope_theta,
    )
    overrides = {k: v for k, v in shape.items() if v is not None}
    path = make(
        output, preset, arch=arch, weight_type=wtype, embd_type=embd_type, seed=seed, **overrides
    )
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")


@app.command()
def gate(
    baseline: Annotated[Path, typer.Argument(help="The receipt to compare against.")],
    current: Annotated[Path, typer.Argument(help="The receipt to judge.")],
    config: Annotated[Path | None, typer.Option(help="TOML file of thresholds and SLOs.")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Also write Markdown here.")] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write a CI check run (JSON) here.")
    ] = None,
) -> None:
    """Compare two receipts; exit 0 pass, 1 fail, 3 attention, 2 bad input."""
    from pybitnet.bench.gate import print_report, run_gate, write_report

    report = run_gate(baseline, current, config)
    print_report(report)
    write_report(report, markdown, json_path)
    raise typer.Exit(report.exit_code)


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="The GGUF file.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    sha256: Annotated[
        bool, typer.Option("--sha256", help="Also hash the file (reads it all).")
    ] = False,
) -> None:
    """Describe a GGUF file (architecture, hyperparameters, tensors, tokenizer) from its header."""
    import json

    from pybitnet.gguf.inspect import inspect_gguf, render

    report = inspect_gguf(path, sha256=sha256)
    print(json.dumps(report, ensure_ascii=False)) if json_output else render(report)


@app.command()
def verify(
    receipt: Annotated[Path, typer.Argument(help="The receipt to check.")],
    replay: Annotated[bool, typer.Option(help="Also re-run the workload and compare.")] = False,
    model: Annotated[Path | None, typer.Option(help="The model file, if not at its path.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")] = None,
) -> None:
    """Apply every rule of SPEC section 6 to a receipt; exit 0 pass, 1 fail, 2 bad input."""
    from pybitnet.bench.verify import print_report, verify_receipt, write_json

    report = verify_receipt(receipt, model=model, replay=replay)
    print_report(report)
    if json_path is not None:
        write_json(report, json_path)
    raise typer.Exit(report.exit_code)


@app.command()
def report(
    receipts: Annotated[list[Path], typer.Argument(help="Receipts, in any order.")],
    html: Annotated[Path, typer.Option(help="Write the HTML page here.")],
    markdown: Annotated[Path | None, typer.Option(help="Also write a Markdown summary.")] = None,
) -> None:
    """One self-contained HTML page with plots (and a Markdown summary) of receipts."""
    from pybitnet.bench.report import write_report

    for path in write_report(receipts, html, markdown):
        print(f"wrote {path}")


bench_app = typer.Typer(
    help="Measure generation (llama-bench style) or kernels; optionally write a receipt.",
    no_args_is_help=False,
)
app.add_typer(bench_app, name="bench")


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


def _progress(total: int):
    """A rich progress bar on stderr, and the step callback that advances it."""
    import itertools

    from rich.console import Console
    from rich.progress import Progress

    progress = Progress(console=Console(stderr=True), transient=True)
    task = progress.add_task("starting", total=total)
    done = itertools.count()

    def step(description: str) -> None:
        progress.update(task, description=description, completed=next(done))

    return progress, step


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
    threads: Annotated[
        str | None, typer.Option("-t", help="Thread counts (default: all cores).")
    ] = None,
    batch: Annotated[int, typer.Option("-b", help="Sequences decoded together.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the random prompts and the sampler.")] = 0,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the receipt here.")
    ] = None,
) -> None:
    """Benchmark prefill (pp) and decode (tg) of a model; the embedded one by default."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console

    from pybitnet.bench.receipt import write_receipt
    from pybitnet.bench.runner import Workload, preset_model, print_summary, run_bench
    from pybitnet.generate import load

    if model is not None and preset is not None:
        raise typer.BadParameter("give --model or --preset, not both", param_hint="--preset")
    workload = Workload(
        _ints(prompt, "-p"), generate, reps, warmup, _thread_counts(threads), batch, seed
    )
    with Console(stderr=True).status("loading the model", spinner="dots"):
        m = load(preset_model(preset) if preset is not None else model)
    progress, step = _progress(workload.steps)
    with progress:
        doc = run_bench(m, workload, step)
    print_summary(doc)
    if json_path is not None:
        write_receipt(doc, json_path)


@bench_app.command("kernels")
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
    threads: Annotated[
        str | None, typer.Option("-t", help="Thread counts (default: all cores).")
    ] = None,
    samples: Annotated[int, typer.Option(help="Timed calls per case.")] = 30,
    warmup: Annotated[int, typer.Option(help="Untimed calls before them.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the random weights and activations.")] = 0,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the receipt here.")
    ] = None,
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
    progress, step = _progress(case_count(workload))
    with progress:
        doc = run_kernel_bench(workload, step)
    print_kernel_summary(doc)
    if json_path is not None:
        write_receipt(doc, json_path)


def main() -> None:
    try:
        app()
    except PyBitnetError as exc:
        print(f"pybitnet: error: {exc}", file=sys.stderr)
        sys.exit(2)
