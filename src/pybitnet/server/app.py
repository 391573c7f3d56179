"""The OpenAI-compatible HTTP API (SPEC section 8) over a Scheduler, as a FastAPI app.

Routes: `/v1/models`, `/v1/completions`, `/v1/chat/completions` (behind the API key when one is
set), `/health`, `/health/live`, `/health/ready`, `/metrics`, and the chat page at `/`.
Every error answers with an OpenAI error object: {"error": {message, type, param, code}}.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from pybitnet.generate import Model
from pybitnet.sampling import SamplerConfig
from pybitnet.server.config import ServerConfig, kv_budget_tokens
from pybitnet.server.errors import APIError, install_error_handlers
from pybitnet.server.metrics import Metrics
from pybitnet.server.middleware import add_middleware
from pybitnet.server.replies import Reply
from pybitnet.server.scheduler import (
    Failed,
    Finished,
    Generation,
    NotAccepting,
    Piece,
    QueueFull,
    Scheduler,
)
from pybitnet.server.schemas import ChatCompletionRequest, CompletionRequest, GenerationParams


def create_app(model: Model, config: ServerConfig | None = None) -> FastAPI:
    """The server's app for a loaded pybitnet.generate.Model; its lifespan runs the scheduler."""
    config = config or ServerConfig()
    metrics = Metrics()
    scheduler = Scheduler(
        model,
        max_batch=config.max_batch,
        max_queue=config.max_queue,
        kv_budget_tokens=kv_budget_tokens(model, config),
        observer=metrics,
    )
    metrics.watch(scheduler)
    model_id = model.path.stem
    created = int(time.time())
    page = files("pybitnet.server").joinpath("page.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            # Bounded: a step that never ends must not keep the process from exiting.
            await asyncio.to_thread(scheduler.stop, config.shutdown_timeout)

    app = FastAPI(
        title="pybitnet",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.scheduler, app.state.metrics, app.state.config = scheduler, metrics, config
    install_error_handlers(app)
    add_middleware(app, config, metrics)

    async def require_api_key(request: Request) -> None:
        if config.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.strip().encode(), config.api_key.encode()
        ):
            raise APIError(
                401,
                "Missing or wrong API key: send the header 'Authorization: Bearer <key>'.",
                code="invalid_api_key",
            )

    v1 = [Depends(require_api_key)]
    model_card = {"id": model_id, "object": "model", "created": created, "owned_by": "pybitnet"}

    @app.get("/", include_in_schema=False)
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok" if scheduler.accepting else "draining",
            "model": model_id,
            "n_ctx": model.n_ctx,
            "active": scheduler.active,
            "queued": scheduler.queue_depth,
            "max_batch": scheduler.max_batch,
            "max_queue": scheduler.max_queue,
            "kv_budget_tokens": scheduler.kv_budget_tokens,
            "kv_used_tokens": scheduler.kv_used_tokens,
        }

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        if not scheduler.accepting:
            raise APIError(
                503, "The server is shutting down.", type="server_error", code="unavailable"
            )
        if scheduler.queue_depth >= scheduler.max_queue:
            raise APIError(503, "The queue is full.", type="server_error", code="queue_full")
        return {"status": "ready"}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=v1)
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{name}", dependencies=v1)
    async def get_model(name: str) -> dict[str, Any]:
        if name != model_id:
            raise APIError(
                404,
                f"The model {name!r} does not exist; this server has {model_id!r}.",
                code="model_not_found",
                param="model",
            )
        return model_card

    @app.post("/v1/chat/completions", dependencies=v1)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        prompt = model.tokenizer.encode(model.render_chat(messages), parse_special=True)
        reply = Reply("chatcmpl", "chat.completion", model_id)
        return await _answer(
            request, body, prompt, body.max_completion_tokens or body.max_tokens, reply
        )

    @app.post("/v1/completions", dependencies=v1)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        if body.echo:
            raise APIError(400, "echo is not supported.", param="echo")
        if body.best_of not in (None, 1):
            raise APIError(400, f"best_of must be 1, got {body.best_of}.", param="best_of")
        reply = Reply("cmpl", "text_completion", model_id)
        return await _answer(request, body, _prompt_ids(model, body.prompt), body.max_tokens, reply)

    async def _answer(
        request: Request,
        body: GenerationParams,
        prompt: list[int],
        max_tokens: int | None,
        reply: Reply,
    ) -> Any:
        gen = _generation(model, body, prompt, max_tokens)
        try:
            scheduler.submit(gen)
        except QueueFull as exc:
            raise APIError(
                429, f"The server is busy: {exc}.", type="rate_limit_error", code="queue_full"
            ) from None
        except NotAccepting as exc:
            raise APIError(
                503, f"Unavailable: {exc}.", type="server_error", code="unavailable"
            ) from None
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            return EventSourceResponse(
                _stream(scheduler, gen, reply, usage),
                sep="\n",
                shutdown_grace_period=config.shutdown_timeout,
                # Also when the client leaves before the stream's first event.
                background=BackgroundTask(scheduler.cancel, gen),
            )
        text, finished = await _collect(request, scheduler, gen)
        return reply.whole(text, finished)

    return app


def _prompt_ids(model: Model, prompt: str | list[str] | list[int]) -> list[int]:
    if isinstance(prompt, list) and isinstance(prompt[0], str):
        if len(prompt) != 1:
            raise APIError(
                400, f"Only one prompt per request is supported, got {len(prompt)}.", param="prompt"
            )
        prompt = prompt[0]
    if isinstance(prompt, str):
        return model.tokenizer.encode(prompt)
    vocab = model.config.vocab_size
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
        raise APIError(
            400, f"Token id {bad[0]} is outside the vocabulary of {vocab} tokens.", param="prompt"
        )
    return list(prompt)


def _generation(
    model: Model, body: GenerationParams, prompt: list[int], max_tokens: int | None
) -> Generation:
    """Checks the request against the model's limits; the generation to submit."""
    if body.n != 1:
        raise APIError(400, f"Only n=1 is supported, got n={body.n}.", param="n")
    if body.logprobs not in (None, False):
        raise APIError(400, "logprobs are not supported.", param="logprobs")
    if not prompt:
        raise APIError(400, "The prompt is empty.", param="prompt")
    room = model.n_ctx - len(prompt)
    if room < 1:
        raise APIError(
            400,
            f"This model's maximum context length is {model.n_ctx} tokens; the prompt has "
            f"{len(prompt)}, leaving no room to generate.",
            code="context_length_exceeded",
            param="messages" if isinstance(body, ChatCompletionRequest) else "prompt",
        )
    sampling = {
        k: getattr(body, k)
        for k in ("temperature", "top_p", "seed")
        if getattr(body, k) is not None
    }
    return Generation(
        prompt,
        # Generation ends at the context's end (finish_reason "length") whatever max_tokens says.
        max_tokens=min(max_tokens or room, room),
        sampling=SamplerConfig(**sampling),
        stop=body.stop_strings(),
        loop=asyncio.get_running_loop(),
    )


async def _collect(request: Request, scheduler: Scheduler, gen: Generation) -> tuple[str, Finished]:
    """The whole reply; a client that leaves before it is done cancels its generation."""

    async def cancel_on_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        scheduler.cancel(gen)

    watcher = asyncio.create_task(cancel_on_disconnect())
    parts = []
    try:
        while True:
            event = await gen.events.get()
            if isinstance(event, Piece):
                parts.append(event.text)
            elif isinstance(event, Finished):
                return "".join(parts), event
            else:
                raise _failure(event)
    finally:
        watcher.cancel()
        scheduler.cancel(gen)


async def _stream(
    scheduler: Scheduler, gen: Generation, reply: Reply, usage: bool
) -> AsyncIterator[str]:
    """Server-sent events as OpenAI sends them; closing the stream (a client that left, or a
    shutdown past its grace period) cancels the generation."""
    try:
        if reply.chat:
            yield reply.chunk(first=True)
        while True:
            event = await gen.events.get()
            if isinstance(event, Piece):
                yield reply.chunk(text=event.text)
            elif isinstance(event, Finished):
                yield reply.chunk(finish_reason=event.reason)
                if usage:
                    yield reply.chunk(usage=event)
                break
            else:
                yield json.dumps(_failure(event).body())
                break
        yield "[DONE]"
    finally:
        scheduler.cancel(gen)


def _failure(event: Failed) -> APIError:
    return APIError(event.status, event.message, type="server_error")
