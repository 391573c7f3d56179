"""Importer for Hugging Face ternary checkpoints (config.json + safetensors) into GGUF models.

Families (config.json -> docs/SPEC.md §1 architecture):
- `model_type` "bitnet" (BitNetForCausalLM, microsoft/bitnet-b1.58-2B-4T) -> `bitnet-b1.58`;
- `model_type` "llama" with `architectures` ["BitnetForCausalLM"] (1bitLLM, fp16 masters) ->
  `bitnet`;
- `model_type` "llama" with a bitnet `quantization_config` (Falcon3-1.58bit,
  Llama3-8B-1.58) -> `llama` with ternary weights.

How a linear weight becomes (ternary codes, scale) follows the transformers class that
`quantization_config.linear_class` names (transformers' integrations/bitnet.py):
- packed uint8 [out/4, in]: packed row p holds rows p + i*out/4 in bits 2i..2i+1, code = w + 1;
  `BitLinear` ("bitlinear", transformers' default) computes y / (s_x * weight_scale), so the
  scale is 1 / weight_scale; `AutoBitLinear` offline ("autobitlinear") computes
  y * weight_scale, so the scale is weight_scale;
- float masters (AutoBitLinear online, 1bitLLM, a bitnet config without quantization_config):
  absmean per tensor (`formats.ternarize_absmean`), as those classes do on every forward pass.
RoPE: HF rotates split halves everywhere; GGUF `llama` rotates adjacent pairs, so its q/k rows
are reordered (`_adjacent_pairs_rows`, as llama.cpp's converter does); the bitnet archs rotate
split halves and keep HF's order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pybitnet import formats, kernels
from pybitnet.convert.hf_config import MASTER, HFConfig, read_config
from pybitnet.convert.hf_tokenizer import tokenizer_metadata
from pybitnet.convert.metadata import read_sentencepiece
from pybitnet.convert.safetensors import Checkpoint
from pybitnet.errors import FormatError, ModelError
from pybitnet.formats import WeightType, i2_s
from pybitnet.gguf import TensorSpec

LINEAR = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
NORMS = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.attn_sub_norm": "attn_sub_norm",  # BitNetForCausalLM
    "self_attn.inner_attn_ln": "attn_sub_norm",  # 1bitLLM
    "mlp.ffn_sub_norm": "ffn_sub_norm",
    "mlp.ffn_layernorm": "ffn_sub_norm",
}
IGNORED = ("self_attn.rotary_emb.inv_freq",)  # recomputed from rope_theta
CHUNK_ELEMENTS = 1 << 24  # float tensors are converted in row chunks of about this many elements
F32 = formats.weight_type("F32")  # norm weights
FLOATS = ("F32", "F16", "BF16")  # safetensors dtypes of float tensors


def import_hf(
    src_path: Path,
    weight_type: WeightType,
    tokenizer: Path | None,
    embedding_type: WeightType | None = None,
) -> tuple[dict[str, Any], list[TensorSpec]]:
    """(GGUF metadata, tensor specs) of the checkpoint folder ``src_path``; each tensor is read
    from the mapped safetensors only when the writer asks for it. ``tokenizer`` is another
    folder holding tokenizer.json (default: the checkpoint's)."""
    if not weight_type.ternary:
        raise ModelError(
            f"{src_path}: --type {weight_type.name}: the linear weights are ternary; choose "
            f"{', '.join(formats.TERNARY)}"
        )
    etype = embedding_type or formats.weight_type("F16")
    if etype.ternary:
        raise ModelError(f"{src_path}: --embedding-type {etype.name} must be a float or Q type")
    config = read_config(src_path)
    # rows that are not whole blocks of a K-quant: llama.cpp's fallback type, as its quantizer
    etype = formats.weight_type(formats.type_for_rows(etype.name, config.dim))
    ckpt = Checkpoint(src_path)
    tensors = _tensor_specs(ckpt, config, weight_type, etype)
    metadata = {
        "general.architecture": config.arch,
        "general.name": src_path.resolve().name,
        "general.file_type": np.uint32(weight_type.file_type),
        **config.gguf_metadata(),
        **_tokenizer(tokenizer or src_path, config),
    }
    return metadata, tensors


def _tokenizer(folder: Path, config: HFConfig) -> dict[str, Any]:
    """1bitLLM ships LLaMA's SentencePiece `tokenizer.model`, which llama.cpp's converter reads
    for BitnetForCausalLM, so it is read here too; every other tokenizer is tokenizer.json's."""
    model = folder / "tokenizer.model"
    if config.arch != "bitnet" or not model.is_file():
        return tokenizer_metadata(folder, config.vocab)
    vocab = read_sentencepiece(model)
    if len(vocab["tokenizer.ggml.tokens"]) > config.vocab:
        raise ModelError(
            f"{model}: {len(vocab['tokenizer.ggml.tokens'])} pieces, more than the embedding's "
            f"{config.vocab} rows"
        )
    return vocab


def _tensor_specs(
    ckpt: Checkpoint, config: HFConfig, wtype: WeightType, etype: WeightType
) -> list[TensorSpec]:
    c = config
    expected = {"model.embed_tokens.weight", "model.norm.weight"}
    specs = [
        _float_spec(
            ckpt, "model.embed_tokens.weight", "token_embd.weight", (c.vocab, c.dim), etype
        ),
        _float_spec(ckpt, "model.norm.weight", "output_norm.weight", (c.dim,), F32),
    ]
    if not c.tied:
        expected.add("lm_head.weight")
        specs.append(_float_spec(ckpt, "lm_head.weight", "output.weight", (c.vocab, c.dim), etype))
    shapes = c.linear_shapes()
    for layer in range(c.layers):
        hf, gg = f"model.layers.{layer}.", f"blk.{layer}."
        for name, gguf_name in LINEAR.items():
            expected.add(hf + name + ".weight")
            linear = _Linear(ckpt, c, hf + name, shapes[gguf_name], wtype)
            specs += linear.specs(gg + gguf_name)
            if c.scale_rule != MASTER:
                expected.add(hf + name + ".weight_scale")
        for name, gguf_name in NORMS.items():
            if gguf_name.endswith("sub_norm") and not c.sub_norms:
                continue
            if hf + name + ".weight" in ckpt:
                expected.add(hf + name + ".weight")
                size = c.ffn if gguf_name == "ffn_sub_norm" else c.dim
                spec = _float_spec(
                    ckpt,
                    hf + name + ".weight",
                    gg + gguf_name + ".weight",
                    (size,),
                    F32,
                )
                specs.append(spec)
        expected.update(hf + name for name in IGNORED if hf + name in ckpt)
    _check_all_used(ckpt, expected, {s.name for s in specs}, c)
    return specs


def _check_all_used(ckpt: Checkpoint, expected: set[str], written: set[str], c: HFConfig) -> None:
    """Every checkpoint tensor is converted or known to be redundant, and no GGUF tensor the
    architecture needs is missing (a checkpoint that loses a norm must not convert silently)."""
    unknown = sorted(set(ckpt) - expected)
    if unknown:
        raise ModelError(
            f"{ckpt.folder}: tensor {unknown[0]!r} ({len(unknown)} unknown in all) has no "
            f"place in a GGUF {c.arch} model"
        )
    norms = ["attn_norm", "ffn_norm"] + (["attn_sub_norm", "ffn_sub_norm"] if c.sub_norms else [])
    for layer in range(c.layers):
        for norm in norms:
            if f"blk.{layer}.{norm}.weight" not in written:
                names = [k for k, v in NORMS.items() if v == norm]
                raise ModelError(
                    f"{ckpt.folder}: the checkpoint has no model.layers.{layer}."
                    f"{' or '.join(names)}.weight"
                )


def _checked(
    ckpt: Checkpoint, name: str, shape: tuple[int, ...], dtypes: tuple[str, ...], packed=False
) -> None:
    """The tensor's dtype is one of ``dtypes`` and its shape is config.json's ``shape``
    (``packed``: 4 rows a byte, [out/4, in])."""
    info = ckpt.info(name)
    where = f"{ckpt.file(name)}: tensor {name!r}"
    if info.dtype not in dtypes:
        raise ModelError(f"{where}: dtype {info.dtype}, expected {' or '.join(dtypes)}")
    if packed and shape[0] % 4:
        raise ModelError(f"{where}: {shape[0]} rows cannot be packed 4 rows a byte")
    stored = (shape[0] // 4, *shape[1:]) if packed else shape
    if info.shape != stored:
        note = f" (packed 4 rows a byte: {list(stored)})" if packed else ""
        raise ModelError(
            f"{where}: shape {list(info.shape)} disagrees with config.json's {list(shape)}{note}"
        )


def _float_spec(
    ckpt: Checkpoint, name: str, gguf_name: str, shape: tuple[int, ...], wtype: WeightType
) -> TensorSpec:
    """A float tensor stored as ``wtype``, converted in chunks of rows so that neither the
    source's pages nor a float32 copy of a large embedding are ever resident whole."""
    _checked(ckpt, name, shape, FLOATS)
    try:
        formats.tensor_nbytes(wtype, shape[-1], int(np.prod(shape)))
    except FormatError as exc:
        raise ModelError(f"{ckpt.file(name)}: tensor {name!r} {list(shape)}: {exc}") from None

    def data() -> np.ndarray:
        source = ckpt.array(name).reshape(-1, shape[-1])
        row_bytes = formats.tensor_nbytes(wtype, shape[-1], shape[-1])
        out = np.empty(source.shape[0] * row_bytes, np.uint8)
        step = max(1, CHUNK_ELEMENTS // shape[-1])
        for i in range(0, source.shape[0], step):
            chunk = _float32(ckpt, name, source[i : i + step])
            out[i * row_bytes : (i + len(chunk)) * row_bytes] = kernels.quantize(wtype.name, chunk)
            ckpt.release(name)  # the rows read so far leave memory
        return out

    return TensorSpec(gguf_name, shape, wtype, data)


def _float32(ckpt: Checkpoint, name: str, array: np.ndarray) -> np.ndarray:
    if ckpt.info(name).dtype == "BF16":
        return formats.dequantize("BF16", array.view(np.uint8).reshape(-1), array.shape)
    return array.astype(np.float32)


class _Linear:
    """One ternary linear layer: its codes and scale are made once, when the writer asks for the
    weight, and the scale is kept for the `.scale` tensor written right after it."""

    def __init__(
        self, ckpt: Checkpoint, c: HFConfig, prefix: str, shape: tuple[int, int], wtype: WeightType
    ) -> None:
        self.ckpt, self.config, self.name, self.shape, self.wtype = ckpt, c, prefix, shape, wtype
        self.scale: np.float32 | None = None
        out_f, in_f = shape
        weight = prefix + ".weight"
        if c.scale_rule == MASTER:
            _checked(ckpt, weight, shape, FLOATS)
        else:
            _checked(ckpt, weight, shape, ("U8",), packed=True)
            _checked(ckpt, prefix + ".weight_scale", (1,), FLOATS)
        try:
            formats.tensor_nbytes(wtype, in_f, out_f * in_f)
        except FormatError as exc:
            raise ModelError(
                f"{ckpt.file(weight)}: tensor {weight!r} {list(shape)}: {exc}"
            ) from None

    def specs(self, gguf_name: str) -> list[TensorSpec]:
        weight = TensorSpec(gguf_name + ".weight", self.shape, self.wtype, self._weight_bytes)
        if self.wtype.tensor_scale:  # I2_S keeps the float32 scale in the tensor
            return [weight]
        return [weight, TensorSpec(gguf_name + ".scale", (1,), "F32", self._scale_bytes)]

    def _weight_bytes(self) -> np.ndarray:
        codes, self.scale = self.codes_and_scale()
        if self.config.arch == "llama" and self.name.endswith(("q_proj", "k_proj")):
            heads = self.config.heads if self.name.endswith("q_proj") else self.config.kv_heads
            codes = _adjacent_pairs_rows(codes, heads)
        if self.wtype.tensor_scale:
            return i2_s.pack(codes, self.scale)
        # TQ1_0/TQ2_0: blocks of +-1 (d = 1); the exact scale goes in the `.scale` tensor,
        # since their float16 block scales would round it.
        return formats.quantize(self.wtype, codes.astype(np.float32))

    def _scale_bytes(self) -> np.ndarray:
        if self.scale is None:
            self.scale = self.codes_and_scale()[1]
        return np.array([self.scale], "<f4").view(np.uint8)

    def codes_and_scale(self) -> tuple[np.ndarray, np.float32]:
        """(codes int8 (out, in) in HF's row order, float32 scale) of the layer."""
        weight = self.name + ".weight"
        where = f"{self.ckpt.file(weight)}: tensor {weight!r}"
        if self.config.scale_rule == MASTER:
            master = _float32(self.ckpt, weight, self.ckpt.array(weight))
            try:
                codes, scale = formats.ternarize_absmean(master)
            except FormatError as exc:
                raise ModelError(f"{where}: {exc}") from None
        else:
            codes = unpack_hf(self.ckpt.array(weight), where)
            scale = self._packed_scale()
        self.ckpt.release(weight)
        return codes, scale

    def _packed_scale(self) -> np.float32:
        name = self.name + ".weight_scale"
        value = float(_float32(self.ckpt, name, self.ckpt.array(name)).reshape(-1)[0])
        if not (np.isfinite(value) and value > 0):
            raise ModelError(
                f"{self.ckpt.file(name)}: tensor {name!r} = {value} is not a finite positive scale"
            )
        return np.float32(value if self.config.scale_rule == "multiply" else 1 / value)


def unpack_hf(packed: np.ndarray, where: str) -> np.ndarray:
    """transformers' packed uint8 [out/4, in] -> int8 codes [out, in]: packed row p holds rows
    p + i*(out/4), i = 0..3, in bits 2i..2i+1 (lowest first), code = w + 1; code 3 is refused."""
    codes = np.concatenate([(packed >> np.uint8(2 * i)) & np.uint8(3) for i in range(4)])
    bad = np.flatnonzero(codes.reshape(-1) == 3)
    if bad.size:
        row, col = divmod(int(bad[0]), codes.shape[1])
        raise ModelError(
            f"{where}: packed code 3 (not a ternary weight) at unpacked row {row}, column {col}"
        )
    return codes.view(np.int8) - np.int8(1)


def _adjacent_pairs_rows(codes: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder each head's rows from HF's split-halves order to GGUF `llama`'s adjacent pairs:
    new row 2j is old row j and new row 2j+1 old row j + hd/2, so rotating adjacent pairs of the
    new q (angle pos * theta^(-2j/hd) for pair j) equals rotating (j, j + hd/2) of the old one.
    q.k sums over a head's elements, so reordering q and k alike keeps every attention score."""
    out_f, in_f = codes.shape
    hd = out_f // n_heads
    return codes.reshape(n_heads, 2, hd // 2, in_f).transpose(0, 2, 1, 3).reshape(out_f, in_f)
