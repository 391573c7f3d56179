"""The OpenAI-compatible HTTP API (docs/SPEC.md §8) over a Scheduler, as a FastAPI app: the pieces
assembled, each in its own module (config, errors, middleware, routes, serving, replies)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from pybitnet.generate import Model
from pybitnet.server import routes
from pybitnet.server.config import ServerConfig, kv_budget_tokens
from pybitnet.server.errors import install_error_handlers
from pybitnet.server.metrics import Metrics
from pybitnet.server.middleware import add_middleware
from pybitnet.server.replies import ModelCard
from pybitnet.server.scheduler import Scheduler
from pybitnet.server.serving import Serving


def create_app(model: Model, config: ServerConfig | None = None) -> FastAPI:
    """The server's app for a loaded model; its lifespan runs the scheduler. The routes find
    the model, scheduler, metrics, configuration and completion handler in `app.state`."""
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
    card = ModelCard.of(model)

    app = FastAPI(
        title="pybitnet", lifespan=_lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.model, app.state.card, app.state.config = model, card, config
    app.state.scheduler, app.state.metrics = scheduler, metrics
    app.state.serving = Serving(model, card.id, scheduler, config)
    install_error_handlers(app)
    add_middleware(app, config, metrics)
    app.include_router(routes.public)
    app.include_router(routes.v1)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    scheduler: Scheduler = app.state.scheduler
    scheduler.start()
    try:
        yield
    finally:
        # Bounded: a step that never ends must not keep the process from exiting.
        await asyncio.to_thread(scheduler.stop, app.state.config.shutdown_timeout)
        app.state.serving.close()
