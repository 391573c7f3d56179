import numpy as np
import pytest
from kernel_helpers import NATIVE_TIERS, pack_i2s

from pybitnet import formats, kernels
from pybitnet.errors import FormatError

HAVE_NUMPY_I2S = hasattr(formats, "dequantize")
TIERS = NATIVE_TIERS + (["numpy"] if HAVE_NUMPY_I2S else [])
# Rows that are not whole 128-blocks: I2_S blocks run over the flattened tensor.
SHAPES = [(1, 128), (3, 128), (6, 64), (5, 384), (7, 640), (2560 // 128, 128 * 3), (1, 128 * 37)]


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("shape", SHAPES)
def test_dequant_decodes_every_code(tier, shape, rng):
    codes = rng.integers(0, 3, shape)
    scale = float(rng.uniform(0.01, 3.0))
    out = kernels.get("i2s_dequant", tier)(pack_i2s(codes.ravel(), scale), shape)
    assert out.dtype == np.float32 and out.shape == shape
    expected = (codes - 1).astype(np.float32) * np.float32(scale)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.skipif(not HAVE_NUMPY_I2S, reason="formats.i2_s not written yet")
@pytest.mark.parametrize("tier", NATIVE_TIERS)
def test_native_dequant_equals_numpy(tier, rng):
    shape = (24, 640)
    data = pack_i2s(rng.integers(0, 3, shape).ravel(), -0.75)
    native = kernels.get("i2s_dequant", tier)(data, shape)
    np.testing.assert_array_equal(native, kernels.get("i2s_dequant", "numpy")(data, shape))


@pytest.mark.parametrize("tier", NATIVE_TIERS)
@pytest.mark.parametrize("where", [0, 31, 32, 127, 128 * 5 + 100, 128 * 8 - 1])
def test_code_3_is_rejected(tier, where, rng):
    codes = rng.integers(0, 3, 128 * 8)
    codes[where] = 3
    with pytest.raises(FormatError, match=rf"element {where} has code 3"):
        kernels.get("i2s_dequant", tier)(pack_i2s(codes, 1.0), (8, 128))


@pytest.mark.parametrize("tier", NATIVE_TIERS)
def test_wrong_data_size_is_rejected(tier):
    data = pack_i2s(np.ones(256, np.uint8), 1.0)
    with pytest.raises(FormatError, match="needs 96 bytes, got 95"):
        kernels.get("i2s_dequant", tier)(data[:-1], (2, 128))
