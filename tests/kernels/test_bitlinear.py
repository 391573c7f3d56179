import numpy as np
import pytest
from kernel_helpers import NATIVE_TIERS

from pybitnet import formats, kernels
from pybitnet.errors import FormatError, PyBitnetError

# (rows, cols): ragged rows (not whole register tiles), ragged columns (not whole 256-groups).
SHAPES = [(1, 1), (3, 100), (4, 128), (17, 256), (33, 300), (64, 640), (65, 1000)]
# Every remainder of the 4-row register tiles; the AMX tier's 16-row activation tiles from 16
# rows on: one tile, a pair, a pair and one more.
BATCHES = [1, 2, 3, 4, 5, 8, 9, 16, 17, 48]


def random_weights(rng, rows, cols, groups):
    codes = rng.integers(-1, 2, (rows, cols)).astype(np.int8)
    scales = rng.uniform(0.01, 2.0, (rows, groups)).astype(np.float32)
    return codes, scales


def random_activations(rng, n, cols):
    x = (rng.standard_normal((n, cols)) * rng.uniform(0.1, 10.0, (n, 1))).astype(np.float32)
    if n > 1:
        x[1] = 0.0  # s_x falls back to 127 / 1e-5
    if n > 2 and cols >= 5:  # s_x = 1: products land on .5, where rint rounds to even
        x[2] = 0.0
        x[2, :5] = [127.0, 0.5, 1.5, -2.5, -0.5]
    return x


def run(tier, x, codes, scales):
    k = kernels.get("bitlinear", tier)
    return k(x, k.prepare(codes, scales))


@pytest.mark.parametrize("tier", NATIVE_TIERS)
@pytest.mark.parametrize("shape", SHAPES)
def test_per_row_scale_equals_numpy_bit_for_bit(tier, shape, rng):
    codes, scales = random_weights(rng, *shape, groups=1)
    for n in BATCHES:
        x = random_activations(rng, n, shape[1])
        y = run(tier, x, codes, scales)
        assert y.dtype == np.float32 and y.shape == (n, shape[0])
        np.testing.assert_array_equal(y, run("numpy", x, codes, scales))


@pytest.mark.parametrize("tier", NATIVE_TIERS)
@pytest.mark.parametrize("shape", [(1, 256), (5, 512), (19, 768), (64, 2560)])
def test_per_block_scales_equal_numpy_to_float32_rounding(tier, shape, rng):
    rows, cols = shape
    codes, scales = random_weights(rng, rows, cols, groups=cols // 256)
    for n in BATCHES:
        x = random_activations(rng, n, cols)
        y = run(tier, x, codes, scales)
        expected = run("numpy", x, codes, scales)
        # The kernel sums d_g * (c_g . x_q) and d_g * sum(x_q) (codes c = w + 1 in 0..2) in
        # float32: its rounding is a few float32 epsilons of the sum of their magnitudes.
        x_q, s_x = kernels.numpy_tier.quantize_activations(x)
        magnitude = 3 * np.abs(x_q).sum(axis=1, keepdims=True) * scales.max() / s_x
        assert np.all(np.abs(y - expected) <= 1e-6 * magnitude)


@pytest.mark.parametrize("groups", [1, 3])
def test_numpy_bitlinear_agrees_with_the_float64_model_reference(groups, rng):
    try:
        from pybitnet.model.reference import bitlinear as float64_bitlinear
    except ImportError as exc:  # the model package needs pybitnet.gguf, written concurrently
        pytest.skip(f"pybitnet.model.reference does not import yet: {exc}")
    codes, scales = random_weights(rng, 40, 768, groups)
    x = random_activations(rng, 6, 768)
    y = run("numpy", x, codes, scales)
    np.testing.assert_allclose(y, float64_bitlinear(x.astype(np.float64), codes, scales), rtol=1e-5)


@pytest.mark.parametrize("tier", NATIVE_TIERS)
@pytest.mark.parametrize("groups, n", [(2, 7), (1, 40)])
def test_result_does_not_depend_on_threads(tier, groups, n, rng, restore_threads):
    codes, scales = random_weights(rng, 301, 512, groups)
    x = random_activations(rng, n, 512)
    results = []
    for n in (1, 2, 3):
        kernels.set_threads(n)
        results.append(run(tier, x, codes, scales))
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


def test_many_short_jobs_from_several_callers(rng, restore_threads):
    """The pool under churn: thousands of short jobs (as decoding makes them), from two Python
    threads at once (kernels release the GIL), with more pool threads than cores, and job sizes
    alternating (a late worker of a small job must not claim a task of the larger next one);
    each job's tasks all run exactly once, or the results would differ."""
    from concurrent.futures import ThreadPoolExecutor

    tier = NATIVE_TIERS[0]
    k = kernels.get("bitlinear", tier)
    jobs = []
    for rows, n in ((67, 5), (1500, 1), (301, 8)):
        codes, scales = random_weights(rng, rows, 256, 1)
        x = random_activations(rng, n, 256)
        jobs.append((x, k.prepare(codes, scales), run(tier, x, codes, scales)))
    kernels.set_threads(3)

    def calls(_):
        return [(k(x, w), expected) for _ in range(300) for x, w, expected in jobs]

    with ThreadPoolExecutor(2) as callers:
        for pairs in callers.map(calls, range(2)):
            for y, expected in pairs:
                np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("tier", [*NATIVE_TIERS, "numpy"])
def test_bad_input_is_rejected(tier, rng):
    k = kernels.get("bitlinear", tier)
    codes, scales = random_weights(rng, 4, 256, 1)
    w = k.prepare(codes, scales)
    with pytest.raises(PyBitnetError, match=r"\(2, 255\) does not fit weights of shape \(4, 256\)"):
        k(np.zeros((2, 255), np.float32), w)
    with pytest.raises(FormatError, match=r"scales of shape \(4, 2\)"):
        k.prepare(codes[:, :200], np.ones((4, 2), np.float32))


@pytest.mark.parametrize("tier", NATIVE_TIERS)
def test_codes_outside_ternary_are_rejected(tier, rng):
    codes, scales = random_weights(rng, 4, 300, 1)
    codes[2, 123] = 2
    with pytest.raises(FormatError, match=r"element 723 \(row 2, column 123\)"):
        kernels.get("bitlinear", tier).prepare(codes, scales)


@pytest.mark.parametrize("fmt", formats.TERNARY)
@pytest.mark.parametrize("tier", NATIVE_TIERS)
def test_weights_read_from_each_ternary_format(fmt, tier, rng):
    wtype = formats.weight_type(fmt)
    w = rng.integers(-1, 2, (48, 512)).astype(np.float32) * rng.uniform(0.5, 2, (48, 1))
    codes, scales = formats.unpack_ternary(wtype, formats.quantize(wtype, w), w.shape)
    x = random_activations(rng, 3, 512)
    y, expected = run(tier, x, codes, scales), run("numpy", x, codes, scales)
    if scales.shape[1] == 1:
        np.testing.assert_array_equal(y, expected)
    else:
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def ternary_file_bytes(rng, wtype, rows, cols):
    """A ternary tensor in `wtype` (random codes; TQ: random float16 block scales)."""
    codes = rng.integers(-1, 2, (rows, cols)).astype(np.float32)
    if wtype == "I2_S":
        return formats.quantize(wtype, codes * 0.75)
    d = rng.uniform(0.5, 1.5, (rows, cols // 256, 1)).astype(np.float16).astype(np.float32)
    return formats.quantize(wtype, (codes.reshape(rows, -1, 256) * d).reshape(rows, cols))


# I2_S: rows of whole 128-blocks (the fast path, incl. a half group) and rows that straddle blocks
PACKED = [
    ("I2_S", 384, [8, 4, 12]),
    ("I2_S", 256, [5, 3]),
    ("I2_S", 200, [16, 32]),
    ("TQ2_0", 512, [8, 5, 7]),
    ("TQ1_0", 256, [8, 3]),
]


@pytest.mark.parametrize("tier", [*NATIVE_TIERS, "numpy"])
@pytest.mark.parametrize("wtype, cols, part_rows", PACKED)
def test_packed_parts_equal_the_unpacked_codes_stacked(tier, wtype, cols, part_rows, rng):
    parts, codes, scales = [], [], []
    for rows in part_rows:
        data = ternary_file_bytes(rng, wtype, rows, cols)
        c, s = formats.unpack_ternary(wtype, data, (rows, cols))
        parts.append((wtype, data, rows))
        codes.append(c)
        scales.append(s)
    k = kernels.get("bitlinear", tier)
    packed = k.prepare_packed(parts, cols, np.concatenate(scales))
    unpacked = k.prepare(np.concatenate(codes), np.concatenate(scales))
    x = random_activations(rng, 3, cols)
    np.testing.assert_array_equal(k(x, packed), k(x, unpacked))


@pytest.mark.parametrize("tier", NATIVE_TIERS)
@pytest.mark.parametrize("wtype", ["I2_S", "TQ2_0"])
def test_packed_code_3_is_a_format_error_naming_the_element(tier, wtype, rng):
    good = ternary_file_bytes(rng, wtype, 4, 256)
    bad = ternary_file_bytes(rng, wtype, 4, 256)
    # bits 1-0: TQ2_0 block 1 byte 4 holds element 256 + 4; I2_S byte 5 holds element 96 + 5
    bad[70 if wtype == "TQ2_0" else 5] |= 0x03
    k = kernels.get("bitlinear", tier)
    element = "260" if wtype == "TQ2_0" else "101"
    with pytest.raises(FormatError, match=f"part 1: element {element} .*code 3"):
        k.prepare_packed([(wtype, good, 4), (wtype, bad, 4)], 256, np.ones((8, 1), np.float32))
