"""I2_S (bitnet.cpp type 36) against vectors built by hand from docs/SPEC.md §2 (the gguf package
cannot read it): byte 32*b + k holds elements 128*b + k, +32, +64, +96 in bits 7-6, 5-4, 3-2,
1-0; code = w + 1; then a float32 scale and 28 bytes of padding."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pybitnet import formats
from pybitnet.errors import FormatError

ZERO_BYTE = 0x55  # four zeros: code 1 (0b01) in each 2-bit field

# 256 elements (two blocks), values in {-0.5, 0, +0.5}; each entry: element -> w, and the
# bytes they give, worked out by hand.
HAND_ELEMENTS = {
    0: 1,  # block 0, byte 0, bits 7-6 = 0b10
    33: -1,  # byte 1, bits 5-4 = 0b00
    66: 1,  # byte 2, bits 3-2 = 0b10
    99: -1,  # byte 3, bits 1-0 = 0b00
    5: 1,
    37: 1,
    69: 1,
    101: 1,  # byte 5 = 0b10101010
    6: -1,
    38: -1,
    70: -1,
    102: -1,  # byte 6 = 0
    159: 1,  # block 1 element 31: byte 63, bits 7-6
    255: -1,  # block 1 element 127: byte 63, bits 1-0
}
HAND_BYTES = {0: 0x95, 1: 0x45, 2: 0x59, 3: 0x54, 5: 0xAA, 6: 0x00, 63: 0x94}


def hand_tensor(scale: float = 0.5) -> tuple[np.ndarray, bytes]:
    values = np.zeros(256, np.float32)
    for k, w in HAND_ELEMENTS.items():
        values[k] = w * scale
    packed = bytes(HAND_BYTES.get(i, ZERO_BYTE) for i in range(64))
    return values, packed + struct.pack("<f", scale) + bytes(28)


@pytest.mark.parametrize("shape", [(256,), (2, 128), (4, 64), (8, 32)])
def test_quantize_hand_built(shape: tuple[int, ...]) -> None:
    # rows need not be whole blocks: the elements are taken flat, row-major
    values, expected = hand_tensor()
    assert formats.quantize("I2_S", values.reshape(shape)).tobytes() == expected


@pytest.mark.parametrize("shape", [(256,), (2, 128), (4, 64)])
def test_dequantize_hand_built(shape: tuple[int, ...]) -> None:
    values, raw = hand_tensor(scale=0.375)
    out = formats.dequantize("I2_S", np.frombuffer(raw, np.uint8), shape)
    assert out.dtype == np.float32 and out.shape == shape
    np.testing.assert_array_equal(out.reshape(-1), values)


def test_dequantize_ignores_padding() -> None:
    values, raw = hand_tensor()
    data = np.frombuffer(raw, np.uint8).copy()
    data[-28:] = 0xFF
    np.testing.assert_array_equal(formats.dequantize("I2_S", data, (256,)), values)


def test_unpack_ternary_hand_built() -> None:
    values, raw = hand_tensor(scale=0.25)
    codes, scales = formats.unpack_ternary("I2_S", np.frombuffer(raw, np.uint8), (4, 64))
    assert codes.dtype == np.int8 and codes.shape == (4, 64)
    np.testing.assert_array_equal(codes.reshape(-1), values / np.float32(0.25))
    assert scales.dtype == np.float32 and scales.shape == (4, 1)
    np.testing.assert_array_equal(scales, np.float32(0.25))


VALID_BYTES = np.array(
    [b for b in range(256) if all((b >> s) & 3 != 3 for s in (0, 2, 4, 6))], np.uint8
)


@settings(max_examples=50, deadline=None)
@given(
    n_blocks=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    scale=st.floats(2.0**-16, 2.0**100, width=32),
)
def test_round_trip_is_exact(n_blocks: int, seed: int, scale: float) -> None:
    rng = np.random.default_rng(seed)
    packed = rng.choice(VALID_BYTES, 32 * n_blocks)
    packed[0] = 0x95  # at least one non-zero weight, so that max|w| is the scale
    data = np.concatenate([packed, np.frombuffer(struct.pack("<f", scale) + bytes(28), np.uint8)])
    shape = (n_blocks, 128)
    values = formats.dequantize("I2_S", data, shape)
    assert set(np.unique(np.abs(values))) <= {0, np.float32(scale)}
    np.testing.assert_array_equal(formats.quantize("I2_S", values), data)


def test_quantize_follows_bitnet_cpp_on_non_ternary_input() -> None:
    # quantize_i2_s: scale = max|x|; |x| < 1e-6 (in double) -> 0, else the sign.
    x = np.zeros(128, np.float32)
    x[:6] = [0.3, -2.0, 1e-7, np.float32(1e-6), 1.0000001e-6, -1e-3]
    # float32(1e-6) is just below 1e-6, so it becomes 0; 1.0000001e-6 becomes +1
    expected = np.zeros(128, np.float32)
    expected[:6] = [2.0, -2.0, 0, 0, 2.0, -2.0]
    data = formats.quantize("I2_S", x)
    np.testing.assert_array_equal(formats.dequantize("I2_S", data, (128,)), expected)


def test_all_zero_tensor() -> None:
    data = formats.quantize("I2_S", np.zeros((2, 128), np.float32))
    assert data.tobytes() == bytes([ZERO_BYTE]) * 64 + bytes(32)


@pytest.mark.parametrize("byte, bits", [(0, 0xC0), (37, 0x30), (63, 0x0C), (64, 0x03)])
def test_code_3_is_rejected_with_its_byte(byte: int, bits: int) -> None:
    _, raw = hand_tensor()
    data = np.frombuffer(raw * 2, np.uint8)[: 128 // 4 * 3 + 32].copy()  # 384 elements
    data[byte] |= bits
    with pytest.raises(FormatError, match=rf"I2_S .*code 3 in byte {byte}\b"):
        formats.dequantize("I2_S", data, (3, 128))
    with pytest.raises(FormatError, match=rf"byte {byte}\b"):
        formats.unpack_ternary("I2_S", data, (3, 128))


@pytest.mark.parametrize("delta", [-1, 1, -32])
def test_wrong_size_is_rejected(delta: int) -> None:
    _, raw = hand_tensor()
    data = np.frombuffer(raw + bytes(max(delta, 0)), np.uint8)[: len(raw) + delta]
    with pytest.raises(FormatError, match=rf"I2_S tensor \(2, 128\) takes 96 bytes.* {96 + delta}"):
        formats.dequantize("I2_S", data, (2, 128))


@pytest.mark.parametrize("shape", [(100,), (3, 100), (2, 96)])
def test_element_count_must_be_whole_blocks(shape: tuple[int, ...]) -> None:
    with pytest.raises(FormatError, match="multiple of 128 elements.*another type"):
        formats.quantize("I2_S", np.ones(shape, np.float32))
    with pytest.raises(FormatError, match="multiple of 128"):
        formats.dequantize("I2_S", np.zeros(64, np.uint8), shape)
