"""What every request passes through before its route: the access log, counting, CORS, the API
key (checked before any of the body is read), the body's size and time limits."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pybitnet.server.config import ServerConfig
from pybitnet.server.errors import APIError
from pybitnet.server.metrics import Metrics
from pybitnet.server.replies import answered_usage

access_log = logging.getLogger("pybitnet.access")


def add_middleware(app: FastAPI, config: ServerConfig, metrics: Metrics) -> None:
    """Outermost first: logging and counting (so a refused request is logged and counted too),
    CORS (a preflight carries no key), the API key, the body's limits."""
    app.add_middleware(LimitBody, limit=config.max_body_bytes, seconds=config.body_timeout)
    if config.api_key is not None:
        app.add_middleware(RequireApiKey, key=config.api_key)
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(CountRequests, metrics=metrics)


class CountRequests:
    """Counts requests by route template (not raw path, to bound the labels) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()
        usage: dict[str, int] = {}
        answered_usage.set(usage)  # this request's own context: the reply fills it

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            path = route.path if isinstance(route, Route) else "unmatched"
            self.metrics.requests.labels(path, str(status)).inc()
            _log_access(scope, status, usage, time.perf_counter() - started)


def _log_access(scope: Scope, status: int, usage: dict[str, int], seconds: float) -> None:
    """One line per request: method, path, status, prompt+completion tokens ('-' when the reply
    carried no usage: not a completion, or a stream without include_usage) and milliseconds."""
    tokens = f"{usage['prompt_tokens']}+{usage['completion_tokens']}" if usage else "-"
    access_log.info(
        "%s %s %d tokens=%s ms=%.1f", scope["method"], scope["path"], status, tokens, seconds * 1e3
    )


class RequireApiKey:
    """Answers 401 to a /v1 request without 'Authorization: Bearer <key>', from its headers
    alone: the body of an unauthenticated request is never read, let alone parsed."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1") and not self._allowed(scope):
            refusal = APIError(
                401,
                "Missing or wrong API key: send the header 'Authorization: Bearer <key>'.",
                code="invalid_api_key",
            )
            await refusal.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), self.key)


class LimitBody:
    """Answers 413 to a request body over `limit` bytes, whether it declares its length or not,
    and 408 to one that has not all come `seconds` after its first read (a client sending a
    byte a second must not hold a connection and its request for ever)."""

    def __init__(self, app: ASGIApp, limit: int, seconds: float) -> None:
        self.app = app
        self.limit = limit
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            await self._too_large(declared.decode("latin-1")).response()(scope, receive, send)
            return
        received = 0
        deadline: float | None = None
        body_done = False

        async def receive_within_limits() -> Message:
            nonlocal received, deadline, body_done
            if body_done:  # after the body only a disconnect comes: waiting for it is no upload
                return await receive()
            loop = asyncio.get_running_loop()
            deadline = deadline or loop.time() + self.seconds
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                # Raised while the route reads its body; FastAPI passes HTTPExceptions on.
                raise HTTPException(
                    408,
                    f"The request body did not arrive within {self.seconds:g} s.",
                ) from None
            received += len(message.get("body", b""))
            body_done = not message.get("more_body", False)
            if received > self.limit:
                raise HTTPException(413, self._too_large(f"more than {received}").message)
            return message

        await self.app(scope, receive_within_limits, send)

    def _too_large(self, size: str) -> APIError:
        return APIError(
            413,
            f"The request body ({size} bytes) is larger than the limit of {self.limit} bytes.",
            code="request_too_large",
        )
