"""The K-quant quantizers (Q4_K, Q5_K, Q6_K) against llama.cpp's reference quantizers, which
the gguf package does not implement: byte for byte on the recorded goldens
(fixtures/kquants/README.md), and sound on any float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pybitnet import formats, kernels
from pybitnet.kernels.quantizers import NATIVE_QUANTIZERS

K_TYPES = ["Q4_K", "Q5_K", "Q6_K"]
GOLDENS = np.load(Path(__file__).parents[1] / "fixtures" / "kquants" / "llama_cpp_ref.npz")
KINDS = [str(k) for k in GOLDENS["kinds"]]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the extremes overflow float16
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", K_TYPES)
def test_quantize_is_llama_cpps_reference_byte_for_byte(name: str, kind: str) -> None:
    values = GOLDENS["inputs"][KINDS.index(kind)].reshape(3, 256)
    expected = GOLDENS[name][KINDS.index(kind)]
    ours = formats.quantize(name, values)
    blocks = formats.weight_type(name).type_size
    differ = np.flatnonzero((ours != expected).reshape(-1, blocks).any(axis=1))
    assert differ.size == 0, f"super-blocks {differ.tolist()} differ"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", list(NATIVE_QUANTIZERS))
def test_native_quantizers_write_the_same_bytes(name: str) -> None:
    """The threaded C++ quantizers against the goldens and the numpy port, on every kind of
    input (zeros, extremes, tiny and huge scales) and on a few thousand random rows."""
    tier = kernels.supported_tiers()[0]
    if tier == "numpy":
        pytest.skip("no native tier in this build")
    inputs = GOLDENS["inputs"].reshape(-1, 256)
    ours = kernels.quantize(name, inputs, tier)
    np.testing.assert_array_equal(ours, GOLDENS[name].reshape(-1))
    rng = np.random.default_rng(3)
    values = rng.standard_normal((300, 512)) * rng.uniform(1e-6, 1e3, (300, 1))
    values[7], values[9, :40] = 0, 0
    values = values.astype(np.float32)
    np.testing.assert_array_equal(
        kernels.quantize(name, values, tier), formats.quantize(name, values)
    )


# Relative RMS error of a round trip of standard normal weights, a little above what the formats
# reach (Q4_K 0.072, Q5_K 0.036, Q6_K 0.018; Q4_0 0.087): a quantizer that lost its scale
# search or its requantization, or mixed up a code's bits, lands far above.
ROUND_TRIP_ERROR = {"Q4_K": 0.08, "Q5_K": 0.04, "Q6_K": 0.02}


@pytest.mark.parametrize("name", K_TYPES)
def test_round_trip_error_is_what_the_format_allows(name: str) -> None:
    rng = np.random.default_rng(7)
    values = rng.standard_normal((16, 1024)).astype(np.float32)
    back = formats.dequantize(name, formats.quantize(name, values), values.shape)
    error = np.sqrt(np.mean((back - values) ** 2) / np.mean(values**2))
    assert error < ROUND_TRIP_ERROR[name]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", K_TYPES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_quantize_takes_any_float32(data: st.DataObject, name: str) -> None:
    # NaN, inf, subnormals, -0: the reference's arithmetic, no exception and no hang
    bits = data.draw(hnp.arrays(np.uint32, (data.draw(st.integers(1, 2)), 256)))
    out = formats.quantize(name, bits.view(np.float32))
    assert out.dtype == np.uint8 and out.size == bits.shape[0] * formats.weight_type(name).type_size
