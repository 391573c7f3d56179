"""KV caches: what every cache keeps (CacheSpan), and the float64 reference's cache.

The engine's float32 cache (engine.forward.EngineCache) shares CacheSpan; its layout is the
attention kernel's.
"""

from __future__ import annotations

import numpy as np

from pybitnet.errors import ModelError
from pybitnet.model.config import ModelConfig


class CacheSpan:
    """What every KV cache keeps besides its arrays: room for n_ctx positions (the effective
    context, ModelConfig.context), `length` filled."""

    def __init__(self, config: ModelConfig, n_ctx: int | None = None) -> None:
        self.n_ctx = config.context(n_ctx)
        self.length = 0

    def reserve(self, n: int) -> None:
        if self.length + n > self.n_ctx:
            raise ModelError(
                f"{self.length} cached + {n} new tokens exceed the context of {self.n_ctx} tokens"
            )

    def reset(self) -> None:
        self.length = 0

    def truncate(self, length: int) -> None:
        """Forgets the positions from `length` on (drafts the model rejected): attention reads
        only the first `length` positions, and the next tokens overwrite the rest."""
        if not 0 <= length <= self.length:
            raise ModelError(f"cannot truncate a cache of {self.length} positions to {length}")
        self.length = length


class ReferenceCache(CacheSpan):
    """The float64 reference's keys and values of every layer for the positions seen so far."""

    def __init__(self, config: ModelConfig, n_ctx: int | None = None) -> None:
        super().__init__(config, n_ctx)
        shape = (config.n_layers, self.n_ctx, config.n_kv_heads, config.head_dim)
        self.k = np.zeros(shape)
        self.v = np.zeros(shape)
