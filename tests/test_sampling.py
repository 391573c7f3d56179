"""Sampling (docs/SPEC.md §5) against a plain float64 implementation written here from the spec."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import chisquare

from pybitnet.errors import SamplingError
from pybitnet.sampling import MAX_STOP_CHARS, Sampler, SamplerConfig, StopStrings

ALL_TOKENS = {"top_k": 0, "top_p": 1.0, "min_p": 0.0}  # no truncation


def spec_probs(logits: np.ndarray, recent: list[int], c: SamplerConfig) -> np.ndarray:
    """docs/SPEC.md §5, one step at a time, in float64 and with full sorts."""
    x = np.asarray(logits, dtype=np.float64).copy()
    if c.repeat_last_n > 0:
        for t in set(recent[-c.repeat_last_n :]):
            x[t] = x[t] / c.repeat_penalty if x[t] > 0 else x[t] * c.repeat_penalty
    out = np.zeros(x.size)
    if c.temperature == 0:
        out[np.argmax(x)] = 1.0
        return out
    x = x / c.temperature
    order = np.argsort(-x, kind="stable")  # descending, equal logits by ascending id
    if 0 < c.top_k < x.size:
        order = order[: c.top_k]
    p = np.exp(x[order] - x[order[0]])
    p /= p.sum()
    if c.top_p < 1:
        total, n = 0.0, 0
        while n < p.size:
            total += p[n]
            n += 1
            if total >= c.top_p:
                break
        order, p = order[:n], p[:n] / p[:n].sum()
    if c.min_p > 0:
        keep = p >= c.min_p * p[0]
        order, p = order[keep], p[keep] / p[keep].sum()
    out[order] = p
    return out


def random_config(rng: np.random.Generator, vocab: int) -> SamplerConfig:
    return SamplerConfig(
        temperature=float(rng.choice([0.0, 0.3, 0.8, 1.0, 1.7])),
        top_k=int(rng.choice([0, 1, 5, 40, vocab - 1, vocab + 3])),
        top_p=float(rng.choice([1.0, 0.95, 0.6, 0.2])),
        min_p=float(rng.choice([0.0, 0.05, 0.3])),
        repeat_penalty=float(rng.choice([1.0, 1.1, 1.5, 0.8])),
        repeat_last_n=int(rng.choice([0, 1, 8, 64])),
        seed=int(rng.integers(1000)),
    )


def test_filtered_probs_match_the_spec_on_random_cases():
    rng = np.random.default_rng(20240501)
    for _ in range(300):
        vocab = int(rng.choice([2, 7, 100, 3000, 5000]))
        logits = (rng.standard_normal(vocab) * rng.choice([0.5, 3.0])).astype(np.float32)
        recent = rng.integers(0, vocab, int(rng.integers(0, 100))).tolist()
        config = random_config(rng, vocab)
        got = Sampler(config).filtered_probs(logits, recent)
        want = spec_probs(logits, recent, config)
        assert set(np.flatnonzero(got)) == set(np.flatnonzero(want)), config
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)


def test_greedy_ties_go_to_lowest_id():
    sampler = Sampler(SamplerConfig(temperature=0))
    assert sampler.sample(np.array([1.0, 5.0, 3.0, 5.0], dtype=np.float32)) == 1
    logits = np.zeros(128_256, dtype=np.float32)
    logits[[90_000, 7_001, 120_000]] = 2.0
    assert sampler.sample(logits) == 7_001
    probs = sampler.filtered_probs(logits)
    assert probs[7_001] == 1.0 and probs.sum() == 1.0


@pytest.mark.parametrize("vocab", [10, 128_256])
def test_top_k_keeps_the_k_largest_with_ties_to_lowest_ids(vocab):
    logits = np.full(vocab, -1.0, dtype=np.float32)
    logits[[3, 5, 8, 9]] = 1.0  # four equal logits share the 2nd..5th places
    logits[7] = 2.0
    config = SamplerConfig(temperature=1.0, top_k=3, top_p=1.0, min_p=0.0, seed=0)
    probs = Sampler(config).filtered_probs(logits)
    assert set(np.flatnonzero(probs)) == {7, 3, 5}
    e = np.e
    np.testing.assert_allclose(probs[[7, 3, 5]], np.array([e, 1, 1]) / (e + 2))


@pytest.mark.parametrize("k", [1, 40, 1000, 50_000])
def test_top_k_on_a_large_vocabulary_matches_a_full_sort(k):
    logits = np.random.default_rng(k).standard_normal(128_256).astype(np.float32)
    logits[::97] = logits[5]  # many exact ties, one of them somewhere in the ranking
    config = SamplerConfig(temperature=1.0, top_k=k, top_p=1.0, min_p=0.0)
    kept = np.flatnonzero(Sampler(config).filtered_probs(logits))
    assert np.array_equal(kept, np.sort(np.argsort(-logits, kind="stable")[:k]))


def test_top_p_and_min_p_keep_the_sets_worked_out_by_hand():
    logits = np.log(np.array([0.05, 0.5, 0.15, 0.3], dtype=np.float32))

    def kept(**params: float) -> set[int]:
        config = SamplerConfig(**{"temperature": 1.0, **ALL_TOKENS, **params})
        return set(np.flatnonzero(Sampler(config).filtered_probs(logits)))

    assert kept(top_p=0.4) == {1}  # 0.5 alone reaches 0.4
    assert kept(top_p=0.7) == {1, 3}  # 0.5 + 0.3
    assert kept(top_p=0.85) == {1, 3, 2}  # 0.5 + 0.3 + 0.15
    assert kept(min_p=0.2) == {1, 3, 2}  # p >= 0.2 * 0.5
    assert kept(min_p=0.7) == {1}
    assert kept(top_p=0.85, min_p=0.4) == {1, 3}  # min-p after top-p: 0.15 < 0.4 * 0.5
    probs = Sampler(SamplerConfig(temperature=1.0, **ALL_TOKENS)).filtered_probs(logits)
    np.testing.assert_allclose(probs, [0.05, 0.5, 0.15, 0.3], rtol=1e-6)


def test_top_p_boundary_ties_go_to_lowest_ids():
    logits = np.array([0.0, 1.0, 1.0, 1.0, 1.0], dtype=np.float32)
    config = SamplerConfig(temperature=1.0, top_k=0, top_p=0.3, min_p=0.0)
    assert set(np.flatnonzero(Sampler(config).filtered_probs(logits))) == {1, 2}


def test_top_p_and_min_p_boundaries_are_inclusive():
    equal = np.zeros(4, dtype=np.float32)  # probabilities exactly 0.25 each
    top_p = SamplerConfig(temperature=1.0, top_k=0, top_p=0.5, min_p=0.0)
    assert set(np.flatnonzero(Sampler(top_p).filtered_probs(equal))) == {0, 1}  # 0.5 reaches 0.5
    min_p = SamplerConfig(temperature=1.0, top_k=0, top_p=1.0, min_p=1.0)
    logits = np.array([1.0, 0.0, 1.0], dtype=np.float32)
    assert set(np.flatnonzero(Sampler(min_p).filtered_probs(logits))) == {0, 2}


def test_top_p_on_a_flat_large_vocabulary_matches_the_spec():
    logits = np.random.default_rng(3).standard_normal(128_256).astype(np.float32)
    config = SamplerConfig(temperature=1.0, top_k=0, top_p=0.9, min_p=0.0)
    got = Sampler(config).filtered_probs(logits)
    want = spec_probs(logits, [], config)
    assert np.array_equal(np.flatnonzero(got), np.flatnonzero(want))
    assert np.flatnonzero(got).size > 50_000  # the growing search had to reach most of the vocab
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-15)


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_once_per_token():
    logits = np.array([2.0, -2.0, 1.0, 0.5], dtype=np.float32)
    config = SamplerConfig(temperature=1.0, **ALL_TOKENS, repeat_penalty=2.0, repeat_last_n=64)
    probs = Sampler(config).filtered_probs(logits, [0, 1, 0, 0])
    expected = np.exp([1.0, -4.0, 1.0, 0.5])
    np.testing.assert_allclose(probs, expected / expected.sum(), rtol=1e-6)


def test_repetition_penalty_only_looks_at_the_last_n_tokens():
    logits = np.array([3.0, 2.0, 2.5], dtype=np.float32)
    greedy = SamplerConfig(temperature=0, repeat_penalty=2.0, repeat_last_n=2)
    assert Sampler(greedy).sample(logits, [0, 2, 1]) == 0  # token 0 is outside the window
    assert Sampler(greedy).sample(logits, [2, 0, 1]) == 2  # 3/2 < 2.5, 2/2 < 2.5
    off = SamplerConfig(temperature=0, repeat_penalty=2.0, repeat_last_n=0)
    assert Sampler(off).sample(logits, [0, 0]) == 0


def test_same_seed_gives_same_tokens_and_other_seeds_differ():
    rng = np.random.default_rng(0)
    steps = [rng.standard_normal(500).astype(np.float32) for _ in range(200)]

    def run(seed: int | None) -> tuple[int, list[int]]:
        sampler = Sampler(SamplerConfig(temperature=1.0, top_k=50, seed=seed))
        tokens: list[int] = []
        for logits in steps:
            tokens.append(sampler.sample(logits, tokens))
        return sampler.seed, tokens

    assert run(7)[1] == run(7)[1]
    assert run(7)[1] != run(8)[1]
    drawn_seed, tokens = run(None)
    assert run(drawn_seed)[1] == tokens  # a run without a seed can be replayed from .seed


def test_seeded_keeps_a_seed_and_draws_one_otherwise():
    given = SamplerConfig(seed=5)
    assert given.seeded() is given
    drawn = SamplerConfig(temperature=0.5).seeded()
    assert drawn == SamplerConfig(temperature=0.5, seed=drawn.seed) and drawn.seed is not None
    assert Sampler(drawn).seed == drawn.seed


def test_draws_cover_exactly_the_filtered_support_and_fit_its_distribution():
    logits = (np.random.default_rng(11).standard_normal(200) * 1.5).astype(np.float32)
    recent = [int(np.argmax(logits)), 3, 3, 17]
    config = SamplerConfig(
        temperature=0.9, top_k=30, top_p=0.9, min_p=0.02, repeat_penalty=1.3, seed=12345
    )
    sampler = Sampler(config)
    probs = sampler.filtered_probs(logits, recent)
    support = np.flatnonzero(probs)
    assert 5 < support.size < 30
    n = 20_000
    draws = np.array([sampler.sample(logits, recent) for _ in range(n)])
    counts = np.bincount(draws, minlength=logits.size)
    assert set(np.flatnonzero(counts)) == set(support)
    assert chisquare(counts[support], n * probs[support]).pvalue > 1e-3


def test_minus_infinity_logits_are_never_drawn():
    logits = np.array([-np.inf, 0.0, -np.inf, 0.0], dtype=np.float32)
    sampler = Sampler(SamplerConfig(temperature=1.0, top_k=3, top_p=1.0, min_p=0.0, seed=1))
    assert {sampler.sample(logits) for _ in range(200)} == {1, 3}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("temperature", "hot"),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("min_p", -0.01),
        ("min_p", 2.0),
        ("repeat_penalty", 0.0),
        ("top_k", -1),
        ("top_k", 2.5),
        ("repeat_last_n", -1),
        ("seed", -3),
        ("seed", True),
    ],
)
def test_bad_parameters_are_refused_with_their_name_and_value(field, value):
    with pytest.raises(SamplingError, match=f"{field} .*{value!r}"):
        SamplerConfig(**{field: value})


@pytest.mark.parametrize(
    ("logits", "recent", "message"),
    [
        (np.array([0.0, np.nan], dtype=np.float32), [], "NaN"),
        (np.array([0.0, np.inf], dtype=np.float32), [], r"\+inf"),
        (np.full(3, -np.inf, dtype=np.float32), [], "every logit is -inf"),
        (np.zeros((2, 3), dtype=np.float32), [], r"shape \(2, 3\)"),
        (np.array([1, 2, 3]), [], "int64"),
        (np.zeros(0, dtype=np.float32), [], "non-empty"),
        (np.zeros(4, dtype=np.float32), [1, 4], "token id 4 is outside the vocabulary of 4"),
        (np.zeros(4, dtype=np.float32), [-1], "token id -1"),
    ],
)
def test_bad_logits_and_recent_tokens_are_refused(logits, recent, message):
    sampler = Sampler(SamplerConfig(repeat_penalty=1.1, seed=0))
    with pytest.raises(SamplingError, match=message):
        sampler.sample(logits, recent)


def test_stop_string_split_across_pieces_is_held_back_and_cut():
    stops = StopStrings(["</s>", "\n\nUser:"])
    assert stops.push("Hello <") == "Hello "
    assert stops.push("/") == ""
    assert stops.push("b> and\n") == "</b> and"  # "</b" was not a stop after all
    assert stops.push("\nUs") == ""
    assert stops.push("er: more") == ""
    assert stops.stopped
    assert stops.push("ignored") == ""
    assert stops.flush() == ""


def test_stop_strings_release_held_text_at_the_end():
    stops = StopStrings(["STOP"])
    assert stops.push("the end ST") == "the end "
    assert not stops.stopped
    assert stops.flush() == "ST"


def _first_stop(text: str, stops: list[str]) -> int | None:
    """Where the text is cut: at the start of the first stop string to end in it (the longest
    of those ending at the same place)."""
    for end in range(1, len(text) + 1):
        ending = [len(s) for s in stops if text[:end].endswith(s)]
        if ending:
            return end - max(ending)
    return None


@given(
    text=st.text(alphabet="ab<>/", max_size=40),
    stops=st.lists(st.text(alphabet="ab<>/", min_size=1, max_size=6), min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 40), max_size=8),
)
def test_stop_strings_give_the_same_text_however_it_is_split(text, stops, cuts):
    bounds = [0, *sorted(min(c, len(text)) for c in cuts), len(text)]
    watcher = StopStrings(stops)
    out = "".join(watcher.push(text[a:b]) for a, b in pairwise(bounds))
    cut = _first_stop(text, stops)
    if cut is not None:
        assert watcher.stopped and out == text[:cut]
    else:
        assert not watcher.stopped and out + watcher.flush() == text


def test_a_long_self_overlapping_stop_string_is_found_in_a_long_stream():
    # Near misses make a naive matcher restart each time; the prefix table resumes instead.
    stop = "a" * (MAX_STOP_CHARS - 1) + "b"
    watcher = StopStrings([stop])
    out = "".join(watcher.push("a" * 7) for _ in range(3000))
    assert not watcher.stopped and out == "a" * (3000 * 7 - len(stop) + 1)
    assert watcher.push("ab tail") == "a"  # held a*1023 + "a": the stop starts one further on
    assert watcher.stopped


@pytest.mark.parametrize("stop", ["", None, "x" * (MAX_STOP_CHARS + 1)])
def test_empty_or_overlong_stop_strings_are_refused(stop):
    with pytest.raises(SamplingError, match="non-empty|the limit is 256"):
        StopStrings(["ok", stop])


def test_a_tiny_temperature_splits_the_mass_between_the_tied_maxima():
    config = SamplerConfig(temperature=1e-300, top_k=0, top_p=1.0, min_p=0.0)
    logits = np.array([1.0, 3.0, 2.0, 3.0], dtype=np.float32)
    np.testing.assert_array_equal(Sampler(config).filtered_probs(logits), [0, 0.5, 0, 0.5])
