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
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import numpy as np
import psutil
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pybitnet.errors import PyBitnetError
from pybitnet.sampling import SamplerConfig
from pybitnet.server.metrics import Metrics
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

RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True)
class ServerConfig:
    """How the server shares the model. kv_budget_bytes None: room for max_batch full contexts,
    at most half the memory available at start (and at least one full context)."""

    max_batch: int = 8
    max_queue: int = 64
    api_key: str | None = None
    kv_budget_bytes: int | None = None
    max_body_bytes: int = 1 << 20
    cors_origins: tuple[str, ...] = ()  # none: CORS off
    shutdown_timeout: float = 10.0  # seconds to finish in-flight requests after SIGTERM


class APIError(Exception):
    """An error answered to the client as an OpenAI error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)} if self.status in (429, 503) else None
        return JSONResponse(self.body(), status_code=self.status, headers=retry)


def kv_bytes_per_token(model: Any) -> int:
    """Bytes one cached position takes, from a full-context cache (its pages are never touched):
    the cache's `nbytes` if it reports it, else the size of its numpy arrays."""
    cache = model.engine.new_cache(model.n_ctx)
    nbytes = getattr(cache, "nbytes", None)
    if nbytes is None:
        nbytes = sum(a.nbytes for a in vars(cache).values() if isinstance(a, np.ndarray))
    return max(1, -(-int(nbytes) // model.n_ctx))


def kv_budget_tokens(model: Any, config: ServerConfig) -> int:
    per_token = kv_bytes_per_token(model)
    if config.kv_budget_bytes is not None:
        return config.kv_budget_bytes // per_token
    affordable = psutil.virtual_memory().available // 2 // per_token
    return max(model.n_ctx, min(config.max_batch * model.n_ctx, affordable))


def create_app(model: Any, config: ServerConfig | None = None) -> FastAPI:
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
    _install_error_handlers(app)
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(_LimitBody, limit=config.max_body_bytes)
    app.add_middleware(_CountRequests, metrics=metrics)

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
        reply = _Reply("chatcmpl", "chat.completion", model_id)
        return await _answer(
            request, body, prompt, body.max_completion_tokens or body.max_tokens, reply
        )

    @app.post("/v1/completions", dependencies=v1)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        if body.echo:
            raise APIError(400, "echo is not supported.", param="echo")
        if body.best_of not in (None, 1):
            raise APIError(400, f"best_of must be 1, got {body.best_of}.", param="best_of")
        reply = _Reply("cmpl", "text_completion", model_id)
        return await _answer(request, body, _prompt_ids(model, body.prompt), body.max_tokens, reply)

    async def _answer(
        request: Request,
        body: GenerationParams,
        prompt: list[int],
        max_tokens: int | None,
        reply: _Reply,
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


def _prompt_ids(model: Any, prompt: str | list[str] | list[int]) -> list[int]:
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
    model: Any, body: GenerationParams, prompt: list[int], max_tokens: int | None
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
        tokenizer=model.tokenizer,
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
    scheduler: Scheduler, gen: Generation, reply: _Reply, usage: bool
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


class _Reply:
    """The id, object type and model shared by a reply's body or its stream's chunks."""

    def __init__(self, id_prefix: str, object: str, model: str) -> None:
        self.id = f"{id_prefix}-{uuid.uuid4().hex}"
        self.object = object
        self.model = model
        self.created = int(time.time())
        self.chat = object == "chat.completion"

    def whole(self, text: str, finished: Finished) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text}
        choice.update(logprobs=None, finish_reason=finished.reason)
        return self._envelope(self.object, choices=[choice], usage=_usage(finished))

    def chunk(
        self,
        *,
        first: bool = False,
        text: str = "",
        finish_reason: str | None = None,
        usage: Finished | None = None,
    ) -> str:
        if usage is not None:
            body = self._envelope(self._chunk_object, choices=[], usage=_usage(usage))
            return json.dumps(body)
        if self.chat:
            delta = (
                {"role": "assistant", "content": ""} if first else {"content": text} if text else {}
            )
            choice = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "text": text}
        choice.update(logprobs=None, finish_reason=finish_reason)
        return json.dumps(self._envelope(self._chunk_object, choices=[choice]))

    @property
    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.chat else self.object

    def _envelope(self, object: str, **fields: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            **fields,
        }


def _usage(finished: Finished) -> dict[str, int]:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(PyBitnetError)
    async def bad_input(request: Request, exc: PyBitnetError) -> JSONResponse:
        return APIError(400, str(exc)).response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if errors[0]["type"] == "json_invalid":
            reason = errors[0].get("ctx", {}).get("error", "")
            return APIError(400, f"The body is not valid JSON: {reason}.").response()
        # A union field fails once per alternative: show them all, name the top-level field.
        message = "; ".join(
            f"{'.'.join(str(part) for part in e['loc'][1:])}: {e['msg']}" for e in errors
        )
        field = str(errors[0]["loc"][1]) if len(errors[0]["loc"]) > 1 else None
        return APIError(422, message, code="invalid_value", param=field).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        message = (
            f"No route {request.method} {request.url.path}."
            if exc.status_code == 404
            else str(exc.detail)
        )
        return APIError(exc.status_code, message, code=codes.get(exc.status_code)).response()

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        return APIError(
            500, f"Internal error: {type(exc).__name__}: {exc}", type="server_error"
        ).response()


class _CountRequests:
    """Counts requests by route template (not raw path, to bound the labels) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()


class _LimitBody:
    """Answers 413 to a request body over `limit` bytes, whether it declares its length or not."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            await self._too_large(declared.decode("latin-1")).response()(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                # Raised while the route reads its body; FastAPI passes HTTPExceptions on.
                raise HTTPException(413, self._too_large(f"more than {received}").message)
            return message

        await self.app(scope, receive_within_limit, send)

    def _too_large(self, size: str) -> APIError:
        return APIError(
            413,
            f"The request body ({size} bytes) is larger than the limit of {self.limit} bytes.",
            code="request_too_large",
        )
