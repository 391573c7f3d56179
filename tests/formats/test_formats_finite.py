"""formats.check_finite against dequantize: a tensor is refused exactly when one of the values
it decodes to is NaN or infinite (every stored float, value or scale, reaches some value)."""

from __future__ import annotations

import numpy as np
import pytest

from pybitnet import formats
from pybitnet.errors import FormatError

SHAPE = (4, 512)  # whole blocks of every format; > one check chunk of blocks is not needed
NON_FINITE = {2: [0x7C00, 0xFC00, 0x7E00, 0x7C01], 4: [0x7F800000, 0xFF800000, 0x7FC00000]}


def stored(t: formats.WeightType, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)
    return formats.quantize(t, np.sign(x) if t.ternary else x).copy()


@pytest.mark.parametrize("t", formats.TYPES.values(), ids=lambda t: t.name)
def test_refused_exactly_when_a_decoded_value_is_not_finite(t):
    rng = np.random.default_rng(t.id)
    formats.check_finite(t, stored(t, 0), SHAPE)  # a quantized tensor is finite
    for case in range(150):
        data = stored(t, case)
        _, bits, _ = t.codec.floats(data)
        choices = NON_FINITE[bits.itemsize]
        pattern = np.array(choices[rng.integers(len(choices))], bits.dtype)
        if case % 3 == 0:  # a NaN or infinity where the format says it keeps a float
            flat = bits.reshape(len(bits), -1)
            flat[rng.integers(len(flat)), rng.integers(flat.shape[1])] = pattern
        elif case % 3 == 1:  # the same bits anywhere (a float floats() left out would show)
            at = rng.integers(data.size // bits.itemsize) * bits.itemsize
            data[at : at + bits.itemsize] = pattern.reshape(1).view(np.uint8)
        else:  # any byte anywhere
            data[rng.integers(data.size)] = rng.integers(256)
        try:
            with np.errstate(all="ignore"):
                finite = np.isfinite(formats.dequantize(t, data, SHAPE)).all()
        except FormatError:  # the byte made an invalid code (2-bit 3): no values to compare
            continue
        if finite:
            formats.check_finite(t, data, SHAPE)
        else:
            with pytest.raises(FormatError, match=rf"{t.name} tensor \(4, 512\): .* is (NaN|.inf)"):
                formats.check_finite(t, data, SHAPE)


def test_a_large_tensor_is_checked_past_its_first_chunk():
    data = formats.quantize("F16", np.zeros(3_000_000, np.float32)).copy()
    data.view("<u2")[-1] = 0x7E00
    with pytest.raises(FormatError, match="value 2999999 is NaN"):
        formats.check_finite("F16", data, (3_000_000,))
