"""The float kernels (dense and int8 linear, embedding, RMSNorm, RoPE, gated activations,
attention) on every native tier against the numpy kernels, on random and ragged shapes."""

import numpy as np
import pytest
from kernel_helpers import NATIVE_TIERS

from pybitnet import formats, kernels
from pybitnet.kernels import layout, numpy_tier
from pybitnet.kernels.registry import DENSE_FORMATS

TIERS = [*NATIVE_TIERS, "numpy"]
# (rows, cols): rows not whole tiles of 4, columns not whole 32-chunks or 512-panels
SHAPES = [(1, 32), (5, 64), (37, 96), (70, 608), (130, 1056)]
RAGGED_COLS = [(3, 1), (9, 33), (17, 100)]  # float formats only: any row length
# K-quants: rows of 1, 2, 3 and 5 super-blocks of 256 (not whole 512-panels either)
SUPER_BLOCK_SHAPES = [(1, 256), (5, 512), (37, 768), (130, 1280)]
# n <= 16: weights streamed once (4-row blocks, remainders 1-3); n = 17: the panel path
BATCHES = [1, 2, 3, 5, 8, 9, 16, 17]
# K-quants that take activations quantized per 256-block (docs/SPEC.md §1): numpy's model of each
INT8_ACTIVATIONS = numpy_tier.INT8_ACTIVATION_KQUANTS


def shapes_for(wtype):
    block = formats.weight_type(wtype).block_size
    if block == 1:
        return SHAPES + RAGGED_COLS
    return SHAPES if block == 32 else SUPER_BLOCK_SHAPES


def dense_matrix(rng, wtype, rows, cols):
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    data = formats.quantize(wtype, w)
    return data, formats.dequantize(wtype, data, (rows, cols))


def float64_tolerance(x, w):
    """float32 rounding of a dot product: a few epsilons of the sum of |terms|."""
    return 1e-6 * (np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64)) + 1e-30


def int8_activation_tolerance(x, w):
    """Q6_K and Q4_K take x rounded to int8 per 256-block (docs/SPEC.md §1): each element moves by
    at most half its block's step max|x_b| / 127, so y by that times |w|, plus float32 rounding."""
    step = np.abs(x.reshape(len(x), -1, 256)).max(axis=2).astype(np.float64) / 127
    half_steps = np.repeat(step, 256, axis=1) / 2
    return half_steps @ np.abs(w).T.astype(np.float64) * (1 + 1e-4) + float64_tolerance(x, w)


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("wtype", DENSE_FORMATS)
def test_dense_linear_matches_float64_of_dequantized_weights(tier, wtype, rng):
    tolerance = int8_activation_tolerance if wtype in INT8_ACTIVATIONS else float64_tolerance
    for rows, cols in shapes_for(wtype):
        data, w = dense_matrix(rng, wtype, rows, cols)
        kernel = kernels.get(f"linear_{wtype.lower()}", tier)
        prepared = kernel.prepare(data, (rows, cols))
        for n in BATCHES:
            x = rng.standard_normal((n, cols)).astype(np.float32)
            y = kernel(x, prepared)
            assert y.dtype == np.float32 and y.shape == (n, rows)
            expected = x.astype(np.float64) @ w.T.astype(np.float64)
            assert np.all(np.abs(y - expected) <= tolerance(x, w)), (rows, cols, n)


@pytest.mark.parametrize("tier", NATIVE_TIERS)
@pytest.mark.parametrize("wtype", INT8_ACTIVATIONS)
def test_k_quant_linear_equals_numpy_bit_for_bit(tier, wtype, rng):
    """Integer dot products per super-block, then one float step each in a fixed order: every
    tier gives numpy's bits, for any batch (each row is computed as it would be alone)."""
    prepare_numpy, linear_numpy = INT8_ACTIVATIONS[wtype]
    for rows, cols in SUPER_BLOCK_SHAPES:
        data, _ = dense_matrix(rng, wtype, rows, cols)
        data[: formats.weight_type(wtype).type_size] = 0  # an all-zero super-block (d = 0)
        kernel = kernels.get(f"linear_{wtype.lower()}", tier)
        prepared = kernel.prepare(data, (rows, cols))
        expected_w = prepare_numpy(wtype, data, (rows, cols))
        for n in BATCHES:
            x = (rng.standard_normal((n, cols)) * rng.uniform(1e-3, 1e3, (n, 1))).astype(np.float32)
            x[0, :256] = 0  # an all-zero activation block
            expected = linear_numpy(x, expected_w)
            np.testing.assert_array_equal(kernel(x, prepared), expected)
            np.testing.assert_array_equal(kernel(x[-1:], prepared), expected[-1:])


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("wtype", DENSE_FORMATS)
def test_embedding_rows_equal_dequantize(tier, wtype, rng):
    rows, cols = 50, int(np.lcm(96, formats.weight_type(wtype).block_size))
    data, w = dense_matrix(rng, wtype, rows, cols)
    prepared = kernels.get(f"linear_{wtype.lower()}", tier).prepare(data, (rows, cols))
    ids = np.array([3, 0, 49, 3, 17])
    np.testing.assert_array_equal(kernels.get("embedding", tier)(prepared, ids), w[ids])


@pytest.mark.parametrize("tier", TIERS)
def test_int8_linear_equals_numpy_bit_for_bit(tier, rng):
    for rows, cols in [*SHAPES, (9, 100)]:
        data, w = dense_matrix(rng, "F16", rows, cols)
        data[: 2 * cols] = 0  # an all-zero row: scale 0, no division by zero
        kernel = kernels.get("linear_int8", tier)
        prepared = kernel.prepare("F16", data, (rows, cols))
        expected_w = numpy_tier.prepare_int8("F16", data, (rows, cols))
        for n in BATCHES:
            x = rng.standard_normal((n, cols)).astype(np.float32)
            expected = numpy_tier.int8_linear(x, expected_w)
            np.testing.assert_array_equal(kernel(x, prepared), expected)


def test_int8_weights_are_rounded_per_row(rng):
    data, w = dense_matrix(rng, "F32", 7, 64)
    q8 = numpy_tier.prepare_int8("F32", data, (7, 64))
    assert np.abs(q8.q).max(axis=1).tolist() == [127] * 7
    assert np.all(np.abs(q8.q * q8.scales[:, None] - w) <= q8.scales[:, None] / 2 * (1 + 1e-6))


@pytest.mark.parametrize("tier", NATIVE_TIERS)
def test_rmsnorm(tier, rng):
    for n, dim in [(1, 1), (3, 17), (5, 256), (40, 2560)]:
        x = (rng.standard_normal((n, dim)) * rng.uniform(0.01, 100, (n, 1))).astype(np.float32)
        w = rng.uniform(0.5, 1.5, dim).astype(np.float32)
        expected = numpy_tier.rmsnorm(x.astype(np.float64), w, 1e-5)
        y = kernels.get("rmsnorm", tier)(x, w, 1e-5)
        np.testing.assert_allclose(y, expected, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("tier", NATIVE_TIERS)
@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("rope_dim", [64, 32, 2])
def test_rope_rotates_pairs_in_place(tier, neox, rope_dim, rng):
    x = rng.standard_normal((5, 3, 64)).astype(np.float32)
    angles = rng.uniform(-100, 100, (5, rope_dim // 2))
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    expected = numpy_tier.rope(x.astype(np.float64), cos, sin, rope_dim, neox)
    y = kernels.get("rope", tier)(x, cos, sin, rope_dim, neox)
    assert y is x
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(y[..., rope_dim:], expected[..., rope_dim:])


@pytest.mark.parametrize("tier", NATIVE_TIERS)
@pytest.mark.parametrize("act", ["silu", "relu2"])
def test_gated(tier, act, rng):
    for count in [1, 15, 16, 1000, 70001]:
        g = (rng.standard_normal((1, count)) * 10).astype(np.float32)
        g[0, :3] = [-100.0, 100.0, 0.0][:count] if count >= 3 else g[0, :3]
        u = rng.standard_normal((1, count)).astype(np.float32)
        expected = numpy_tier.gated(act, g.astype(np.float64), u)
        y = kernels.get("gated", tier)(act, g, u)
        np.testing.assert_allclose(y, expected, rtol=2e-6, atol=1e-30)


@pytest.mark.parametrize("tier", [*NATIVE_TIERS, "numpy"])
def test_gated_reads_the_halves_of_a_stacked_output_in_place(tier, rng):
    """The engine passes the gate and up projections as column views of one (n, 2 F) array."""
    for n, f in [(1, 6912), (3, 100), (40, 1000)]:
        gu = (rng.standard_normal((n, 2 * f)) * 4).astype(np.float32)
        gated = kernels.get("gated", tier)
        y = gated("silu", gu[:, :f], gu[:, f:])
        np.testing.assert_array_equal(y, gated("silu", gu[:, :f].copy(), gu[:, f:].copy()))
    if tier != "numpy":  # rows whose elements are strided are refused, never misread
        with pytest.raises(ValueError, match="contiguous"):
            gated("silu", gu[:, ::2], gu[:, 1::2])


KV_TYPES = list(layout.KV_CACHE_TYPES)
# Stale cache bytes (past the filled positions, which must not count): large keys and NaN
# values in every type (float16 0x7b7b = 60768, 0x7e7e NaN; q8_0 codes 123, scales as those).
STALE = {"f32": (1e4, np.nan), "f16": (0x7B7B, 0x7E7E), "q8_0": (0x7B, 0x7E)}


def empty_cache(kv, n_kv, d, ctx):
    keys, values = layout.kv_cache_shapes(kv, n_kv, d, ctx)
    stale_k, stale_v = STALE[kv]
    if kv == "f16":  # the bits of float16 values
        return np.full(keys, stale_k, np.uint16).view(np.float16), np.full(
            values, stale_v, np.uint16
        ).view(np.float16)
    dtype = layout.KV_CACHE_TYPES[kv]
    return np.full(keys, stale_k, dtype), np.full(values, stale_v, dtype)


def cache_for(rng, n_kv, d, ctx, start, n, kv="f32"):
    """Caches (kc, vc) of type kv holding random keys and values at positions 0 .. start - 1,
    stale entries (which must not count) past them, and the new (k, v) of positions start.."""
    kc, vc = empty_cache(kv, n_kv, d, ctx)
    old = [rng.standard_normal((start, n_kv, d)).astype(np.float32) for _ in range(2)]
    numpy_tier.store_kv(*old, kc, vc, 0)
    k, v = (rng.standard_normal((n, n_kv, d)).astype(np.float32) for _ in range(2))
    return k, v, kc, vc


def bits(a):
    return a.view(np.uint8)  # NaN bits compare too


@pytest.mark.parametrize("kv", KV_TYPES)
def test_store_kv_layout(kv, rng):
    k, v, kc, vc = cache_for(rng, 2, 32, 48, 0, 0, kv)
    k, v = rng.standard_normal((2, 20, 2, 32)).astype(np.float32)
    before = kc.copy()
    numpy_tier.store_kv(k, v, kc, vc, 13)
    # read back as float32: each position's vector as its type converts it (float16 nearest
    # even, ggml's q8_0 per 32 values), values likewise, and nothing else written
    keys, values = numpy_tier._kv_floats(kc, vc, 33)
    if kv == "q8_0":
        expect = (formats.dequantize("Q8_0", formats.quantize("Q8_0", x), x.shape) for x in (k, v))
    else:
        expect = (x.astype(layout.KV_CACHE_TYPES[kv]).astype(np.float32) for x in (k, v))
    expect_k, expect_v = expect
    np.testing.assert_array_equal(keys[:, 13:33], expect_k.transpose(1, 0, 2))
    np.testing.assert_array_equal(values[:, 13:33], expect_v.transpose(1, 0, 2))
    np.testing.assert_array_equal(bits(kc[:, 0, ..., :13]), bits(before[:, 0, ..., :13]))
    if kv != "q8_0":  # q8_0 blocks are bytes: the positions of block 2 lie across the row
        np.testing.assert_array_equal(bits(kc[:, 2, :, 1:]), bits(before[:, 2, :, 1:]))


ATTENTION_SHAPES = [(1, 0, 4, 2, 64), (1, 40, 9, 3, 64), (7, 0, 20, 5, 128), (5, 11, 4, 4, 48),
                    (33, 2, 8, 1, 8), (3, 30, 6, 2, 96)]  # fmt: skip


@pytest.mark.parametrize("tier", NATIVE_TIERS)
@pytest.mark.parametrize(
    "kv, n, start, heads, n_kv, d",
    [(kv, *s) for kv in KV_TYPES for s in ATTENTION_SHAPES if kv != "q8_0" or s[-1] % 32 == 0],
)
def test_attention_is_causal_softmax_with_grouped_heads(tier, kv, n, start, heads, n_kv, d, rng):
    ctx = 64
    k, v, kc, vc = cache_for(rng, n_kv, d, ctx, start, n, kv)
    q = rng.standard_normal((n, heads, d)).astype(np.float32)
    kc_np, vc_np = kc.copy(), vc.copy()
    # the numpy tier in float64 (q float64) over the same cache entries
    expected = numpy_tier.attention(q.astype(np.float64), k, v, [(kc_np, vc_np, start, n)])
    y = kernels.get("attention", tier)(q, k, v, [(kc, vc, start, n)])
    assert y.shape == (n, heads * d)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=2e-6)
    # the kernel stored the new keys and values as the numpy tier did, bit for bit, and
    # nothing else
    np.testing.assert_array_equal(bits(kc), bits(kc_np))
    np.testing.assert_array_equal(bits(vc), bits(vc_np))


# float16's edges (largest finite, the first value that rounds to inf, ties to even, the
# smallest normal and subnormals, a value that rounds to zero, signed zeros, infinities) and
# q8_0's (ties of x / d away from zero, an all-zero chunk, a chunk of one large value)
F16_EDGES = [65504, 65519, 65520, -65520, 1 + 2**-11, 1 + 3 * 2**-11, 2**-14, 2**-14 - 2**-25,
             6e-8, 2**-25, 2**-26, -(2**-24) * 1.5, 0.0, -0.0, np.inf, -np.inf, 1e38,
             -3e-39]  # fmt: skip
Q8_EDGES = [127, 2.5, -3.5, 0.5, -0.5, 1.5, 126.5, -127] + [0.0] * 32 + [1e30] + [1e-3] * 31


@pytest.mark.parametrize("tier", NATIVE_TIERS)
@pytest.mark.parametrize("kv", ["f16", "q8_0"])
def test_kv_conversion_edges_match_numpy(tier, kv, rng):
    edges = np.array(F16_EDGES if kv == "f16" else Q8_EDGES, np.float32)
    k = rng.standard_normal(96).astype(np.float32)
    k[: edges.size] = edges
    k = np.stack([k, -k[::-1]]).reshape(2, 1, 96)  # two positions
    v = k[::-1].copy()
    kc, vc = empty_cache(kv, 1, 96, 16)
    kc_np, vc_np = kc.copy(), vc.copy()
    q = np.zeros((2, 1, 96), np.float32)
    with np.errstate(over="ignore"):  # to float16's inf, as meant
        numpy_tier.store_kv(k, v, kc_np, vc_np, 5)
        kernels.get("attention", tier)(q, k, v, [(kc, vc, 5, 2)])
    np.testing.assert_array_equal(bits(kc), bits(kc_np))
    np.testing.assert_array_equal(bits(vc), bits(vc_np))


@pytest.mark.parametrize("tier", NATIVE_TIERS)
@pytest.mark.parametrize("kv", KV_TYPES)
def test_attention_of_a_batch_is_each_sequence_alone(tier, kv, rng):
    # (start, rows, ctx) per sequence: decoded tokens and a prompt chunk, caches of other sizes
    shapes = [(40, 1, 48), (0, 9, 16), (5, 1, 64), (70, 20, 96)]
    heads, n_kv, d = 8, 2, 32
    caches = [cache_for(rng, n_kv, d, ctx, start, rows, kv) for start, rows, ctx in shapes]
    q = rng.standard_normal((sum(rows for _, rows, _ in shapes), heads, d)).astype(np.float32)
    attention = kernels.get("attention", tier)
    bounds = np.cumsum([0, *(rows for _, rows, _ in shapes)])
    alone, batch = [], []
    for (k, v, kc, vc), (start, rows, _), a, b in zip(
        caches, shapes, bounds[:-1], bounds[1:], strict=True
    ):
        seq = (kc.copy(), vc.copy(), start, rows)
        alone.append((attention(q[a:b], k, v, [seq]), seq))
        batch.append((kc, vc, start, rows))
    k, v = (np.concatenate([c[i] for c in caches]) for i in (0, 1))
    y = attention(q, k, v, batch)
    np.testing.assert_array_equal(y, np.concatenate([out for out, _ in alone]))
    for (kc, vc, *_), (_, seq) in zip(batch, alone, strict=True):  # each cache as if alone
        np.testing.assert_array_equal(bits(kc), bits(seq[0]))
        np.testing.assert_array_equal(bits(vc), bits(seq[1]))


@pytest.mark.parametrize("tier", NATIVE_TIERS)
@pytest.mark.parametrize(
    "seq, message",
    [
        ((48, 40, 9), "sequence 0"),  # start + rows > ctx
        ((48, -1, 1), "sequence 0"),
        ((40, 0, 1), "sequence 0"),  # ctx not a multiple of 16
        ((48, 0, 10), "sequence 0"),  # more rows than q
        ((48, 0, 5), "hold 5 rows, q has 9"),  # fewer
    ],
)
def test_attention_refuses_a_sequence_that_does_not_fit(tier, seq, message, rng):
    ctx, start, rows = seq
    q = np.zeros((9, 4, 16), np.float32)
    k = v = np.zeros((9, 2, 16), np.float32)
    kc = np.zeros((2, max(ctx // 16, 1), 16, 16), np.float32)
    vc = np.zeros((2, ctx, 16), np.float32)
    with pytest.raises(ValueError, match=message):
        kernels.get("attention", tier)(q, k, v, [(kc, vc, start, rows)])


@pytest.mark.parametrize("tier", NATIVE_TIERS)
@pytest.mark.parametrize(
    "caches",
    [
        ("f16", "f32"),  # keys and values of different types
        ("f64", "f64"),  # a type no cache has
        ("q8_0", "q8_0"),  # q8_0 of d = 16: not whole 32-chunks
        ("q8_0 as f32", "q8_0"),  # q8_0 values, float32 keys of q8_0's byte count
    ],
)
def test_attention_refuses_caches_of_the_wrong_type(tier, caches):
    d, n_kv, ctx = 16, 2, 32
    q = np.zeros((1, 4, d), np.float32)
    k = v = np.zeros((1, n_kv, d), np.float32)
    made = []
    for kv in caches:
        if kv == "f64":
            kc, vc = empty_cache("f32", n_kv, d, ctx)
            made.append((kc.astype(np.float64), vc.astype(np.float64)))
        elif kv == "q8_0 as f32":
            made.append(np.zeros((n_kv, ctx // 16, 17 * d // 4), np.float32))
        else:
            made.append(empty_cache(kv, n_kv, d, ctx))
    kc = made[0][0] if isinstance(made[0], tuple) else made[0]
    vc = made[1][1]
    with pytest.raises(ValueError, match="sequence 0: need caches of one type"):
        kernels.get("attention", tier)(q, k, v, [(kc, vc, 0, 1)])


def test_numpy_attention_matches_the_model_reference(rng):
    from pybitnet.model import reference as model_reference

    n, start, heads, n_kv, d = 6, 3, 6, 2, 16
    k, v, kc, vc = cache_for(rng, n_kv, d, 32, start, n)
    q = rng.standard_normal((n, heads, d))
    y = numpy_tier.attention(q, k, v, [(kc, vc, start, n)])
    keys = kc.transpose(0, 1, 3, 2).reshape(n_kv, 32, d)[:, : start + n].transpose(1, 0, 2)
    values = vc[:, : start + n].transpose(1, 0, 2)
    expected = model_reference.attention(
        q, keys.astype(np.float64), values.astype(np.float64), np.arange(start, start + n)
    )
    np.testing.assert_allclose(y, expected, rtol=1e-5)
