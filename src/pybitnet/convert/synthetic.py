"""Synthetic models: complete GGUF files with seeded random weights, for tests and benchmarks.

The weights follow tests/fixtures/peers/README.md, which explains the choices:
- every linear weight is s * T, T uniform in {-1, 0, +1}, s = U(0.5, 1.5) / sqrt(in_features)
  rounded to a float16 value, so every format (I2_S's f32 scale, TQ's f16 block scales, F16, F32)
  stores the same numbers exactly and the same seed gives the same model in any ternary format;
- norm weights U(0.5, 1.5), not ones;
- the embedding N(0, (3.2 / sqrt(dim))^2), rounded to float16 values in every format: with a tied
  output layer this keeps logits from being flat (tie-prone) or dominated by the current token.
Each tensor has its own random stream (seed, tensor name), and its bytes are made only when the
GGUF writer asks for them, so a 2B-parameter file is written one tensor at a time.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pybitnet import formats
from pybitnet.convert.metadata import BYTE, CONTROL, NORMAL, UNKNOWN, llama_tokenizer
from pybitnet.errors import FormatError, ModelError
from pybitnet.formats import WeightType, i2_s
from pybitnet.gguf import TensorSpec, write_gguf
from pybitnet.model.config import ARCHITECTURES


@dataclass(frozen=True)
class Shape:
    vocab: int
    dim: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    ctx: int
    rope_theta: float
    eps: float = 1e-5


PRESETS = {
    # the shape of the peers' fixtures (tests/fixtures/peers)
    "tiny": Shape(
        vocab=1000, dim=256, layers=4, heads=4, kv_heads=2, ffn=512, ctx=2048, rope_theta=500000.0
    ),
    # microsoft/bitnet-b1.58-2B-4T (docs/SPEC.md §1)
    "2b": Shape(
        vocab=128256,
        dim=2560,
        layers=30,
        heads=20,
        kv_heads=5,
        ffn=6912,
        ctx=4096,
        rope_theta=500000.0,
    ),
}
EMBD_STD = 3.2  # / sqrt(dim)
EMBD_ROWS_PER_CHUNK = 4096  # the embedding is made in chunks of rows to bound memory


def make_model(
    path: str | Path,
    preset: str = "tiny",
    *,
    arch: str = "bitnet",
    weight_type: str = "I2_S",
    embd_type: str = "F16",
    seed: int = 0,
    **overrides: Any,
) -> Path:
    """Write a synthetic GGUF model of ``arch`` whose linear weights are ``weight_type``.

    ``overrides`` replace fields of the preset's Shape (vocab, dim, layers, heads, kv_heads, ffn,
    ctx, rope_theta, eps); None keeps the preset's. The output layer is tied to token_embd
    (stored as ``embd_type``).
    """
    if seed < 0:
        raise ModelError(f"seed {seed} must be non-negative")
    if preset not in PRESETS:
        raise ModelError(f"unknown preset {preset!r}; presets are {', '.join(PRESETS)}")
    if arch not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    unknown = set(overrides) - set(Shape.__dataclass_fields__)
    if unknown:
        raise ModelError(f"unknown model dimension(s) {sorted(unknown)}")
    shape = replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    wtype, etype = formats.weight_type(weight_type), formats.weight_type(embd_type)
    if etype.ternary:
        raise ModelError(f"token_embd cannot be {etype.name}: choose a float or Q type")
    tensors = _tensor_specs(shape, ARCHITECTURES[arch].sub_norms, wtype, etype, seed)
    tokens, scores, types = synthetic_vocab(shape.vocab)
    metadata = {
        "general.architecture": arch,
        "general.name": f"synthetic-{arch}-{preset}-{wtype.name.lower()}-s{seed}",
        "general.file_type": np.uint32(wtype.file_type),
        f"{arch}.context_length": np.uint32(shape.ctx),
        f"{arch}.embedding_length": np.uint32(shape.dim),
        f"{arch}.block_count": np.uint32(shape.layers),
        f"{arch}.feed_forward_length": np.uint32(shape.ffn),
        f"{arch}.attention.head_count": np.uint32(shape.heads),
        f"{arch}.attention.head_count_kv": np.uint32(shape.kv_heads),
        f"{arch}.rope.dimension_count": np.uint32(shape.dim // shape.heads),
        f"{arch}.rope.freq_base": np.float32(shape.rope_theta),
        f"{arch}.attention.layer_norm_rms_epsilon": np.float32(shape.eps),
        **llama_tokenizer(tokens, scores, types, add_space_prefix=True),
    }
    if END_OF_TURN in tokens:
        metadata["tokenizer.ggml.eot_token_id"] = np.uint32(tokens.index(END_OF_TURN))
        metadata["tokenizer.chat_template"] = CHAT_TEMPLATE
    write_gguf(path, metadata, tensors)
    return Path(path)


PEERS_VOCAB = 1000  # tokens in the peers' vocabulary (tests/fixtures/peers)
END_OF_TURN = "<|eot_id|>"
# The prompt format of microsoft/bitnet-b1.58-2B-4T ("User: ...<|eot_id|>Assistant: "), for the
# vocabularies that hold its end-of-turn token. BOS comes from the tokenizer (add_bos_token).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}Assistant: {% endif %}"
)


def synthetic_vocab(size: int) -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, types) of a SentencePiece-style vocabulary of ``size`` tokens.

    Its first PEERS_VOCAB tokens are the peers': <unk>, <s>, </s>, the 256 byte tokens, then the
    normal pieces ▁, a..z, ▁a..▁z, ▁aa..▁zz and fillers ▁tokN (N = id - 312); a smaller
    vocabulary is their start. A larger one goes on with the end-of-turn control token of
    CHAT_TEMPLATE and longer pieces (▁A..▁Z, aa..zz, ▁Aa..▁Zz, ▁aaa..▁zzz), so that a chat
    prompt takes about as many tokens as in a real vocabulary of that size (1-3 a word, not
    one a letter), then fillers. The k-th normal piece scores -k (earlier pieces merge first).
    """
    specials = 3 + 256
    if size < specials + 1:
        raise ModelError(f"vocab {size} is too small: the tokenizer needs at least {specials + 1}")
    lower, upper = "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    pieces = ["▁", *lower, *("▁" + a for a in lower), *("▁" + a + b for a in lower for b in lower)]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    tokens += [_filler(i) for i in range(len(tokens), PEERS_VOCAB)]
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256 + [NORMAL] * (PEERS_VOCAB - specials)
    longer = [
        *("▁" + a for a in upper),
        *(a + b for a in lower for b in lower),
        *("▁" + a + b for a in upper for b in lower),
        *("▁" + a + b + c for a in lower for b in lower for c in lower),
    ]
    tokens += [END_OF_TURN, *longer]
    types += [CONTROL] + [NORMAL] * len(longer)
    tokens = tokens[:size] + [_filler(i) for i in range(len(tokens), size)]
    types = types[:size] + [NORMAL] * (size - len(types))
    # Normal pieces score -k in order; the others 0.
    rank = np.cumsum(np.asarray(types) == NORMAL) - 1
    scores = [-float(k) if t == NORMAL else 0.0 for k, t in zip(rank.tolist(), types, strict=True)]
    return tokens, scores, types


def _filler(token_id: int) -> str:
    return f"▁tok{token_id - 312}"


def _tensor_specs(
    s: Shape, sub_norms: bool, wtype: WeightType, etype: WeightType, seed: int
) -> list[TensorSpec]:
    for name, value in vars(s).items():
        if not value > 0:
            raise ModelError(f"model dimension {name} = {value} must be positive")
    head_dim = s.dim // s.heads
    if s.dim % s.heads or head_dim % 2 or s.heads % s.kv_heads:
        raise ModelError(
            f"dim {s.dim}, heads {s.heads}, kv_heads {s.kv_heads} do not make heads of an even "
            "size shared evenly by the kv heads"
        )
    kv_dim = s.kv_heads * head_dim
    f32 = formats.weight_type("F32")
    # (name, shape (out, in), type, how to make it) in file order
    plan: list[tuple[str, tuple[int, ...], WeightType, Callable[..., np.ndarray]]] = [
        ("token_embd.weight", (s.vocab, s.dim), etype, _embedding),
        ("output_norm.weight", (s.dim,), f32, _norm),
    ]
    for i in range(s.layers):
        p = f"blk.{i}."
        plan.append((p + "attn_norm.weight", (s.dim,), f32, _norm))
        if sub_norms:
            plan.append((p + "attn_sub_norm.weight", (s.dim,), f32, _norm))
        plan.append((p + "ffn_norm.weight", (s.dim,), f32, _norm))
        if sub_norms:
            plan.append((p + "ffn_sub_norm.weight", (s.ffn,), f32, _norm))
        for name, shape in (
            ("attn_q", (s.dim, s.dim)),
            ("attn_k", (kv_dim, s.dim)),
            ("attn_v", (kv_dim, s.dim)),
            ("attn_output", (s.dim, s.dim)),
            ("ffn_gate", (s.ffn, s.dim)),
            ("ffn_up", (s.ffn, s.dim)),
            ("ffn_down", (s.dim, s.ffn)),
        ):
            plan.append((p + name + ".weight", shape, wtype, _ternary))
    specs = []
    for name, shape, t, make in plan:
        try:
            formats.tensor_nbytes(t, shape[-1], math.prod(shape))
        except FormatError as exc:
            raise ModelError(f"tensor {name} {list(shape)}: {exc}") from None
        # a stream per tensor name: the same seed gives the same tensors in every arch and type
        rng_seed = (seed, zlib.crc32(name.encode()))
        specs.append(TensorSpec(name, shape, t, functools.partial(make, t, shape, rng_seed)))
    return specs


def _norm(wtype: WeightType, shape: tuple[int, ...], seed: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 1.5, shape).astype(np.float32).view(np.uint8)


def _ternary(wtype: WeightType, shape: tuple[int, int], seed: tuple[int, int]) -> np.ndarray:
    """s * T in ``wtype``, T drawn uniformly from {-1, 0, +1}. I2_S packs T as drawn (2B shape:
    seconds); other formats store the same weights, re-quantized."""
    rng = np.random.default_rng(seed)
    scale = np.float32(np.float16(rng.uniform(0.5, 1.5) / np.sqrt(shape[1])))
    codes = rng.integers(-1, 2, shape, dtype=np.int8)
    if wtype.name == "I2_S":
        return i2_s.pack(codes, scale)
    return formats.quantize(wtype, codes * scale)


def _embedding(wtype: WeightType, shape: tuple[int, int], seed: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows, dim = shape
    row_bytes = formats.tensor_nbytes(wtype, dim, dim)
    out = np.empty((rows, row_bytes), np.uint8)
    std = np.float32(EMBD_STD / np.sqrt(dim))
    for start in range(0, rows, EMBD_ROWS_PER_CHUNK):
        n = min(EMBD_ROWS_PER_CHUNK, rows - start)
        values = (rng.standard_normal((n, dim), np.float32) * std).astype(np.float16)
        out[start : start + n] = formats.quantize(wtype, values.astype(np.float32)).reshape(n, -1)
    return out.reshape(-1)
