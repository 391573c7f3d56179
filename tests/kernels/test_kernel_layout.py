"""Layout facts shared by Python and C++ (kernels/layout.py, csrc/tiers.h) agree."""

import pytest

from pybitnet import kernels

native = pytest.importorskip("pybitnet._native", reason="no native build")


def test_key_block_is_the_kernels():
    assert kernels.KEY_BLOCK == native.KEY_BLOCK


def test_ternary_layout_facts_are_the_kernels():
    from pybitnet.kernels import layout

    assert (layout.TILE_ROWS, layout.TRIT_RUN, layout.BASE3_MAX_ROWS) == (
        native.TILE_ROWS,
        native.TRIT_RUN,
        native.BASE3_MAX_ROWS,
    )
