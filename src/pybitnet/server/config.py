"""How a server shares its model: the settings, and the KV-cache budget they come to."""

from __future__ import annotations

from dataclasses import dataclass

import psutil

from pybitnet.generate import Model

# Past the shutdown timeout, the seconds a request the scheduler ended has to send its last
# words (an error event, a 503) before the server closes its connection.
FINAL_WORDS_SECONDS = 2.0


@dataclass(frozen=True)
class ServerConfig:
    """How the server shares the model. kv_budget_bytes None: room for max_batch full contexts,
    at most half the memory available at start (and at least one full context)."""

    max_batch: int = 8
    max_queue: int = 64
    api_key: str | None = None
    kv_budget_bytes: int | None = None
    max_body_bytes: int = 1 << 20
    body_timeout: float = 30.0  # seconds a request body may take to arrive (408 after)
    cors_origins: tuple[str, ...] = ()  # none: CORS off
    shutdown_timeout: float = 10.0  # seconds to finish in-flight requests after SIGTERM
    draft_tokens: int = 0  # speculative decoding for requests that do not ask (0: off)


def kv_budget_tokens(model: Model, config: ServerConfig) -> int:
    """The cache positions the active sequences may hold together (the scheduler's budget)."""
    per_token = model.engine.kv_bytes_per_token()
    if config.kv_budget_bytes is not None:
        return config.kv_budget_bytes // per_token
    affordable = psutil.virtual_memory().available // 2 // per_token
    return max(model.n_ctx, min(config.max_batch * model.n_ctx, affordable))
