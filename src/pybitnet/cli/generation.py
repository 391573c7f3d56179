"""`pybitnet run`, `chat` and `serve`: generating text with a model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pybitnet.cli.console import load_model, print_profile, write_streamed
from pybitnet.cli.options import (
    JsonFlag,
    KvCacheOption,
    MaxTokensOption,
    MinPOption,
    ModelOption,
    OutputHeadOption,
    RepeatPenaltyOption,
    SeedOption,
    StopOption,
    TemperatureOption,
    ThreadsOption,
    TopKOption,
    TopPOption,
    check_draft_tokens,
    fail,
    flag,
    read_prompt,
    within,
)
from pybitnet.errors import shown

if TYPE_CHECKING:
    import socket

    from pybitnet.chat import ChatSession


def run(
    prompt: Annotated[
        str | None,
        typer.Argument(metavar="PROMPT", help="The text to continue; - reads it from stdin."),
    ] = None,
    prompt_file: Annotated[
        Path | None, typer.Option("-f", "--file", help="Read the prompt from this file.")
    ] = None,
    model: ModelOption = None,
    max_tokens: MaxTokensOption = 128,
    temperature: TemperatureOption = 0.8,
    top_k: TopKOption = 40,
    top_p: TopPOption = 0.95,
    min_p: MinPOption = 0.05,
    repeat_penalty: RepeatPenaltyOption = 1.0,
    seed: SeedOption = None,
    stop: StopOption = None,
    threads: ThreadsOption = None,
    output_head: OutputHeadOption = None,
    kv_cache: KvCacheOption = None,
    draft_tokens: Annotated[
        int,
        typer.Option(
            callback=check_draft_tokens,
            help="Speculative decoding: draft up to this many tokens a step by looking the last "
            "ones up in the prompt and text so far, verified in one pass; the same output, faster "
            "on text that copies its prompt (0: off).",
        ),
    ] = 0,
    json_output: JsonFlag = False,
    profile: Annotated[
        bool, flag("--profile", "Print each kernel's calls and time to stderr.")
    ] = False,
) -> None:
    """Continue PROMPT; stdout carries the continuation only (streamed)."""
    import json
    import sys
    import time

    from pybitnet import kernels
    from pybitnet.cli.timings import timed_load, timed_pieces
    from pybitnet.sampling import SamplerConfig

    prompt = read_prompt(prompt, prompt_file)
    m, load_s = timed_load(lambda: load_model(model, threads, output_head, kv_cache=kv_cache))
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
        draft_tokens=draft_tokens,
    )
    pieces, done, timings = timed_pieces(m, prompt, options, load_s)
    start = time.perf_counter()
    with kernels.profile() as prof:
        if json_output:
            for _ in pieces:  # the Completion collects them
                pass
            figures = timings().as_dict()
            report = dict(model=str(m.path), prompt=prompt, seed=seed, **vars(done))
            report["tokens_per_step"] = len(done.token_ids) / done.steps if done.steps else 0.0
            print(json.dumps({**report, "timings": figures}, ensure_ascii=False))
        else:
            write_streamed(pieces)
    print(timings().line(), file=sys.stderr)
    if profile:
        print_profile(prof, time.perf_counter() - start)


def chat(
    model: ModelOption = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            callback=within(1), help="Tokens a reply may take at most (default: the context left)."
        ),
    ] = None,
    temperature: TemperatureOption = 0.8,
    top_k: TopKOption = 40,
    top_p: TopPOption = 0.95,
    min_p: MinPOption = 0.05,
    repeat_penalty: RepeatPenaltyOption = 1.0,
    seed: SeedOption = None,
    stop: StopOption = None,
    threads: ThreadsOption = None,
    output_head: OutputHeadOption = None,
    kv_cache: KvCacheOption = None,
) -> None:
    """Chat interactively; /reset clears the history, /exit (or end of input) quits."""

    from pybitnet.chat import ChatSession
    from pybitnet.errors import TemplateError

    m = load_model(model, threads, output_head, kv_cache=kv_cache)
    sampling = dict(top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty)
    session = ChatSession(
        m, system, max_tokens=max_tokens, temperature=temperature, seed=seed,
        stop=stop or (), **sampling,
    )  # fmt: skip
    try:  # the template's errors name no file (a server sends them on): name it here
        # A probe: a template that cannot render is refused now, not at the first message.
        m.render_chat([*session.history, {"role": "user", "content": "Hello"}])
        _converse(session)
    except TemplateError as exc:
        raise TemplateError(f"{m.path}: {exc}") from None


def _converse(session: ChatSession) -> None:
    """`chat`'s loop: a line in, the streamed reply out, until /exit or the end of input."""
    import sys

    print(
        "pybitnet chat: /reset clears the history, /exit quits; Ctrl+C stops a reply.",
        file=sys.stderr,
    )
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):  # Ctrl+D or Ctrl+C at the prompt: quit
            break
        if line.strip() == "/exit":
            break
        if line.strip() == "/reset":
            session.reset()
            print("(history cleared)", file=sys.stderr)
            continue
        pieces = session.reply(line)
        try:
            write_streamed(pieces)
        except KeyboardInterrupt:  # stops this reply only (its text so far is kept); chat goes on
            pieces.close()
            print("\n(reply stopped)", file=sys.stderr)
        if session.dropped:
            turns = len([m for m in session.dropped if m["role"] == "user"])
            print(
                f"(the {turns} oldest turn(s) left the history to fit the context)", file=sys.stderr
            )


def _min_max(text: str) -> tuple[int, int]:
    low, colon, high = text.partition(":")
    if not (colon and low.isdigit() and high.isdigit() and 1 <= int(low) <= int(high)):
        fail("--autoscale", f"expected MIN:MAX with 1 <= MIN <= MAX, got {text!r}")
    return int(low), int(high)


def _check_sha256(digest: str | None) -> str | None:
    if digest is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
        fail("--model-sha256", f"expected 64 hexadecimal digits, got {shown(digest)}")
    return digest and digest.lower()


ReplicasOption = Annotated[
    int | None, typer.Option(callback=within(1), help="With --ray: this many replicas (default 1).")
]
AutoscaleOption = Annotated[
    str | None,
    typer.Option(
        metavar="MIN:MAX",
        help="With --ray: MIN to MAX replicas, scaled by Ray Serve on the requests each holds.",
    ),
]
AddressOption = Annotated[
    str | None,
    typer.Option(help="With --ray: the Ray cluster to deploy to (default: start a local one)."),
]
Sha256Option = Annotated[
    str | None,
    typer.Option(
        "--model-sha256",
        callback=_check_sha256,
        help="With --ray: each replica refuses a model file whose SHA-256 is not this.",
    ),
]


def serve(
    model: ModelOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(callback=within(1, 65535), help="Port to listen on.")] = 8080,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="PYBITNET_API_KEY", callback=_check_api_key, help="Require it on /v1 routes."
        ),
    ] = None,
    max_batch: Annotated[
        int, typer.Option(callback=within(1), help="Sequences decoded together.")
    ] = 8,
    max_queue: Annotated[
        int, typer.Option(callback=within(1), help="Requests waiting at most (then 429).")
    ] = 64,
    ctx: Annotated[
        int | None,
        typer.Option(
            callback=within(1),
            help="Tokens of context per sequence (default: the model's, at most 8192).",
        ),
    ] = None,
    cors_origin: Annotated[
        list[str] | None, typer.Option(help="Allow this browser origin (repeatable; default none).")
    ] = None,
    threads: ThreadsOption = None,
    output_head: OutputHeadOption = None,
    kv_cache: KvCacheOption = None,
    draft_tokens: Annotated[
        int,
        typer.Option(
            callback=check_draft_tokens,
            help="Speculative decoding for requests that do not set draft_tokens: draft up to "
            "this many tokens a step by prompt lookup (0: off).",
        ),
    ] = 0,
    ray: Annotated[bool, flag("--ray", "Serve replicas on Ray Serve (docs/deploy.md).")] = False,
    replicas: ReplicasOption = None,
    autoscale: AutoscaleOption = None,
    address: AddressOption = None,
    model_sha256: Sha256Option = None,
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API, with a chat page at /."""
    from pybitnet.server import ServerConfig
    from pybitnet.server.run import serve_model

    config = ServerConfig(
        max_batch,
        max_queue,
        api_key,
        cors_origins=tuple(cors_origin or ()),
        draft_tokens=draft_tokens,
    )
    ray_only = {
        "--replicas": replicas,
        "--autoscale": autoscale,
        "--address": address,
        "--model-sha256": model_sha256,
    }
    if ray:
        replica = {"model": model, "model_sha256": model_sha256, "n_ctx": ctx, "threads": threads}
        replica |= {"output_head": output_head, "kv_cache": kv_cache, "config": config}
        _serve_on_ray(replica, replicas, autoscale, address, host, port)
        return
    for option, value in ray_only.items():
        if value is not None:
            fail(option, "only with --ray")
    with _listen(host, port) as sock:  # before loading: a port in use fails first, not after
        m = load_model(model, threads, output_head, n_ctx=ctx, kv_cache=kv_cache)
        if problem := m.context_problem(ctx):
            fail("--ctx", problem)
        serve_model(m, sock, config)


def _serve_on_ray(
    replica: dict[str, Any],
    replicas: int | None,
    autoscale: str | None,
    address: str | None,
    host: str,
    port: int,
) -> None:
    """`serve --ray`: the flags checked, then the replicas deployed (server/ray_serve.py)."""
    if replicas is not None and autoscale is not None:
        fail("--autoscale", "give --replicas N or --autoscale MIN:MAX, not both")
    scale = _min_max(autoscale) if autoscale is not None else None
    if address is None:  # a local cluster: a port in use fails now, not inside Ray's proxy
        _listen(host, port).close()
    try:
        from pybitnet.server import ray_serve
    except ImportError as exc:
        fail("--ray", f"needs Ray Serve ({exc}): pip install 'pybitnet[ray]'")
    model = replica["model"]  # the same path on every node: an absolute one
    spec = ray_serve.ReplicaSpec(**{**replica, "model": str(model.absolute()) if model else None})
    ray_serve.run(
        spec, replicas=replicas or 1, autoscale=scale, address=address, host=host, port=port
    )


def _listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound and listening; a port in use is --port's one-line error."""
    from pybitnet.errors import PyBitnetError
    from pybitnet.server.run import listen

    try:
        return listen(host, port)
    except PyBitnetError as exc:
        fail("--port", str(exc))


def _check_api_key(key: str | None) -> str | None:
    """An empty key would turn auth on with nothing to check ("Bearer " would pass); click
    reads an empty PYBITNET_API_KEY as unset, which would turn it off without a word."""
    import os

    if key == "":
        fail("--api-key", "the key is empty")
    if key is None and os.environ.get("PYBITNET_API_KEY") == "":
        fail("PYBITNET_API_KEY", "the variable is set but empty (unset it to serve without a key)")
    return key
