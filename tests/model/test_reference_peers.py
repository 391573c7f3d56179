"""The forward passes against llama.cpp and bitnet.cpp on the random `bitnet` fixtures
(tests/fixtures/peers; tolerances derived in its README). Every test runs on the float64 numpy
reference and on the engine (float32, native kernels; its KV cache of the peer's type, f32 or
f16) with the same tolerances.

Measured on the engine: F32 fixture within 7.2e-6 of llama.cpp's f32-KV logits (reference 6.9e-6),
perplexity 359895.019 against 359895.0108 (2e-8 relative); ternary fixtures rms 0.10-0.11, max
0.46-0.54 against the peers, as the reference; perplexity 361145.7 against 361352 / 361339
(0.06%)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from pybitnet.decode import ForwardPass
from pybitnet.eval.perplexity import perplexity
from pybitnet.generate import Model
from pybitnet.model import ReferenceModel

PEERS = Path(__file__).resolve().parents[1] / "fixtures" / "peers"
GOLDENS = json.loads((PEERS / "goldens.json").read_text())
LOGITS = np.load(PEERS / "logits.npz")
TERNARY = ["tq2_0", "tq1_0", "i2_s", "tq2_0-scaletensors"]


@functools.cache
def load(fixture: str, kv_cache: str = "f32") -> Model:
    return Model(PEERS / f"bitnet-tiny-s1-{fixture}.gguf", kv_cache=kv_cache)


@functools.cache
def forward_model(fixture: str, backend: str, kv_cache: str) -> ForwardPass:
    """The float64 ReferenceModel, or the engine Model generates with, over a KV cache of the
    peer's type."""
    model = load(fixture, kv_cache)
    return ReferenceModel(model.weights) if backend == "reference" else model.engine


@pytest.fixture(params=["reference", "engine"])
def backend(request) -> str:
    return request.param


def forward_goldens(fixture: str, **match):
    return [
        g
        for g in GOLDENS["forward"]
        if g["fixture"] == fixture and all(g[k] == v for k, v in match.items())
    ]


def teacher_forced(fixture: str, backend: str, ids: list[int], kv_cache: str) -> np.ndarray:
    model = forward_model(fixture, backend, kv_cache)
    return model.forward(ids, model.new_cache())


def greedy(fixture: str, backend: str, ids: list[int], n: int, kv_cache: str) -> list[int]:
    model = forward_model(fixture, backend, kv_cache)
    cache = model.new_cache()
    logits = model.forward(ids, cache)[-1]
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = model.forward([out[-1]], cache)[0]
    return out


def margins_after_each(golden: dict) -> list[float]:
    """Top-1 minus top-2 logit of the distribution that chose each generated token."""
    dists = [golden["prompt_topk"][-1], *golden["gen_topk_after_each"]]
    return [d[0][1] - d[1][1] for d in dists]


@pytest.mark.parametrize(
    "golden", forward_goldens("f32", kv_cache="f32"), ids=lambda g: g["command"][-40:]
)
def test_f32_logits_match_llama_cpp_f32_kv_tightly(golden, backend):
    logits = teacher_forced("f32", backend, golden["prompt_ids"], "f32")
    expected = LOGITS[golden["logits_npz_key"]]
    assert np.abs(logits - expected).max() <= 1e-4


@pytest.mark.parametrize("peer", ["llama.cpp", "bitnet.cpp"])
def test_f32_logits_match_f16_kv_peers_within_their_rounding(peer, backend):
    for golden in forward_goldens("f32", kv_cache="f16", peer=peer):
        logits = teacher_forced("f32", backend, golden["prompt_ids"], "f16")
        assert np.abs(logits - LOGITS[golden["logits_npz_key"]]).max() <= 1e-2


@pytest.mark.parametrize("fixture", TERNARY)
def test_ternary_logits_match_peers_within_activation_quantization_error(fixture, backend):
    goldens = forward_goldens(fixture)
    assert goldens, f"no golden for {fixture}"
    for golden in goldens:
        logits = teacher_forced(fixture, backend, golden["prompt_ids"], golden["kv_cache"])
        expected = LOGITS[golden["logits_npz_key"]]
        diff = logits - expected
        assert np.sqrt(np.mean(diff**2)) <= 0.15, golden["command"]
        assert np.abs(diff).max() <= 1.0, golden["command"]
        top2 = np.sort(expected, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 1.0
        assert (logits.argmax(1) == expected.argmax(1))[clear].all(), golden["command"]


@pytest.mark.parametrize("fixture", ["f32", *TERNARY])
def test_greedy_runs_match_peers_until_a_near_tie(fixture, backend):
    bound = 1e-3 if fixture == "f32" else 1.0  # our error against the peer, from the tests above
    for golden in forward_goldens(fixture, kv_cache="f32" if fixture == "f32" else "f16"):
        ids, n = golden["prompt_ids"], len(golden["gen_ids"])
        ours = greedy(fixture, backend, ids, n, golden["kv_cache"])
        margins = margins_after_each(golden)
        agree_until = next((i for i, m in enumerate(margins) if m < bound), len(margins))
        assert agree_until > 0 or fixture != "f32"
        assert ours[:agree_until] == golden["gen_ids"][:agree_until], golden["command"]


def peer_ppl(peer: str, fixture: str, kv: str = "f16") -> float:
    (entry,) = [
        p
        for p in GOLDENS["perplexity"]
        if p["peer"] == peer
        and p["fixture"] == fixture
        and p["kv_cache"] == kv
        and p["flash_attn"].startswith("off")
    ]
    return entry["final_ppl"]


@pytest.mark.parametrize(
    ("fixture", "peer", "kv", "rel"),
    [
        ("f32", "llama.cpp", "f32", 1e-5),
        ("tq2_0", "llama.cpp", "f16", 5e-3),
        ("tq1_0", "llama.cpp", "f16", 5e-3),
        ("i2_s", "bitnet.cpp", "f16", 5e-3),
        ("tq2_0-scaletensors", "llama.cpp", "f16", 5e-3),
    ],
)
def test_perplexity_matches_peers(fixture, peer, kv, rel, backend):
    model, forward = load(fixture), forward_model(fixture, backend, kv)
    tokens = model.tokenize((PEERS / "text.txt").read_text())
    assert tokens == GOLDENS["text"]["token_ids"]
    result = perplexity(
        lambda ids: forward.forward(ids, forward.new_cache()), tokens, 128, model.tokenizer.bos_id
    )
    assert result.n_chunks == 16 and result.n_scored == 1008
    assert result.ppl == pytest.approx(peer_ppl(peer, fixture, kv), rel=rel)
