"""A deliberately naive float64 decoder of GGUF models (test-only oracle).

Written from docs/SPEC.md §1 and the "Model semantics" of tests/fixtures/peers/README.md, one
position at a time and one head at a time, sharing no code with pybitnet.model. Weights come
from pybitnet.gguf's dequantize (the formats are tested on their own against the gguf package),
so ternary weights arrive as w_scale * W_t; BitLinear then computes
(w_scale * W_t) @ x_q / s_x, which in float64 is SPEC's (W_t @ x_q) * w_scale / s_x.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from helpers.decoder import Decoder
from pybitnet.gguf import open_gguf

RELU2_ARCHS = ("bitnet-b1.58", "bitnet-25")
MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


class NaiveBitnet(Decoder):
    def __init__(self, path: str | Path) -> None:
        f = open_gguf(path)
        md = f.metadata
        arch = md["general.architecture"]
        self.arch = arch
        self.dim = int(md[f"{arch}.embedding_length"])
        self.n_layers = int(md[f"{arch}.block_count"])
        self.n_heads = int(md[f"{arch}.attention.head_count"])
        self.n_kv_heads = int(md.get(f"{arch}.attention.head_count_kv", self.n_heads))
        self.head_dim = self.dim // self.n_heads
        self.rope_dim = int(md.get(f"{arch}.rope.dimension_count", self.head_dim))
        self.theta = float(md.get(f"{arch}.rope.freq_base", 10000.0))
        self.eps = float(md[f"{arch}.attention.layer_norm_rms_epsilon"])
        self.neox = arch != "llama"
        self.sub_norms = arch != "llama"
        self.relu2 = arch in RELU2_ARCHS

        self.w: dict[str, np.ndarray] = {}
        self.ternary: dict[str, bool] = {}
        for name, info in f.tensors.items():
            if name.endswith(".scale"):
                continue
            w = f.dequantize(name).astype(np.float64)
            scale_name = name.removesuffix(".weight") + ".scale"
            if scale_name in f.tensors:
                w = w * float(f.dequantize(scale_name)[0])
            self.w[name] = w
            self.ternary[name] = info.wtype.ternary
        if "output.weight" not in self.w:
            self.w["output.weight"] = self.w["token_embd.weight"]
            self.ternary["output.weight"] = self.ternary["token_embd.weight"]

    def rmsnorm(self, x: np.ndarray, name: str) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x) + self.eps) * self.w[name]

    def linear(self, x: np.ndarray, name: str) -> np.ndarray:
        if not self.ternary[name]:
            return self.w[name] @ x
        s_x = 127 / max(np.abs(x).max(), 1e-5)
        x_q = np.clip(np.rint(x * s_x), -128, 127)
        return (self.w[name] @ x_q) / s_x

    def rope(self, v: np.ndarray, pos: int) -> np.ndarray:
        """One head's vector; pair j turns by pos * theta^(-2j/rope_dim)."""
        out = v.copy()
        half = self.rope_dim // 2
        for j in range(half):
            angle = pos * self.theta ** (-2 * j / self.rope_dim)
            a, b = (j, j + half) if self.neox else (2 * j, 2 * j + 1)
            out[a] = v[a] * np.cos(angle) - v[b] * np.sin(angle)
            out[b] = v[a] * np.sin(angle) + v[b] * np.cos(angle)
        return out

    def reset(self) -> None:
        self.keys: list[list[np.ndarray]] = [[] for _ in range(self.n_layers)]
        self.values: list[list[np.ndarray]] = [[] for _ in range(self.n_layers)]

    def forward(self, token: int) -> np.ndarray:
        """Logits after feeding ``token`` at the next position."""
        hd, group = self.head_dim, self.n_heads // self.n_kv_heads
        pos = len(self.keys[0])
        h = self.w["token_embd.weight"][token].copy()
        for layer in range(self.n_layers):
            p = f"blk.{layer}."
            x = self.rmsnorm(h, p + "attn_norm.weight")
            q = self.linear(x, p + "attn_q.weight")
            k = self.linear(x, p + "attn_k.weight")
            v = self.linear(x, p + "attn_v.weight")
            kv_heads = range(self.n_kv_heads)
            self.keys[layer].append([self.rope(k[i * hd : (i + 1) * hd], pos) for i in kv_heads])
            self.values[layer].append([v[i * hd : (i + 1) * hd] for i in kv_heads])
            a = np.zeros(self.n_heads * hd)
            for head in range(self.n_heads):
                qh = self.rope(q[head * hd : (head + 1) * hd], pos)
                kv = head // group
                scores = np.array([qh @ keys[kv] for keys in self.keys[layer]]) / np.sqrt(hd)
                probs = np.exp(scores - scores.max())
                probs /= probs.sum()
                for t, values in enumerate(self.values[layer]):
                    a[head * hd : (head + 1) * hd] += probs[t] * values[kv]
            if self.sub_norms:
                a = self.rmsnorm(a, p + "attn_sub_norm.weight")
            h = h + self.linear(a, p + "attn_output.weight")

            x = self.rmsnorm(h, p + "ffn_norm.weight")
            g, u = self.linear(x, p + "ffn_gate.weight"), self.linear(x, p + "ffn_up.weight")
            m = (np.maximum(g, 0) ** 2 if self.relu2 else g / (1 + np.exp(-g))) * u
            if self.sub_norms:
                m = self.rmsnorm(m, p + "ffn_sub_norm.weight")
            h = h + self.linear(m, p + "ffn_down.weight")
        return self.linear(self.rmsnorm(h, "output_norm.weight"), "output.weight")
