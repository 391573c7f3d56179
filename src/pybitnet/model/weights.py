"""A model's weights as stored in its GGUF file: views into the mmap, checked against the config.

Ternary weights stay packed until a forward pass uses them; norm weights (tiny) are read at load.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pybitnet import formats
from pybitnet.errors import FormatError, ModelError
from pybitnet.formats import WeightType
from pybitnet.gguf import GGUFFile
from pybitnet.model.config import ModelConfig


@dataclass(frozen=True)
class Tensor:
    """One weight matrix as the file stores it; ``scale`` comes from an optional ``.scale``
    tensor that multiplies the matmul's output."""

    name: str
    wtype: WeightType
    shape: tuple[int, ...]  # numpy order: (out_features, in_features)
    data: np.ndarray  # uint8, zero-copy
    scale: float = 1.0

    def dequantize(self) -> np.ndarray:
        return formats.dequantize(self.wtype, self.data, self.shape) * np.float32(self.scale)

    def unpack_ternary(self) -> tuple[np.ndarray, np.ndarray]:
        """(codes int8 (out, in), scales float32 (out, groups)) with the ``.scale`` folded in."""
        codes, scales = formats.unpack_ternary(self.wtype, self.data, self.shape)
        return codes, scales * np.float32(self.scale)


@dataclass(frozen=True)
class Block:
    attn_norm: np.ndarray
    attn_q: Tensor
    attn_k: Tensor
    attn_v: Tensor
    attn_output: Tensor
    attn_sub_norm: np.ndarray | None
    ffn_norm: np.ndarray
    ffn_gate: Tensor
    ffn_up: Tensor
    ffn_down: Tensor
    ffn_sub_norm: np.ndarray | None


@dataclass(frozen=True)
class Weights:
    config: ModelConfig
    token_embd: Tensor
    output_norm: np.ndarray
    output: Tensor  # token_embd when the file has no output.weight (tied)
    blocks: tuple[Block, ...]

    @classmethod
    def from_gguf(cls, f: GGUFFile, config: ModelConfig) -> Weights:
        c = config
        q_dim, kv_dim = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim

        def matrix(name: str, out_features: int, in_features: int) -> Tensor:
            info = _tensor_info(f, name)
            _check_shape(f, name, info.shape, (out_features, in_features))
            scale = 1.0
            scale_name = name.removesuffix(".weight") + ".scale"
            if scale_name in f.tensors:
                _check_shape(f, scale_name, f.tensors[scale_name].shape, (1,))
                _finite_bytes(f, scale_name)
                scale = float(f.dequantize(scale_name)[0])
            return Tensor(name, info.wtype, info.shape, _finite_bytes(f, name), scale)

        def vector(name: str, size: int) -> np.ndarray:
            _check_shape(f, name, _tensor_info(f, name).shape, (size,))
            _finite_bytes(f, name)
            return f.dequantize(name)

        def sub_norm(name: str, size: int) -> np.ndarray | None:
            return vector(name, size) if c.sub_norms else None

        blocks = []
        for i in range(c.n_layers):
            p = f"blk.{i}."
            blocks.append(
                Block(
                    attn_norm=vector(p + "attn_norm.weight", c.dim),
                    attn_q=matrix(p + "attn_q.weight", q_dim, c.dim),
                    attn_k=matrix(p + "attn_k.weight", kv_dim, c.dim),
                    attn_v=matrix(p + "attn_v.weight", kv_dim, c.dim),
                    attn_output=matrix(p + "attn_output.weight", c.dim, q_dim),
                    attn_sub_norm=sub_norm(p + "attn_sub_norm.weight", q_dim),
                    ffn_norm=vector(p + "ffn_norm.weight", c.dim),
                    ffn_gate=matrix(p + "ffn_gate.weight", c.ffn_dim, c.dim),
                    ffn_up=matrix(p + "ffn_up.weight", c.ffn_dim, c.dim),
                    ffn_down=matrix(p + "ffn_down.weight", c.dim, c.ffn_dim),
                    ffn_sub_norm=sub_norm(p + "ffn_sub_norm.weight", c.ffn_dim),
                )
            )
        token_embd = matrix("token_embd.weight", c.vocab_size, c.dim)
        tied = "output.weight" not in f.tensors
        return cls(
            config=c,
            token_embd=token_embd,
            output_norm=vector("output_norm.weight", c.dim),
            output=token_embd if tied else matrix("output.weight", c.vocab_size, c.dim),
            blocks=tuple(blocks),
        )


def _tensor_info(f: GGUFFile, name: str):
    info = f.tensors.get(name)
    if info is None:
        raise ModelError(f"{f.path}: tensor {name} is missing")
    return info


def _finite_bytes(f: GGUFFile, name: str) -> np.ndarray:
    """The tensor's bytes, once every float it stores is known to be finite: the native kernels
    would turn a NaN scale or an infinite norm weight into plausible-looking text."""
    info, data = f.tensors[name], f.tensor_bytes(name)
    try:
        formats.check_finite(info.wtype, data, info.shape)
    except FormatError as exc:
        raise ModelError(f"{f.path}: tensor {name}: {exc}") from None
    return data


def _check_shape(f: GGUFFile, name: str, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if tuple(shape) != expected:
        raise ModelError(
            f"{f.path}: tensor {name} has shape {list(reversed(shape))} (ggml ne order), "
            f"the config needs {list(reversed(expected))}"
        )
