"""`pybitnet run`'s timings, measured around the API calls and reported as llama.cpp does: load,
the prompt (until the first piece of text arrives: prefill and the first sampled token), then
the decode of the tokens after the first."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Timings:
    load_s: float
    prompt_tokens: int
    prompt_s: float
    decode_tokens: int  # the generated tokens after the first
    decode_s: float
    generated_tokens: int

    def as_dict(self) -> dict[str, float]:
        rates = dict(
            prompt_tok_s=_rate(self.prompt_tokens, self.prompt_s),
            decode_tok_s=_rate(self.decode_tokens, self.decode_s),
        )
        return {**asdict(self), **rates}

    def line(self) -> str:
        """One line for stderr: "pybitnet: load 0.36 s | prompt 5 tokens in 3.5 ms (1446.8
        tok/s) | decode 39 tokens in 42.8 ms (911.9 tok/s) | 40 tokens generated"."""
        d = self.as_dict()
        return (
            f"pybitnet: load {self.load_s:.2f} s | prompt {self.prompt_tokens} tokens in "
            f"{self.prompt_s * 1e3:.1f} ms ({d['prompt_tok_s']:.1f} tok/s) | decode "
            f"{self.decode_tokens} tokens in {self.decode_s * 1e3:.1f} ms "
            f"({d['decode_tok_s']:.1f} tok/s) | {self.generated_tokens} tokens generated"
        )


def _rate(tokens: int, seconds: float) -> float:
    return tokens / seconds if tokens > 0 and seconds > 0 else 0.0


def timed_load(load: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    model = load()
    return model, time.perf_counter() - start


def timed_pieces(
    model: Any, prompt: str, options: dict[str, Any], load_s: float
) -> tuple[Iterator[str], Any, Callable[[], Timings]]:
    """The continuation's pieces, its Completion (filled as they are read) and, once they are
    all read, its Timings."""
    from pybitnet.generate import Completion

    done = Completion()
    marks: list[float] = []

    def pieces() -> Iterator[str]:
        marks.append(time.perf_counter())
        for piece in model.stream(prompt, result=done, **options):
            if len(marks) == 1:
                marks.append(time.perf_counter())
            yield piece
        marks.extend([time.perf_counter()] * (3 - len(marks)))

    def timings() -> Timings:
        start, first, end = marks
        generated = len(done.token_ids)
        decode = max(generated - 1, 0)
        return Timings(load_s, done.prompt_tokens, first - start, decode, end - first, generated)

    return pieces(), done, timings
