"""Layout facts shared by Python and C++ (kernels/layout.py, csrc/tiers.h) agree."""

import numpy as np
import pytest

from pybitnet import kernels

native = pytest.importorskip("pybitnet._native", reason="no native build")


def test_key_block_is_the_kernels():
    assert kernels.KEY_BLOCK == native.KEY_BLOCK


def test_kv_cache_layout_is_the_kernels():
    assert kernels.layout.KV_Q8_CHUNK == native.KV_Q8_CHUNK
    native_types = {"f32": 0, "f16": 1, "q8_0": 2}  # csrc/tiers.h KvType
    assert set(native_types) == set(kernels.layout.KV_CACHE_TYPES)
    for kv, native_type in native_types.items():
        for d in (32, 64, 128, 256):
            row = kernels.layout.kv_value_row_bytes(kv, d)
            assert row == native.kv_value_row_bytes(native_type, d)
            keys, values = kernels.layout.kv_cache_shapes(kv, 2, d, 48)
            itemsize = np.dtype(kernels.layout.KV_CACHE_TYPES[kv]).itemsize
            assert np.prod(keys) * itemsize == 2 * 48 * row == np.prod(values) * itemsize
