"""Choosing the next token from logits (docs/SPEC.md §5), and finding stop strings in streamed text.

The order is fixed: repetition penalty -> temperature -> top-k -> top-p -> min-p -> draw.
Temperature comes before the truncations (as docs/SPEC.md says; llama.cpp's default chain applies
it last), so it changes which tokens top-p and min-p keep. Ties are broken towards the lowest
token id everywhere (greedy argmax, the top-k and top-p boundaries), so results never depend
on how numpy orders equal values.
"""

from __future__ import annotations

import math
import numbers
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from pybitnet.errors import SamplingError


@dataclass(frozen=True)
class SamplerConfig:
    """Sampling parameters; the defaults are llama.cpp's.

    temperature 0 means greedy; top_k 0, top_p 1 and min_p 0 turn those filters off;
    repeat_penalty 1 or repeat_last_n 0 turn the penalty off; seed None draws a fresh one.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None

    def __post_init__(self) -> None:
        reals = {
            "temperature": (self.temperature, lambda v: v >= 0, ">= 0"),
            "top_p": (self.top_p, lambda v: 0 < v <= 1, "in (0, 1]"),
            "min_p": (self.min_p, lambda v: 0 <= v <= 1, "in [0, 1]"),
            "repeat_penalty": (self.repeat_penalty, lambda v: v > 0, "> 0"),
        }
        for name, (value, ok, expected) in reals.items():
            if not _is_real(value) or not math.isfinite(value) or not ok(value):
                raise SamplingError(
                    f"sampler {name} must be a finite number {expected}, got {value!r}"
                )
        ints = {"top_k": self.top_k, "repeat_last_n": self.repeat_last_n, "seed": self.seed}
        for name, value in ints.items():
            if name == "seed" and value is None:
                continue
            if not _is_int(value) or value < 0:
                raise SamplingError(f"sampler {name} must be an integer >= 0, got {value!r}")

    def seeded(self) -> SamplerConfig:
        """This config with a seed: its own, or a fresh one drawn now when it has none, so that
        a run can still be reported and replayed."""
        return self if self.seed is not None else replace(self, seed=secrets.randbits(63))


class Sampler:
    """Draws tokens from logits with a seeded generator: same seed, same logits -> same tokens."""

    def __init__(self, config: SamplerConfig | None = None) -> None:
        self.config = config or SamplerConfig()
        self.seed = self.config.seeded().seed  # the seed actually used (see `seeded`)
        self._rng = np.random.default_rng(self.seed)

    def sample(self, logits: np.ndarray, recent_tokens: Sequence[int] = ()) -> int:
        """The next token id, given the logits over the vocabulary and the tokens so far."""
        logits = self._penalized(logits, recent_tokens)
        if self.config.temperature == 0:
            return int(np.argmax(logits))  # argmax returns the first maximum: the lowest id
        ids, probs = self._candidates(logits)
        cdf = np.cumsum(probs)
        i = int(np.searchsorted(cdf, self._rng.random() * cdf[-1], side="right"))
        return int(ids[min(i, ids.size - 1)])

    def filtered_probs(self, logits: np.ndarray, recent_tokens: Sequence[int] = ()) -> np.ndarray:
        """The distribution `sample` draws from, over the whole vocabulary (float64, zero where
        a filter removed the token; one-hot at the argmax when greedy)."""
        logits = self._penalized(logits, recent_tokens)
        out = np.zeros(logits.size)
        if self.config.temperature == 0:
            out[np.argmax(logits)] = 1.0
        else:
            ids, probs = self._candidates(logits)
            out[ids] = probs
        return out

    def _penalized(self, logits: np.ndarray, recent_tokens: Sequence[int]) -> np.ndarray:
        """Checked logits, with the repetition penalty applied once to each distinct token of
        the last repeat_last_n tokens: positive logits divided by it, others multiplied (as
        llama.cpp does)."""
        logits = np.asarray(logits)
        if logits.ndim != 1 or logits.size == 0 or not np.issubdtype(logits.dtype, np.floating):
            raise SamplingError(
                f"logits must be a non-empty 1-D float array, got shape {logits.shape} "
                f"of {logits.dtype}"
            )
        if not (logits < np.inf).all():
            raise SamplingError("logits contain NaN or +inf")
        if not logits.max() > -np.inf:
            raise SamplingError("every logit is -inf: there is no token to choose")
        penalty, last_n = self.config.repeat_penalty, self.config.repeat_last_n
        if penalty == 1 or last_n == 0 or len(recent_tokens) == 0:
            return logits
        window = np.asarray(recent_tokens[-last_n:], dtype=np.int64)
        bad = window[(window < 0) | (window >= logits.size)]
        if bad.size:
            raise SamplingError(
                f"recent token id {int(bad[0])} is outside the vocabulary of {logits.size} tokens"
            )
        ids = np.unique(window)
        logits = logits.copy()
        seen = logits[ids]
        logits[ids] = np.where(seen > 0, seen / penalty, seen * penalty)
        return logits

    def _candidates(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (ascending) that survive top-k, top-p and min-p, and their probabilities."""
        c = self.config
        ids = _top_positions(logits, c.top_k) if 0 < c.top_k < logits.size else None
        x = (logits if ids is None else logits[ids]).astype(np.float64)
        with np.errstate(over="ignore"):  # at a tiny temperature, -inf: probability 0
            probs = np.exp((x - x.max()) / c.temperature)
        probs /= probs.sum()
        ids = np.arange(logits.size) if ids is None else ids
        if c.top_p < 1:
            keep = _top_p_positions(probs, c.top_p)
            ids, probs = ids[keep], probs[keep] / probs[keep].sum()
        if c.min_p > 0:
            keep = probs >= c.min_p * probs.max()
            ids, probs = ids[keep], probs[keep] / probs[keep].sum()
        return ids, probs


def _top_positions(values: np.ndarray, k: int) -> np.ndarray:
    """Positions (ascending) of the k largest values, ties going to the lowest positions.

    Avoids a full sort or partition of a large vocabulary: the k-th largest of the maxima of
    `rows` disjoint slices is a lower bound on the k-th largest value (k slices reach it), so
    only the few values above that bound need partitioning.
    """
    n = values.size
    rows = min(n, max(1024, 4 * k))
    row_max = values[: n - n % rows].reshape(rows, -1).max(axis=1)
    bound = np.partition(row_max, rows - k)[rows - k]
    pos = np.flatnonzero(values >= bound)
    v = values[pos]
    kth = np.partition(v, v.size - k)[v.size - k]
    above = pos[v > kth]
    ties = pos[v == kth][: k - above.size]
    return np.sort(np.concatenate([above, ties]))


def _top_p_positions(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Positions (ascending) of the most probable entries, taken in descending order of
    probability (ties: lowest position first) up to and including the first at which the
    cumulative sum reaches top_p. Sorts the top 64 values, then 8 times more, until the mass is
    reached; sorting values only, then selecting by the last kept value, keeps the tie rule."""
    m = min(probs.size, 64)
    while True:
        top = probs if m == probs.size else probs[_top_positions(probs, m)]
        top = np.sort(top)[::-1]
        cut = int(np.searchsorted(np.cumsum(top), top_p))
        if cut < m or m == probs.size:
            cut = min(cut, m - 1)  # rounding can leave the whole sum just short of top_p
            above = np.flatnonzero(probs > top[cut])
            ties = np.flatnonzero(probs == top[cut])[: cut + 1 - above.size]
            return np.sort(np.concatenate([above, ties]))
        m = min(probs.size, 8 * m)


# Characters of one stop string: sane stop strings are words or markers. Matching is linear in
# the text whatever their length, but the text held back while one might be starting is not.
MAX_STOP_CHARS = 256


class StopStrings:
    """Watches streamed text for stop strings, in time linear in the text however long they are.

    `push` takes each new piece of text and returns what is safe to show: it holds back an end
    that could be the start of a stop string, and once a stop string appears it returns the text
    before it and sets `stopped`. `flush` returns what is held back when generation ends. The
    stream stops at the first stop string to end in it, so the result never depends on how the
    text was split into pieces.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        for s in stops:
            if not isinstance(s, str) or not s:
                raise SamplingError(f"stop strings must be non-empty strings, got {s!r}")
            if len(s) > MAX_STOP_CHARS:
                raise SamplingError(
                    f"a stop string has {len(s)} characters; the limit is {MAX_STOP_CHARS}"
                )
        self.stops = tuple(stops)
        self._fallback = [_prefix_function(s) for s in self.stops]
        self._matched = [0] * len(self.stops)  # of each stop, the length of its prefix text ends in
        self.stopped = False
        self._held = ""

    def push(self, piece: str) -> str:
        if self.stopped:
            return ""
        text = self._held + piece
        for end, char in enumerate(piece, start=len(self._held) + 1):
            found = [len(s) for i, s in enumerate(self.stops) if self._advance(i, char) == len(s)]
            if found:  # the longest stop ending here starts first
                self.stopped, self._held = True, ""
                return text[: end - max(found)]
        hold = max(self._matched, default=0)
        self._held = text[len(text) - hold :]
        return text[: len(text) - hold]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    def _advance(self, i: int, char: str) -> int:
        """Knuth-Morris-Pratt: how much of stop i the text ends in, after one more character."""
        stop, fallback, n = self.stops[i], self._fallback[i], self._matched[i]
        while n and stop[n] != char:
            n = fallback[n - 1]
        if stop[n] == char:
            n += 1
        self._matched[i] = n
        return n


def _prefix_function(s: str) -> list[int]:
    """For each prefix of s, the length of its longest proper prefix that is also its suffix."""
    table = [0] * len(s)
    n = 0
    for i in range(1, len(s)):
        while n and s[i] != s[n]:
            n = table[n - 1]
        if s[i] == s[n]:
            n += 1
        table[i] = n
    return table


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
