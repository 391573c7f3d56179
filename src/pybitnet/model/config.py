"""Model hyperparameters, read from GGUF metadata (docs/SPEC.md §1).

An architecture variant (relu² vs SiLU, sub-norms or not, RoPE pairing) is a field of the
config, not a class of its own. Every `<arch>.*` key is read through one table (FIELDS) that
gives its type and its range: a file is untrusted, and a value of the wrong type or out of
range is refused with the file, the key and the value, never used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from pybitnet.errors import ModelError, shown


@dataclass(frozen=True)
class ArchSpec:
    activation: str  # "relu2": relu(g)^2 * u; "silu": silu(g) * u
    sub_norms: bool  # rmsnorm before attn_output and ffn_down
    rope_neox: bool  # True: rotate split halves (ggml NEOX); False: adjacent pairs (ggml NORM)


ARCHITECTURES: dict[str, ArchSpec] = {
    "bitnet-b1.58": ArchSpec("relu2", True, True),
    "bitnet-25": ArchSpec("relu2", True, True),  # older name of bitnet-b1.58 files
    "bitnet": ArchSpec("silu", True, True),
    "llama": ArchSpec("silu", False, False),
}


@dataclass(frozen=True)
class Field:
    """One `<arch>.<key>` metadata value: an int or a float within [low, high]."""

    kind: type  # int or float (an integer value is a valid float; a bool is neither)
    low: float
    high: float

    def describe(self) -> str:
        if self.kind is int:
            unbounded = self.high == math.inf  # (integer fields start at 1)
            return (
                "a positive integer" if unbounded else f"an integer from {self.low} to {self.high}"
            )
        return f"a finite number from {self.low:g} to {self.high:g}"

    def accepts(self, value: Any) -> bool:
        integral = isinstance(value, Integral) and not isinstance(value, bool)
        number = integral or (self.kind is float and isinstance(value, Real))
        return number and self.low <= value <= self.high  # NaN compares False: refused


# Wide enough for any real model (the largest: dims of 16k-64k, 128 layers, 256k-token
# vocabularies), narrow enough that no product of them is absurd. context_length has no upper
# bound: what a run allocates follows the effective context (ModelConfig.context), not the claim.
FIELDS: dict[str, Field] = {
    "context_length": Field(int, 1, math.inf),
    "embedding_length": Field(int, 1, 1 << 20),
    "block_count": Field(int, 1, 1 << 12),
    "feed_forward_length": Field(int, 1, 1 << 20),
    "attention.head_count": Field(int, 1, 1 << 12),
    "attention.head_count_kv": Field(int, 1, 1 << 12),
    "attention.key_length": Field(int, 1, 1 << 16),
    "attention.value_length": Field(int, 1, 1 << 16),
    "rope.dimension_count": Field(int, 1, 1 << 16),
    "vocab_size": Field(int, 1, 1 << 24),
    # eps 0 is allowed (llama2c checkpoints use 1e-20 and less); past 0.1 it flattens the norm
    "attention.layer_norm_rms_epsilon": Field(float, 0.0, 0.1),
    # below 1 the "frequencies" grow with the dimension; real models use 1e4 .. 1e8
    "rope.freq_base": Field(float, 1.0, 1e9),
    "rope.scaling.factor": Field(float, 0.0, 1e6),  # 0 and 1: none (llama.cpp reads 0 so)
}
# RoPE scaling is not implemented: a file may name a type only if its factor leaves positions
# as they are (llama.cpp's default type is "linear", with factor 1).
ROPE_SCALING_TYPES = ("none", "linear")

# Without a requested context, a run gets the file's context_length up to this many positions
# (llama.cpp's default --ctx-size is 4096): a file may claim 2^31 positions, and the KV caches
# and the server's KV budget are sized by the effective context.
DEFAULT_MAX_CTX = 8192


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    context_length: int  # what the file claims; runs use context(n_ctx)
    rope_theta: float
    rope_dim: int
    rms_eps: float
    activation: str
    sub_norms: bool
    rope_neox: bool

    def context(self, n_ctx: int | None = None) -> int:
        """The effective context: n_ctx (at most context_length), or without it context_length
        up to DEFAULT_MAX_CTX. Every size that grows with the context is derived from this."""
        if n_ctx is None:
            return min(self.context_length, DEFAULT_MAX_CTX)
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, Integral) or n_ctx < 1:
            raise ModelError(f"n_ctx must be a positive integer, got {shown(n_ctx)}")
        return min(int(n_ctx), self.context_length)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], source: str = "<metadata>") -> ModelConfig:
        arch = metadata.get("general.architecture")
        if not isinstance(arch, str) or arch not in ARCHITECTURES:
            raise ModelError(
                f"{source}: general.architecture = {shown(arch)} is not supported; "
                f"pybitnet runs {', '.join(sorted(ARCHITECTURES))}"
            )
        spec = ARCHITECTURES[arch]

        def fail(key: str, problem: str) -> ModelError:
            return ModelError(f"{source}: {arch}.{key} {problem}")

        def get(key: str, default: Any = None) -> Any:
            """The checked value of `<arch>.<key>`; ``default`` when absent (None: required)."""
            value = metadata.get(f"{arch}.{key}")
            if value is None:
                if default is None:
                    raise ModelError(f"{source}: missing metadata key {arch}.{key}")
                return default
            field = FIELDS[key]
            if not field.accepts(value):
                raise fail(key, f"= {shown(value)} must be {field.describe()}")
            return field.kind(value)

        dim = get("embedding_length")
        n_heads = get("attention.head_count")
        n_kv_heads = get("attention.head_count_kv", n_heads)
        if dim % n_heads:
            raise fail(
                "embedding_length",
                f"= {dim} is not a multiple of {arch}.attention.head_count = {n_heads}",
            )
        if n_heads % n_kv_heads:
            raise fail(
                "attention.head_count",
                f"= {n_heads} is not a multiple of {arch}.attention.head_count_kv = {n_kv_heads}",
            )
        head_dim = get("attention.key_length", dim // n_heads)
        if get("attention.value_length", head_dim) != head_dim:
            raise fail("attention.value_length", f"must equal the key length {head_dim}")
        rope_dim = get("rope.dimension_count", head_dim)
        if rope_dim > head_dim or rope_dim % 2:
            raise fail(
                "rope.dimension_count",
                f"= {rope_dim} must be even and at most the head size {head_dim}",
            )
        scaling = metadata.get(f"{arch}.rope.scaling.type", "none")
        if not isinstance(scaling, str) or scaling not in ROPE_SCALING_TYPES:
            raise fail("rope.scaling.type", f"= {shown(scaling)} is not supported")
        factor = get("rope.scaling.factor", 1.0)
        if factor not in (0.0, 1.0):
            raise fail("rope.scaling.factor", f"= {factor:g}: RoPE scaling is not supported")
        tokens = metadata.get("tokenizer.ggml.tokens")
        n_tokens = len(tokens) if isinstance(tokens, list | tuple) and tokens else None
        return cls(
            arch=arch,
            vocab_size=get("vocab_size", n_tokens),
            dim=dim,
            n_layers=get("block_count"),
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            ffn_dim=get("feed_forward_length"),
            context_length=get("context_length"),
            rope_theta=get("rope.freq_base", 10000.0),
            rope_dim=rope_dim,
            rms_eps=get("attention.layer_norm_rms_epsilon"),
            activation=spec.activation,
            sub_norms=spec.sub_norms,
            rope_neox=spec.rope_neox,
        )
