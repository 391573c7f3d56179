"""Importer for bitllama2.c checkpoints (llama2.c's BitNet b1.58 fork) into a `bitnet` GGUF model.

The checkpoint's math (tests/fixtures/bitllama2c/README.md) maps exactly onto docs/SPEC.md §1's
`bitnet` architecture:
- every linear layer normalises its own input with snorm(x) = x / (sqrt(mean(x^2)) * n), no eps
  and no weight: that is an RMS norm with the constant weight 1/n, so attn_norm, attn_sub_norm and
  ffn_norm are 1/dim and ffn_sub_norm is 1/hidden_dim, and eps must be (nearly) zero;
- the activation quantisation per token and the per-tensor weight scale are BitLinear's;
- the output layer is the embedding (tied), after an RMS norm with eps 1e-5 and a weight. A GGUF
  has one eps for all norms, so the final norm gets the tiny one too (logits move <= 0.15%);
- RoPE pairs differ; the rows of wq and wk are permuted to fix it (see `_split_halves_rows`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pybitnet.convert.metadata import read_sentencepiece
from pybitnet.errors import FormatError, ModelError
from pybitnet.formats import WeightType, quantize, tensor_nbytes
from pybitnet.gguf import TensorSpec

MAGIC = 0x616B3432  # "ak42"
HEADER_BYTES = 256
HEADER_FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
# The matrices in file order, each kind for every layer, with their GGUF names.
KINDS = {
    "wq": "attn_q",
    "wk": "attn_k",
    "wv": "attn_v",
    "wo": "attn_output",
    "w1": "ffn_gate",
    "w2": "ffn_down",
    "w3": "ffn_up",
}
# The checkpoint's 2-bit codes, first weight in the top bits: 00 -> 0, 01 -> +1, 11 -> -1.
CODE_TO_WEIGHT = np.array([0, 1, 0, -1], dtype=np.int8)
RMS_EPS = 1e-20  # tiny but positive: the checkpoint's BitLinear norms have no eps
ROPE_THETA = 10000.0


@dataclass(frozen=True)
class Llama2cCheckpoint:
    path: Path
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    final_norm: np.ndarray  # float32 (dim,)
    embedding: np.ndarray  # float32 (vocab, dim), also the output layer
    shapes: dict[str, tuple[int, int]]  # kind -> (out_features, in_features)
    offsets: dict[tuple[str, int], int]  # (kind, layer) -> offset of the matrix's scale
    raw: np.ndarray  # the file's bytes

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    def matrix(self, kind: str, layer: int) -> tuple[np.ndarray, float]:
        """(ternary codes int8 (out, in), float32 scale) of one matrix."""
        out_f, in_f = self.shapes[kind]
        at = self.offsets[kind, layer]
        scale = float(self.raw[at : at + 4].view("<f4")[0])
        where = f"{self.path}: {kind} of layer {layer}"
        if not (np.isfinite(scale) and scale >= 0):
            raise ModelError(f"{where}: scale {scale} is not a finite non-negative number")
        packed = self.raw[at + 4 : at + 4 + out_f * in_f // 4]
        codes = np.stack([(packed >> shift) & 3 for shift in (6, 4, 2, 0)], axis=1)
        if (codes == 2).any():
            raise ModelError(f"{where}: holds the 2-bit code 10, which is not a ternary weight")
        return CODE_TO_WEIGHT[codes].reshape(out_f, in_f), scale


def read_checkpoint(path: str | Path) -> Llama2cCheckpoint:
    """Parse and validate a bitllama2.c `.bin`; raises ModelError naming the file and field."""
    path = Path(path)
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the checkpoint: {exc.strerror}") from None
    if len(raw) < HEADER_BYTES:
        raise ModelError(f"{path}: {len(raw)} bytes is shorter than the {HEADER_BYTES}-byte header")
    magic, version = struct.unpack_from("<Ii", raw, 0)
    if magic != MAGIC:
        raise ModelError(f"{path}: magic 0x{magic:08x} is not bitllama2.c's 0x{MAGIC:08x} ('ak42')")
    if version != 1:
        raise ModelError(f"{path}: version {version} is not supported (only 1)")
    header = dict(zip(HEADER_FIELDS, struct.unpack_from("<7i", raw, 8), strict=True))
    for field, value in header.items():
        if value <= 0:
            raise ModelError(f"{path}: header field {field} = {value} must be positive")
    if raw[36] != 1:
        raise ModelError(
            f"{path}: header field shared_classifier = {raw[36]}; only checkpoints whose output "
            "layer is the embedding (1) are supported"
        )
    dim, hidden, vocab = header["dim"], header["hidden_dim"], header["vocab_size"]
    n_heads, n_kv_heads = header["n_heads"], header["n_kv_heads"]
    if dim % n_heads or (dim // n_heads) % 2 or n_heads % n_kv_heads:
        raise ModelError(
            f"{path}: dim {dim}, n_heads {n_heads}, n_kv_heads {n_kv_heads} do not make heads "
            "of an even size shared evenly by the kv heads"
        )
    kv_dim = n_kv_heads * (dim // n_heads)
    shapes = {
        "wq": (dim, dim),
        "wk": (kv_dim, dim),
        "wv": (kv_dim, dim),
        "wo": (dim, dim),
        "w1": (hidden, dim),
        "w2": (dim, hidden),
        "w3": (hidden, dim),
    }
    # Python integers, so the sizes cannot overflow; nothing is allocated before they add up.
    for kind, (out_f, in_f) in shapes.items():
        if (out_f * in_f) % 4:
            raise ModelError(f"{path}: {kind} has {out_f}x{in_f} weights, not whole bytes of 4")
    layer_bytes = {kind: 4 + out_f * in_f // 4 for kind, (out_f, in_f) in shapes.items()}
    start = HEADER_BYTES + 4 * dim + 4 * vocab * dim
    expected = start + header["n_layers"] * sum(layer_bytes.values())
    if expected != len(raw):
        raise ModelError(
            f"{path}: the header (dim {dim}, hidden_dim {hidden}, n_layers {header['n_layers']}, "
            f"n_heads {n_heads}, n_kv_heads {n_kv_heads}, vocab_size {vocab}) describes "
            f"{expected} bytes but the file has {len(raw)}"
            + (" (truncated?)" if expected > len(raw) else "")
        )
    offsets = {}
    for kind, nbytes in layer_bytes.items():
        for layer in range(header["n_layers"]):
            offsets[kind, layer] = start
            start += nbytes
    floats = raw[HEADER_BYTES : HEADER_BYTES + 4 * dim * (1 + vocab)].view("<f4")
    return Llama2cCheckpoint(
        path=path,
        **header,
        final_norm=floats[:dim],
        embedding=floats[dim:].reshape(vocab, dim),
        shapes=shapes,
        offsets=offsets,
        raw=raw,
    )


def _split_halves_rows(codes: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder each head's rows of wq/wk from [0, 1, 2, ..., hs-1] to [0, 2, 4, ..., 1, 3, 5, ...].

    llama2.c rotates adjacent pairs (2j, 2j+1) of a head by pos * theta^(-2j/hs); the `bitnet`
    architecture rotates (j, j + hs/2) by the same angle. With this order, output row j is the old
    row 2j and row j + hs/2 the old row 2j+1, so split-halves rotation of the new q equals the
    reordered adjacent-pair rotation of the old one. q.k sums over the head's elements, so the same
    order on q and k leaves every attention score unchanged; v and wo stay as they are.
    """
    out_f, in_f = codes.shape
    hs = out_f // n_heads
    return codes.reshape(n_heads, hs // 2, 2, in_f).transpose(0, 2, 1, 3).reshape(out_f, in_f)


def import_llama2c(
    src_path: Path, weight_type: WeightType, tokenizer: Path | None
) -> tuple[dict[str, Any], list[TensorSpec]]:
    """(GGUF metadata, tensor specs) of a `bitnet` model equal to the checkpoint.

    ``tokenizer`` is the SentencePiece `tokenizer.model` (default: the one next to the checkpoint).
    Ternary matrices go into ``weight_type`` (I2_S, or TQ1_0/TQ2_0 with the exact float32 scale in
    a `.scale` tensor, since their per-block f16 scales would round it).
    """
    if not weight_type.ternary:
        raise ModelError(
            f"{src_path}: the checkpoint's matrices are ternary BitLinear layers; convert them "
            f"to a ternary type (I2_S, TQ1_0, TQ2_0), not {weight_type.name}"
        )
    ckpt = read_checkpoint(src_path)
    tokenizer = Path(tokenizer) if tokenizer is not None else src_path.parent / "tokenizer.model"
    vocab = read_sentencepiece(tokenizer)
    if len(vocab["tokenizer.ggml.tokens"]) != ckpt.vocab_size:
        raise ModelError(
            f"{tokenizer}: {len(vocab['tokenizer.ggml.tokens'])} pieces, but {src_path} has "
            f"vocab_size {ckpt.vocab_size}"
        )
    arch = "bitnet"
    metadata: dict[str, Any] = {
        "general.architecture": arch,
        "general.name": src_path.stem,
        "general.file_type": np.uint32(weight_type.file_type),
        f"{arch}.context_length": np.uint32(ckpt.seq_len),
        f"{arch}.embedding_length": np.uint32(ckpt.dim),
        f"{arch}.block_count": np.uint32(ckpt.n_layers),
        f"{arch}.feed_forward_length": np.uint32(ckpt.hidden_dim),
        f"{arch}.attention.head_count": np.uint32(ckpt.n_heads),
        f"{arch}.attention.head_count_kv": np.uint32(ckpt.n_kv_heads),
        f"{arch}.rope.dimension_count": np.uint32(ckpt.head_size),
        f"{arch}.rope.freq_base": np.float32(ROPE_THETA),
        f"{arch}.attention.layer_norm_rms_epsilon": np.float32(RMS_EPS),
        **vocab,
        # A TinyStories model ends a story with BOS (llama2.c's run.c stops on it): mark it as
        # the end-of-turn token, which pybitnet's and llama.cpp's end-of-generation sets honour.
        "tokenizer.ggml.eot_token_id": vocab["tokenizer.ggml.bos_token_id"],
    }

    def constant(name: str, size: int) -> TensorSpec:
        return TensorSpec(name, (size,), "F32", np.full(size, 1 / size, np.float32).view(np.uint8))

    tensors = [
        TensorSpec("token_embd.weight", ckpt.embedding.shape, "F32", ckpt.embedding.view(np.uint8)),
        TensorSpec("output_norm.weight", (ckpt.dim,), "F32", ckpt.final_norm.view(np.uint8)),
    ]
    for layer in range(ckpt.n_layers):
        p = f"blk.{layer}."
        tensors += [
            constant(p + "attn_norm.weight", ckpt.dim),
            constant(p + "attn_sub_norm.weight", ckpt.dim),
            constant(p + "ffn_norm.weight", ckpt.dim),
            constant(p + "ffn_sub_norm.weight", ckpt.hidden_dim),
        ]
        for kind, name in KINDS.items():
            tensors += _ternary_specs(ckpt, kind, layer, p + name, weight_type)
    return metadata, tensors


def _ternary_specs(
    ckpt: Llama2cCheckpoint, kind: str, layer: int, name: str, wtype: WeightType
) -> list[TensorSpec]:
    out_f, in_f = ckpt.shapes[kind]
    try:
        tensor_nbytes(wtype, in_f, out_f * in_f)
    except FormatError as exc:
        raise ModelError(f"{ckpt.path}: tensor {name}.weight [{out_f}, {in_f}]: {exc}") from None
    codes, scale = ckpt.matrix(kind, layer)
    if kind in ("wq", "wk"):
        codes = _split_halves_rows(codes, out_f // ckpt.head_size)
    if wtype.tensor_scale:  # its per-tensor float32 scale (I2_S) holds the checkpoint's exactly
        values = codes.astype(np.float32) * np.float32(scale)
        return [TensorSpec(name + ".weight", codes.shape, wtype.name, quantize(wtype, values))]
    # TQ1_0/TQ2_0 blocks of +-1 (d = 1) and the exact scale in a `.scale` tensor: their f16 block
    # scales would round it.
    data = quantize(wtype, codes.astype(np.float32))
    return [
        TensorSpec(name + ".weight", codes.shape, wtype.name, data),
        TensorSpec(name + ".scale", (1,), "F32", np.array([scale], np.float32).view(np.uint8)),
    ]
