"""The engine's forward pass: model/reference.py's structure, in float32, over native kernels.

Every op goes through the kernel registry, so `PYBITNET_KERNELS=numpy` runs the same code
on the numpy kernels, and `kernels.profile()` sees every call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pybitnet import kernels
from pybitnet.engine.layers import Linear, requantize_problem, requantized
from pybitnet.errors import ModelError
from pybitnet.kernels.layout import (
    KEY_BLOCK,
    KV_CACHE_TYPES,
    kv_cache_problem,
    kv_cache_shapes,
)
from pybitnet.model.cache import CacheSpan
from pybitnet.model.config import ModelConfig
from pybitnet.model.weights import Weights

# The output layer as stored (None), as int8 rows ("q8"), or requantized at load to a K-quant
# (the format's name): fewer bytes read per decoded token, at a cost `pybitnet accuracy` measures.
OUTPUT_HEADS = (None, "q8", "q6_k", "q4_k")
KV_CACHE_DEFAULT = next(iter(KV_CACHE_TYPES))  # f16: half the bytes of f32 read per token
PREFILL_CHUNK = 128  # tokens per forward pass of a long prompt (Engine.forward)
# A block's linear layers: each stacks the tensors that read one input into one Linear (one
# BitLinear call when they are ternary). Engine builds its blocks from this table, and
# bitlinear_calls_per_pass (which verify checks receipts with) counts from it.
BLOCK_LINEARS = {
    "qkv": ("attn_q", "attn_k", "attn_v"),
    "attn_output": ("attn_output",),
    "gate_up": ("ffn_gate", "ffn_up"),
    "ffn_down": ("ffn_down",),
}


def output_head_problem(weights: Weights, output_head: str | None) -> str | None:
    """Why the model's output layer cannot be held as ``output_head``, or None."""
    if output_head not in OUTPUT_HEADS:
        return f"output_head must be one of {OUTPUT_HEADS}, got {output_head!r}"
    if output_head in (None, "q8"):  # as stored, or int8 rows: any dense layer
        return None
    problem = requantize_problem(weights.output, output_head)
    return problem and f"output head {output_head}: {problem}"


def bitlinear_calls_per_pass(ternary_tensors: int) -> tuple[int, int]:
    """The fewest and the most BitLinear calls one forward pass (of any batch) makes for a model
    with this many ternary tensors: exact for whole blocks (and a ternary output layer, one call
    more); for ternary tensors outside whole blocks, how they stack is not known from the count."""
    per_block = sum(len(tensors) for tensors in BLOCK_LINEARS.values())
    blocks, rest = divmod(ternary_tensors, per_block)
    if rest <= 1:
        exact = blocks * len(BLOCK_LINEARS) + rest
        return exact, exact
    most_stacked = max(len(tensors) for tensors in BLOCK_LINEARS.values())
    return -(-ternary_tensors // most_stacked), ternary_tensors


class EngineCache(CacheSpan):
    """Keys and values of every layer, laid out for the attention kernel (which writes them):
    keys in blocks of 16 positions, each block transposed (layers, kv_heads, ctx / 16,
    head_dim, 16); values (layers, kv_heads, ctx, head_dim); of element type ``kv_cache``
    (kernels/layout.py: f16, f32, or q8_0 bytes). Pages are touched only as positions are
    filled."""

    def __init__(
        self, config: ModelConfig, n_ctx: int | None = None, kv_cache: str = KV_CACHE_DEFAULT
    ) -> None:
        super().__init__(config, n_ctx)
        problem = kv_cache_problem(kv_cache, config.head_dim)
        if problem:
            raise ModelError(problem)
        self.kv_cache = kv_cache
        ctx = -(-self.n_ctx // KEY_BLOCK) * KEY_BLOCK
        c, dtype = config, KV_CACHE_TYPES[kv_cache]
        keys, values = kv_cache_shapes(kv_cache, c.n_kv_heads, c.head_dim, ctx)
        self.k = np.zeros((c.n_layers, *keys), dtype)
        self.v = np.zeros((c.n_layers, *values), dtype)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


@dataclass(frozen=True)
class _Block:
    attn_norm: np.ndarray
    qkv: Linear
    attn_output: Linear
    attn_sub_norm: np.ndarray | None
    ffn_norm: np.ndarray
    gate_up: Linear
    ffn_down: Linear
    ffn_sub_norm: np.ndarray | None


class Engine:
    """docs/SPEC.md §1 on the native kernels: ``forward(tokens, cache)`` -> float32 logits.

    Ternary weights are repacked once, here; float and Q-format weights are read in place from
    the file's memory map. ``output_head="q8"`` quantizes the output layer to int8 per row
    (half the bytes of F16 per decoded token, at a small accuracy cost); "q6_k" and "q4_k"
    requantize it to that format (0.41 and 0.28 of F16's bytes; rows of whole 256-blocks).
    ``kv_cache``: the element type of every cache it makes (f16, f32, q8_0; kernels/layout.py;
    None: KV_CACHE_DEFAULT).
    """

    def __init__(
        self,
        weights: Weights,
        *,
        output_head: str | None = None,
        kv_cache: str | None = None,
    ) -> None:
        c = self.config = weights.config
        kv_cache = KV_CACHE_DEFAULT if kv_cache is None else kv_cache
        problem = output_head_problem(weights, output_head) or kv_cache_problem(
            kv_cache, c.head_dim
        )
        if problem:
            raise ModelError(problem)
        self.kv_cache = kv_cache
        self.tier = tier = kernels.selected_tier()
        self._rmsnorm = kernels.get("rmsnorm", tier)
        self._rope = kernels.get("rope", tier)
        self._attention = kernels.get("attention", tier)
        self._gated = kernels.get("gated", tier)
        self._embedding = kernels.get("embedding", tier)
        self.blocks = [
            _Block(
                attn_norm=_f32(b.attn_norm),
                attn_sub_norm=_f32(b.attn_sub_norm),
                ffn_norm=_f32(b.ffn_norm),
                ffn_sub_norm=_f32(b.ffn_sub_norm),
                **{
                    name: Linear([getattr(b, t) for t in tensors], tier)
                    for name, tensors in BLOCK_LINEARS.items()
                },
            )
            for b in weights.blocks
        ]
        embd = weights.token_embd
        if embd.wtype.ternary:
            raise ModelError(f"token_embd in {embd.wtype.name} is not supported by the engine")
        self.token_embd = Linear([embd], tier)  # its kernel's prepared matrix serves the lookup
        self.output_norm = _f32(weights.output_norm)
        tied = weights.output is embd
        # the output layer's type as computed (the file's, "int8", or the requantized one)
        self.output_type = "int8" if output_head == "q8" else weights.output.wtype.name
        self.output_note = None  # a line for the user when the head is not the type asked for
        if output_head == "q8":
            self.output = Linear([weights.output], tier, int8=True)
        elif output_head is not None:
            head = requantized(weights.output, output_head, tier)
            self.output, self.output_type = Linear([head], tier), head.wtype.name
            if self.output_type != output_head.upper():
                self.output_note = (
                    f"output head {output_head}: rows of {head.shape[1]} elements are not whole "
                    f"256-blocks; the head is {self.output_type}, as llama.cpp does"
                )
        else:
            self.output = self.token_embd if tied else Linear([weights.output], tier)
        half = c.rope_dim // 2
        self._freqs = c.rope_theta ** (-2.0 * np.arange(half) / c.rope_dim)

    def rope_angles(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cos, sin) float32 (n, rope_dim / 2) of the positions' angles, computed in float64
        as the reference does. Computed per call, not tabled: a table would be sized by the
        file's context_length (2^31 claimed = 16 GiB), and this is a few microseconds a step."""
        angles = np.asarray(positions, np.int64)[:, None] * self._freqs
        return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)

    def new_cache(self, n_ctx: int | None = None) -> EngineCache:
        return EngineCache(self.config, n_ctx, self.kv_cache)

    def kv_bytes_per_token(self) -> int:
        """Bytes one cached position takes (keys and values of every layer): what a KV budget
        is counted in. Read off a one-block cache, whose pages are never touched."""
        return self.new_cache(KEY_BLOCK).nbytes // KEY_BLOCK

    def forward(
        self, tokens: Sequence[int], cache: EngineCache, *, last_only: bool = False
    ) -> np.ndarray:
        """Logits (len(tokens), vocab) float32 for tokens at positions cache.length onwards
        (``last_only``: only the last position's, (1, vocab), as a prompt's prefill needs).

        A long prompt runs in chunks of PREFILL_CHUNK tokens, each attending to the cache the
        previous ones filled: the same logits (every op treats each position alone), a bounded
        working set (the activations of 512 tokens at once took ~150 MB more peak RSS), and
        barely slower (the weights are read once per chunk)."""
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        self._check(ids, cache)  # before any chunk changes the cache
        chunks = [ids[i : i + PREFILL_CHUNK] for i in range(0, ids.size, PREFILL_CHUNK)]
        rows = [1] if last_only else None
        logits = [self.forward_batch([(chunk, cache)], rows=rows)[0] for chunk in chunks]
        return logits[-1] if last_only or len(logits) == 1 else np.concatenate(logits)

    def _check(self, ids: np.ndarray, cache: EngineCache) -> None:
        vocab = self.config.vocab_size
        if ids.size == 0 or ids.min() < 0 or ids.max() >= vocab:
            raise ModelError(f"token ids must be in [0, {vocab}), got {ids.tolist()!r}")
        cache.reserve(ids.size)

    def forward_batch(
        self,
        items: Sequence[tuple[Sequence[int], EngineCache]],
        *,
        rows: Sequence[int] | None = None,
    ) -> list[np.ndarray]:
        """forward() for several sequences (each its own cache) in one pass: every linear layer
        is one kernel call over all their tokens, so the weights are read once per step, and so
        is each layer's attention. ``rows``: per sequence, the logits of how many of its last
        positions to compute (1 to its tokens; None: all), so the output layer, the largest
        matrix of a small model, skips the positions nobody samples from."""
        c = self.config
        ids = [np.asarray(tokens, dtype=np.int64).reshape(-1) for tokens, _ in items]
        caches = [cache for _, cache in items]
        if len({id(cache) for cache in caches}) != len(caches):
            raise ModelError("forward_batch: each sequence needs its own cache")
        sizes = [seq.size for seq in ids]
        rows = sizes if rows is None else list(rows)
        if len(rows) != len(ids) or not all(1 <= r <= s for r, s in zip(rows, sizes, strict=True)):
            raise ModelError(f"forward_batch: rows {rows} must be 1 to each sequence's {sizes}")
        for seq, cache in zip(ids, caches, strict=True):
            self._check(seq, cache)
        spans = np.cumsum([0, *sizes])
        starts = [cache.length for cache in caches]
        positions = np.concatenate(
            [np.arange(s, s + seq.size) for s, seq in zip(starts, ids, strict=True)]
        )
        cos, sin = self.rope_angles(positions)
        seqs = [
            (cache, start, seq.size) for cache, start, seq in zip(caches, starts, ids, strict=True)
        ]
        n = len(positions)

        h = self._embedding(self.token_embd.prepared[0], np.concatenate(ids))  # (n, dim)
        for layer, blk in enumerate(self.blocks):
            x = self.rmsnorm(h, blk.attn_norm)
            q, k, v = blk.qkv(x)
            q = self.rope(q.reshape(n, c.n_heads, c.head_dim), cos, sin)
            k = self.rope(k.reshape(n, c.n_kv_heads, c.head_dim), cos, sin)
            v = v.reshape(n, c.n_kv_heads, c.head_dim)
            a = self.attention(q, k, v, layer, seqs)
            if c.sub_norms:
                a = self.rmsnorm(a, blk.attn_sub_norm)
            h = h + blk.attn_output(a)[0]

            x = self.rmsnorm(h, blk.ffn_norm)
            g, u = blk.gate_up(x)
            m = self._gated(c.activation, g, u)
            if c.sub_norms:
                m = self.rmsnorm(m, blk.ffn_sub_norm)
            h = h + blk.ffn_down(m)[0]
        for seq, cache in zip(ids, caches, strict=True):
            cache.length += seq.size
        if rows != sizes:
            ends = zip(spans[1:], rows, strict=True)
            h = h[np.concatenate([np.arange(end - r, end) for end, r in ends])]
            spans = np.cumsum([0, *rows])
        logits = self.output(self.rmsnorm(h, self.output_norm))[0]
        return [logits[spans[i] : spans[i + 1]] for i in range(len(ids))]

    def rmsnorm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return self._rmsnorm(x, weight, self.config.rms_eps)

    def rope(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        """x (n, heads, head_dim) rotated by the positions' angles (docs/SPEC.md §1), in place
        when x is a contiguous float32 array."""
        c = self.config
        return self._rope(x, cos, sin, c.rope_dim, c.rope_neox)

    def attention(
        self,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        layer: int,
        seqs: Sequence[tuple[EngineCache, int, int]],
    ) -> np.ndarray:
        """For each sequence (cache, start, rows), in order, its next rows of q (n, heads,
        head_dim), k and v (n, kv_heads, head_dim): stores k and v of positions start.. in the
        layer's cache, and attends q over positions 0 .. start + rows - 1. One kernel call for
        the whole batch."""
        return self._attention(
            q, k, v, [(cache.k[layer], cache.v[layer], start, rows) for cache, start, rows in seqs]
        )


def _f32(vector: np.ndarray | None) -> np.ndarray | None:
    return None if vector is None else np.ascontiguousarray(vector, np.float32)
