"""Helpers for comparing the engine with the float64 reference (model/reference.py).

Two comparisons, because float32 and float64 can round one int8 activation differently:
- `lockstep`: the reference's forward pass, op by op; each engine op gets the reference's own
  input (cast to float32), so errors cannot compound and the criterion is per op: within 1e-4
  of the op's output range, plus the exact effect of any activation rounding flips, counted.
- `whole_model_flips`: whole forward passes of both, recording every BitLinear input, to find
  the first position where the engine's int8 activations differ from the reference's.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pybitnet.engine import Engine
from pybitnet.gguf import open_gguf
from pybitnet.kernels import Kernel
from pybitnet.kernels import numpy_tier as numpy_kernels
from pybitnet.model import ModelConfig, ReferenceModel, Weights
from pybitnet.model import reference as R

TOLERANCE = 1e-4  # of the range of the values compared


@functools.cache
def load(path: Path) -> Weights:
    f = open_gguf(path)
    return Weights.from_gguf(f, ModelConfig.from_metadata(f.metadata, str(path)))


def f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, np.float32)


def quantize64(x: np.ndarray) -> np.ndarray:
    """The reference's int8 activations (float64 arithmetic), as in reference.bitlinear."""
    s_x = 127.0 / np.maximum(np.abs(x).max(axis=1, keepdims=True), 1e-5)
    return np.clip(np.rint(x * s_x), -128, 127)


@dataclass
class OpDiff:
    op: str
    excess: float  # max |engine - reference| beyond the exact effect of rounding flips
    allowed: float  # TOLERANCE * the range of the reference's values
    flips: int  # int8 activations that float32 rounded differently (ternary layers)


def _compare(op: str, engine: np.ndarray, ref: np.ndarray, flip_effect=0.0, flips=0) -> OpDiff:
    span = float(ref.max() - ref.min()) or 1.0
    excess = np.abs(engine.astype(np.float64) - ref) - flip_effect
    return OpDiff(op, float(excess.max()), TOLERANCE * span, flips)


def _linear(op, layer, x, ref_model, tensors) -> list[OpDiff]:
    """The engine's stacked layer on x against the reference's linear per tensor."""
    outs = layer(f32(x))
    diffs = []
    for t, y in zip(tensors, outs, strict=True):
        expected = ref_model.linear(x, t)
        effect, flips = 0.0, 0
        if t.wtype.ternary:
            # Activations that float32 rounds to another int8 than float64 does: their exact
            # effect on each output, |delta x_q| . |W|, scaled as BitLinear scales.
            xq32, s_x = numpy_kernels.quantize_activations(f32(x))
            delta = np.abs(xq32 - quantize64(x))
            flips = int(np.count_nonzero(delta))
            if flips:
                codes, scales = t.unpack_ternary()
                width = codes.shape[1] // scales.shape[1]
                w = np.abs(codes).astype(np.float64) * np.repeat(scales, width, axis=1)
                effect = (delta @ w.T) / s_x
        diffs.append(_compare(f"{op}:{t.name}", y, expected, effect, flips))
    return diffs


def lockstep(weights: Weights, ids: list[int]) -> list[OpDiff]:
    """Every op of the engine against the reference's, fed the reference's inputs."""
    c = weights.config
    engine, ref = Engine(weights, kv_cache="f32"), ReferenceModel(weights)
    n = len(ids)
    positions = np.arange(n)
    cos, sin = engine.rope_angles(positions)
    cache = engine.new_cache(n)
    diffs = []
    h = ref._dense_weight(weights.token_embd)[ids]
    diffs.append(_compare("embedding", engine._embedding(engine.token_embd.prepared[0], ids), h))
    for layer, (blk, eb) in enumerate(zip(weights.blocks, engine.blocks, strict=True)):
        x = R.rmsnorm(h, blk.attn_norm, c.rms_eps)
        diffs.append(_compare("attn_norm", engine.rmsnorm(f32(h), eb.attn_norm), x))
        diffs += _linear("qkv", eb.qkv, x, ref, [blk.attn_q, blk.attn_k, blk.attn_v])
        q = ref.linear(x, blk.attn_q).reshape(n, c.n_heads, c.head_dim)
        k = ref.linear(x, blk.attn_k).reshape(n, c.n_kv_heads, c.head_dim)
        v = ref.linear(x, blk.attn_v).reshape(n, c.n_kv_heads, c.head_dim)
        q_rot, k_rot = R.rope(q, positions, c), R.rope(k, positions, c)
        diffs.append(_compare("rope q", engine.rope(f32(q), cos, sin), q_rot))
        diffs.append(_compare("rope k", engine.rope(f32(k), cos, sin), k_rot))
        a = R.attention(q_rot, k_rot, v, positions)
        a_engine = engine.attention(f32(q_rot), f32(k_rot), f32(v), layer, [(cache, 0, n)])
        diffs.append(_compare("attention", a_engine, a))
        if c.sub_norms:
            a_in = a
            a = R.rmsnorm(a, blk.attn_sub_norm, c.rms_eps)
            diffs.append(_compare("attn_sub_norm", engine.rmsnorm(f32(a_in), eb.attn_sub_norm), a))
        diffs += _linear("attn_output", eb.attn_output, a, ref, [blk.attn_output])
        h = h + ref.linear(a, blk.attn_output)

        x = R.rmsnorm(h, blk.ffn_norm, c.rms_eps)
        diffs.append(_compare("ffn_norm", engine.rmsnorm(f32(h), eb.ffn_norm), x))
        diffs += _linear("gate_up", eb.gate_up, x, ref, [blk.ffn_gate, blk.ffn_up])
        g, u = ref.linear(x, blk.ffn_gate), ref.linear(x, blk.ffn_up)
        m = R.ACTIVATIONS[c.activation](g) * u
        diffs.append(_compare("gated", engine._gated(c.activation, f32(g), f32(u)), m))
        if c.sub_norms:
            m_in = m
            m = R.rmsnorm(m, blk.ffn_sub_norm, c.rms_eps)
            diffs.append(_compare("ffn_sub_norm", engine.rmsnorm(f32(m_in), eb.ffn_sub_norm), m))
        diffs += _linear("ffn_down", eb.ffn_down, m, ref, [blk.ffn_down])
        h = h + ref.linear(m, blk.ffn_down)
    x = R.rmsnorm(h, weights.output_norm, c.rms_eps)
    diffs.append(_compare("output_norm", engine.rmsnorm(f32(h), engine.output_norm), x))
    diffs += _linear("output", engine.output, x, ref, [weights.output])
    return diffs


def first_flip(weights: Weights, ids: list[int], monkeypatch) -> tuple[np.ndarray, np.ndarray, int]:
    """(engine logits, reference logits, first position whose int8 activations differ in any
    BitLinear of the two whole forward passes, or len(ids) when none do)."""
    seen_ref, seen_engine = [], []
    original_bitlinear, original_call = R.bitlinear, Kernel.__call__

    def ref_bitlinear(x, codes, scales):
        if not seen_ref or seen_ref[-1] is not x:  # q, k, v (gate, up) share one input
            seen_ref.append(x)
        return original_bitlinear(x, codes, scales)

    def engine_call(self, *args):
        if self.op == "bitlinear":
            seen_engine.append(args[0])
        return original_call(self, *args)

    monkeypatch.setattr(R, "bitlinear", ref_bitlinear)
    monkeypatch.setattr(Kernel, "__call__", engine_call)
    engine, ref = Engine(weights, kv_cache="f32"), ReferenceModel(weights)
    logits = engine.forward(ids, engine.new_cache(len(ids)))
    expected = ref.forward(ids, ref.new_cache(len(ids)))
    monkeypatch.undo()
    assert len(seen_ref) == len(seen_engine)
    first = len(ids)
    for x64, x32 in zip(seen_ref, seen_engine, strict=True):
        differs = np.any(numpy_kernels.quantize_activations(x32)[0] != quantize64(x64), axis=1)
        if differs.any():
            first = min(first, int(np.argmax(differs)))
    return logits, expected, first
