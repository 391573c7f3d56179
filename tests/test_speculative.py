"""Speculative decoding by prompt lookup (speculative.py, decode.py): the drafts, the one pass
that verifies them, the cache rolled back past a miss, and the ids: those of plain decoding,
greedy and sampled, through the API, a batch and `pybitnet run`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import chisquare
from typer.testing import CliRunner

import pybitnet
from pybitnet import decode
from pybitnet.cli import app
from pybitnet.convert.synthetic import make_model
from pybitnet.errors import ModelError, SamplingError
from pybitnet.model.cache import CacheSpan
from pybitnet.sampling import Sampler, SamplerConfig
from pybitnet.speculative import MAX_DRAFT_TOKENS, PromptLookup, prompt_lookup

PROMPTS = (
    "Once upon a time, there was a little girl named Lily. Once upon a time, there was a little",
    "The dog ran to the park. The dog ran to the park. The dog ran to the",
    "Tom had a red ball. Tom had a red ball. Tom had a",
    "One day, a cat and a dog",
    'Lily said, "I like to play." Ben said, "I like to',
)
SAMPLED = dict(temperature=0.9, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.2, seed=11)


@pytest.fixture(scope="module")
def model():
    return pybitnet.load()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Random-weight models whose greedy text loops, so drafts are accepted: a llama of
    block-quantized dense weights and a BitNet b1.58 of I2_S ones."""
    root = tmp_path_factory.mktemp("speculative")
    paths = []
    for arch, wtype, etype in [("llama", "Q4_1", "Q8_0"), ("bitnet-b1.58", "I2_S", "F32")]:
        path = root / f"{arch}-{wtype}.gguf"
        make_model(path, arch=arch, weight_type=wtype, embd_type=etype, layers=2, vocab=400)
        paths.append(path)
    return [pybitnet.load(path, n_ctx=256) for path in paths]


def test_prompt_lookup_drafts_what_followed_the_latest_match_of_the_longest_suffix():
    assert prompt_lookup([1, 2, 3, 9, 1, 2, 3, 7, 8, 1, 2, 3], 2) == [7, 8]  # the latest
    assert prompt_lookup([5, 6, 1, 9, 6, 1, 4, 5, 6, 1], 3) == [9, 6, 1]  # 3 ids beat 2
    assert prompt_lookup([4, 5, 4], 8) == [5, 4]  # may run up to the end
    assert prompt_lookup([1, 2, 3], 8) == []  # the last id never matches itself
    assert prompt_lookup([7, 7], 0) == []


def test_draft_length_follows_how_the_last_drafts_fared():
    drafter = PromptLookup(8)
    drafter.verified(8, 3)
    assert drafter.length == 4  # one more than were accepted
    drafter.verified(4, 4)
    assert drafter.length == 8  # a full hit doubles, up to the limit
    drafter.verified(8, 8)
    assert drafter.length == 8
    drafter.verified(0, 0)  # a step without drafts says nothing
    assert drafter.length == 8


def test_a_pass_of_up_to_16_rows_gives_each_row_the_bits_of_a_one_row_pass(model, synthetic):
    """What makes the ids exact: the kernels treat each row alone (ternary matmuls in integers,
    dense ones summed per row in one order up to 16 rows). F16 matrices fed one row take a
    faster path (csrc/float_tiles.h f16_rows) whose sums differ in the last bits: not tested
    here, see docs/SPEC.md §5."""
    for m in [model, *synthetic]:
        ids = m.tokenize(PROMPTS[0])
        cut = len(ids) - (MAX_DRAFT_TOKENS + 1)
        one_by_one = m.engine.new_cache(len(ids))
        m.engine.forward(ids[:cut], one_by_one)
        rows = np.concatenate([m.engine.forward([t], one_by_one) for t in ids[cut:]])
        together = m.engine.new_cache(len(ids))
        m.engine.forward(ids[:cut], together)
        np.testing.assert_array_equal(m.engine.forward(ids[cut:], together), rows)


def test_a_truncated_cache_gives_the_logits_of_one_that_never_held_the_rest(model):
    ids = model.tokenize(PROMPTS[1])
    fresh = model.engine.new_cache(64)
    expected = model.engine.forward(ids, fresh)
    cache = model.engine.new_cache(64)
    model.engine.forward(ids[:10], cache)
    model.engine.forward([3, 1, 4, 1, 5, 9, 2], cache)  # drafts the target rejects
    cache.truncate(10)
    np.testing.assert_array_equal(model.engine.forward(ids[10:], cache), expected[10:])
    with pytest.raises(ModelError, match=f"truncate a cache of {len(ids)} positions to 99$"):
        cache.truncate(99)


@pytest.mark.parametrize("sampling", [dict(temperature=0), SAMPLED], ids=["greedy", "sampled"])
def test_speculative_ids_are_those_of_plain_decoding(model, synthetic, sampling):
    """Greedy and sampled (same seed: each token takes one draw of the same generator), on the
    embedded model and the synthetic ones, with the drafts accepted often."""
    accepted = 0
    for m in [model, *synthetic]:
        prompts = [m.tokenize(p) for p in PROMPTS]
        for ids in prompts:
            plain = m.complete(ids, max_tokens=48, **sampling)
            for k in (1, 4, MAX_DRAFT_TOKENS):
                spec = m.complete(ids, max_tokens=48, draft_tokens=k, **sampling)
                assert (spec.token_ids, spec.text) == (plain.token_ids, plain.text)
                assert spec.finish_reason == plain.finish_reason
                assert 0 <= spec.accepted <= spec.drafted
                assert spec.steps == len(spec.token_ids) - spec.accepted + (
                    plain.finish_reason == "stop"
                )
                accepted += spec.accepted
    assert accepted > 500


def test_speculative_decoding_stops_where_plain_decoding_does(model):
    """At a stop string inside accepted drafts, at max_tokens, and at the end of the context,
    which drafts never run past."""
    cases = [
        (model, dict(stop=["park"], max_tokens=64), "stop"),
        (model, dict(max_tokens=5), "length"),
        (pybitnet.load(n_ctx=40), dict(max_tokens=None), "length"),  # 19 tokens of room
    ]
    for m, options, reason in cases:
        plain = m.complete(PROMPTS[1], temperature=0, **options)
        spec = m.complete(PROMPTS[1], temperature=0, draft_tokens=8, **options)
        assert spec.accepted > 0
        assert (spec.token_ids, spec.text) == (plain.token_ids, plain.text)
        assert spec.finish_reason == plain.finish_reason == reason


def test_a_sequence_verifies_its_drafts_beside_one_that_prefills(model):
    """decode.step for a batch: one sequence decoding with drafts, the other's long prompt
    arriving in chunks in the same passes; each gets the ids it gets alone."""
    prompts = [model.tokenize(PROMPTS[0]), model.tokenize(PROMPTS[2] * 12)]
    gens = [
        decode.Generation(
            ids,
            model.engine.new_cache(320),
            tokenizer=model.tokenizer,
            sampling=SamplerConfig(temperature=0),
            max_tokens=40,
            draft_tokens=8,
        )
        for ids in prompts
    ]
    while todo := [gen for gen in gens if not gen.finished]:
        for gen, rows in zip(todo, decode.step(model.engine, todo), strict=True):
            if rows is not None:
                gen.advance(rows)
    for gen, ids in zip(gens, prompts, strict=True):
        assert gen.token_ids == model.complete(ids, max_tokens=40, temperature=0).token_ids
    assert gens[0].accepted > 0


def test_acceptance_keeps_the_targets_distribution(model):
    """The accept/reject rule for a drafted token d (a point mass): accept it with probability
    p(d), else draw from p without d; drawing x from p and accepting d when x == d is that rule.
    Synthetic logits over 6 tokens (penalty, temperature, top-k, top-p and min-p all at work) go
    through Generation.advance for 8,000 seeds: the first token's counts must fit p, and the
    second's, after an accepted draft, p of the next row. Each chi-square test fails a correct
    sampler with probability 1e-4 (2e-4 both, for random seeds; these seeds are fixed)."""
    config = SamplerConfig(temperature=0.8, top_k=5, top_p=0.97, min_p=0.02, repeat_penalty=1.3)
    prompt = [2, 3, 2]
    rows = np.array([[1.0, 0.2, 0.9, -0.5, 0.6, 0.1], [0.3, 1.2, -0.2, 0.8, 0.5, 0.0]])
    first_token = np.full(6, -np.inf)
    first_token[3] = 0.0  # sampled surely: the sequence [2, 3, 2, 3] drafts 2 next
    history = [*prompt, 3]
    p_first = Sampler(config).filtered_probs(rows[0], history)
    p_second = Sampler(config).filtered_probs(rows[1], [*history, 2])
    firsts, seconds = np.zeros(6, int), np.zeros(6, int)
    for seed in range(8000):
        gen = decode.Generation(
            prompt,
            CacheSpan(model.config, 16),
            tokenizer=None,
            sampling=SamplerConfig(**{**vars(config), "seed": seed}),
            max_tokens=8,
            draft_tokens=1,
        )
        gen.cache.length = len(gen.feed())  # what the prefill pass leaves
        gen.advance(first_token[None])
        assert gen.drafts == [2]
        gen.cache.length += len(gen.feed())  # what the verifying pass leaves
        gen.advance(rows)
        firsts[gen.token_ids[1]] += 1
        if gen.token_ids[1] == 2:
            seconds[gen.token_ids[2]] += 1
        assert gen.cache.length == len(gen.history) - 1  # the last token is not in it yet
    for counts, p in [(firsts, p_first), (seconds, p_second)]:
        assert counts[p == 0].sum() == 0
        assert chisquare(counts[p > 0], counts.sum() * p[p > 0]).pvalue > 1e-4, (counts, p)


@pytest.mark.parametrize("bad", [-1, MAX_DRAFT_TOKENS + 1, True, 2.0])
def test_a_bad_draft_tokens_is_one_line_naming_it(model, bad):
    with pytest.raises(SamplingError, match=r"^draft_tokens must be an integer from 0 to 15, got"):
        model.complete("Once", draft_tokens=bad)


def test_run_draft_tokens_prints_the_same_text_and_reports_acceptance(model):
    args = ["run", PROMPTS[1], "--temperature", "0", "--max-tokens", "30"]
    runner = CliRunner()
    plain = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    result = runner.invoke(app, [*args, "--json", "--draft-tokens", "8"])
    assert result.exit_code == 0, result.output
    spec = json.loads(result.stdout)
    assert (spec["text"], spec["token_ids"]) == (plain["text"], plain["token_ids"])
    assert spec["accepted"] > 0 and plain["drafted"] == 0
    assert spec["tokens_per_step"] == 30 / spec["steps"] > 1
