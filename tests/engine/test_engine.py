"""The engine against the float64 reference forward pass (model/reference.py) on every fixture
model: op by op (each op fed the reference's inputs) and whole forward passes (see lockstep.py
for why both, and how activation rounding flips are counted and bounded)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from lockstep import TOLERANCE, first_flip, load, lockstep

from helpers.tokenizer_files import smollm2_path
from pybitnet import formats, kernels
from pybitnet.convert.synthetic import make_model
from pybitnet.engine import Engine, EngineCache
from pybitnet.engine.forward import PREFILL_CHUNK
from pybitnet.engine.layers import Linear, requantized
from pybitnet.errors import ModelError
from pybitnet.kernels import numpy_tier as numpy_kernels
from pybitnet.kernels.layout import KV_CACHE_TYPES, kv_cache_shapes
from pybitnet.model import ReferenceModel
from pybitnet.model.weights import Tensor

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PEERS = [
    FIXTURES / "peers" / f"bitnet-tiny-s1-{name}.gguf"
    for name in ("f32", "tq2_0", "tq1_0", "i2_s", "tq2_0-scaletensors")
]
TINYSTORIES = Path(__file__).resolve().parents[2] / "src/pybitnet/data/tinystories-3m.gguf"
# (arch, linear type, token_embd type): all three archs, every ternary type, Q and float types
SYNTHETIC = [
    ("bitnet-b1.58", "I2_S", "F16"),
    ("bitnet-b1.58", "TQ1_0", "F32"),
    ("bitnet", "TQ2_0", "BF16"),
    ("llama", "I2_S", "F16"),
    ("llama", "Q4_0", "Q8_0"),
    ("llama", "Q4_1", "F16"),
    ("llama", "Q8_0", "Q4_0"),
    ("llama", "F16", "F16"),
    ("llama", "BF16", "F32"),
]
FLOAT_TYPES = {"Q4_0", "Q4_1", "Q8_0", "F16", "BF16", "F32"}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")

    def make(arch, wtype, etype):
        path = root / f"{arch}-{wtype}-{etype}.gguf"
        if not path.exists():
            # heads 4 / kv heads 2: GQA; dim 256 with 256-element blocks; vocab of 400 rows
            make_model(
                path,
                "tiny",
                arch=arch,
                weight_type=wtype,
                embd_type=etype,
                layers=2,
                vocab=400,
                seed=3,
            )
        return path

    return make


def model_paths(synthetic):
    return [*PEERS, TINYSTORIES, *(synthetic(*s) for s in SYNTHETIC)]


def prompt(weights, n=12, seed=0):
    return np.random.default_rng(seed).integers(0, weights.config.vocab_size, n).tolist()


def test_every_op_matches_the_reference_fed_the_same_inputs(synthetic):
    flips = 0
    for path in model_paths(synthetic):
        weights = load(path)
        for d in lockstep(weights, prompt(weights)):
            assert d.excess <= d.allowed, f"{path.name}: {d}"
            flips += d.flips
    # Rounding flips happen (float32 vs float64 near a .5 of x * s_x) but are rare; each is
    # accounted for exactly above. Seen: a handful over ~10^6 quantized activations.
    assert flips < 50


@pytest.mark.slow
def test_every_op_of_smollm2_matches_the_reference():
    weights = load(smollm2_path())
    for d in lockstep(weights, [1, 504, 3458, 314, 4750, 282]):
        assert d.excess <= d.allowed, d


def test_whole_forward_pass_matches_the_reference(synthetic, monkeypatch):
    """1e-4 of the logit range at every position before the first int8 rounding flip (all
    positions for float models); after a flip the difference stays small and argmax agrees
    wherever the reference's margin exceeds it."""
    for path in model_paths(synthetic):
        weights = load(path)
        ids = prompt(weights, 16)
        logits, expected, flip = first_flip(weights, ids, monkeypatch)
        assert logits.dtype == np.float32 and logits.shape == expected.shape
        span = expected.max() - expected.min()
        diff = np.abs(logits - expected).max(axis=1)
        assert np.all(diff[:flip] <= TOLERANCE * span), (path.name, flip, diff / span)
        if weights.blocks[0].attn_q.wtype.name in FLOAT_TYPES:
            assert flip == len(ids), path.name
        # one flip moved logits by up to 0.4 % of their range (TinyStories, position 15)
        assert np.all(diff <= 2e-2 * span), (path.name, diff / span)
        top2 = np.sort(expected, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 2 * diff
        assert np.array_equal(logits.argmax(1)[clear], expected.argmax(1)[clear])


@pytest.mark.slow
def test_smollm2_whole_forward_pass_matches_the_reference():
    weights = load(smollm2_path())
    ids = [1, 504, 3458, 314, 4750, 282]
    engine, ref = Engine(weights, kv_cache="f32"), ReferenceModel(weights)
    logits = engine.forward(ids, engine.new_cache(16))
    expected = ref.forward(ids, ref.new_cache(16))
    assert np.abs(logits - expected).max() <= TOLERANCE * (expected.max() - expected.min())


def test_prompt_in_pieces_equals_prompt_at_once():
    weights = load(PEERS[1])
    engine = Engine(weights)
    ids = prompt(weights, 20)
    whole = engine.forward(ids, engine.new_cache())
    cache = engine.new_cache()
    pieces = [engine.forward(ids[a:b], cache) for a, b in [(0, 7), (7, 8), (8, 20)]]
    assert cache.length == 20
    np.testing.assert_allclose(np.concatenate(pieces), whole, rtol=0, atol=1e-5)
    last = engine.forward(ids, engine.new_cache(), last_only=True)
    np.testing.assert_allclose(last, whole[-1:], rtol=0, atol=1e-5)


def test_long_prompt_runs_in_chunks_with_the_logits_of_one_pass():
    weights = load(PEERS[3])
    engine = Engine(weights)
    ids = prompt(weights, 2 * PREFILL_CHUNK + 9)
    with kernels.profile() as prof:
        chunked = engine.forward(ids, engine.new_cache())
    assert {s["calls"] for s in prof.stats() if s["id"].startswith("embedding")} == {3}
    one_pass = engine.forward_batch([(ids, engine.new_cache())])[0]
    np.testing.assert_array_equal(chunked, one_pass)
    last = engine.forward(ids, engine.new_cache(), last_only=True)  # output layer: n = 1 path
    np.testing.assert_allclose(last, one_pass[-1:], rtol=0, atol=1e-5)
    cache = engine.new_cache(len(ids) + 3)
    with pytest.raises(ModelError, match="token ids"):  # checked before any chunk runs
        engine.forward([*ids, weights.config.vocab_size], cache)
    assert cache.length == 0


@pytest.mark.parametrize("path", [PEERS[0], PEERS[3]], ids=["f32", "i2_s"])
def test_forward_batch_equals_one_sequence_at_a_time(path):
    weights = load(path)
    engine = Engine(weights)
    prompts = [prompt(weights, n, seed=n) for n in (5, 9, 2)]
    caches = [engine.new_cache(32) for _ in prompts]
    alone = [engine.forward(p, engine.new_cache(32)) for p in prompts]
    for p, cache in zip(prompts[:2], caches[:2], strict=True):  # two of three already hold a prompt
        engine.forward(p[:-1], cache)
    items = [(prompts[0][-1:], caches[0]), (prompts[1][-1:], caches[1]), (prompts[2], caches[2])]
    with kernels.profile() as prof:
        batched = engine.forward_batch(items)
    for got, want, (tokens, _) in zip(batched, alone, items, strict=True):
        np.testing.assert_allclose(got, want[-len(tokens) :], rtol=0, atol=1e-5)
    # one kernel call per linear layer and per attention for the whole batch: the weights are
    # read once, the thread pool dispatched once
    calls = {s["id"].rsplit("_", 1)[0]: s["calls"] for s in prof.stats()}
    n_layers = weights.config.n_layers
    linear_calls = sum(v for k, v in calls.items() if k == "bitlinear" or k.startswith("linear"))
    per_layer = 4 if "bitlinear" in calls else 7
    assert linear_calls == per_layer * n_layers + 1
    assert calls["attention"] == n_layers


def test_reference_kernels_run_the_engine_end_to_end(monkeypatch):
    monkeypatch.setenv(kernels.ENV, "numpy")
    weights = load(PEERS[2])
    engine = Engine(weights, kv_cache="f32")
    ids = prompt(weights)
    with kernels.profile() as prof:
        logits = engine.forward(ids, engine.new_cache())
    assert all(s["id"].endswith("_numpy") for s in prof.stats())
    expected = ReferenceModel(weights).forward(ids, ReferenceModel(weights).new_cache())
    assert np.abs(logits - expected).max() <= TOLERANCE * (expected.max() - expected.min())


def test_native_engine_uses_only_native_kernels(monkeypatch):
    monkeypatch.delenv(kernels.ENV, raising=False)
    if kernels.selected_tier() == "numpy":
        pytest.skip("no native kernels in this build")
    weights = load(PEERS[3])
    engine = Engine(weights)
    with kernels.profile() as prof:
        engine.forward([1, 2, 3], engine.new_cache())
    ids = {s["id"] for s in prof.stats()}
    assert not any(i.endswith("_numpy") for i in ids), ids
    assert {"bitlinear", "attention", "rmsnorm", "rope", "gated", "embedding", "linear_f16"} == {
        i.rsplit("_", 1)[0] for i in ids
    }


# (largest logit change / logit span, agreeing argmax): about twice what the two models show
# (q8: 0.006 and 0.010, q6_k: 0.009 and 0.016, q4_k: 0.041 and 0.065; argmax 0.875 at worst)
HEADS = [("q8", 0.02, 0.9), ("q6_k", 0.03, 0.9), ("q4_k", 0.12, 0.8)]


@pytest.mark.parametrize(("head", "max_change", "agree"), HEADS)
def test_smaller_output_heads_are_close_to_the_stored_one(head, max_change, agree):
    """The int8 and requantized output heads against the file's one (F32, F16) over a
    teacher-forced text (see the accuracy report for perplexity)."""
    for path in [PEERS[3], TINYSTORIES]:
        weights = load(path)
        ids = prompt(weights, 24)
        stored = Engine(weights)
        smaller = Engine(weights, output_head=head)
        a = stored.forward(ids, stored.new_cache())
        b = smaller.forward(ids, smaller.new_cache())
        span = a.max() - a.min()
        assert np.abs(a - b).max() <= max_change * span
        assert np.mean(a.argmax(1) == b.argmax(1)) >= agree


def test_a_requantized_head_is_its_layer_quantized_whole():
    """Requantized a few rows at a time (5000 rows of 256: two steps), the bytes are those of
    the whole layer quantized at once, with the layer's .scale applied."""
    rng = np.random.default_rng(3)
    values = rng.standard_normal((5000, 256)).astype(np.float16)
    t = Tensor(
        "output.weight",
        formats.weight_type("F16"),
        values.shape,
        values.view(np.uint8).ravel(),
        0.5,
    )
    head = requantized(t, "q6_k")
    assert head.wtype.name == "Q6_K" and head.scale == 1.0 and head.shape == t.shape
    np.testing.assert_array_equal(
        head.data, formats.quantize("Q6_K", values.astype(np.float32) * 0.5)
    )


def test_rows_that_are_not_whole_super_blocks_take_llama_cpps_fallback_type():
    """Rows of 576 (SmolLM2): q6_k makes a Q8_0 head, as llama.cpp's quantizer does, and says
    so; q4_k's fallback (Q5_0) is a format pybitnet does not read, so it is refused."""
    weights = load(smollm2_path())
    engine = Engine(weights, output_head="q6_k")
    assert engine.output_type == "Q8_0"
    assert "rows of 576 elements are not whole 256-blocks; the head is Q8_0" in engine.output_note
    assert (
        Engine(weights).output_note is None
        and Engine(weights, output_head="q8").output_type == "int8"
    )
    with pytest.raises(
        ModelError, match="output head q4_k: .* rows of 576 .* fallback, Q5_0, is not"
    ):
        Engine(weights, output_head="q4_k")


def test_a_head_that_cannot_be_requantized_is_a_model_error():
    ternary = Tensor(
        "output.weight", formats.weight_type("TQ2_0"), (1, 256), np.zeros(66, np.uint8)
    )
    with pytest.raises(ModelError, match="ternary"):
        requantized(ternary, "q4_k")


def test_bad_input_is_a_model_error():
    weights = load(PEERS[1])
    engine = Engine(weights)
    cache = engine.new_cache(4)
    with pytest.raises(ModelError, match=r"token ids must be in \[0, 1000\)"):
        engine.forward([1, 1000], cache)
    with pytest.raises(ModelError, match="token ids"):
        engine.forward([], cache)
    with pytest.raises(ModelError, match="exceed the context of 4 tokens"):
        engine.forward([1, 2, 3, 4, 5], cache)
    assert cache.length == 0
    with pytest.raises(ModelError, match="its own cache"):
        engine.forward_batch([([1], cache), ([2], cache)])
    with pytest.raises(ModelError, match="output_head"):
        Engine(weights, output_head="q4")


@pytest.mark.parametrize("kv_cache", ["f16", "f32", "q8_0"])
def test_cache_is_laid_out_for_the_kernel(kv_cache):
    weights = load(PEERS[1])
    c = weights.config
    cache = Engine(weights, kv_cache=kv_cache).new_cache(100)
    assert cache.n_ctx == 100 and cache.length == 0 and cache.kv_cache == kv_cache
    blocks = (c.n_layers, c.n_kv_heads, 7)  # blocks of 16 positions
    row = {"f16": 2 * c.head_dim, "f32": 4 * c.head_dim, "q8_0": c.head_dim // 32 * 34}[kv_cache]
    if kv_cache == "q8_0":  # bytes: a key block of 16 rows' bytes, value rows of 34-byte blocks
        assert cache.k.shape == (*blocks, 16 * row) and cache.k.dtype == np.uint8
        assert cache.v.shape == (*blocks[:2], 112, row) and cache.v.dtype == np.uint8
    else:
        assert cache.k.shape == (*blocks, c.head_dim, 16)
        assert cache.v.shape == (*blocks[:2], 112, c.head_dim)
        assert cache.k.dtype == cache.v.dtype == np.dtype(kv_cache.replace("f", "float"))
    assert cache.nbytes == 2 * c.n_layers * c.n_kv_heads * 112 * row
    assert Engine(weights, kv_cache=kv_cache).kv_bytes_per_token() == cache.nbytes // 112


def test_default_cache_is_f16_and_a_bad_type_is_refused():
    weights = load(PEERS[1])
    assert Engine(weights).new_cache(16).kv_cache == "f16"
    with pytest.raises(ModelError, match="kv_cache must be one of f16, f32, q8_0, got 'q4_0'"):
        Engine(weights, kv_cache="q4_0")
    odd = dataclasses.replace(weights.config, head_dim=48)  # q8_0 holds whole 32-chunks
    with pytest.raises(ModelError, match="q8_0 needs a head_dim that is a multiple of 32, the"):
        EngineCache(odd, 16, "q8_0")


def test_attention_error_grows_as_the_cache_shrinks():
    """The attention op alone, on the keys and values TinyStories computes for a prompt (every
    layer) and queries of their scale, against float64 over the float32 keys and values: the
    cost of each type itself, without the int8 rounding flips that follow it in a whole pass.
    Seen over its 8 layers: relative error 1-2e-7 (f32), 0.9-2.7e-4 (f16), 1.7-5.7e-3 (q8_0)."""
    weights = load(TINYSTORIES)
    c = weights.config
    ids = prompt(weights, 64)
    engine = Engine(weights, kv_cache="f32")
    cache = engine.new_cache(len(ids))
    engine.forward(ids, cache)
    rng = np.random.default_rng(0)
    n, shape = len(ids), (c.n_kv_heads, 64, c.head_dim)
    errors = {kv: [] for kv in ("f32", "f16", "q8_0")}
    for layer in range(c.n_layers):
        k = cache.k[layer].transpose(1, 3, 0, 2).reshape(-1, c.n_kv_heads, c.head_dim)[:n]
        v = cache.v[layer].transpose(1, 0, 2)[:n]
        q = (rng.standard_normal((n, c.n_heads, c.head_dim)) * 3 * np.abs(k).mean()).astype(
            np.float32
        )
        empty = (np.zeros((c.n_kv_heads, 4, c.head_dim, 16)), np.zeros(shape))
        exact = numpy_kernels.attention(q.astype(np.float64), k, v, [(*empty, 0, n)])
        for kv, found in errors.items():
            shapes = kv_cache_shapes(kv, c.n_kv_heads, c.head_dim, 64)
            kc, vc = (np.zeros(s, KV_CACHE_TYPES[kv]) for s in shapes)
            y = engine._attention(q, k, v, [(kc, vc, 0, n)])
            found.append(np.linalg.norm(y - exact) / np.linalg.norm(exact))
    assert max(errors["f32"]) < 1e-6 < min(errors["f16"])
    assert max(errors["f16"]) < 1e-3 < min(errors["q8_0"]) and max(errors["q8_0"]) < 2e-2


@pytest.mark.parametrize("kv_cache", ["f16", "q8_0"])
def test_a_smaller_cache_stays_near_the_reference(kv_cache):
    """The whole forward pass of TinyStories with keys and values rounded to the cache's type:
    within a bound of the float64 reference (float32 keeps TOLERANCE, above), and the argmax
    where the reference's margin exceeds the difference."""
    weights = load(TINYSTORIES)
    ids = prompt(weights, 48)
    engine, ref = Engine(weights, kv_cache=kv_cache), ReferenceModel(weights)
    logits = engine.forward(ids, engine.new_cache(len(ids)))
    expected = ref.forward(ids, ref.new_cache(len(ids)))
    diff = np.abs(logits - expected).max(axis=1)
    # seen: 0.7 % of the logit range at most (48 positions), for both types
    assert np.all(diff <= 2e-2 * (expected.max() - expected.min())), diff
    top2 = np.sort(expected, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * diff
    assert np.array_equal(logits.argmax(1)[clear], expected.argmax(1)[clear])


def test_tq_rows_of_one_block_scale_take_the_per_row_kernel():
    """TQ2_0 blocks that all share a row's d run with one scale per row (faster), and others
    keep their scale per block; both agree with the numpy BitLinear."""
    rng = np.random.default_rng(7)
    wtype = formats.weight_type("TQ2_0")
    rows, cols = 12, 512
    ternary = rng.integers(-1, 2, (rows, cols)).astype(np.float32)
    per_block = np.repeat(rng.uniform(0.5, 1.5, (rows, 2)), 256, axis=1).astype(np.float32)
    x = rng.standard_normal((3, cols)).astype(np.float32)
    for w, groups in [(ternary * np.float32(0.75), 1), (ternary * per_block, 2)]:
        t = Tensor("w", wtype, (rows, cols), formats.quantize(wtype, w))
        layer = Linear([t], kernels.selected_tier())
        assert layer.prepared[0].groups == groups
        expected = numpy_kernels.bitlinear(x, numpy_kernels.prepare_ternary(*t.unpack_ternary()))
        np.testing.assert_allclose(layer(x)[0], expected, rtol=1e-5, atol=1e-5)
