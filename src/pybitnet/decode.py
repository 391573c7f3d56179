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
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from pybitnet.engine.forward import PREFILL_CHUNK
from pybitnet.model.config import ModelConfig
from pybitnet.sampling import Sampler, SamplerConfig, StopStrings
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
        self, items: Sequence[tuple[Sequence[int], Any]], *, last_only: bool = False
    ) -> list[np.ndarray]: ...


class Generation:
    """One sequence being generated: its prompt, KV cache, sampler and progress.

    ``stop_at_eog=False`` generates end-of-generation ids like any other (as llama-bench does);
    ``tokenizer=None`` skips the text (a benchmark that only needs ids; no stop strings then).
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
    ) -> None:
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
        self.finish_reason: str | None = None if max_tokens > 0 else "length"

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def feed(self) -> list[int]:
        """The tokens this sequence puts into the next forward pass (and takes off `pending`)."""
        chunk, self.pending = self.pending[:PREFILL_CHUNK], self.pending[PREFILL_CHUNK:]
        return chunk

    def advance(self, logits: np.ndarray) -> str:
        """Samples the next token from the logits that predict it; returns the text it makes
        safe to show (stop strings and partial UTF-8 characters are held back), and when the
        generation ends, sets finish_reason and returns what was held back too."""
        token = self.sampler.sample(logits[: self.vocab_size], self.history)
        if token in self.eog_ids:
            return self._finish("stop")
        self.token_ids.append(token)
        self.history.append(token)
        text = self.stops.push(self.decoder.push(token)) if self.decoder is not None else ""
        if self.stops.stopped:
            return text + self._finish("stop")
        if len(self.token_ids) == self.max_tokens:
            return text + self._finish("length")
        self.pending = [token]
        return text

    def _finish(self, reason: str) -> str:
        self.finish_reason = reason
        if self.decoder is None:
            return ""
        return self.stops.push(self.decoder.flush()) + self.stops.flush()


def step(forward: ForwardPass, batch: Sequence[Generation]) -> list[np.ndarray | None]:
    """One forward pass over the batch (every sequence unfinished, with tokens to feed). Returns,
    for each sequence, the logits that predict its next token, or None while its prompt is
    still being prefilled."""
    rows = forward.forward_batch([(gen.feed(), gen.cache) for gen in batch], last_only=True)
    return [row[-1] if not gen.pending else None for gen, row in zip(batch, rows, strict=True)]


def prefill(forward: ForwardPass, batch: Sequence[Generation]) -> list[np.ndarray]:
    """Steps until the prompt of every sequence of the batch (none fed yet) is in its cache, the
    prompts of equal length sharing each step; returns each one's logits for its first token."""
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
