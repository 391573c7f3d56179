"""The peer fixtures (tests/fixtures/peers) encode the same weights in every file: tensors read
with the gguf package's reader and decoded by pybitnet.formats must equal the F32 file's."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from pybitnet import formats

PEERS = Path(__file__).parents[1] / "fixtures" / "peers"


def read(name: str) -> dict[str, tuple[str, np.ndarray, tuple[int, ...]]]:
    """tensor name -> (type name, raw bytes, numpy shape) as gguf.GGUFReader sees them."""
    reader = gguf.GGUFReader(PEERS / f"bitnet-tiny-s1-{name}.gguf")
    return {
        t.name: (
            t.tensor_type.name,
            t.data.view(np.uint8).reshape(-1),
            tuple(int(d) for d in reversed(t.shape)),
        )
        for t in reader.tensors
    }


@pytest.fixture(scope="module")
def f32_tensors() -> dict[str, np.ndarray]:
    return {
        name: data.view(np.float32).reshape(shape) for name, (_, data, shape) in read("f32").items()
    }


@pytest.mark.parametrize("fixture, ternary", [("tq2_0", "TQ2_0"), ("tq1_0", "TQ1_0")])
def test_every_tensor_equals_the_f32_file(
    fixture: str, ternary: str, f32_tensors: dict[str, np.ndarray]
) -> None:
    tensors = read(fixture)
    assert tensors.keys() == f32_tensors.keys()
    types = {wtype for wtype, _, _ in tensors.values()}
    assert types == {ternary, "F16", "F32"}
    for name, (wtype, data, shape) in tensors.items():
        np.testing.assert_array_equal(
            formats.dequantize(wtype, data, shape), f32_tensors[name], err_msg=name
        )
        if wtype == ternary:
            codes, scales = formats.unpack_ternary(wtype, data, shape)
            rows = codes.shape[0]
            rebuilt = codes.reshape(rows, scales.shape[1], -1) * scales[..., None]
            np.testing.assert_array_equal(rebuilt.reshape(shape), f32_tensors[name], err_msg=name)


def test_scale_tensor_file_times_its_scales_equals_the_f32_file(
    f32_tensors: dict[str, np.ndarray],
) -> None:
    # pure ternary TQ2_0 weights, each with an F32 [1] `.scale` tensor that multiplies it
    tensors = read("tq2_0-scaletensors")
    n_ternary = 0
    for name, (wtype, data, shape) in tensors.items():
        if wtype != "TQ2_0":
            continue
        n_ternary += 1
        _, scale, _ = tensors[name.removesuffix(".weight") + ".scale"]
        values = formats.dequantize(wtype, data, shape) * scale.view(np.float32)
        np.testing.assert_array_equal(values, f32_tensors[name], err_msg=name)
    assert n_ternary == 4 * 7
