"""Write the aarch64 test driver's goldens: tests/fixtures/aarch64/goldens.bin.

Run by hand on x86-64 from the repository root (never by the tests), after a change to a kernel's
contract or to the inputs below:

    PYTHONPATH=src python scripts/make_aarch64_goldens.py

Every case's inputs, and what the numpy tier (or float64, where tests/kernels compares with
float64) says the output is, with the tolerance tests/kernels allows per element (0: the same
bits). The inputs come from tests/kernels' own generators, so the driver
(tests/aarch64/driver.cpp) holds the aarch64 tiers to the contract the x86 tiers meet. Format:
tests/fixtures/aarch64/README.md.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "kernels"))

from test_bitlinear import random_activations, random_weights, ternary_file_bytes  # noqa: E402
from test_float_kernels import (  # noqa: E402
    INT8_ACTIVATIONS,
    cache_for,
    dense_matrix,
    float64_tolerance,
)

from pybitnet import formats, kernels  # noqa: E402
from pybitnet.gguf import open_gguf  # noqa: E402
from pybitnet.kernels import layout, numpy_tier  # noqa: E402
from pybitnet.kernels.registry import DENSE_FORMATS  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "aarch64" / "goldens.bin"
I2S_FILE = ROOT / "tests" / "fixtures" / "peers" / "bitnet-tiny-s1-i2_s.gguf"
MAGIC = b"PBA64G1\n"
DTYPES = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.uint8): 2,
          np.dtype(np.int64): 3, np.dtype(np.float64): 4}  # fmt: skip
KV_IDS = {"f32": 0, "f16": 1, "q8_0": 2}  # csrc/tiers.h KvType


def record(kind: str, params: list[int], arrays: list[np.ndarray]) -> bytes:
    out = struct.pack("<B", len(kind)) + kind.encode()
    out += struct.pack(f"<B{len(params)}q", len(params), *params)
    out += struct.pack("<B", len(arrays))
    for a in arrays:
        a = np.ascontiguousarray(a)
        out += struct.pack("<BQ", DTYPES[a.dtype], a.size) + a.tobytes()
    return out


def exact(y: np.ndarray) -> list[np.ndarray]:
    return [y.astype(np.float64), np.zeros(y.shape)]


def close(expected: np.ndarray, rtol: float, atol: float) -> list[np.ndarray]:
    """assert_allclose's rule per element: |y - expected| <= atol + rtol * |expected|."""
    return [expected.astype(np.float64), atol + rtol * np.abs(expected.astype(np.float64))]


def bitlinear_cases(rng) -> list[bytes]:
    out = []
    bitlinear = kernels.get("bitlinear", "numpy")
    shapes = [(33, 300, 1, 5), (21, 600, 1, 9), (19, 768, 3, 5), (8, 512, 2, 3)]
    for rows, cols, groups, n in shapes:
        codes, scales = random_weights(rng, rows, cols, groups)
        x = random_activations(rng, n, cols)
        y = bitlinear(x, bitlinear.prepare(codes, scales))
        x_q, s_x = numpy_tier.quantize_activations(x)
        out.append(record("quantize", [n, cols], [x, x_q.astype(np.int8), s_x.astype(np.float32)]))
        # per-block scales: tests/kernels' bound (float32 rounding of the block sums)
        magnitude = 3 * np.abs(x_q).sum(axis=1, keepdims=True) * scales.max() / s_x
        tol = [np.zeros(y.shape)] if groups == 1 else [np.broadcast_to(1e-6 * magnitude, y.shape)]
        arrays = [codes, scales, x, y.astype(np.float64), *tol]
        out.append(record("bitlinear", [rows, cols, groups, n], arrays))
    packed = [("I2_S", 12, 384), ("I2_S", 16, 200), ("TQ2_0", 7, 512), ("TQ1_0", 9, 256)]
    for wtype, rows, cols in packed:
        data = ternary_file_bytes(rng, wtype, rows, cols)
        codes, scales = formats.unpack_ternary(wtype, data, (rows, cols))
        x = random_activations(rng, 3, cols)
        y = bitlinear(x, bitlinear.prepare(codes, scales))
        x_q, s_x = numpy_tier.quantize_activations(x)
        magnitude = 3 * np.abs(x_q).sum(axis=1, keepdims=True) * scales.max() / s_x
        per_row = scales.shape[1] == 1
        tol = np.zeros(y.shape) if per_row else np.broadcast_to(1e-6 * magnitude, y.shape)
        fmt = formats.weight_type(wtype).id
        params = [fmt, rows, cols, scales.shape[1], 3]
        out.append(record("bitlinear_packed", params, [data, scales, x, y.astype(np.float64), tol]))
    return out


def dense_cases(rng) -> list[bytes]:
    out = []
    for wtype in DENSE_FORMATS:
        block = formats.weight_type(wtype).block_size
        # float formats: rows of any length; 96 columns also takes F16's one-row loop
        rows, cols = (9, 512) if block == 256 else (9, 96) if block == 32 else (9, 100)
        data, w = dense_matrix(rng, wtype, rows, cols)
        if wtype in INT8_ACTIVATIONS:
            data[: formats.weight_type(wtype).type_size] = 0  # an all-zero super-block (d = 0)
            w = formats.dequantize(wtype, data, (rows, cols))
        fmt = formats.weight_type(wtype).id
        if block == 1:
            whole, w96 = dense_matrix(rng, wtype, 5, 96)
            x = rng.standard_normal((1, 96)).astype(np.float32)
            expect = [x.astype(np.float64) @ w96.T.astype(np.float64), float64_tolerance(x, w96)]
            out.append(record("dense", [fmt, 5, 96, 1], [whole, x, *expect]))
        for n in (1, 3, 17):  # one row, a streamed batch, the panel path
            x = rng.standard_normal((n, cols)).astype(np.float32)
            # K-quants: numpy's bits (tests/kernels: test_k_quant_linear_equals_numpy_bit_for_bit)
            if wtype in INT8_ACTIVATIONS:
                x[0, :256] = 0  # an all-zero activation block
                prepare, linear = INT8_ACTIVATIONS[wtype]
                expect = exact(linear(x, prepare(wtype, data, (rows, cols))))
            else:
                expect = [x.astype(np.float64) @ w.T.astype(np.float64), float64_tolerance(x, w)]
            out.append(record("dense", [fmt, rows, cols, n], [data, x, *expect]))
        ids = np.array([3, 0, rows - 1], np.int64)
        out.append(record("embedding", [fmt, rows, cols, len(ids)], [data, ids, *exact(w[ids])]))
    data, _ = dense_matrix(rng, "F16", 9, 100)
    data[:200] = 0  # an all-zero row
    x = rng.standard_normal((5, 100)).astype(np.float32)
    y = numpy_tier.int8_linear(x, numpy_tier.prepare_int8("F16", data, (9, 100)))
    out.append(record("int8", [formats.weight_type("F16").id, 9, 100, 5], [data, x, *exact(y)]))
    return out


def float_op_cases(rng) -> list[bytes]:
    out = []
    for n, dim in [(3, 17), (5, 256)]:
        x = (rng.standard_normal((n, dim)) * rng.uniform(0.01, 100, (n, 1))).astype(np.float32)
        w = rng.uniform(0.5, 1.5, dim).astype(np.float32)
        expected = numpy_tier.rmsnorm(x.astype(np.float64), w, 1e-5)
        out.append(record("rmsnorm", [n, dim], [x, w, *close(expected, 2e-6, 1e-7)]))
    for neox in (1, 0):
        for rope_dim in (64, 32):
            x = rng.standard_normal((3, 3, 64)).astype(np.float32)
            angles = rng.uniform(-100, 100, (3, rope_dim // 2))
            cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
            expected = numpy_tier.rope(x.astype(np.float64), cos, sin, rope_dim, bool(neox))
            expect = close(expected, 1e-6, 1e-6)
            expect[1][..., rope_dim:] = 0  # the rest is left as it was, bit for bit
            out.append(record("rope", [3, 3, 64, rope_dim, neox], [x, cos, sin, *expect]))
    for act, name in enumerate(["silu", "relu2"]):
        g = (rng.standard_normal((1, 301)) * 10).astype(np.float32)
        g[0, :3] = [-100.0, 100.0, 0.0]
        u = rng.standard_normal((1, 301)).astype(np.float32)
        expected = numpy_tier.gated(name, g.astype(np.float64), u)
        out.append(record("gated", [act, g.size], [g, u, *close(expected, 2e-6, 1e-30)]))
    return out


def attention_cases(rng) -> list[bytes]:
    out = []
    for kv in layout.KV_CACHE_TYPES:
        for n, start, heads, n_kv, d in [(1, 20, 6, 3, 32), (7, 0, 4, 2, 64)]:
            ctx = 32
            k, v, kc, vc = cache_for(rng, n_kv, d, ctx, start, n, kv)
            q = rng.standard_normal((n, heads, d)).astype(np.float32)
            before = [np.frombuffer(c.tobytes(), np.uint8) for c in (kc, vc)]
            expected = numpy_tier.attention(q.astype(np.float64), k, v, [(kc, vc, start, n)])
            hashes = [fnv1a64(kc.tobytes()), fnv1a64(vc.tobytes())]  # the caches after the store
            params = [KV_IDS[kv], n, start, heads, n_kv, d, ctx, *hashes]
            arrays = [q, k, v, *before, *close(expected, 1e-5, 2e-6)]
            out.append(record("attention", params, arrays))
    return out


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h - (1 << 64) if h >= 1 << 63 else h  # as int64


def i2s_file_cases(rng) -> list[bytes]:
    """Every I2_S tensor of bitnet.cpp's file: where it lies, the numpy reader's ternary values
    (their FNV-1a hash and counts of -1, 0, 1) and scales; for block 0's tensors also a
    BitLinear of 3 rows over them (the others: 0 rows, to keep the file small)."""
    out = []
    bitlinear = kernels.get("bitlinear", "numpy")
    f = open_gguf(I2S_FILE)
    for t in f.tensors.values():
        if t.wtype.name != "I2_S":
            continue
        rows, cols = t.n_elements // t.ne[0], t.ne[0]
        data = np.fromfile(I2S_FILE, np.uint8, t.nbytes, offset=t.offset)
        codes, scales = formats.unpack_ternary("I2_S", data, (rows, cols))
        counts = [int((codes == c).sum()) for c in (-1, 0, 1)]
        x = random_activations(rng, 3 if t.name.startswith("blk.0.") else 0, cols)
        y = bitlinear(x, bitlinear.prepare(codes, scales))
        params = [t.offset, t.nbytes, rows, cols, fnv1a64(codes.astype(np.int8).tobytes()), *counts]
        out.append(record("i2s_file", params, [scales, x, *exact(y)]))
    return out


def main() -> None:
    rng = np.random.default_rng(19)
    cases = [
        *bitlinear_cases(rng),
        *dense_cases(rng),
        *float_op_cases(rng),
        *attention_cases(rng),
        *i2s_file_cases(rng),
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(MAGIC + b"".join(cases))
    print(f"{OUT.relative_to(ROOT)}: {len(cases)} cases, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
