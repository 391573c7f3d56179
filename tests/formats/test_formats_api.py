"""The checked entry points of pybitnet.formats: dispatch, sizes, errors, unpack_ternary and
ternarize_absmean."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pybitnet import formats
from pybitnet.errors import FormatError

ALL_TYPES = [t.name for t in formats.TYPES.values()]
TERNARY = ["TQ1_0", "TQ2_0", "I2_S"]


def sample(name: str, shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(values, their bytes in ``name``): ternary x a float16 scale."""
    rng = np.random.default_rng(seed)
    values = rng.integers(-1, 2, shape).astype(np.float32) * np.float32(0.375)
    return values, formats.quantize(name, values)


@pytest.mark.parametrize("name", ALL_TYPES)
def test_quantize_gives_tensor_nbytes_and_round_trips(name: str) -> None:
    values, data = sample(name, (3, 512))
    t = formats.weight_type(name)
    assert data.dtype == np.uint8 and data.shape == (formats.tensor_nbytes(t, 512, 3 * 512),)
    out = formats.dequantize(name, data, (3, 512))
    assert out.dtype == np.float32 and out.shape == (3, 512)
    if not name.startswith("Q"):  # Q*: d = s/127, -s/8, 2s/15 are rounded to float16
        np.testing.assert_array_equal(out, values)


@pytest.mark.parametrize("name", ALL_TYPES)
def test_empty_tensor(name: str) -> None:
    data = formats.quantize(name, np.zeros((0, 256), np.float32))
    assert data.size == (32 if name == "I2_S" else 0)
    assert formats.dequantize(name, data, (0, 256)).shape == (0, 256)


@pytest.mark.parametrize("name", ALL_TYPES)
@pytest.mark.parametrize("delta", [-1, 1])
def test_wrong_data_size_names_type_shape_and_sizes(name: str, delta: int) -> None:
    _, data = sample(name, (2, 256))
    bad = np.resize(data, data.size + delta)
    message = rf"{name} tensor \(2, 256\) takes {data.size} bytes, but the data has {bad.size}"
    with pytest.raises(FormatError, match=message):
        formats.dequantize(name, bad, (2, 256))


@pytest.mark.parametrize("name", ALL_TYPES)
def test_dequantize_reads_an_unaligned_slice_of_a_larger_buffer(name: str) -> None:
    _, data = sample(name, (2, 256))
    values = formats.dequantize(name, data, (2, 256)).copy()
    buffer = np.zeros(data.size + 7, np.uint8)
    buffer[3 : 3 + data.size] = data  # like a tensor at an odd offset in an mmap
    view = buffer[3 : 3 + data.size]
    np.testing.assert_array_equal(formats.dequantize(name, view, (2, 256)), values)


def test_f32_dequantize_is_zero_copy() -> None:
    _, data = sample("F32", (4, 8))
    assert np.shares_memory(formats.dequantize("F32", data, (4, 8)), data)


def test_type_may_be_given_as_weight_type_id_name_or_numpy_int() -> None:
    _, data = sample("Q4_1", (2, 64))
    values = formats.dequantize("Q4_1", data, (2, 64))
    for key in (formats.weight_type("Q4_1"), 3, "q4_1", np.uint32(3)):
        np.testing.assert_array_equal(formats.dequantize(key, data, (2, 64)), values)
        np.testing.assert_array_equal(formats.quantize(key, values), data)


@pytest.mark.parametrize("key", [37, 39, "Q5_0", "I2"])
def test_unknown_types_are_refused(key: int | str) -> None:
    with pytest.raises(FormatError, match="unknown weight type"):
        formats.dequantize(key, np.zeros(64, np.uint8), (64,))


@pytest.mark.parametrize(
    "data", [np.zeros(16, np.float32), np.zeros(64, np.int8), b"\0" * 64], ids=repr
)
def test_data_must_be_uint8(data: object) -> None:
    with pytest.raises(FormatError, match="must be a uint8 array"):
        formats.dequantize("F32", data, (16,))  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(-1, 64), (-2, -32), (2, -32)])
def test_negative_dimensions_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(FormatError, match="negative"):
        formats.dequantize("F32", np.zeros(256, np.uint8), shape)


@pytest.mark.parametrize(
    "name, shape",
    [
        ("TQ1_0", (4, 128)),
        ("TQ2_0", (2, 300)),
        ("Q8_0", (3, 33)),
        ("Q4_0", (40,)),
        ("I2_S", (3, 100)),
    ],
)
def test_quantize_refuses_shapes_the_type_cannot_hold(name: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(FormatError, match=rf"shape \({shape[0]},.*{name}.*another type"):
        formats.quantize(name, np.ones(shape, np.float32))


@pytest.mark.parametrize("name", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_unpack_ternary_refuses_non_ternary_types(name: str) -> None:
    _, data = sample(name, (2, 256))
    with pytest.raises(FormatError, match=f"{name} is not a ternary type.*TQ1_0, TQ2_0, I2_S"):
        formats.unpack_ternary(name, data, (2, 256))
    with pytest.raises(FormatError, match=f"{name} is not a ternary type"):
        formats.ternary_scales(name, data, (2, 256))


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(TERNARY),
    rows=st.integers(1, 5),
    n_blocks=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_unpack_ternary_rebuilds_dequantize(name: str, rows: int, n_blocks: int, seed: int) -> None:
    # scales per 256-block (TQ) or per tensor (I2_S): sum_g scales[r, g] * codes[r, g-block]
    rng = np.random.default_rng(seed)
    ne0 = 256 * n_blocks
    codes = rng.integers(-1, 2, (rows, ne0)).astype(np.float32)
    codes[:, ::256] = -1  # every block reaches its scale
    if name == "I2_S":
        scale = np.full((rows, n_blocks), rng.uniform(0.1, 2), np.float32)
    else:
        scale = rng.uniform(0.1, 2, (rows, n_blocks)).astype(np.float16).astype(np.float32)
    values = (codes.reshape(rows, n_blocks, 256) * scale[..., None]).reshape(rows, ne0)
    data = formats.quantize(name, values)

    got_codes, got_scales = formats.unpack_ternary(name, data, (rows, ne0))
    assert got_codes.dtype == np.int8 and got_codes.shape == (rows, ne0)
    assert got_scales.dtype == np.float32
    assert got_scales.shape == ((rows, 1) if name == "I2_S" else (rows, n_blocks))
    np.testing.assert_array_equal(got_codes, codes)
    groups = got_scales.shape[1]
    rebuilt = got_codes.reshape(rows, groups, -1) * got_scales[..., None]
    np.testing.assert_array_equal(rebuilt.reshape(rows, ne0), values)
    np.testing.assert_array_equal(formats.dequantize(name, data, (rows, ne0)), values)
    np.testing.assert_array_equal(formats.ternary_scales(name, data, (rows, ne0)), got_scales)


def test_tq2_0_unpack_rejects_code_3_with_its_byte() -> None:
    _, data = sample("TQ2_0", (2, 256))
    data[66 + 5] |= 0x30  # block 1, qs byte 5, bits 5-4
    with pytest.raises(FormatError, match=r"TQ2_0 .*code 3 in byte 71\b"):
        formats.unpack_ternary("TQ2_0", data, (2, 256))


def test_ternarize_absmean_by_hand() -> None:
    # mean|W| = 0.5625: W / s = 0.89, -2.67, 0.44, 0
    t, s = formats.ternarize_absmean(np.array([0.5, -1.5, 0.25, 0.0]))
    assert t.dtype == np.int8 and isinstance(s, np.float32)
    assert s == np.float32(0.5625)
    assert t.tolist() == [1, -1, 0, 0]


def test_ternarize_absmean_rounds_ties_to_even() -> None:
    # mean|W| = 2: W / s = 0.5, -0.5, 1.5, -1.5, 2.5 -> 0, 0, 2 -> 1, -2 -> -1, 2 -> 1
    t, s = formats.ternarize_absmean(np.array([[1, -1, 3, -3, 4, 0]], np.float32))
    assert s == 2 and t.shape == (1, 6)
    assert t.tolist() == [[0, 0, 1, -1, 1, 0]]


def test_ternarize_absmean_floor_on_the_scale() -> None:
    t, s = formats.ternarize_absmean(np.array([0.0, 0.0, 3e-6, -1e-5], np.float32))
    assert s == np.float32(1e-5)
    assert t.tolist() == [0, 0, 0, -1]


@pytest.mark.parametrize("w", [np.zeros(0), np.array([1.0, np.nan]), np.array([np.inf, 1.0])])
def test_ternarize_absmean_refuses_empty_or_non_finite(w: np.ndarray) -> None:
    with pytest.raises(FormatError, match="cannot ternarize"):
        formats.ternarize_absmean(w)


@pytest.mark.parametrize("name", ["TQ2_0", "I2_S"])
def test_bitnet_2b_sized_tensor_dequantizes_like_its_unpacked_codes(name: str) -> None:
    # ffn_down of bitnet-b1.58-2B-4T: (2560, 6912); built from random valid bytes, not quantize
    shape = (2560, 6912)
    rng = np.random.default_rng(0)
    nbytes = formats.tensor_nbytes(formats.weight_type(name), shape[1], shape[0] * shape[1])
    data = (rng.integers(0, 3, nbytes, dtype=np.uint8) * 0x15).astype(np.uint8)  # codes 0..2
    if name == "TQ2_0":
        data.reshape(-1, 66)[:, 64:] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    else:
        data[-32:] = 0
        data[-32:-28] = np.frombuffer(np.float32(0.01).tobytes(), np.uint8)
    values = formats.dequantize(name, data, shape)
    codes, scales = formats.unpack_ternary(name, data, shape)
    groups = scales.shape[1]
    expanded = np.repeat(scales, shape[1] // groups, axis=1)
    assert np.array_equal(values, codes * expanded)
