"""The base-3 layout (1.6 bits a weight; csrc/tiers.h, kernels/layout.py): every tier decodes it
to the same codes as the 2-bit layout, so BitLinear's results are the same bit for bit, and the
native stream is the numpy model's, byte for byte."""

import numpy as np
import pytest
from kernel_helpers import NATIVE_TIERS
from test_bitlinear import random_activations, random_weights, ternary_file_bytes

from pybitnet import formats, kernels
from pybitnet.kernels import layout

native = pytest.importorskip("pybitnet._native", reason="no native build")

DECODING = layout.BASE3_MAX_ROWS  # the activation rows up to which BitLinear reads base 3


def both_layouts(tier, codes, scales):
    k = kernels.get("bitlinear", tier)
    return k, k.prepare(codes, scales, base3=False), k.prepare(codes, scales, base3=True)


def all_bytes_codes():
    """243 rows of 320 columns: row v's 64 bytes all encode V = v, so together the rows hold
    every byte the layout can (each column 64 k + j holds digit k of v, most significant first)."""
    digits = (np.arange(243)[:, None] // 3 ** np.arange(4, -1, -1)) % 3  # (243, 5)
    return (np.repeat(digits, 64, axis=1) - 1).astype(np.int8)


@pytest.mark.parametrize("tier", NATIVE_TIERS)
def test_every_byte_of_the_layout_decodes_on_every_tier(tier, rng):
    codes = all_bytes_codes()
    stream = layout.pack_base3(codes)
    assert len(np.unique(stream)) == 243
    scales = rng.uniform(0.5, 2.0, (243, 1)).astype(np.float32)
    # positive: a code decoded wrong changes its row's result (the same error at all 64 bytes)
    x = rng.integers(1, 4, (DECODING, 320)).astype(np.float32)
    k, two_bit, base3 = both_layouts(tier, codes, scales)
    y = k(x, base3)
    np.testing.assert_array_equal(y, k(x, two_bit))
    np.testing.assert_array_equal(
        y, kernels.get("bitlinear", "numpy")(x, two_bit_numpy(codes, scales))
    )


def two_bit_numpy(codes, scales):
    return kernels.get("bitlinear", "numpy").prepare(codes, scales)


# (rows, cols, scales a row): ragged tiles and runs; per 256-block, runs straddling blocks
CASES = [(1, 1, 1), (3, 100, 1), (33, 300, 1), (65, 1000, 1), (17, 256, 1), (17, 512, 2)]
CASES += [(8, 6912, 1), (8, 6912, 27), (5, 1280, 5), (19, 768, 3)]


@pytest.mark.parametrize("tier", NATIVE_TIERS)
@pytest.mark.parametrize("rows, cols, groups", CASES)
def test_base3_results_equal_the_2bit_layouts_bit_for_bit(tier, rows, cols, groups, rng):
    codes, scales = random_weights(rng, rows, cols, groups)
    k, two_bit, base3 = both_layouts(tier, codes, scales)
    for n in (1, DECODING, DECODING + 1, 5):
        x = random_activations(rng, n, cols)
        np.testing.assert_array_equal(k(x, base3), k(x, two_bit))


@pytest.mark.parametrize("shape", [(1, 1), (4, 320), (5, 321), (33, 1000)])
def test_the_native_stream_is_the_numpy_model(shape, rng):
    codes, scales = random_weights(rng, *shape, groups=1)
    w = native.TernaryMatrix(codes, scales, base3=True)
    stream = np.frombuffer(w.stream(DECODING), np.uint8)
    np.testing.assert_array_equal(stream, layout.pack_base3(codes))
    np.testing.assert_array_equal(layout.unpack_base3(stream, *shape), codes)
    two_bit = native.TernaryMatrix(codes, scales, base3=False)
    assert not two_bit.has_base3 and w.has_base3
    assert w.nbytes == two_bit.nbytes + stream.size
    assert len(w.stream(DECODING + 1)) == len(two_bit.stream(DECODING))  # batches read 2-bit


@pytest.mark.parametrize("tier", [*NATIVE_TIERS, "numpy"])
def test_packed_file_parts_keep_base3_too(tier, rng):
    parts, codes, scales = [], [], []
    for wtype, rows in (("TQ1_0", 8), ("TQ2_0", 5)):
        data = ternary_file_bytes(rng, wtype, rows, 512)
        c, s = formats.unpack_ternary(wtype, data, (rows, 512))
        parts.append((wtype, data, rows))
        codes.append(c)
        scales.append(s)
    k = kernels.get("bitlinear", tier)
    scales = np.concatenate(scales)
    packed = k.prepare_packed(parts, 512, scales, base3=True)
    x = random_activations(rng, DECODING, 512)
    np.testing.assert_array_equal(k(x, packed), k(x, k.prepare(np.concatenate(codes), scales)))
