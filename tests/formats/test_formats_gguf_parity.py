"""F32 .. TQ2_0 against the gguf package (gguf.quants), the reference kept with llama.cpp:
quantize must give the same bytes and dequantize the same float32 bits. The gguf package
dequantizes the K-quants but does not quantize them: their quantizers are held to llama.cpp's
in test_formats_kquants.py."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pybitnet import formats

# Values beyond float16's range round to inf (d = inf in a block), and inf * 0 = NaN, in ggml
# as here: the numpy warnings about it are expected.
pytestmark = [
    pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

BLOCK_TYPES = ["Q8_0", "Q4_0", "Q4_1", "TQ1_0", "TQ2_0"]
K_TYPES = ["Q4_K", "Q5_K", "Q6_K"]  # dequantize only
FLOAT_TYPES = ["F32", "F16", "BF16"]
KINDS = ["normal", "zeros", "equal", "halves", "ternary", "extremes", "tiny"]
EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def gguf_quantize(name: str, values: np.ndarray) -> np.ndarray:
    out = gguf.quants.quantize(values, GGMLQuantizationType[name])
    return np.ascontiguousarray(out).view(np.uint8).reshape(-1)


def gguf_dequantize(name: str, data: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    out = gguf.quants.dequantize(data.reshape(shape[0], -1), GGMLQuantizationType[name])
    return np.asarray(out, np.float32)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal float32 bit patterns: signed zeros and NaN payloads count."""
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@st.composite
def shapes(draw: st.DrawFn, name: str, max_rows: int = 4) -> tuple[int, int]:
    """Several rows of 1..3 blocks (float types: rows of 1..70 elements)."""
    block = formats.weight_type(name).block_size
    rows = draw(st.integers(1, max_rows))
    if block == 1:
        return rows, draw(st.integers(1, 70))
    return rows, block * draw(st.integers(1, 3))


@st.composite
def tensors(draw: st.DrawFn, name: str, kind: str) -> np.ndarray:
    """float32 values of a ``kind`` (KINDS) chosen to hit the quantizers' edge cases."""
    shape = draw(shapes(name))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    block = formats.weight_type(name).block_size
    group = block if block > 1 else shape[1]  # a block, or a row for the float types
    if kind == "normal":  # any magnitude, a fresh one per row
        x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-6, 6, (shape[0], 1))
    elif kind == "zeros":  # whole zero blocks: d = 0, 1/d must not be used
        x = rng.standard_normal(shape) * (rng.random((shape[0], 1)) < 0.5)
    elif kind == "equal":  # every block constant
        x = np.repeat(rng.standard_normal(shape[0] * shape[1] // group), group).reshape(shape)
    elif kind == "halves":  # multiples of 1/2 with small maxima: x / d lands on .5 ties
        x = rng.integers(-32, 33, shape) / 2.0 * 2.0 ** rng.integers(-2, 3)
    elif kind == "ternary":  # ternary times a float16 scale, with some +-scale/2 ties
        scale = np.float16(rng.uniform(0.01, 2))
        x = rng.integers(-1, 2, shape) * np.float32(scale)
        x[rng.random(shape) < 0.05] = np.float32(scale) / 2
    elif kind == "extremes":  # the float16 limits (d overflows) and larger
        picks = [65504.0, -65504.0, 65520.0, -1e30, 1e30, 1e5, -1e5]
        x = rng.standard_normal(shape)
        mask = rng.random(shape) < 0.2
        x[mask] = rng.choice(picks, int(mask.sum()))
    else:  # tiny: float16 subnormals and below
        x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-30, -5, (shape[0], 1))
    return np.asarray(x, np.float32)


def check_quantize(name: str, values: np.ndarray) -> None:
    ours = formats.quantize(name, values)
    assert ours.dtype == np.uint8 and ours.ndim == 1
    np.testing.assert_array_equal(ours, gguf_quantize(name, values))


def check_dequantize(name: str, data: np.ndarray, shape: tuple[int, int]) -> None:
    assert same_bits(formats.dequantize(name, data, shape), gguf_dequantize(name, data, shape))


def random_bytes(draw: st.DrawFn, name: str) -> tuple[np.ndarray, tuple[int, int]]:
    shape = draw(shapes(name))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = formats.tensor_nbytes(formats.weight_type(name), shape[1], shape[0] * shape[1])
    return rng.integers(0, 256, n, dtype=np.uint8), shape


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", BLOCK_TYPES + FLOAT_TYPES)
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_quantize_matches_gguf(data: st.DataObject, name: str, kind: str) -> None:
    check_quantize(name, data.draw(tensors(name, kind)))


@pytest.mark.parametrize("name", BLOCK_TYPES)
@EXAMPLES
@given(data=st.data())
def test_quantize_matches_gguf_on_hypothesis_arrays(data: st.DataObject, name: str) -> None:
    # Hypothesis fills arrays with a repeated value and sprinkles others: equal blocks, lone
    # extremes, float32 subnormals next to normal values. Block maxima stay above 2**-100: below
    # ~3e-39, 1/d overflows and ggml's float -> int conversion is undefined.
    big, tiny = 2.0**100, 2.0**-100
    elements = st.floats(-big, big, width=32).filter(lambda v: v == 0 or abs(v) > tiny)
    values = data.draw(hnp.arrays(np.float32, shapes(name, max_rows=2), elements=elements))
    check_quantize(name, values)


@pytest.mark.parametrize("name", FLOAT_TYPES)
@EXAMPLES
@given(data=st.data())
def test_float_types_match_gguf_on_any_float32(data: st.DataObject, name: str) -> None:
    # every float32 bit pattern: NaN (quiet and signalling), inf, subnormals, -0
    bits = data.draw(hnp.arrays(np.uint32, shapes(name)))
    check_quantize(name, bits.view(np.float32))


@pytest.mark.parametrize("name", BLOCK_TYPES + K_TYPES + FLOAT_TYPES)
@EXAMPLES
@given(data=st.data())
def test_dequantize_matches_gguf_on_random_bytes(data: st.DataObject, name: str) -> None:
    # any bytes, including NaN / inf scales and TQ2_0's unused code 3 (ggml reads it as +2)
    check_dequantize(name, *random_bytes(data.draw, name))


@pytest.mark.parametrize("name", BLOCK_TYPES + FLOAT_TYPES)
@EXAMPLES
@given(data=st.data(), kind=st.sampled_from(KINDS))
def test_dequantize_of_quantized_matches_gguf(data: st.DataObject, name: str, kind: str) -> None:
    values = data.draw(tensors(name, kind))
    check_dequantize(name, gguf_quantize(name, values), values.shape)


@pytest.mark.parametrize("name", K_TYPES)
@EXAMPLES
@given(data=st.data(), kind=st.sampled_from(KINDS))
def test_dequantize_of_our_k_quants_matches_gguf(data: st.DataObject, name: str, kind: str) -> None:
    values = data.draw(tensors(name, kind))
    check_dequantize(name, formats.quantize(name, values), values.shape)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), name=st.sampled_from(["TQ1_0", "TQ2_0"]))
def test_ternary_round_trip_is_exact(seed: int, name: str) -> None:
    # ternary x a float16 scale per block, with the scale reached in every block
    rng = np.random.default_rng(seed)
    codes = rng.integers(-1, 2, (3, 512)).astype(np.float32)
    codes[:, ::256] = 1
    scales = rng.uniform(0.01, 4, (3, 2)).astype(np.float16).astype(np.float32)
    values = (codes.reshape(3, 2, 256) * scales[..., None]).reshape(3, 512)
    data = formats.quantize(name, values)
    np.testing.assert_array_equal(formats.dequantize(name, data, values.shape), values)
