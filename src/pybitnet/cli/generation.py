"""`pybitnet run`, `chat` and `serve`: generating text with a model."""

from __future__ import annotations

from typing import Annotated

import typer

from pybitnet.cli.console import load_model, print_profile, resolve_model, write_streamed
from pybitnet.cli.options import (
    JsonFlag,
    ModelOption,
    OutputHeadOption,
    ThreadsOption,
    use_threads,
)


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
    json_output: JsonFlag = False,
    profile: Annotated[
        bool, typer.Option("--profile", help="Print each kernel's calls and time to stderr.")
    ] = False,
) -> None:
    """Continue PROMPT; stdout carries the continuation only (streamed)."""
    import json
    import time

    from pybitnet import kernels
    from pybitnet.sampling import SamplerConfig

    m = load_model(model, threads, output_head)
    sampling = SamplerConfig(temperature, top_k, top_p, min_p, repeat_penalty, seed=seed)
    seed = sampling.seeded().seed  # the seed actually used, so a run can be replayed
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
            write_streamed(m.stream(prompt, **options))
    if profile:
        print_profile(prof, time.perf_counter() - start)


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
    import sys

    from pybitnet.chat import ChatSession

    m = load_model(model, threads, output_head)
    session = ChatSession(m, system, max_tokens=max_tokens, temperature=temperature, seed=seed)
    print("pybitnet chat: /reset clears the history, /exit quits.", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if line.strip() == "/exit":
            break
        if line.strip() == "/reset":
            session.reset()
            continue
        write_streamed(session.reply(line))


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
    from pybitnet.server import ServerConfig
    from pybitnet.server import serve as run_server

    use_threads(threads)
    config = ServerConfig(max_batch, max_queue, api_key, cors_origins=tuple(cors_origin or ()))
    run_server(
        resolve_model(model),
        host=host,
        port=port,
        n_ctx=ctx,
        output_head=output_head,
        config=config,
    )
