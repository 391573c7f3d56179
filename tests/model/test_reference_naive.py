"""The float64 ReferenceModel against the naive float64 decoder (tests/helpers/naive_bitnet.py,
plain loops written from docs/SPEC.md §1) on synthetic `bitnet` and `bitnet-b1.58` models.

Both compute the same function in float64, so they agree to rounding: the bound is relative to
the size of the logits, max |ReferenceModel - NaiveBitnet| <= 1e-6 * max |NaiveBitnet|
(measured: about 1e-15). A rounding flip of an int8 activation would show as ~1e-2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers.naive_bitnet import NaiveBitnet
from pybitnet.convert.synthetic import make_model
from pybitnet.generate import Model
from pybitnet.model import ReferenceModel

REL_TOL = 1e-6
# GQA (4 heads, 2 kv heads); rows of 256 and 512 elements, so TQ1_0/TQ2_0 blocks fit
SHAPE = dict(vocab=300, dim=256, layers=2, heads=4, kv_heads=2, ffn=512, ctx=64, seed=5)
CASES = [
    ("bitnet", "I2_S", "F16"),
    ("bitnet", "TQ2_0", "F32"),
    ("bitnet", "TQ1_0", "Q8_0"),
    ("bitnet-b1.58", "I2_S", "F16"),
    ("bitnet-b1.58", "TQ2_0", "BF16"),
    ("bitnet-b1.58", "TQ1_0", "F16"),
]
TOKENS = np.random.default_rng(1).integers(0, SHAPE["vocab"], 10).tolist()


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def reference_logits(path: Path) -> np.ndarray:
    """A prompt of 6 tokens, then the rest one at a time through the same cache."""
    ref = ReferenceModel(Model(path).weights)
    cache = ref.new_cache()
    steps = [ref.forward(TOKENS[:6], cache), *(ref.forward([t], cache) for t in TOKENS[6:])]
    return np.concatenate(steps)


@pytest.mark.parametrize(("arch", "wtype", "etype"), CASES)
def test_reference_matches_the_naive_decoder(tmp_path, arch, wtype, etype):
    path = make_model(tmp_path / "m.gguf", arch=arch, weight_type=wtype, embd_type=etype, **SHAPE)
    naive = NaiveBitnet(path)
    assert naive.relu2 == (arch == "bitnet-b1.58") and naive.sub_norms
    want = naive.logits(TOKENS)
    assert relative_error(reference_logits(path), want) <= REL_TOL


def test_the_comparison_tells_the_activations_apart(tmp_path):
    """The same seed gives the same tensors in both archs: only the FFN activation differs, and
    it moves the logits by far more than the tolerance."""
    silu, relu2 = (
        make_model(tmp_path / f"{arch}.gguf", arch=arch, **SHAPE)
        for arch in ("bitnet", "bitnet-b1.58")
    )
    assert relative_error(reference_logits(relu2), NaiveBitnet(silu).logits(TOKENS)) > 1e-2
