"""One format table on each side of the binding: formats.TYPES (Python) and csrc/formats.h (C++)
must agree, and every table derived from TYPES must follow it."""

import pytest

from pybitnet import formats
from pybitnet.eval.accuracy import TERNARY_PATHS
from pybitnet.kernels.registry import DENSE_FORMATS, OPS

native = pytest.importorskip("pybitnet._native", reason="no native build")


def test_the_cpp_table_is_the_python_table():
    python = [(t.name, t.id, t.block_size, t.type_size, t.ternary) for t in formats.TYPES.values()]
    assert native.format_table() == python
    assert native.I2S_TAIL_BYTES == formats.i2_s.TAIL_BYTES


@pytest.mark.parametrize("t", formats.TYPES.values(), ids=lambda t: t.name)
def test_each_codec_module_agrees_with_its_row(t):
    assert callable(t.codec.quantize) and callable(t.codec.dequantize) and callable(t.codec.floats)
    if t.ternary:
        assert callable(t.codec.unpack) and callable(t.codec.scales)
    assert getattr(t.codec, "BLOCK", t.block_size) == t.block_size
    assert getattr(t.codec, "TYPE_SIZE", t.type_size) == t.type_size


def test_derived_tables_follow_the_format_table():
    file_type = {t.name: t.file_type for t in formats.TYPES.values()}
    assert file_type["I2_S"] == 40 and file_type["TQ2_0"] == 37 and file_type["Q8_0"] == 7
    assert set(TERNARY_PATHS) == {t.name for t in formats.TYPES.values() if t.ternary}
    assert set(DENSE_FORMATS) == {t.name for t in formats.TYPES.values() if not t.ternary}
    assert {f"linear_{name.lower()}" for name in DENSE_FORMATS} <= set(OPS)
