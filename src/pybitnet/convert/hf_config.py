"""A Hugging Face checkpoint's config.json read as a pybitnet architecture (see convert/hf.py):
which family it is, its hyperparameters, and how its linear weights become ternary.

Every key the conversion needs is read explicitly; a missing or unknown one is a ModelError
naming config.json, the key and the value, never a silent default that would change the numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pybitnet.errors import ModelError
from pybitnet.model.config import ARCHITECTURES

MASTER = "absmean"  # float master weights, ternarized per tensor
# quantization_config.linear_class -> what its weight_scale does to the output
# (transformers' integrations/bitnet.py: BitLinear divides, AutoBitLinear offline multiplies).
LINEAR_CLASSES = {"bitlinear": "divide", "autobitlinear": "multiply"}
ACTIVATIONS = {"bitnet-b1.58": "relu2", "bitnet": "silu", "llama": "silu"}


@dataclass(frozen=True)
class HFConfig:
    arch: str
    vocab: int
    dim: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    ctx: int
    rope_theta: float
    eps: float
    tied: bool
    scale_rule: str  # "divide", "multiply" (a packed weight's weight_scale) or MASTER

    @property
    def sub_norms(self) -> bool:
        return ARCHITECTURES[self.arch].sub_norms

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """GGUF name -> (out_features, in_features) of each linear layer of a block."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {
            "attn_q": (q, self.dim),
            "attn_k": (kv, self.dim),
            "attn_v": (kv, self.dim),
            "attn_output": (self.dim, q),
            "ffn_gate": (self.ffn, self.dim),
            "ffn_up": (self.ffn, self.dim),
            "ffn_down": (self.dim, self.ffn),
        }

    def gguf_metadata(self) -> dict[str, Any]:
        a = self.arch
        return {
            f"{a}.vocab_size": np.uint32(self.vocab),
            f"{a}.context_length": np.uint32(self.ctx),
            f"{a}.embedding_length": np.uint32(self.dim),
            f"{a}.block_count": np.uint32(self.layers),
            f"{a}.feed_forward_length": np.uint32(self.ffn),
            f"{a}.attention.head_count": np.uint32(self.heads),
            f"{a}.attention.head_count_kv": np.uint32(self.kv_heads),
            f"{a}.rope.dimension_count": np.uint32(self.head_dim),
            f"{a}.rope.freq_base": np.float32(self.rope_theta),
            f"{a}.attention.layer_norm_rms_epsilon": np.float32(self.eps),
        }


def read_config(folder: Path) -> HFConfig:
    """The HFConfig of the checkpoint folder's config.json."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: cannot read it ({exc})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path}: holds a {type(config).__name__}, not a JSON object")
    arch, scale_rule = _family(path, config)
    key = _Keys(path, config)
    act = config.get("hidden_act", "silu")
    if act != ACTIVATIONS[arch]:
        raise ModelError(f"{path}: hidden_act = {act!r}; a {arch} model uses {ACTIVATIONS[arch]!r}")
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            raise ModelError(f"{path}: {flag} = {config[flag]!r}; pybitnet runs no biases")
    dim, heads = key.count("hidden_size"), key.count("num_attention_heads")
    kv_heads = key.count("num_key_value_heads", heads)
    head_dim = key.count("head_dim", dim // heads)
    if dim % heads or head_dim != dim // heads or heads % kv_heads or head_dim % 2:
        raise ModelError(
            f"{path}: hidden_size {dim}, num_attention_heads {heads}, num_key_value_heads "
            f"{kv_heads}, head_dim {head_dim} do not make even heads of hidden_size / heads "
            "shared evenly by the kv heads"
        )
    return HFConfig(
        arch=arch,
        vocab=key.count("vocab_size"),
        dim=dim,
        layers=key.count("num_hidden_layers"),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        ffn=key.count("intermediate_size"),
        ctx=key.count("max_position_embeddings"),
        rope_theta=_rope_theta(path, config),
        eps=key.number("rms_norm_eps"),
        tied=key.flag("tie_word_embeddings", False),  # LlamaConfig's and BitNetConfig's default
        scale_rule=scale_rule,
    )


def _family(path: Path, config: dict[str, Any]) -> tuple[str, str]:
    """(architecture, scale rule) from model_type, architectures and quantization_config."""
    model_type = config.get("model_type")
    quant = config.get("quantization_config")
    if model_type == "bitnet":
        return "bitnet-b1.58", MASTER if quant is None else _scale_rule(path, quant)
    if model_type != "llama":
        raise ModelError(
            f"{path}: model_type = {model_type!r}; pybitnet converts 'bitnet' (BitNet b1.58 "
            "2B-4T) and 'llama' (1bitLLM's BitnetForCausalLM, or a bitnet quantization_config)"
        )
    if config.get("architectures") == ["BitnetForCausalLM"]:  # 1bitLLM: fp16 masters
        if quant is not None:
            raise ModelError(f"{path}: 1bitLLM's BitnetForCausalLM with a quantization_config")
        return "bitnet", MASTER
    if quant is None:
        raise ModelError(
            f"{path}: model_type 'llama' without a bitnet quantization_config is not a ternary "
            "model"
        )
    return "llama", _scale_rule(path, quant)


def _scale_rule(path: Path, quant: Any) -> str:
    """What transformers' class for this quantization_config does with the weights."""
    where = f"{path}: quantization_config"
    if not isinstance(quant, dict) or quant.get("quant_method") != "bitnet":
        method = quant.get("quant_method") if isinstance(quant, dict) else quant
        raise ModelError(f"{where}.quant_method = {method!r}; pybitnet converts 'bitnet'")
    if quant.get("use_rms_norm"):
        raise ModelError(
            f"{where}.use_rms_norm = {quant['use_rms_norm']!r}: a norm inside "
            "every linear layer has no place in a GGUF model"
        )
    # transformers' BitNetQuantConfig defaults: linear_class "bitlinear", mode "offline"
    linear_class = quant.get("linear_class", "bitlinear")
    mode = quant.get("quantization_mode", "offline")
    if linear_class not in LINEAR_CLASSES:
        raise ModelError(
            f"{where}.linear_class = {linear_class!r}; transformers defines "
            f"{', '.join(map(repr, LINEAR_CLASSES))}"
        )
    if mode not in ("offline", "online"):
        raise ModelError(f"{where}.quantization_mode = {mode!r}; expected 'offline' or 'online'")
    if mode == "online":
        if linear_class != "autobitlinear":
            raise ModelError(f"{where}: quantization_mode 'online' needs 'autobitlinear'")
        return MASTER  # AutoBitLinear online ternarizes float weights by absmean
    return LINEAR_CLASSES[linear_class]


def _rope_theta(path: Path, config: dict[str, Any]) -> float:
    """rope_theta, or rope_parameters.rope_theta (newer transformers); no scaling allowed."""
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(scaling, dict):
        raise ModelError(f"{path}: rope_parameters / rope_scaling is not an object")
    for key, value in (("rope_scaling", scaling), ("rope_parameters", params)):
        kind = value.get("rope_type", value.get("type", "default"))
        if kind != "default":
            raise ModelError(f"{path}: {key}.rope_type = {kind!r}; pybitnet runs plain RoPE")
    theta = config.get("rope_theta", params.get("rope_theta"))
    if isinstance(theta, bool) or not isinstance(theta, int | float) or not theta > 0:
        raise ModelError(f"{path}: rope_theta = {theta!r} is missing or not a positive number")
    return float(theta)


class _Keys:
    """Typed reads of config.json keys, each failure naming the key and its value."""

    def __init__(self, path: Path, config: dict[str, Any]) -> None:
        self.path, self.config = path, config

    def _get(self, key: str, default: Any) -> Any:
        value = self.config.get(key, default)
        if value is None:
            raise ModelError(f"{self.path}: the key {key!r} is missing")
        return value

    def count(self, key: str, default: Any = None) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ModelError(f"{self.path}: {key} = {value!r} is not a positive integer")
        return value

    def number(self, key: str) -> float:
        value = self._get(key, None)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ModelError(f"{self.path}: {key} = {value!r} is not a non-negative number")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise ModelError(f"{self.path}: {key} = {value!r} is not true or false")
        return value
