"""Text in, text out: a loaded model (`load`, `Model`) whose generation runs on the one token
loop in decode.py."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from pybitnet import decode
from pybitnet.chat import fit_conversation, render_chat, template_for
from pybitnet.data import default_model_path
from pybitnet.engine import Engine
from pybitnet.errors import ContextError, ModelError
from pybitnet.gguf import open_gguf
from pybitnet.model import ModelConfig, Weights
from pybitnet.sampling import SamplerConfig
from pybitnet.tokenizer import Tokenizer


@dataclass
class Completion:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    finish_reason: str = "length"  # or "stop": an end-of-generation token or a stop string
    dropped: list[dict[str, Any]] = field(default_factory=list)  # chat turns left out to fit
    # Wall-clock milliseconds: the prompt's prefill, then sampling every generated token.
    prompt_ms: float = 0.0
    generation_ms: float = 0.0
    # Speculative decoding (draft_tokens > 0): tokens drafted and accepted, passes that sampled.
    drafted: int = 0
    accepted: int = 0
    steps: int = 0


class Model:
    """A GGUF model ready to generate text: tokenizer, weights and the engine's forward pass
    (native kernels; numpy ones under PYBITNET_KERNELS=numpy). ``output_head="q8"`` holds
    the output layer as int8 rows, "q6_k" and "q4_k" requantize it (see Engine; receipts record
    ``output_head``); ``kv_cache`` is the KV cache's element type (f16 by default, f32, q8_0: see
    Engine). ``load_seconds``: how long loading took."""

    def __init__(
        self,
        path: str | Path,
        *,
        n_ctx: int | None = None,
        output_head: str | None = None,
        kv_cache: str | None = None,
    ) -> None:
        started = time.perf_counter()
        self.path = Path(path)
        self.output_head = output_head
        self.file = open_gguf(self.path)
        self.config = ModelConfig.from_metadata(self.file.metadata, str(self.path))
        self.weights = Weights.from_gguf(self.file, self.config)
        self.tokenizer = Tokenizer.from_metadata(self.file.metadata, source=str(self.path))
        if self.tokenizer.vocab_size > self.config.vocab_size:
            raise ModelError(
                f"{self.path}: the tokenizer has {self.tokenizer.vocab_size} tokens but "
                f"token_embd.weight has only {self.config.vocab_size} rows"
            )
        self.n_ctx = self.config.context(n_ctx)
        self.engine = Engine(self.weights, output_head=output_head, kv_cache=kv_cache)
        self._check_kv_fits()
        self.load_seconds = time.perf_counter() - started

    def context_problem(self, n_ctx: int | None) -> str | None:
        """Why the server refuses a context of n_ctx tokens: more than the model was trained
        for (the Python API and `run` use the trained length instead), or None."""
        trained = self.config.context_length
        if n_ctx is None or n_ctx <= trained:
            return None
        name = self.path.name
        return f"{n_ctx} is more than the {trained} tokens of context {name} was trained for"

    def _check_kv_fits(self) -> None:
        """A sequence's KV cache is allocated for the whole context (its pages are touched as
        it fills): one the machine could never hold is refused now, not at the first long
        generation."""
        kv_bytes = self.engine.kv_bytes_per_token() * self.n_ctx
        memory = psutil.virtual_memory().total
        if kv_bytes > memory:
            raise ModelError(
                f"{self.path}: a context of {self.n_ctx} tokens needs {kv_bytes / 2**30:.1f} GiB "
                f"of KV cache, more than this machine's {memory / 2**30:.1f} GiB of memory; "
                "ask for a smaller context (--ctx, n_ctx)"
            )

    def tokenize(self, text: str, *, add_bos: bool | None = None, parse_special: bool = False):
        return self.tokenizer.encode(text, add_bos=add_bos, parse_special=parse_special)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(token_ids)

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Teacher-forced logits (len(token_ids), vocab) from one fresh pass."""
        ids = self._checked_ids(token_ids)
        if not 0 < len(ids) <= self.n_ctx:
            raise ModelError(
                f"{self.path}: logits need 1 to {self.n_ctx} token ids (the context), "
                f"got {len(ids)}"
            )
        return self.engine.forward(ids, self.engine.new_cache(self.n_ctx))

    def _checked_ids(self, token_ids: Sequence[int]) -> list[int]:
        ids = [int(t) for t in token_ids]
        bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ModelError(
                f"{self.path}: token id {bad[0]} is outside the vocabulary "
                f"[0, {self.config.vocab_size})"
            )
        return ids

    def complete(
        self,
        prompt: str | Sequence[int],
        *,
        max_tokens: int = 128,
        stop: Sequence[str] = (),
        parse_special: bool = False,
        draft_tokens: int = 0,
        **sampling: Any,
    ) -> Completion:
        """The continuation of the prompt. ``draft_tokens=k`` decodes speculatively: up to k
        tokens drafted a step by prompt lookup, verified in one pass (decode.py); the ids are
        the same as without."""
        result = Completion()
        pieces = self._pieces(
            prompt, result, max_tokens, stop, parse_special, draft_tokens, sampling
        )
        for _ in pieces:
            pass
        return result

    def stream(
        self,
        prompt: str | Sequence[int],
        *,
        max_tokens: int = 128,
        stop: Sequence[str] = (),
        parse_special: bool = False,
        result: Completion | None = None,
        draft_tokens: int = 0,
        **sampling: Any,
    ) -> Iterator[str]:
        """Yields the continuation's text piece by piece (never half a UTF-8 character);
        ``result`` receives the ids, finish_reason and timings as they come."""
        result = Completion() if result is None else result
        yield from self._pieces(
            prompt, result, max_tokens, stop, parse_special, draft_tokens, sampling
        )

    def generate(self, prompt: str | Sequence[int], **options: Any) -> str:
        return self.complete(prompt, **options).text

    def chat(self, messages: Sequence[dict[str, str]], **options: Any) -> str:
        return self.complete_chat(messages, **options).text

    def complete_chat(self, messages: Sequence[dict[str, str]], **options: Any) -> Completion:
        """The reply to a conversation, as `stream_chat` fits it; the turns left out are in
        the result's `dropped`."""
        result = Completion()
        for _ in self.stream_chat(messages, result, **options):
            pass
        return result

    def stream_chat(
        self,
        messages: Sequence[dict[str, str]],
        result: Completion | None = None,
        *,
        max_tokens: int | None = None,
        stop: Sequence[str] = (),
        draft_tokens: int = 0,
        **sampling: Any,
    ) -> Iterator[str]:
        """Streams the reply to the messages that fit the context (`chat.fit_conversation`:
        the oldest turns are dropped, never the system prompt); without max_tokens the reply
        may fill the rest of the context. ``result`` receives the finish_reason and `dropped`."""
        result = Completion() if result is None else result
        fitted = fit_conversation(self, messages, max_tokens)
        result.dropped = fitted.dropped
        yield from self._pieces(
            fitted.prompt, result, max_tokens, stop, True, draft_tokens, sampling
        )

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """The prompt of a conversation, rendered within chat_template.Limits' bounds; a failure
        is a TemplateError whose message names no path (the caller may add ``self.path``)."""
        # BOS comes from the tokenizer (add_bos), so the template renders it empty.
        t = self.tokenizer
        eos = t.token_bytes(t.eos_id).decode("utf-8", "replace") if t.eos_id is not None else ""
        source = "tokenizer.chat_template" if t.chat_template is not None else "chat template"
        return render_chat(template_for(t), list(messages), eos_token=eos, source=source)

    def _pieces(
        self,
        prompt: str | Sequence[int],
        result: Completion,
        max_tokens: int | None,
        stop: Sequence[str],
        parse_special: bool,
        draft_tokens: int,
        sampling: dict[str, Any],
    ) -> Iterator[str]:
        ids = (
            self.tokenize(prompt, parse_special=parse_special)
            if isinstance(prompt, str)
            else self._checked_ids(prompt)
        )
        if not ids:
            raise ModelError(f"{self.path}: the prompt is empty and the model adds no BOS token")
        if len(ids) >= self.n_ctx:
            raise ContextError(
                f"{self.path}: the prompt has {len(ids)} tokens; the context holds {self.n_ctx}, "
                "so there is no room to generate"
            )
        room = self.n_ctx - len(ids)
        max_tokens = room if max_tokens is None else max_tokens
        if max_tokens < 0:
            raise ModelError(f"{self.path}: max_tokens must be >= 0, got {max_tokens}")
        gen = decode.Generation(
            ids,
            self.engine.new_cache(self.n_ctx),
            tokenizer=self.tokenizer,
            sampling=SamplerConfig(**sampling),
            max_tokens=min(max_tokens, room),
            stop=stop,
            draft_tokens=draft_tokens,
        )
        result.prompt_tokens = len(ids)  # the request is valid: generation starts
        result.token_ids = gen.token_ids  # filled as the loop runs
        if not gen.finished:  # max_tokens 0 runs nothing
            yield from self._timed_run(gen, result)
        result.finish_reason = gen.finish_reason

    def _timed_run(self, gen: decode.Generation, result: Completion) -> Iterator[str]:
        """decode.run, timing the prompt's prefill apart from the generation."""
        started = time.perf_counter()
        (logits,) = decode.prefill(self.engine, [gen])
        result.prompt_ms = 1e3 * (time.perf_counter() - started)
        started = time.perf_counter()
        first = gen.advance(logits)
        for text in itertools.chain([first], decode.run(self.engine, gen)):
            if text:
                result.text += text
                yield text
        result.generation_ms = 1e3 * (time.perf_counter() - started)
        result.drafted, result.accepted, result.steps = gen.drafted, gen.accepted, gen.steps


def load(
    path: str | Path | None = None,
    *,
    n_ctx: int | None = None,
    output_head: str | None = None,
    kv_cache: str | None = None,
) -> Model:
    """Loads a GGUF model, or a Hugging Face checkpoint folder (converted once into a cache:
    convert/cache.py); with no path, the embedded TinyStories 3M BitNet model."""
    path = Path(path) if path is not None else default_model_path()
    if path.is_dir():
        from pybitnet.convert.cache import model_path  # the importers, only for a folder

        path = model_path(path)
    return Model(path, n_ctx=n_ctx, output_head=output_head, kv_cache=kv_cache)
