"""The completion routes' handler (vLLM's serving_completion): a request checked against the
model's limits, submitted to the scheduler as a Generation, and its events answered as one reply
or as a stream of server-sent events.

A chat's messages are fitted to the context as `pybitnet chat` fits its history
(chat.fit_conversation: the oldest turns are dropped, never the system prompt); when some were,
the response says how many in the header `X-Pybitnet-Dropped-Messages`, counted from the first
message after the system prompt, so a client can drop them too.

Rendering the chat template and tokenizing a prompt run in a few worker threads, never on the
event loop: a slow template or a megabyte of text delays its own request, not /health/live or
the other streams. A text prompt too long for the context by its length alone is refused before
it is tokenized."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from pybitnet.chat import fit_conversation
from pybitnet.errors import ContextError
from pybitnet.generate import Model
from pybitnet.sampling import SamplerConfig
from pybitnet.server.config import FINAL_WORDS_SECONDS, ServerConfig
from pybitnet.server.errors import APIError
from pybitnet.server.replies import Reply
from pybitnet.server.scheduler import (
    Failed,
    Finished,
    Generation,
    NotAccepting,
    Piece,
    QueueFull,
    Scheduler,
)
from pybitnet.server.schemas import ChatCompletionRequest, CompletionRequest, GenerationParams

Answer = dict[str, Any] | JSONResponse | EventSourceResponse  # a whole reply, or its stream
DROPPED_HEADER = "X-Pybitnet-Dropped-Messages"
# Threads that render and tokenize prompts: the GIL shares one core among them anyway; more
# would only let more hostile requests run at once.
PROMPT_THREADS = 2
T = TypeVar("T")


class Serving:
    """Answers /v1/chat/completions and /v1/completions for one model through its scheduler."""

    def __init__(
        self, model: Model, model_id: str, scheduler: Scheduler, config: ServerConfig
    ) -> None:
        self.model = model
        self.model_id = model_id
        self.scheduler = scheduler
        self.config = config
        self._prompts = ThreadPoolExecutor(PROMPT_THREADS, thread_name_prefix="pybitnet-prompt")
        # A text longer than this cannot fit, whatever its tokens.
        self._max_prompt_chars = model.n_ctx * model.tokenizer.max_token_chars

    def close(self) -> None:
        """Drops the prompts not yet started (the server is stopping)."""
        self._prompts.shutdown(wait=False, cancel_futures=True)

    async def _off_loop(self, work: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._prompts, work, *args)

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Answer:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        max_tokens = body.max_completion_tokens or body.max_tokens
        try:
            fitted = await self._off_loop(fit_conversation, self.model, messages, max_tokens)
        except ContextError as exc:
            raise APIError(
                400,
                f"This model's maximum context length is {self.model.n_ctx} tokens; {exc}.",
                code="context_length_exceeded",
                param="messages",
            ) from None
        gen = self._generation(body, fitted.prompt, max_tokens)
        answer = await self._answer(request, body, gen, Reply.chat_completion(self.model_id))
        if not fitted.dropped:
            return answer
        if isinstance(answer, dict):
            answer = JSONResponse(answer)
        answer.headers[DROPPED_HEADER] = str(len(fitted.dropped))
        return answer

    async def complete(self, body: CompletionRequest, request: Request) -> Answer:
        if body.echo:
            raise APIError(400, "echo is not supported.", param="echo")
        if body.best_of not in (None, 1):
            raise APIError(400, f"best_of must be 1, got {body.best_of}.", param="best_of")
        prompt_ids = await self._off_loop(self._prompt_ids, body.prompt)
        gen = self._generation(body, prompt_ids, body.max_tokens)
        return await self._answer(request, body, gen, Reply.text_completion(self.model_id))

    def _prompt_ids(self, prompt: str | list[str] | list[int]) -> list[int]:
        if isinstance(prompt, list) and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(
                    400,
                    f"Only one prompt per request is supported, got {len(prompt)}.",
                    param="prompt",
                )
            prompt = prompt[0]
        if isinstance(prompt, str):
            if len(prompt) > self._max_prompt_chars:
                raise self._too_long(f"{len(prompt)} characters, more than it can hold", "prompt")
            return self.model.tokenizer.encode(prompt)
        # The ids that have text: a file's embedding may have more rows than its tokenizer.
        vocab = self.model.tokenizer.vocab_size
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise APIError(
                400,
                f"Token id {bad[0]} is outside the vocabulary of {vocab} tokens.",
                param="prompt",
            )
        return list(prompt)

    def _generation(
        self, body: GenerationParams, prompt: list[int], max_tokens: int | None
    ) -> Generation:
        """Checks the request against the model's limits; the generation to submit."""
        if body.n != 1:
            raise APIError(400, f"Only n=1 is supported, got n={body.n}.", param="n")
        if body.logprobs not in (None, False):
            raise APIError(400, "logprobs are not supported.", param="logprobs")
        if not prompt:
            raise APIError(400, "The prompt is empty.", param="prompt")
        room = self.model.n_ctx - len(prompt)
        if room < 1:
            param = "messages" if isinstance(body, ChatCompletionRequest) else "prompt"
            raise self._too_long(f"{len(prompt)} tokens, leaving no room to generate", param)
        chosen = body.model_dump(include={"temperature", "top_p", "seed"}, exclude_none=True)
        return Generation(
            prompt,
            tokenizer=self.model.tokenizer,
            # It ends at the context's end (finish_reason "length") whatever max_tokens says.
            max_tokens=min(max_tokens or room, room),
            sampling=SamplerConfig(**chosen),
            stop=body.stop_strings(),
            draft_tokens=(
                self.config.draft_tokens if body.draft_tokens is None else body.draft_tokens
            ),
            loop=asyncio.get_running_loop(),
        )

    def _too_long(self, prompt_size: str, param: str) -> APIError:
        return APIError(
            400,
            f"This model's maximum context length is {self.model.n_ctx} tokens; the prompt has "
            f"{prompt_size}.",
            code="context_length_exceeded",
            param=param,
        )

    async def _answer(
        self, request: Request, body: GenerationParams, gen: Generation, reply: Reply
    ) -> Answer:
        """Submits the generation; its reply, whole or streamed as the body asks."""
        try:
            self.scheduler.submit(gen)
        except QueueFull as exc:
            raise APIError(
                429, f"The server is busy: {exc}.", type="rate_limit_error", code="queue_full"
            ) from None
        except NotAccepting as exc:
            raise APIError(
                503, f"Unavailable: {exc}.", type="server_error", code="unavailable"
            ) from None
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            return EventSourceResponse(
                _stream(self.scheduler, gen, reply, usage),
                sep="\n",
                # The scheduler ends the stream at the timeout, with an error event; this cut
                # comes after, for a stream that somehow did not end.
                shutdown_grace_period=self.config.shutdown_timeout + FINAL_WORDS_SECONDS,
                # Also when the client leaves before the stream's first event.
                background=BackgroundTask(self.scheduler.cancel, gen),
            )
        text, finished = await _collect(request, self.scheduler, gen)
        return reply.whole(text, finished)


async def _collect(request: Request, scheduler: Scheduler, gen: Generation) -> tuple[str, Finished]:
    """The whole reply; a client that leaves before it is done cancels its generation."""

    async def cancel_on_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        scheduler.cancel(gen)

    watcher = asyncio.create_task(cancel_on_disconnect())
    parts = []
    try:
        while True:
            event = await gen.events.get()
            if isinstance(event, Piece):
                parts.append(event.text)
            elif isinstance(event, Finished):
                return "".join(parts), event
            else:
                raise _failure(event)
    finally:
        watcher.cancel()
        scheduler.cancel(gen)


async def _stream(
    scheduler: Scheduler, gen: Generation, reply: Reply, usage: bool
) -> AsyncIterator[str]:
    """Server-sent events as OpenAI sends them; closing the stream (a client that left, or a
    shutdown past its grace period) cancels the generation."""
    try:
        if reply.chat:
            yield reply.chunk(first=True)
        while True:
            event = await gen.events.get()
            if isinstance(event, Piece):
                yield reply.chunk(text=event.text)
            elif isinstance(event, Finished):
                yield reply.chunk(finish_reason=event.reason)
                if usage:
                    yield reply.chunk(usage=event)
                break
            else:
                yield json.dumps(_failure(event).body())
                break
        yield "[DONE]"
    finally:
        scheduler.cancel(gen)


def _failure(event: Failed) -> APIError:
    code = "unavailable" if event.status == 503 else None
    return APIError(event.status, event.message, type="server_error", code=code)
