"""The token loop, written once: prefill, the decode step for one sequence or many, sampling,
end of generation, stop strings and finish_reason.

`Model.generate/stream/chat` (generate.py), the server's scheduler, `pybitnet bench` and
`benchmarks/decode.py` all run on it, so the same prompt and seed give the same token ids
through each of them, alone or inside a batch:

    gen = Generation(prompt_ids, engine.new_cache(n), tokenizer=tok, sampling=cfg, max_tokens=64)
    for text in run(engine, gen):       # one sequence; `step` + `Generation.advance` for many
        print(text, end="")
    gen.token_ids, gen.finish_reason    # "stop" (end-of-generation token, stop string), "length"

A step feeds every sequence of the batch, in ONE forward pass, its next chunk of at most
PREFILL_CHUNK prompt tokens (prefill) or the token it sampled last (decode), so the weights are
read once per step for the whole batch, and a long prompt never holds up the others for more
than one chunk.

Speculative decoding (``draft_tokens=k``): a decoding sequence also feeds up to k tokens drafted
by prompt lookup (speculative.py), and the step returns the logits of every position it fed. The
sequence samples each row in turn, as it would one step at a time, and keeps going while the
token it drew is the draft the next row was computed after; the keys and values of the drafts
after the first miss are dropped (the cache's length set back). Every row's logits are the ones a
one-token pass gives (the kernels treat each row alone, bit for bit, but for an F16 matrix: see
docs/SPEC.md §5), and each token takes one draw of the same seeded sampler, so the ids are those
of plain decoding, greedy or sampled.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from pybitnet.engine.forward import PREFILL_CHUNK
from pybitnet.errors import SamplingError
from pybitnet.model.config import ModelConfig
from pybitnet.sampling import Sampler, SamplerConfig, StopStrings
from pybitnet.speculative import MAX_DRAFT_TOKENS, PromptLookup
from pybitnet.tokenizer import StreamDecoder, Tokenizer

__all__ = ["PREFILL_CHUNK", "ForwardPass", "Generation", "prefill", "run", "step"]


class ForwardPass(Protocol):
    """What the loop needs of a forward pass: the engine and the float64 reference provide it.
    A cache holds one sequence's keys and values (`length` positions filled of `n_ctx`)."""

    config: ModelConfig

    def new_cache(self, n_ctx: int | None = None) -> Any: ...

    def forward(
        self, tokens: Sequence[int], cache: Any, *, last_only: bool = False
    ) -> np.ndarray: ...

    def forward_batch(
        self, items: Sequence[tuple[Sequence[int], Any]], *, rows: Sequence[int] | None = None
    ) -> list[np.ndarray]: ...


class Generation:
    """One sequence being generated: its prompt, KV cache, sampler and progress.

    ``stop_at_eog=False`` generates end-of-generation ids like any other (as llama-bench does);
    ``tokenizer=None`` skips the text (a benchmark that only needs ids; no stop strings then).
    ``draft_tokens``: tokens drafted a step at most (0: plain decoding); `drafted`, `accepted`
    and `steps` (passes that sampled) count how it went.
    """

    def __init__(
        self,
        prompt_ids: Sequence[int],
        cache: Any,
        *,
        tokenizer: Tokenizer | None,
        sampling: SamplerConfig,
        max_tokens: int,
        stop: Sequence[str] = (),
        stop_at_eog: bool = True,
        draft_tokens: int = 0,
    ) -> None:
        if type(draft_tokens) is not int or not 0 <= draft_tokens <= MAX_DRAFT_TOKENS:
            raise SamplingError(
                f"draft_tokens must be an integer from 0 to {MAX_DRAFT_TOKENS}, "
                f"got {draft_tokens!r}"
            )
        self.prompt_ids = list(prompt_ids)
        self.cache = cache
        self.sampler = Sampler(sampling)
        self.stops = StopStrings(stop)
        if stop and tokenizer is None:
            raise ValueError("stop strings need the tokenizer's text")
        self.decoder = StreamDecoder(tokenizer) if tokenizer is not None else None
        self.eog_ids = tokenizer.eog_ids if tokenizer is not None and stop_at_eog else frozenset()
        # A file may have more embedding rows than tokens: ids past the tokenizer's have no text.
        self.vocab_size = tokenizer.vocab_size if tokenizer is not None else None
        self.max_tokens = max_tokens
        self.pending = list(prompt_ids)  # tokens not yet in the cache
        self.history = list(prompt_ids)  # what the repetition penalty looks back over
        self.token_ids: list[int] = []  # generated, end-of-generation id excluded
        self.drafter = PromptLookup(draft_tokens)
        self.drafts: list[int] = []  # fed after the last sampled token, to be verified
        self.drafted = self.accepted = self.steps = 0
        self.finish_reason: str | None = None if max_tokens > 0 else "length"

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def feed(self) -> list[int]:
        """The tokens this sequence puts into the next forward pass (and takes off `pending`)."""
        chunk, self.pending = self.pending[:PREFILL_CHUNK], self.pending[PREFILL_CHUNK:]
        return chunk

    def advance(self, logits: np.ndarray) -> str:
        """Samples the next tokens from the logits that predict them (one row per token fed:
        the last sampled and its drafts); returns the text they make safe to show (stop strings
        and partial UTF-8 characters are held back), and when the generation ends, sets
        finish_reason and returns what was held back too."""
        text = ""
        for verified, row in enumerate(logits):
            token = self.sampler.sample(row[: self.vocab_size], self.history)
            text += self._take(token)
            if self.finished or verified == len(self.drafts) or token != self.drafts[verified]:
                break
        rejected = len(self.drafts) - verified
        if rejected:
            self.cache.truncate(self.cache.length - rejected)
        self.drafter.verified(len(self.drafts), verified)
        self.drafted += len(self.drafts)
        self.accepted += verified
        self.steps += 1
        if self.finished:
            self.drafts = []
        else:
            self.drafts = self.drafter.draft(self.history, self._draft_room())
            self.pending = [token, *self.drafts]
        return text

    def _take(self, token: int) -> str:
        """Appends a sampled token; its text, and the end of the generation when it ends it."""
        if token in self.eog_ids:
            return self._finish("stop")
        self.token_ids.append(token)
        self.history.append(token)
        text = self.stops.push(self.decoder.push(token)) if self.decoder is not None else ""
        if self.stops.stopped:
            return text + self._finish("stop")
        if len(self.token_ids) == self.max_tokens:
            return text + self._finish("length")
        return text

    def _draft_room(self) -> int:
        """Tokens worth drafting now: a pass of 1 + k tokens yields k + 1 at most, and must fit
        the cache."""
        if not self.drafter.limit:
            return 0
        left = self.max_tokens - len(self.token_ids)
        return min(left - 1, self.cache.n_ctx - self.cache.length - 1)

    def _finish(self, reason: str) -> str:
        self.finish_reason = reason
        if self.decoder is None:
            return ""
        return self.stops.push(self.decoder.flush()) + self.stops.flush()


def step(forward: ForwardPass, batch: Sequence[Generation]) -> list[np.ndarray | None]:
    """One forward pass over the batch (every sequence unfinished, with tokens to feed). Returns,
    for each sequence, the logits (rows, vocab) that predict its next tokens: one row, or one
    more per draft it fed; None while its prompt is still being prefilled."""
    # The output layer runs on the rows sampled from only: a sequence's last, and its drafts'.
    items = [(gen.feed(), gen.cache) for gen in batch]
    logits = forward.forward_batch(items, rows=[1 + len(gen.drafts) for gen in batch])
    return [row if not gen.pending else None for gen, row in zip(batch, logits, strict=True)]


def prefill(forward: ForwardPass, batch: Sequence[Generation]) -> list[np.ndarray]:
    """Steps until the prompt of every sequence of the batch (none fed yet) is in its cache, the
    prompts of equal length sharing each step; returns each one's logits (1, vocab) for its
    first token."""
    logits: dict[int, np.ndarray] = {}
    while todo := [gen for gen in batch if gen.pending]:
        for gen, row in zip(todo, step(forward, todo), strict=True):
            if row is not None:
                logits[id(gen)] = row
    return [logits[id(gen)] for gen in batch]


def run(forward: ForwardPass, gen: Generation) -> Iterator[str]:
    """Generates one sequence to its end, yielding its text piece by piece."""
    while not gen.finished:
        (logits,) = step(forward, [gen])
        if logits is not None:
            text = gen.advance(logits)
            if text:
                yield text
