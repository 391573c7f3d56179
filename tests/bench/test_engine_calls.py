"""verify's expected BitLinear calls per forward pass are the engine's real ones.

verify reads the expectation from the engine (engine.forward.bitlinear_calls_per_pass); this
runs the engine's forward pass under kernels.profile() on small synthetic models, so that a
change to how the engine stacks its layers that the count does not follow fails here, not in
every real receipt's verification.
"""

from __future__ import annotations

import pytest

from pybitnet import formats, generate, kernels
from pybitnet.bench import verify as v
from pybitnet.bench.provenance import model_info
from pybitnet.convert.synthetic import make_model

# (arch, linear type): every ternary type, with and without sub-norms; and a model without
# ternary tensors, of which verify expects no BitLinear call
MODELS = [
    ("bitnet-b1.58", "I2_S"),
    ("bitnet", "TQ2_0"),
    ("bitnet-b1.58", "TQ1_0"),
    ("llama", "I2_S"),
    ("llama", "Q8_0"),
]


@pytest.fixture(scope="module", params=MODELS, ids=["-".join(m) for m in MODELS])
def model(request, tmp_path_factory) -> generate.Model:
    arch, wtype = request.param
    path = tmp_path_factory.mktemp("calls") / f"{arch}-{wtype}.gguf"
    make_model(path, "tiny", arch=arch, weight_type=wtype, layers=3, vocab=400, seed=5)
    return generate.load(path)


def ternary_tensors(model: generate.Model) -> int:
    """What verify counts: the ternary tensors of the receipt's model.tensor_types."""
    types = model_info(model)["tensor_types"]
    return sum(n for name, n in types.items() if formats.weight_type(name).ternary)


@pytest.mark.parametrize("batch", [1, 3])
def test_one_forward_pass_makes_the_bitlinear_calls_verify_expects(model, batch):
    engine = model.engine
    items = [([1, 2, 3 + i], engine.new_cache(8)) for i in range(batch)]
    with kernels.profile() as prof:
        engine.forward_batch(items)
    ops = {s["id"].rpartition("_")[0]: s["calls"] for s in prof.stats()}
    calls = ops.get("bitlinear", 0)
    ternary = ternary_tensors(model)
    if ternary == 0:
        assert calls == 0
        return
    fewest, most = v.bitlinear_calls_per_pass(ternary)
    assert fewest == most == calls, (
        f"{model.path.name}: one forward pass of {batch} sequences made {calls} bitlinear "
        f"calls; verify expects {fewest} to {most} for {ternary} ternary tensors"
    )
