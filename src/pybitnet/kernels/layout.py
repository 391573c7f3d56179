"""Layout facts that the kernels of every tier and their callers share. csrc/tiers.h holds the
same values for C++; the binding exports them and tests/kernels/test_layout.py compares."""

from __future__ import annotations

import numpy as np

# Positions per block of the key cache: keys are stored n_kv x (ctx / KEY_BLOCK) x head_dim x
# KEY_BLOCK, each block of positions transposed, so that a block's scores vectorise over
# positions (csrc/tiers.h: kKeyBlock). The engine's cache (engine/forward.py) is allocated so.
KEY_BLOCK = 16

# The KV cache's element types (csrc/tiers.h KvType, docs/SPEC.md §1), the default first, and
# the numpy dtype of their arrays: the dtype is what tells the attention kernel the type.
KV_CACHE_TYPES = {"f16": np.float16, "f32": np.float32, "q8_0": np.uint8}
KV_Q8_CHUNK = 32  # q8_0: values of a head vector per float16 scale (ggml's block_q8_0)


def kv_value_row_bytes(kv_cache: str, head_dim: int) -> int:
    """Bytes of one position's values of one kv head; a key block holds KEY_BLOCK rows' bytes."""
    if kv_cache == "q8_0":
        return head_dim // KV_Q8_CHUNK * (2 + KV_Q8_CHUNK)
    return head_dim * np.dtype(KV_CACHE_TYPES[kv_cache]).itemsize


def kv_cache_problem(kv_cache: str, head_dim: int) -> str | None:
    """Why a cache of this type cannot hold heads of head_dim, or None."""
    if kv_cache not in KV_CACHE_TYPES:
        return f"kv_cache must be one of {', '.join(KV_CACHE_TYPES)}, got {kv_cache!r}"
    if kv_cache == "q8_0" and head_dim % KV_Q8_CHUNK:
        return f"kv_cache q8_0 needs a head_dim that is a multiple of 32, the model's is {head_dim}"
    return None


def kv_cache_shapes(
    kv_cache: str, n_kv: int, head_dim: int, ctx: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The shapes of one layer's key and value caches of ctx positions (a multiple of
    KEY_BLOCK): f32 and f16 (n_kv, ctx / KEY_BLOCK, head_dim, KEY_BLOCK) and (n_kv, ctx,
    head_dim); q8_0, bytes: (n_kv, ctx / KEY_BLOCK, key block bytes) and (n_kv, ctx, row bytes)."""
    blocks, row = ctx // KEY_BLOCK, kv_value_row_bytes(kv_cache, head_dim)
    if kv_cache == "q8_0":
        return (n_kv, blocks, KEY_BLOCK * row), (n_kv, ctx, row)
    return (n_kv, blocks, head_dim, KEY_BLOCK), (n_kv, ctx, head_dim)
