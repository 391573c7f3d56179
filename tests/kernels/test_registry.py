import os
import subprocess
import sys

import numpy as np
import pytest
from kernel_helpers import NATIVE_TIERS

from pybitnet import formats, kernels
from pybitnet.errors import PyBitnetError

# Receipts name these ids: changing one breaks every receipt written before.
STABLE_IDS = {
    f"{op}_{tier}"
    for op in (
        "bitlinear",
        "linear_f32",
        "linear_f16",
        "linear_bf16",
        "linear_q8_0",
        "linear_q4_0",
        "linear_q4_1",
        "linear_int8",
        "embedding",
        "rmsnorm",
        "rope",
        "gated",
        "attention",
    )
    for tier in ("avx512", "avx2", "neondot", "neon", "scalar", "numpy")
}


def test_ids_are_stable():
    """Ids are only added (a dense format of the format table brings its linear_<format> op;
    a new tier, every op on it)."""
    assert kernels.known_ids() >= STABLE_IDS
    added = {f"linear_{name.lower()}_{tier}" for name in formats.DENSE for tier in kernels.TIERS}
    added |= {f"{op}_amx" for op in kernels.registry.OPS}
    assert kernels.known_ids() - STABLE_IDS <= added
    assert kernels.get("bitlinear").id == f"bitlinear_{kernels.selected_tier()}"


def test_the_best_supported_tier_is_selected(monkeypatch):
    monkeypatch.delenv(kernels.ENV, raising=False)
    assert kernels.selected_tier() == kernels.supported_tiers()[0]
    assert kernels.supported_tiers()[-1] == "numpy"
    assert set(kernels.supported_tiers()) <= set(kernels.TIERS)


def test_env_forces_the_numpy_kernels_in_a_new_process():
    code = "from pybitnet import kernels; print(kernels.get('bitlinear').id)"
    env = {**os.environ, kernels.ENV: "numpy"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "bitlinear_numpy"


@pytest.mark.parametrize("tier", NATIVE_TIERS)
def test_env_forces_a_tier(monkeypatch, tier):
    monkeypatch.setenv(kernels.ENV, tier)
    assert kernels.get("rmsnorm").id == f"rmsnorm_{tier}"


@pytest.mark.parametrize("value", ["avx1024", "reference"])
def test_env_with_an_unknown_tier_is_an_error(monkeypatch, value):
    monkeypatch.setenv(kernels.ENV, value)
    with pytest.raises(PyBitnetError, match=f"PYBITNET_KERNELS='{value}' is not a kernel tier"):
        kernels.get("bitlinear")


def test_unknown_op_is_an_error():
    with pytest.raises(PyBitnetError, match="unknown kernel op 'gemm'"):
        kernels.get("gemm")


def test_calls_are_counted_only_inside_profile():
    bitlinear = kernels.get("bitlinear", "numpy")
    norm = kernels.get("rmsnorm", "numpy")
    w = bitlinear.prepare(np.ones((8, 256), np.int8), np.ones((8, 1), np.float32))
    x = np.ones((1, 256), np.float32)
    bitlinear(x, w)
    with kernels.profile() as outer:
        bitlinear(x, w)
        with kernels.profile() as inner:
            bitlinear(x, w)
            norm(x, np.ones(256, np.float32), 1e-5)
    bitlinear(x, w)
    calls = {s["id"]: s["calls"] for s in outer.stats()}
    assert calls == {"bitlinear_numpy": 2, "rmsnorm_numpy": 1}
    assert {s["id"]: s["calls"] for s in inner.stats()} == {
        "bitlinear_numpy": 1,
        "rmsnorm_numpy": 1,
    }
    assert all(s["seconds"] > 0 for s in outer.stats())


def test_describe_reports_cpu_and_choice():
    d = kernels.describe()
    assert d["selected_tier"] in d["supported_tiers"]
    assert isinstance(d["cpu"], str) and isinstance(d["features"], list)
    assert d["threads"] >= 1
