"""The forward passes on a real model, SmolLM2-135M-Instruct (Q4_1 linear weights, Q8_0
embedding, `llama` arch), against llama.cpp goldens (tests/fixtures/smollm2), on the float64 numpy
reference (slow: ~35 s) and on the engine (float32, native kernels), with the same tolerances.

ggml quantizes activations for Q4_1/Q8_0 matmuls, so its logits differ from exact float math by
about 1 logit: agreement is asserted wherever the peer's top-1/top-2 margin exceeds 1.5 logits.
Measured on the engine: top-10 logits within 0.96 of llama.cpp's, perplexity 28.615 against
28.8347 (-0.76%).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from helpers.tokenizer_files import FIXTURES, goldens, smollm2_path
from pybitnet.decode import ForwardPass
from pybitnet.eval.perplexity import perplexity
from pybitnet.generate import Model
from pybitnet.model import ReferenceModel

MARGIN = 1.5
PEERS = goldens("peers")["smollm2"]


@functools.cache
def smollm2() -> Model:
    return Model(smollm2_path())


@functools.cache
def forward_model(backend: str) -> ForwardPass:
    """The float64 ReferenceModel, or the engine Model generates with."""
    model = smollm2()
    return ReferenceModel(model.weights) if backend == "reference" else model.engine


@pytest.fixture(params=[pytest.param("reference", marks=pytest.mark.slow), "engine"])
def backend(request) -> str:
    return request.param


def margin(topk: list) -> float:
    return topk[0][1] - topk[1][1]


@pytest.mark.parametrize("golden", goldens("smollm2")["forward"], ids=lambda g: g["prompt"][:24])
def test_teacher_forced_top1_and_greedy_match_llama_cpp(golden, backend):
    model, ref = smollm2(), forward_model(backend)
    if golden["kind"] == "chat":
        assert model.tokenize(golden["prompt"], parse_special=True) == golden["prompt_ids"]
    cache = ref.new_cache(512)
    logits = ref.forward(golden["prompt_ids"], cache)
    for p, topk in enumerate(golden["prompt_topk10"]):
        if margin(topk) > MARGIN:
            assert int(np.argmax(logits[p])) == topk[0][0], f"position {p}"
    # Greedy: identical up to the first step where the peer's own choice was a near-tie.
    choosers = [golden["prompt_topk10"][-1], *golden["gen_topk10_after_each"]]
    agree_until = next(
        (i for i, d in enumerate(choosers) if margin(d) < MARGIN), len(golden["gen_ids"])
    )
    step_logits = logits[-1]
    for s in range(agree_until):
        token = int(np.argmax(step_logits))
        assert token == golden["gen_ids"][s], f"greedy step {s}"
        step_logits = ref.forward([token], cache)[0]


def test_chat_prompt_renders_like_llama_cpp():
    model = smollm2()
    (chat,) = [g for g in PEERS["greedy"] if g["kind"] == "chat"]
    assert model.render_chat(chat["messages"]) == chat["prompt"]


def test_perplexity_within_one_percent_of_llama_cpp(backend):
    model, ref = smollm2(), forward_model(backend)
    golden = goldens("smollm2")["perplexity"]
    tokens = model.tokenize((FIXTURES / "peers" / "text.txt").read_text())
    assert len(tokens) == golden["n_tokens"]
    result = perplexity(lambda ids: ref.forward(ids, ref.new_cache(128)), tokens, 128, None)
    assert result.n_chunks == golden["n_chunks"]
    assert result.ppl == pytest.approx(golden["final_ppl"], rel=0.01)
