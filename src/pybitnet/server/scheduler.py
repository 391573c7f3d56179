"""Continuous batching: one thread runs every decode step for all active sequences together.

A request joins the batch as it arrives if a batch slot and room in the KV-cache budget are
free; otherwise it waits in a bounded queue, admitted between steps first come first served.
Each step is one `decode.step` over every active sequence (the token loop, prefill chunks and
end of generation live in decode.py; the scheduler keeps admission, budgets and cancellation).
Results go back to the asyncio side through each request's asyncio.Queue
(loop.call_soon_threadsafe); a cancelled request is dropped at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pybitnet import decode
from pybitnet.errors import PyBitnetError
from pybitnet.generate import Model
from pybitnet.sampling import SamplerConfig
from pybitnet.server.errors import without_paths
from pybitnet.tokenizer import Tokenizer

logger = logging.getLogger("pybitnet.server")


@dataclass(frozen=True)
class Piece:
    """Text the client may show now (stop strings and partial UTF-8 characters held back)."""

    text: str


@dataclass(frozen=True)
class Finished:
    reason: str  # "stop" (end-of-generation token or stop string) or "length"
    prompt_tokens: int
    completion_tokens: int


# The status of a request cancelled because its client left (nginx's 499): nobody reads it,
# but the request metrics count it.
CLIENT_CLOSED = 499


@dataclass(frozen=True)
class Failed:
    message: str
    status: int = 500  # the HTTP status it stands for


Event = Piece | Finished | Failed


class QueueFull(Exception):
    """The waiting queue is full: try again later (HTTP 429)."""


class NotAccepting(Exception):
    """The scheduler is shutting down or stopped (HTTP 503)."""


class Generation(decode.Generation):
    """One request in the scheduler: a sequence of the token loop, with the queue its events go
    to. Created on the event loop's thread; its KV cache is made when it joins the batch.

    `events` receives Piece*, then one Finished or Failed (a cancelled generation too, once the
    scheduler drops it).
    """

    def __init__(
        self,
        prompt_ids: Sequence[int],
        *,
        tokenizer: Tokenizer,
        max_tokens: int,
        sampling: SamplerConfig,
        stop: Sequence[str] = (),
        draft_tokens: int = 0,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(
            prompt_ids,
            None,
            tokenizer=tokenizer,
            sampling=sampling,
            max_tokens=max_tokens,
            stop=stop,
            draft_tokens=draft_tokens,
        )
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = False
        self._loop = loop
        self.submitted_at = time.perf_counter()
        self.last_token_at = self.submitted_at

    @property
    def kv_tokens(self) -> int:
        """Cache positions this sequence can fill: its share of the KV budget."""
        return len(self.prompt_ids) + self.max_tokens

    def send(self, event: Event) -> None:
        # RuntimeError: the event loop has closed, so nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)


class StepObserver:
    """What the scheduler reports as it runs (the server's metrics implement it)."""

    def prompt_done(self, tokens: int) -> None:
        """A prompt of this many tokens is in the cache."""

    def tokens(self, count: int, first: bool, seconds: float) -> None:
        """A step generated `count` tokens (several: drafts it verified), which reach the client
        together: the first `seconds` after the request came (first) or after the sequence's
        last token, the others 0 s after it."""

    def step(self, batch_size: int) -> None:
        """A forward step ran over this many sequences."""


class Scheduler:
    """Runs generations for a model in a dedicated thread, many sequences per forward pass.

    max_batch sequences decode at once; max_queue more may wait; the KV caches of the active
    sequences together hold at most kv_budget_tokens positions.
    """

    def __init__(
        self,
        model: Model,
        *,
        max_batch: int,
        max_queue: int,
        kv_budget_tokens: int,
        observer: StepObserver | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 0:
            raise PyBitnetError(
                f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}"
            )
        if kv_budget_tokens < model.n_ctx:
            raise PyBitnetError(
                f"the KV budget of {kv_budget_tokens} tokens cannot hold one full context of "
                f"{model.n_ctx} tokens"
            )
        self.model = model
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.kv_budget_tokens = kv_budget_tokens
        self.kv_used_tokens = 0
        self._observer = observer or StepObserver()
        self._waiting: deque[Generation] = deque()
        self._active: list[Generation] = []
        self._cond = threading.Condition()
        self._accepting = True
        self._stopping = False
        self._step_started: float | None = None  # monotonic; None between steps
        self._thread = threading.Thread(target=self._run, name="pybitnet-scheduler", daemon=True)

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def alive(self) -> bool:
        """The thread runs and was not told to stop: this process can still generate."""
        return self._thread.is_alive() and not self._stopping

    @property
    def step_seconds(self) -> float:
        """How long the forward step now running has run (0 between steps): a health check
        reads a step that never ends, which `alive` cannot see."""
        started = self._step_started
        return 0.0 if started is None else time.monotonic() - started

    @property
    def accepting(self) -> bool:
        return self._accepting and self.alive

    def start(self) -> None:
        self._thread.start()

    def submit(self, gen: Generation) -> None:
        """Admits a generation into the batch, or queues it; raises QueueFull or NotAccepting
        instead of waiting."""
        with self._cond:
            if not self.accepting:
                raise NotAccepting("the server is shutting down")
            # Admitted here, not only by the thread between steps, so a request that finds a
            # free slot never counts against the queue (two arriving at once, max_queue=0).
            self._waiting.append(gen)
            self._admit()
            if len(self._waiting) > self.max_queue:
                self._waiting.pop()  # FIFO admission: gen is the last one still waiting
                raise QueueFull(f"all {self.max_queue} places in the queue are taken")
            self._cond.notify()

    def cancel(self, gen: Generation) -> None:
        """Drops a generation at the next step (a no-op once it has finished)."""
        with self._cond:
            gen.cancelled = True
            self._cond.notify()

    def drain(self) -> None:
        """Stops admitting new requests; those already queued or running go on."""
        with self._cond:
            self._accepting = False

    def stop(self, timeout: float | None = None) -> None:
        """Stops the thread after its current step (waiting for it `timeout` seconds at most);
        what is left fails with an event."""
        with self._cond:
            self._accepting = False
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._fail_all(Failed("the server stopped before this request finished", 503))

    def _run(self) -> None:
        try:
            self._steps()
        except Exception as exc:  # a bug here must not leave requests waiting for ever
            logger.exception("the scheduler stopped")
            self._fail_all(self._fault("the scheduler stopped", exc))

    def _steps(self) -> None:
        while True:
            with self._cond:
                while True:
                    self._drop_cancelled()
                    self._admit()
                    if self._active or self._stopping:
                        break
                    self._cond.wait()
                if self._stopping:
                    return
                batch = list(self._active)
            self._step_started = time.monotonic()
            try:
                logits = decode.step(self.model.engine, batch)
            except Exception as exc:  # a fault in the forward pass fails its batch, not the server
                logger.exception("forward step failed")
                for gen in batch:
                    self._finish(gen, self._fault("the forward pass failed", exc))
                continue
            finally:
                self._step_started = None
            self._observer.step(len(batch))
            for gen, row in zip(batch, logits, strict=True):
                if row is not None and not gen.cancelled:
                    self._advance(gen, row)

    def _fault(self, what: str, exc: Exception) -> Failed:
        """The event a fault ends a request with (500); its message shows the client no path."""
        return Failed(without_paths(f"{what}: {type(exc).__name__}: {exc}", self.model.path))

    def _fail_all(self, event: Failed) -> None:
        """Ends every request still here with `event`; no more are accepted."""
        with self._cond:
            self._accepting = False
            for gen in [*self._active, *self._waiting]:
                gen.send(event)
            self._active.clear()
            self._waiting.clear()
            self.kv_used_tokens = 0

    def _admit(self) -> None:
        """Moves queued generations into the batch while a slot and KV room are free (FIFO)."""
        while self._waiting and len(self._active) < self.max_batch:
            gen = self._waiting[0]
            if self.kv_used_tokens + gen.kv_tokens > self.kv_budget_tokens:
                return
            self._waiting.popleft()
            try:
                gen.cache = self.model.engine.new_cache(gen.kv_tokens)
            except Exception as exc:  # MemoryError, a bad size: this request fails, not the rest
                logger.exception("a KV cache could not be made")
                gen.send(self._fault("the KV cache could not be made", exc))
                continue
            self.kv_used_tokens += gen.kv_tokens
            self._active.append(gen)

    def _drop_cancelled(self) -> None:
        dropped = [gen for gen in [*self._waiting, *self._active] if gen.cancelled]
        if not dropped:
            return
        self._waiting = deque(gen for gen in self._waiting if not gen.cancelled)
        for gen in dropped:
            self._release(gen)
            # Ends whatever still awaits it (a plain request whose client left).
            gen.send(Failed("the client closed the request", CLIENT_CLOSED))

    def _advance(self, gen: Generation, logits: np.ndarray) -> None:
        """The sequence's next tokens, their text to the client and its end when it ends. Every
        fault of one sequence (sampling, its text, stop strings, its events) fails that request
        alone: the batch and the thread go on."""
        try:
            self._next_token(gen, logits)
        except Exception as exc:
            logger.exception("a sequence failed")
            self._finish(gen, self._fault("the generation failed", exc))

    def _next_token(self, gen: Generation, logits: np.ndarray) -> None:
        before = len(gen.token_ids)
        if before == 0:
            self._observer.prompt_done(len(gen.prompt_ids))
        text = gen.advance(logits)
        if len(gen.token_ids) > before:  # tokens came, not only an end-of-generation id
            now = time.perf_counter()
            self._observer.tokens(len(gen.token_ids) - before, before == 0, now - gen.last_token_at)
            gen.last_token_at = now
        if text:
            gen.send(Piece(text))
        if gen.finished:
            self._finish(gen, Finished(gen.finish_reason, len(gen.prompt_ids), len(gen.token_ids)))

    def _finish(self, gen: Generation, event: Finished | Failed) -> None:
        gen.send(event)
        with self._cond:
            self._release(gen)

    def _release(self, gen: Generation) -> None:
        if gen in self._active:
            self._active.remove(gen)
            self.kv_used_tokens -= gen.kv_tokens
        gen.cache = None
