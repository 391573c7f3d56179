"""`pybitnet serve`: a model behind uvicorn, with a graceful shutdown on SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
from pathlib import Path
from types import FrameType

import uvicorn

from pybitnet.generate import load
from pybitnet.server.app import create_app
from pybitnet.server.config import ServerConfig
from pybitnet.server.scheduler import Scheduler


class _Server(uvicorn.Server):
    """On the first SIGTERM or Ctrl-C the scheduler stops admitting requests (503) at once;
    uvicorn then stops accepting connections and waits up to timeout_graceful_shutdown for the
    requests in flight, and cancels those still running after it."""

    def __init__(self, config: uvicorn.Config, scheduler: Scheduler) -> None:
        super().__init__(config)
        self.scheduler = scheduler

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.scheduler.drain()
        super().handle_exit(sig, frame)


def serve(
    model_path: str | Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    n_ctx: int | None = None,
    output_head: str | None = None,
    config: ServerConfig | None = None,
) -> None:
    """Loads the model (the embedded one when model_path is None; output_head as in
    pybitnet.generate.load) and serves it until SIGTERM."""
    config = config or ServerConfig()
    log = logging.getLogger("uvicorn.error")
    model = load(model_path, n_ctx=n_ctx, output_head=output_head)
    app = create_app(model, config)
    uvicorn_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        timeout_graceful_shutdown=config.shutdown_timeout,
        access_log=False,
    )
    log.info(
        "pybitnet: %s, context %d, batch %d; chat with it at http://%s:%d/",
        model.path.name,
        model.n_ctx,
        config.max_batch,
        host,
        port,
    )
    _Server(uvicorn_config, app.state.scheduler).run()
