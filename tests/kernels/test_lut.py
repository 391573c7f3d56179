"""The lookup-table BitLinear (bitlinear_tl_avx512): the same integer dot products as the
multiply-add kernel, so with one scale per row the same float32 results bit for bit."""

import numpy as np
import pytest
from kernel_helpers import NATIVE_TIERS

from pybitnet import formats, kernels
from pybitnet.errors import FormatError, PyBitnetError

pytestmark = pytest.mark.skipif("avx512" not in NATIVE_TIERS, reason="needs the avx512 tier")

# rows: not whole 128-row tiles (1, 129, 300); cols: not whole 256-blocks or 3-column groups
SHAPES = [(1, 1), (5, 100), (129, 256), (300, 640), (64, 1000), (256, 2560)]
BATCHES = [1, 3, 17, 128]


def codes_and_scales(rng, rows, cols, groups):
    codes = rng.integers(-1, 2, (rows, cols)).astype(np.int8)
    return codes, rng.uniform(0.01, 2.0, (rows, groups)).astype(np.float32)


def activations(rng, n, cols):
    x = (rng.standard_normal((n, cols)) * rng.uniform(0.1, 10.0, (n, 1))).astype(np.float32)
    if n > 1:
        x[1] = 0.0  # an all-zero row
    if n > 2:  # +-max|x| everywhere: x_q = +-127 in every column, the largest table sums
        x[2] = np.where(rng.random(cols) < 0.5, -3.0, 3.0)
    return x


def run(kernel_id, x, codes, scales):
    k = kernels.get(*kernel_id.rsplit("_", 1))
    return k(x, k.prepare(codes, scales))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", BATCHES)
def test_equals_numpy_and_multiply_add_bit_for_bit(shape, n, rng):
    codes, scales = codes_and_scales(rng, *shape, 1)
    x = activations(rng, n, shape[1])
    y = run("bitlinear_tl_avx512", x, codes, scales)
    np.testing.assert_array_equal(y, run("bitlinear_numpy", x, codes, scales))
    np.testing.assert_array_equal(y, run("bitlinear_avx512", x, codes, scales))


def test_worst_case_sums_are_exact(rng):
    # Every weight +1 (or -1) against x_q = 127: each block's int16 sum is at its largest.
    codes = np.ones((130, 2560), np.int8)
    codes[1::2] = -1
    x = np.full((3, 2560), 5.0, np.float32)
    x[1] = -5.0
    y = run("bitlinear_tl_avx512", x, codes, np.ones((130, 1), np.float32))
    np.testing.assert_array_equal(y[:, 0], [12800.0, -12800.0, 12800.0])  # W . x = 2560 * 5
    np.testing.assert_array_equal(
        y, run("bitlinear_numpy", x, codes, np.ones((130, 1), np.float32))
    )


@pytest.mark.parametrize("n", [1, 17])
def test_per_block_scales_equal_numpy_to_float32_rounding(n, rng):
    codes, scales = codes_and_scales(rng, 200, 768, 3)
    x = activations(rng, n, 768)
    y, expected = (
        run("bitlinear_tl_avx512", x, codes, scales),
        run("bitlinear_numpy", x, codes, scales),
    )
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("fmt", ["I2_S", "TQ1_0", "TQ2_0"])
def test_weights_read_from_each_ternary_format(fmt, rng):
    wtype = formats.weight_type(fmt)
    rows, cols = 160, 512
    w = rng.integers(-1, 2, (rows, cols)).astype(np.float32)
    if fmt != "I2_S":  # TQ: a float16 scale per 256-block
        w = w * rng.uniform(0.5, 1.5, (rows, cols // 256)).repeat(256, 1).astype(np.float16)
    data = formats.quantize(wtype, w * np.float32(0.75))
    codes, scales = formats.unpack_ternary(wtype, data, (rows, cols))
    tl = kernels.get("bitlinear_tl", "avx512")
    packed = tl.prepare_packed([(fmt, data, rows)], cols, scales)
    x = activations(rng, 17, cols)
    y, expected = tl(x, packed), run("bitlinear_numpy", x, codes, scales)
    if scales.shape[1] == 1:
        np.testing.assert_array_equal(y, expected)
        np.testing.assert_array_equal(y, run("bitlinear_avx512", x, codes, scales))
    else:
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_result_does_not_depend_on_threads(rng, restore_threads):
    codes, scales = codes_and_scales(rng, 700, 512, 1)
    x = activations(rng, 40, 512)
    results = []
    for threads in (1, 2, 3):
        kernels.set_threads(threads)
        results.append(run("bitlinear_tl_avx512", x, codes, scales))
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


def test_bad_input_is_rejected(rng):
    codes, scales = codes_and_scales(rng, 8, 256, 1)
    tl = kernels.get("bitlinear_tl", "avx512")
    with pytest.raises(PyBitnetError, match="does not fit"):
        tl(np.zeros((2, 255), np.float32), tl.prepare(codes, scales))
    with pytest.raises(PyBitnetError, match="its own prepare"):
        tl(
            np.zeros((2, 256), np.float32),
            kernels.get("bitlinear", "avx512").prepare(codes, scales),
        )
    codes[3, 7] = 2
    with pytest.raises(FormatError, match=r"element 775 \(row 3, column 7\)"):
        tl.prepare(codes, scales)


def test_other_tiers_have_no_lookup_table_kernel():
    with pytest.raises(PyBitnetError, match="avx512 tier only"):
        kernels.get("bitlinear_tl", "scalar")
    assert "bitlinear_tl_avx512" in kernels.registry.known_ids()
