"""The routes (docs/SPEC.md §8). Each is a short function that takes what it works with (the
model, the scheduler, the metrics, the completion handler) from the app's
state, as create_app put them there: `public` (the chat page, health, metrics) and `v1`
(behind the API key when one is set, checked before the body is read: middleware.py)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from pybitnet.generate import Model
from pybitnet.server.errors import APIError
from pybitnet.server.metrics import Metrics
from pybitnet.server.replies import ModelCard
from pybitnet.server.scheduler import Scheduler
from pybitnet.server.schemas import ChatCompletionRequest, CompletionRequest, GenerationParams
from pybitnet.server.serving import Answer, Serving


def _model(request: Request) -> Model:
    return request.app.state.model


def _card(request: Request) -> ModelCard:
    return request.app.state.card


def _scheduler(request: Request) -> Scheduler:
    return request.app.state.scheduler


def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def _serving(request: Request) -> Serving:
    return request.app.state.serving


ModelDep = Annotated[Model, Depends(_model)]
CardDep = Annotated[ModelCard, Depends(_card)]
SchedulerDep = Annotated[Scheduler, Depends(_scheduler)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
ServingDep = Annotated[Serving, Depends(_serving)]


public = APIRouter()
v1 = APIRouter(prefix="/v1")  # behind the API key (middleware.RequireApiKey) when one is set


@cache
def _page() -> str:
    return files("pybitnet.server").joinpath("page.html").read_text(encoding="utf-8")


@public.get("/", include_in_schema=False)
async def chat_page() -> HTMLResponse:
    return HTMLResponse(_page())


@public.get("/health")
async def health(model: ModelDep, card: CardDep, scheduler: SchedulerDep) -> dict[str, Any]:
    return {
        "status": "ok" if scheduler.accepting else "draining" if scheduler.alive else "stopped",
        "model": card.id,
        "n_ctx": model.n_ctx,
        "kv_cache": model.engine.kv_cache,
        "active": scheduler.active,
        "queued": scheduler.queue_depth,
        "max_batch": scheduler.max_batch,
        "max_queue": scheduler.max_queue,
        "kv_budget_tokens": scheduler.kv_budget_tokens,
        "kv_used_tokens": scheduler.kv_used_tokens,
    }


@public.get("/health/live")
async def live(scheduler: SchedulerDep) -> dict[str, str]:
    """200 while this process can still generate (draining included): a 503 asks the
    orchestrator for a restart."""
    if not scheduler.alive:
        raise APIError(
            503,
            "The scheduler has stopped: this process can no longer generate; restart it.",
            type="server_error",
            code="scheduler_stopped",
        )
    return {"status": "ok"}


@public.get("/health/ready")
async def ready(scheduler: SchedulerDep) -> dict[str, str]:
    if not scheduler.accepting:
        raise APIError(503, "The server is shutting down.", type="server_error", code="unavailable")
    if scheduler.queue_depth >= scheduler.max_queue:
        raise APIError(503, "The queue is full.", type="server_error", code="queue_full")
    return {"status": "ready"}


@public.get("/metrics")
async def prometheus(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


@v1.get("/models")
async def list_models(card: CardDep) -> dict[str, Any]:
    return {"object": "list", "data": [card.body()]}


def _model_not_found(name: str, card: ModelCard) -> APIError:
    return APIError(
        404,
        f"The model {name!r} does not exist; this server has {card.id!r}.",
        code="model_not_found",
        param="model",
    )


def _check(body: GenerationParams, card: ModelCard) -> None:
    """Refuses what the server would otherwise ignore: a field it does not implement, or a model
    it does not serve. The accepted name is the id /v1/models lists (the model file's stem); a
    body without `model` (curl, the chat page) means the one model served."""
    refused = body.unsupported()
    if refused is not None:
        field, value = refused
        raise APIError(
            400,
            f"The field {field!r} ({value}) is not supported by pybitnet; leave it out.",
            code="unsupported_field",
            param=field,
        )
    if body.model is not None and body.model != card.id:
        raise _model_not_found(body.model, card)


@v1.get("/models/{name}")
async def get_model(name: str, card: CardDep) -> dict[str, Any]:
    if name != card.id:
        raise _model_not_found(name, card)
    return card.body()


@v1.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, serving: ServingDep, card: CardDep
) -> Answer:
    _check(body, card)
    return await serving.chat(body, request)


@v1.post("/completions", response_model=None)
async def completions(
    body: CompletionRequest, request: Request, serving: ServingDep, card: CardDep
) -> Answer:
    _check(body, card)
    return await serving.complete(body, request)
