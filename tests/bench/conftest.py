"""Synthetic receipts for the receipt and gate tests.

Every sample is drawn here from a seeded generator around made-up base figures: these receipts
exercise the code and claim nothing about any real machine.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest

from pybitnet.bench import receipt as rc
from pybitnet.sampling import SamplerConfig

MODEL_SHA256 = hashlib.sha256(b"a synthetic model").hexdigest()


def synthetic_receipt(
    seed: int = 0,
    *,
    speed: float = 1.0,
    rss: float = 1.0,
    noise: float = 0.01,
    reps: int = 10,
) -> dict[str, Any]:
    """A generation receipt with pp32 and tg16 runs at 1 and 2 threads. `speed` divides every
    time, `rss` multiplies the memory, `noise` is the relative spread of the times."""
    rng = np.random.default_rng(seed)

    def times(base_ms: float, size: int = reps) -> list[float]:
        return (base_ms / speed * (1 + noise * rng.standard_normal(size))).tolist()

    def memory() -> list[float]:
        return (800.0 * rss * (1 + 1e-4 * rng.standard_normal(reps))).tolist()

    runs = []
    for threads in (1, 2):
        runs.append(rc.prefill_run("pp32", threads, 32, times(400.0 / threads), memory()))
        runs.append(
            rc.decode_run(
                "tg16",
                threads,
                16,
                ms=times(1600.0 / threads),
                ttft_ms=times(450.0 / threads),
                inter_token_ms=[times(100.0 / threads, 15) for _ in range(reps)],
                peak_rss_mb=memory(),
            )
        )
    sampler = SamplerConfig(temperature=0.0, seed=42)
    return {
        "schema_version": rc.SCHEMA_VERSION,
        "kind": "generation",
        "created_at": rc.utc_now(),
        "tool": {"name": "pybitnet", "version": "0.1.0", "git_commit": None},
        "host": {
            "cpu_model": "Synthetic CPU",
            "cpu_features_used": ["avx2"],
            "logical_cores": 2,
            "threads": [1, 2],
            "os": "Linux",
            "python": "3.11.7",
        },
        "model": {
            "path": "synthetic.gguf",
            "sha256": MODEL_SHA256,
            "bytes": 123_456,
            "architecture": "bitnet",
            "parameter_count": 1_000_000,
            "vocab_size": 32_000,
            "tensor_types": {"F32": 9, "I2_S": 28},
        },
        "workload": rc.generation_workload(32, 16, 1, reps, 1, sampler, kv_cache="f16"),
        "backend": "cpu",
        "compute_path": "native",
        "kernels": [{"id": "i2s_gemv", "calls": 448, "seconds": 1.25}],
        "runs": runs,
        "outputs": rc.outputs([[5, 9, 2, 7, 7, 1, 3, 3, 8, 0, 4, 6, 2, 2, 5, 1]]),
        "deterministic": True,
    }


def synthetic_kernel_receipt(seed: int = 0, *, speed: float = 1.0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    ms = (0.05 / speed * (1 + 0.01 * rng.standard_normal(20))).tolist()
    return {
        "schema_version": rc.SCHEMA_VERSION,
        "kind": "kernels",
        "created_at": rc.utc_now(),
        "tool": {"name": "pybitnet", "version": "0.1.0", "git_commit": "0123abc"},
        "host": {
            "cpu_model": "Synthetic CPU",
            "cpu_features_used": ["avx2"],
            "logical_cores": 2,
            "threads": [1],
            "os": "Linux",
            "python": "3.11.7",
        },
        "workload": {"repetitions": 20, "warmup": 2, "seed": 0},
        "backend": "cpu",
        "compute_path": "native",
        "kernels": [{"id": "i2s_gemv", "calls": 22, "seconds": 0.0011}],
        "runs": [rc.kernel_run("i2s_gemv 2560x6912", 1, "i2s_gemv", [6912, 2560], 6912 * 2560, ms)],
    }


@pytest.fixture
def make_receipt():
    return synthetic_receipt


@pytest.fixture
def make_kernel_receipt():
    return synthetic_kernel_receipt
