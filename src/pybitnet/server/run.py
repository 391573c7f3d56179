"""`pybitnet serve`: a model behind uvicorn, with a graceful shutdown on SIGTERM or Ctrl-C."""

from __future__ import annotations

import copy
import logging
import socket
import threading
from pathlib import Path
from types import FrameType

import uvicorn

from pybitnet.errors import PyBitnetError
from pybitnet.generate import Model, load
from pybitnet.server.app import create_app
from pybitnet.server.config import FINAL_WORDS_SECONDS, ServerConfig
from pybitnet.server.scheduler import Scheduler


class _Server(uvicorn.Server):
    """On the first SIGTERM or Ctrl-C the scheduler stops admitting requests (503) at once and
    uvicorn stops accepting connections; the requests in flight may finish within
    shutdown_timeout. Those still running then are ended by the scheduler, each with its last
    words: a stream an error event and [DONE], a plain request OpenAI's 503 error. uvicorn's own
    cut (and sse-starlette's), FINAL_WORDS_SECONDS later, finds nothing left to cut."""

    def __init__(self, config: uvicorn.Config, scheduler: Scheduler, grace: float) -> None:
        super().__init__(config)
        self.scheduler = scheduler
        self.deadline = threading.Timer(grace, scheduler.stop, kwargs={"timeout": 0})
        self.deadline.daemon = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.scheduler.drain()
        if self.deadline.ident is None:  # the first signal starts the grace, a second does not
            self.deadline.start()
        super().handle_exit(sig, frame)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or a PyBitnetError saying why not (taken first, so a port
    in use fails before the model loads and before the banner announces the page)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise PyBitnetError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise PyBitnetError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _log_config() -> dict:
    """uvicorn's logging, with pybitnet's access log (one line a request) on its handler."""
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["pybitnet.access"] = {
        "handlers": ["default"],
        "level": "INFO",
        "propagate": False,
    }
    return log_config


def serve(
    model_path: str | Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    n_ctx: int | None = None,
    output_head: str | None = None,
    kv_cache: str | None = None,
    config: ServerConfig | None = None,
) -> None:
    """Loads the model (the embedded one when model_path is None; output_head and kv_cache as
    in pybitnet.generate.load) and serves it until SIGTERM."""
    with listen(host, port) as sock:
        model = load(model_path, n_ctx=n_ctx, output_head=output_head, kv_cache=kv_cache)
        serve_model(model, sock, config or ServerConfig())


def serve_model(model: Model, sock: socket.socket, config: ServerConfig) -> None:
    """Serves a loaded model on a bound socket until SIGTERM."""
    app = create_app(model, config)
    host, port = sock.getsockname()[:2]
    uvicorn_config = uvicorn.Config(
        app,
        timeout_graceful_shutdown=config.shutdown_timeout + FINAL_WORDS_SECONDS,
        access_log=False,  # ours (server/middleware.py) has the status, tokens and time
        log_config=_log_config(),
    )
    logging.getLogger("uvicorn.error").info(
        "pybitnet: %s, context %d (KV cache %s), batch %d; chat with it at http://%s:%d/",
        model.path.name,
        model.n_ctx,
        model.engine.kv_cache,
        config.max_batch,
        host,
        port,
    )
    server = _Server(uvicorn_config, app.state.scheduler, config.shutdown_timeout)
    try:
        server.run(sockets=[sock])
    finally:
        server.deadline.cancel()
