"""The float64 reference forward pass: docs/SPEC.md §1, read top to bottom, in numpy float64.

This is the oracle that the native engine is tested against. It stays this simple.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import expit

from pybitnet.errors import ModelError
from pybitnet.model.cache import ReferenceCache
from pybitnet.model.config import ModelConfig
from pybitnet.model.weights import Tensor, Weights


class ReferenceModel:
    """docs/SPEC.md §1 over a model's weights. Dense (non-ternary) weights are dequantized to
    float64 once, on first use; ternary weights are unpacked at every use."""

    def __init__(self, weights: Weights) -> None:
        self.weights = weights
        self.config = weights.config
        self._dense: dict[str, np.ndarray] = {}

    def new_cache(self, n_ctx: int | None = None) -> ReferenceCache:
        return ReferenceCache(self.config, n_ctx)

    def forward(
        self, tokens: Sequence[int], cache: ReferenceCache, *, last_only: bool = False
    ) -> np.ndarray:
        """Logits (len(tokens), vocab) for tokens at positions cache.length onwards
        (``last_only``: only the last position's, (1, vocab))."""
        return self._forward(tokens, cache, 1 if last_only else len(tokens))

    def _forward(self, tokens: Sequence[int], cache: ReferenceCache, rows: int) -> np.ndarray:
        """The logits of the last `rows` positions of tokens."""
        c, w = self.config, self.weights
        n = len(tokens)
        ids = np.asarray(tokens, dtype=np.int64)
        if n == 0 or ids.min() < 0 or ids.max() >= c.vocab_size:
            raise ModelError(f"token ids must be in [0, {c.vocab_size}), got {tokens!r}")
        cache.reserve(n)
        start = cache.length
        positions = np.arange(start, start + n)

        h = self._dense_weight(w.token_embd)[ids]  # (n, dim), the residual stream
        for layer, blk in enumerate(w.blocks):
            x = rmsnorm(h, blk.attn_norm, c.rms_eps)
            q = self.linear(x, blk.attn_q).reshape(n, c.n_heads, c.head_dim)
            k = self.linear(x, blk.attn_k).reshape(n, c.n_kv_heads, c.head_dim)
            v = self.linear(x, blk.attn_v).reshape(n, c.n_kv_heads, c.head_dim)
            q, k = rope(q, positions, c), rope(k, positions, c)
            cache.k[layer, start : start + n] = k
            cache.v[layer, start : start + n] = v
            a = attention(q, cache.k[layer, : start + n], cache.v[layer, : start + n], positions)
            if c.sub_norms:
                a = rmsnorm(a, blk.attn_sub_norm, c.rms_eps)
            h = h + self.linear(a, blk.attn_output)

            x = rmsnorm(h, blk.ffn_norm, c.rms_eps)
            m = ACTIVATIONS[c.activation](self.linear(x, blk.ffn_gate)) * self.linear(x, blk.ffn_up)
            if c.sub_norms:
                m = rmsnorm(m, blk.ffn_sub_norm, c.rms_eps)
            h = h + self.linear(m, blk.ffn_down)
        cache.length += n
        return self.linear(rmsnorm(h[n - rows :], w.output_norm, c.rms_eps), w.output)

    def forward_batch(
        self,
        items: Sequence[tuple[Sequence[int], ReferenceCache]],
        *,
        rows: Sequence[int] | None = None,
    ) -> list[np.ndarray]:
        """forward() for several sequences, one after the other (the engine runs them as one);
        ``rows``: per sequence, the logits of how many of its last positions (None: all)."""
        rows = [len(tokens) for tokens, _ in items] if rows is None else rows
        return [
            self._forward(tokens, cache, r) for (tokens, cache), r in zip(items, rows, strict=True)
        ]

    def linear(self, x: np.ndarray, w: Tensor) -> np.ndarray:
        """x (n, in) -> (n, out): BitLinear for ternary weights, a plain float layer otherwise."""
        if w.wtype.ternary:
            codes, scales = w.unpack_ternary()
            return bitlinear(x, codes, scales)
        return x @ self._dense_weight(w).T

    def _dense_weight(self, w: Tensor) -> np.ndarray:
        if w.name not in self._dense:
            self._dense[w.name] = w.dequantize().astype(np.float64)
        return self._dense[w.name]


def bitlinear(x: np.ndarray, codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """BitNet b1.58 linear layer (docs/SPEC.md §1): int8 activations per token, exact integer
    dot products per weight-scale group, then the scales.

    codes: int8 (out, in) in {-1, 0, 1}; scales: (out, groups), each group a run of in/groups
    columns (one group: a per-tensor scale; TQ1_0/TQ2_0: one per 256-block).
    """
    n, n_in = x.shape
    n_out, groups = scales.shape
    s_x = 127.0 / np.maximum(np.abs(x).max(axis=1, keepdims=True), 1e-5)
    x_q = np.clip(np.rint(x * s_x), -128, 127)
    # Every partial sum is an integer below 2^24, so float32 BLAS computes it exactly.
    width = n_in // groups
    dots = np.einsum(
        "ogk,ngk->nog",
        codes.reshape(n_out, groups, width).astype(np.float32),
        x_q.reshape(n, groups, width).astype(np.float32),
    )
    return (dots.astype(np.float64) * scales.astype(np.float64)).sum(axis=2) / s_x


def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope(x: np.ndarray, positions: np.ndarray, c: ModelConfig) -> np.ndarray:
    """Rotate (n, heads, head_dim) by position; pair j turns by pos * theta^(-2j/rope_dim).

    NEOX pairs element j with j + rope_dim/2 (split halves); NORM pairs 2j with 2j+1.
    Dimensions past rope_dim are left as they are.
    """
    half = c.rope_dim // 2
    freqs = c.rope_theta ** (-2.0 * np.arange(half) / c.rope_dim)
    angles = positions[:, None, None] * freqs  # (n, 1, half)
    cos, sin = np.cos(angles), np.sin(angles)
    if c.rope_neox:
        first, second = np.arange(half), np.arange(half, c.rope_dim)
    else:
        first, second = np.arange(0, c.rope_dim, 2), np.arange(1, c.rope_dim, 2)
    a, b = x[..., first], x[..., second]
    out = x.copy()
    out[..., first] = a * cos - b * sin
    out[..., second] = a * sin + b * cos
    return out


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Causal softmax attention with grouped-query heads: q (n, H, d); k, v (T, Hkv, d).

    Query head i reads kv head i // (H / Hkv). Returns (n, H * d).
    """
    n, n_heads, d = q.shape
    group = n_heads // k.shape[1]
    k = np.repeat(k, group, axis=1)  # (T, H, d)
    v = np.repeat(v, group, axis=1)
    scores = np.einsum("nhd,thd->hnt", q, k) / np.sqrt(d)
    future = np.arange(k.shape[0])[None, :] > positions[:, None]  # (n, T)
    scores[:, future] = -np.inf
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    return np.einsum("hnt,thd->nhd", probs, v).reshape(n, n_heads * d)


def silu(x: np.ndarray) -> np.ndarray:
    return x * expit(x)


def relu2(x: np.ndarray) -> np.ndarray:
    return np.square(np.maximum(x, 0.0))


ACTIVATIONS = {"silu": silu, "relu2": relu2}
