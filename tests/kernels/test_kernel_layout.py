"""Layout facts shared by Python and C++ (kernels/layout.py, csrc/tiers.h) agree."""

import pytest

from pybitnet import kernels

native = pytest.importorskip("pybitnet._native", reason="no native build")


def test_key_block_is_the_kernels():
    assert kernels.KEY_BLOCK == native.KEY_BLOCK
