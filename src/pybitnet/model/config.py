"""Model hyperparameters, read from GGUF metadata (docs/SPEC.md §1).

An architecture variant (relu² vs SiLU, sub-norms or not, RoPE pairing) is a field of the
config, not a class of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pybitnet.errors import ModelError


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
class ModelConfig:
    arch: str
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    context_length: int
    rope_theta: float
    rope_dim: int
    rms_eps: float
    activation: str
    sub_norms: bool
    rope_neox: bool

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], source: str = "<metadata>") -> ModelConfig:
        arch = metadata.get("general.architecture")
        if arch not in ARCHITECTURES:
            raise ModelError(
                f"{source}: general.architecture = {arch!r} is not supported; "
                f"pybitnet runs {', '.join(sorted(ARCHITECTURES))}"
            )
        spec = ARCHITECTURES[arch]

        def get(key: str, default: Any = None) -> Any:
            value = metadata.get(f"{arch}.{key}", default)
            if value is None:
                raise ModelError(f"{source}: missing metadata key {arch}.{key}")
            return value

        def positive_int(key: str, default: Any = None) -> int:
            value = get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ModelError(f"{source}: {arch}.{key} = {value!r} must be a positive integer")
            return value

        dim = positive_int("embedding_length")
        n_heads = positive_int("attention.head_count")
        n_kv_heads = positive_int("attention.head_count_kv", n_heads)
        if dim % n_heads:
            raise ModelError(
                f"{source}: {arch}.embedding_length = {dim} is not a multiple of "
                f"{arch}.attention.head_count = {n_heads}"
            )
        if n_heads % n_kv_heads:
            raise ModelError(
                f"{source}: {arch}.attention.head_count = {n_heads} is not a multiple of "
                f"{arch}.attention.head_count_kv = {n_kv_heads}"
            )
        head_dim = positive_int("attention.key_length", dim // n_heads)
        rope_dim = positive_int("rope.dimension_count", head_dim)
        if rope_dim > head_dim or rope_dim % 2:
            raise ModelError(
                f"{source}: {arch}.rope.dimension_count = {rope_dim} must be even and at most "
                f"the head size {head_dim}"
            )
        tokens = metadata.get("tokenizer.ggml.tokens")
        vocab_size = positive_int("vocab_size", len(tokens) if tokens is not None else None)
        eps = float(get("attention.layer_norm_rms_epsilon"))
        theta = float(get("rope.freq_base", 10000.0))
        if not eps >= 0 or not theta > 0:
            raise ModelError(f"{source}: rms epsilon {eps} or rope.freq_base {theta} is invalid")
        return cls(
            arch=arch,
            vocab_size=vocab_size,
            dim=dim,
            n_layers=positive_int("block_count"),
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            ffn_dim=positive_int("feed_forward_length"),
            context_length=positive_int("context_length"),
            rope_theta=theta,
            rope_dim=rope_dim,
            rms_eps=eps,
            activation=spec.activation,
            sub_norms=spec.sub_norms,
            rope_neox=spec.rope_neox,
        )
