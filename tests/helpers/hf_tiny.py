"""Tiny Hugging Face checkpoints written by hand, and a float64 decoder with HF's semantics.

Until transformers' own fixtures (tests/fixtures/hf/) cover a case, the HF importer's tests use
these: safetensors written byte by byte from the format's description (8-byte header length,
JSON header, raw data; no pybitnet code), a byte-level BPE tokenizer.json built with the
`tokenizers` package, and `HFDecoder`, which runs the checkpoint the way transformers'
modeling_llama / modeling_bitnet and integrations/bitnet.py do (split-halves RoPE on HF's row
order, per-token absmax activations, the weight_scale direction of the config's linear class).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.pre_tokenizers import ByteLevel

from helpers.decoder import Decoder

DTYPES = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("u1"): "U8"}
DIM, HEADS, KV_HEADS, FFN, LAYERS, VOCAB = 256, 4, 2, 512, 2, 300
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class BF16(np.ndarray):
    """Marks a uint16 array as the bits of bfloat16 values for write_safetensors."""


def bf16(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits by truncation (the test's values are chosen exactly bf16)."""
    return (np.asarray(values, "<f4").view("<u4") >> 16).astype("<u2").view(BF16)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        dtype = "BF16" if isinstance(array, BF16) else DTYPES[array.dtype]
        raw = np.ascontiguousarray(array).tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def write_tokenizer(folder: Path) -> None:
    """A byte-level BPE with GPT-2's pre-tokenizer: 256 byte tokens and a few merges."""
    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    merges = [("t", "h"), ("th", "e"), ("Ġ", "t"), ("a", "n")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|bos|>", "<|eos|>"])
    tok.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "add_bos_token": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def pack(codes: np.ndarray) -> np.ndarray:
    """int8 codes (out, in) -> uint8 (out/4, in): row p + i*out/4 in bits 2i (transformers'
    pack_weights, as its docstring describes it)."""
    q = (codes + 1).astype(np.uint8).reshape(4, -1, codes.shape[1])
    return q[0] | q[1] << 2 | q[2] << 4 | q[3] << 6


def make_checkpoint(
    folder: Path, family: str, seed: int = 0, linear_class: str = "autobitlinear", vocab=VOCAB
) -> dict[str, np.ndarray]:
    """Write a tiny checkpoint of ``family`` ("bitnet", "bitnet-master", "1bitllm", "llama")
    into ``folder``; returns its float32 tensors (masters, or codes and scales when packed)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    hd = DIM // HEADS
    shapes = {
        "q_proj": (DIM, DIM),
        "k_proj": (KV_HEADS * hd, DIM),
        "v_proj": (KV_HEADS * hd, DIM),
        "o_proj": (DIM, DIM),
        "gate_proj": (FFN, DIM),
        "up_proj": (FFN, DIM),
        "down_proj": (DIM, FFN),
    }
    packed = family in ("bitnet", "llama")
    sub = family != "llama"
    t: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": bf16(rng.normal(0, 0.4, (vocab, DIM))),
        "model.norm.weight": bf16(rng.uniform(0.5, 1.5, DIM)),
    }
    for layer in range(LAYERS):
        p = f"model.layers.{layer}."
        t[p + "input_layernorm.weight"] = bf16(rng.uniform(0.5, 1.5, DIM))
        t[p + "post_attention_layernorm.weight"] = bf16(rng.uniform(0.5, 1.5, DIM))
        if sub:
            names = (
                ("attn_sub_norm", "ffn_sub_norm")
                if family != "1bitllm"
                else ("inner_attn_ln", "ffn_layernorm")
            )
            t[p + f"self_attn.{names[0]}.weight"] = bf16(rng.uniform(0.5, 1.5, DIM))
            t[p + f"mlp.{names[1]}.weight"] = bf16(rng.uniform(0.5, 1.5, FFN))
        for name, shape in shapes.items():
            where = p + ("mlp." if name.endswith(("gate_proj", "up_proj", "down_proj")) else
                         "self_attn.") + name  # fmt: skip
            if packed:
                t[where + ".weight"] = pack(rng.integers(-1, 2, shape).astype(np.int8))
                t[where + ".weight_scale"] = bf16(np.array([rng.uniform(0.5, 2.0)]))
            else:
                master = rng.normal(0, 1 / np.sqrt(shape[1]), shape).astype(np.float32)
                t[where + ".weight"] = master.astype("<f2") if family == "1bitllm" else bf16(master)
    if family == "llama":
        t["lm_head.weight"] = bf16(rng.normal(0, 0.4, (vocab, DIM)))
    write_safetensors(folder / "model.safetensors", t)
    write_tokenizer(folder)
    config = {**config_for(family, linear_class), "vocab_size": vocab}
    (folder / "config.json").write_text(json.dumps(config))
    return t


def config_for(family: str, linear_class: str = "autobitlinear") -> dict:
    config = {
        "hidden_size": DIM,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "vocab_size": VOCAB,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": family != "llama",
    }
    if family.startswith("bitnet"):
        config.update(model_type="bitnet", architectures=["BitNetForCausalLM"], hidden_act="relu2")
        if family == "bitnet":
            config["quantization_config"] = {"quant_method": "bitnet", "linear_class": linear_class}
    elif family == "1bitllm":
        config.update(model_type="llama", architectures=["BitnetForCausalLM"], hidden_act="silu")
    else:
        config.update(
            model_type="llama",
            architectures=["LlamaForCausalLM"],
            hidden_act="silu",
            quantization_config={"quant_method": "bitnet", "linear_class": linear_class},
        )
    return config


def _float(array: np.ndarray) -> np.ndarray:
    if isinstance(array, BF16):
        return (array.view(np.ndarray).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return array.astype(np.float64)


def _act_quant(x: np.ndarray) -> tuple[np.ndarray, float]:
    """transformers' per-token absmax: (rounded int values as float, scale)."""
    scale = 127 / max(np.abs(x).max(), 1e-5)
    return np.clip(np.rint(x * scale), -128, 127), scale


class HFDecoder(Decoder):
    """One token at a time, float64, as transformers computes the checkpoint's forward pass."""

    def __init__(self, tensors: dict[str, np.ndarray], config: dict) -> None:
        self.t, self.c = tensors, config
        quant = config.get("quantization_config") or {}
        self.linear_class = quant.get("linear_class", "bitlinear")
        self.master = (
            "quantization_config" not in config or quant.get("quantization_mode") == "online"
        )
        self.hd = config["hidden_size"] // config["num_attention_heads"]

    def reset(self) -> None:
        self.keys = [[] for _ in range(self.c["num_hidden_layers"])]
        self.values = [[] for _ in range(self.c["num_hidden_layers"])]

    def linear(self, name: str, x: np.ndarray) -> np.ndarray:
        w = self.t[name + ".weight"]
        x_q, s_x = _act_quant(x)
        if self.master:  # WeightQuant: s = 1 / mean|W|, round(W * s).clamp(-1, 1) / s (float32)
            w32 = _float(w).astype(np.float32)
            s = np.float32(1) / np.float32(max(np.abs(w32).mean(dtype=np.float64), 1e-5))
            return (np.clip(np.rint(w32 * s), -1, 1).astype(np.float64) @ x_q) / s_x / float(s)
        rows = w.shape[0]
        codes = np.concatenate([((w >> (2 * i)) & 3).astype(np.float64) - 1 for i in range(4)])
        ws = float(_float(self.t[name + ".weight_scale"])[0])
        y = codes[: rows * 4] @ x_q
        return y / (s_x * ws) if self.linear_class == "bitlinear" else y / s_x * ws

    def norm(self, x: np.ndarray, name: str) -> np.ndarray:
        w = _float(self.t[name + ".weight"])
        return x / np.sqrt(np.mean(x * x) + self.c["rms_norm_eps"]) * w

    def rope(self, x: np.ndarray, pos: int) -> np.ndarray:
        """x (heads, hd) rotated as modeling_llama's apply_rotary_pos_emb (rotate_half)."""
        half = self.hd // 2
        inv = 1.0 / self.c["rope_theta"] ** (np.arange(0, self.hd, 2) / self.hd)
        cos, sin = np.cos(pos * inv), np.sin(pos * inv)
        x1, x2 = x[:, :half], x[:, half:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=1)

    def forward(self, token: int) -> np.ndarray:
        c, hd = self.c, self.hd
        h = _float(self.t["model.embed_tokens.weight"])[token]
        sub = c["model_type"] == "bitnet" or c["architectures"] == ["BitnetForCausalLM"]
        names = (
            ("attn_sub_norm", "ffn_sub_norm")
            if c["model_type"] == "bitnet"
            else ("inner_attn_ln", "ffn_layernorm")
        )
        group = c["num_attention_heads"] // c["num_key_value_heads"]
        for layer in range(c["num_hidden_layers"]):
            p = f"model.layers.{layer}."
            x = self.norm(h, p + "input_layernorm")
            pos = len(self.keys[layer])
            q = self.rope(self.linear(p + "self_attn.q_proj", x).reshape(-1, hd), pos)
            self.keys[layer].append(
                self.rope(self.linear(p + "self_attn.k_proj", x).reshape(-1, hd), pos)
            )
            self.values[layer].append(self.linear(p + "self_attn.v_proj", x).reshape(-1, hd))
            k, v = np.stack(self.keys[layer]), np.stack(self.values[layer])  # (T, kv, hd)
            out = []
            for head in range(q.shape[0]):
                scores = k[:, head // group] @ q[head] / np.sqrt(hd)
                weights = np.exp(scores - scores.max())
                out.append(weights / weights.sum() @ v[:, head // group])
            a = np.concatenate(out)
            if sub:
                a = self.norm(a, p + f"self_attn.{names[0]}")
            h = h + self.linear(p + "self_attn.o_proj", a)
            x = self.norm(h, p + "post_attention_layernorm")
            g = self.linear(p + "mlp.gate_proj", x)
            act = np.maximum(g, 0) ** 2 if c["hidden_act"] == "relu2" else g / (1 + np.exp(-g))
            m = act * self.linear(p + "mlp.up_proj", x)
            if sub:
                m = self.norm(m, p + f"mlp.{names[1]}")
            h = h + self.linear(p + "mlp.down_proj", m)
        head = self.t.get("lm_head.weight", self.t["model.embed_tokens.weight"])
        return _float(head) @ self.norm(h, "model.norm")
