"""An independent float64 decoder for bitllama2.c checkpoints (test-only oracle).

Written straight from tests/fixtures/bitllama2c/README.md ("File layout" and "The math"), with
its own parser: it shares no code with pybitnet, so agreeing with it is evidence. One token at
a time with a KV cache, as llama2.c's ``forward`` does.

Rounding: the C fork rounds activations with ``round`` (ties away from zero) and training used
``torch.round`` (ties to even). Here ``numpy.rint`` (ties to even); in float64 an exact .5 tie
practically never happens, so the choice does not show.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from helpers.decoder import Decoder

MAGIC = 0x616B3432  # "ak42"
HEADER_BYTES = 256
KINDS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
# 2-bit code -> weight: 00 -> 0, 01 -> +1, 11 -> -1 (10 never occurs)
CODE_VALUE = np.array([0, 1, 0, -1], dtype=np.int8)


def read_sections(path: str | Path) -> tuple[dict, list[tuple[str, int, int]]]:
    """(config, sections) where each section is (name, offset, nbytes), in file order."""
    raw = Path(path).read_bytes()
    magic, version = struct.unpack_from("<Ii", raw, 0)
    assert magic == MAGIC and version == 1, (hex(magic), version)
    names = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
    cfg = dict(zip(names, struct.unpack_from("<7i", raw, 8), strict=True))
    cfg["shared_classifier"] = raw[36]
    dim, hidden = cfg["dim"], cfg["hidden_dim"]
    kv_dim = cfg["n_kv_heads"] * dim // cfg["n_heads"]
    shapes = {
        "wq": (dim, dim),
        "wk": (kv_dim, dim),
        "wv": (kv_dim, dim),
        "wo": (dim, dim),
        "w1": (hidden, dim),
        "w2": (dim, hidden),
        "w3": (hidden, dim),
    }
    sections = [("header", 0, HEADER_BYTES)]
    offset = HEADER_BYTES
    for name, nbytes in (("rms_final", 4 * dim), ("embedding", 4 * cfg["vocab_size"] * dim)):
        sections.append((name, offset, nbytes))
        offset += nbytes
    for kind in KINDS:
        out_f, in_f = shapes[kind]
        for layer in range(cfg["n_layers"]):
            sections.append((f"{kind}.{layer}", offset, 4 + out_f * in_f // 4))
            offset += 4 + out_f * in_f // 4
    cfg["shapes"] = shapes
    return cfg, sections


def unpack_matrix(raw: bytes, offset: int, shape: tuple[int, int]) -> tuple[np.ndarray, float]:
    """(ternary int8 matrix [out, in], scale) of one section; first weight in the top bits."""
    (scale,) = struct.unpack_from("<f", raw, offset)
    packed = np.frombuffer(raw, np.uint8, shape[0] * shape[1] // 4, offset + 4)
    codes = np.stack([(packed >> s) & 3 for s in (6, 4, 2, 0)], axis=1).reshape(shape)
    assert not (codes == 2).any(), "code 10 never occurs"
    return CODE_VALUE[codes], scale


def snorm(x: np.ndarray) -> np.ndarray:
    return x / (np.sqrt(np.mean(x * x)) * len(x))


def bitlinear(x: np.ndarray, w: np.ndarray, scale: float) -> np.ndarray:
    xn = snorm(x)
    a = np.abs(xn).max() / 127
    q = np.clip(np.rint(xn / a), -128, 127)
    return (w @ q) * scale * a


class Llama2cReference(Decoder):
    final_norm_eps = 1e-5  # the README's; tests may set the converted file's to compare exactly

    def __init__(self, path: str | Path) -> None:
        raw = Path(path).read_bytes()
        cfg, sections = read_sections(path)
        self.cfg = cfg
        self.sections = sections
        self.file_size = len(raw)
        at = {name: offset for name, offset, _ in sections}
        dim, vocab = cfg["dim"], cfg["vocab_size"]
        self.final_norm = np.frombuffer(raw, np.float32, dim, at["rms_final"]).astype(np.float64)
        self.embedding = (
            np.frombuffer(raw, np.float32, vocab * dim, at["embedding"])
            .reshape(vocab, dim)
            .astype(np.float64)
        )
        self.w: dict[str, list[tuple[np.ndarray, float]]] = {kind: [] for kind in KINDS}
        for kind in KINDS:
            for layer in range(cfg["n_layers"]):
                m, scale = unpack_matrix(raw, at[f"{kind}.{layer}"], cfg["shapes"][kind])
                self.w[kind].append((m.astype(np.float64), scale))
        self.head_size = dim // cfg["n_heads"]
        self.reset()

    def reset(self) -> None:
        c = self.cfg
        kv_dim = c["n_kv_heads"] * self.head_size
        self.k_cache = np.zeros((c["n_layers"], c["seq_len"], kv_dim))
        self.v_cache = np.zeros((c["n_layers"], c["seq_len"], kv_dim))
        self.pos = 0

    def rope(self, vec: np.ndarray, pos: int) -> np.ndarray:
        """llama2.c: adjacent pairs (i, i+1), frequency 10000^(-(i mod head_size)/head_size)."""
        i = np.arange(0, len(vec), 2)
        angle = pos * 10000.0 ** (-(i % self.head_size) / self.head_size)
        cos, sin = np.cos(angle), np.sin(angle)
        v0, v1 = vec[0::2], vec[1::2]
        out = np.empty_like(vec)
        out[0::2], out[1::2] = v0 * cos - v1 * sin, v0 * sin + v1 * cos
        return out

    def forward(self, token: int) -> np.ndarray:
        """Logits after feeding ``token`` at the next position."""
        c, hs, pos = self.cfg, self.head_size, self.pos
        kv_mul = c["n_heads"] // c["n_kv_heads"]
        x = self.embedding[token].copy()
        for layer in range(c["n_layers"]):
            w = {kind: self.w[kind][layer] for kind in KINDS}
            q = self.rope(bitlinear(x, *w["wq"]), pos)
            self.k_cache[layer, pos] = self.rope(bitlinear(x, *w["wk"]), pos)
            self.v_cache[layer, pos] = bitlinear(x, *w["wv"])
            att = np.empty(c["dim"])
            for h in range(c["n_heads"]):
                kv = slice((h // kv_mul) * hs, (h // kv_mul + 1) * hs)
                scores = self.k_cache[layer, : pos + 1, kv] @ q[h * hs : (h + 1) * hs]
                scores /= np.sqrt(hs)
                p = np.exp(scores - scores.max())
                att[h * hs : (h + 1) * hs] = (p / p.sum()) @ self.v_cache[layer, : pos + 1, kv]
            x = x + bitlinear(att, *w["wo"])
            g, u = bitlinear(x, *w["w1"]), bitlinear(x, *w["w3"])
            x = x + bitlinear(g / (1 + np.exp(-g)) * u, *w["w2"])
        self.pos += 1
        x = x / np.sqrt(np.mean(x * x) + self.final_norm_eps) * self.final_norm
        return self.embedding @ x


def load_tokenizer_bin(path: str | Path, vocab_size: int) -> list[bytes]:
    """llama2.c's tokenizer.bin: i32 max_token_length, then per token f32 score, i32 len, bytes."""
    raw = Path(path).read_bytes()
    offset, pieces = 4, []
    for _ in range(vocab_size):
        (length,) = struct.unpack_from("<i", raw, offset + 4)
        pieces.append(raw[offset + 8 : offset + 8 + length])
        offset += 8 + length
    assert offset == len(raw)
    return pieces


def decode(pieces: list[bytes], tokens: list[int], prev: int = 1) -> str:
    """llama2.c's decode: strip a leading space after BOS, turn <0xNN> pieces into bytes."""
    out = b""
    for t in tokens:
        piece = pieces[t]
        if prev == 1 and piece.startswith(b" "):
            piece = piece[1:]
        if len(piece) == 6 and piece.startswith(b"<0x") and piece.endswith(b">"):
            piece = bytes([int(piece[3:5], 16)])
        out += piece
        prev = t
    return out.decode("utf-8", errors="replace")
