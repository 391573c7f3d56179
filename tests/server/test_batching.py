"""Continuous batching, admission limits and cancellation, against the embedded model."""

from __future__ import annotations

import asyncio
import copy
import threading
import time

import httpx
import pytest

from helpers.serving import (
    HTTP_TIMEOUT,
    error,
    gauge,
    gauge_async,
    run_async,
    running,
    wait_for_gauge,
    wait_idle,
)
from pybitnet.engine import Engine
from pybitnet.generate import Model
from pybitnet.sampling import SamplerConfig
from pybitnet.server import ServerConfig, create_app
from pybitnet.server.scheduler import Failed, Generation, NotAccepting, Scheduler, StepObserver

PROMPTS = ["Once upon a time", "The cat", "Tom had a red ball", "One day, Lily"]


class _Forward(Engine):
    """The engine, over the model's weights, recording each step's batch. A step takes at least
    `step_seconds` (so a test can watch a generation before it ends, however fast the engine
    is), none runs until `go` is set (10 s at most), and each raises `fault` while it is set
    (a new KV cache, `cache_fault`)."""

    def __init__(self, model: Model, step_seconds: float = 0.0):
        super().__init__(model.weights)
        self.step_seconds = step_seconds
        self.batches: list[list[int]] = []
        self.go = threading.Event()
        self.go.set()
        self.fault: Exception | None = None  # raised by the steps while set
        self.cache_fault: Exception | None = None  # raised by new_cache while set

    def new_cache(self, n_ctx=None):
        if self.cache_fault is not None:
            raise self.cache_fault
        return super().new_cache(n_ctx)

    def forward(self, tokens, cache, *, last_only=False):
        raise AssertionError("the scheduler must use forward_batch when the model has it")

    def forward_batch(self, items, *, rows=None):
        assert self.go.wait(10), "the test never let the first step run"
        if self.fault is not None:
            raise self.fault
        self.batches.append([len(tokens) for tokens, _ in items])
        time.sleep(self.step_seconds)
        return super().forward_batch(items, rows=rows)


def _with_engine(model: Model, engine: Engine) -> Model:
    """The model (sharing its weights and tokenizer), with another engine."""
    other = copy.copy(model)
    other.engine = engine
    return other


def _paced_app(model, config: ServerConfig | None = None):
    """An app whose steps take 3 ms at least: 500 tokens take 1.5 s, whatever the engine."""
    return create_app(_with_engine(model, _Forward(model, 0.003)), config)


async def _complete(client: httpx.AsyncClient, prompt: str, max_tokens: int, **extra) -> dict:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}
    response = await client.post("/v1/completions", json=body, timeout=HTTP_TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def test_one_forward_call_per_step_for_all_active_sequences(model):
    expected = [model.complete(p, max_tokens=12, temperature=0).text for p in PROMPTS]
    forward = _Forward(model)
    forward.go.clear()  # until the four requests are in
    with running(create_app(_with_engine(model, forward), ServerConfig(max_batch=4))) as url:

        async def main():
            async with httpx.AsyncClient(base_url=url) as client:
                replies = asyncio.gather(*(_complete(client, p, 12) for p in PROMPTS))
                await wait_for_gauge(client, "pybitnet_active_sequences", 4)
                forward.go.set()
                return await replies

        try:
            replies = run_async(main)
        finally:
            forward.go.set()
        steps = gauge(url, "pybitnet_step_batch_size_count")
    assert [r["choices"][0]["text"] for r in replies] == expected
    assert len(forward.batches) == steps
    assert max(len(b) for b in forward.batches) == 4, "the four requests never shared a step"
    # Each sequence is fed its prompt (in one chunk, being short), then one token per step.
    prompt_lengths = sorted(r["usage"]["prompt_tokens"] for r in replies)
    fed = sorted(n for batch in forward.batches for n in batch if n > 1)
    assert fed == [n for n in prompt_lengths if n > 1]
    assert sum(n for batch in forward.batches for n in batch) == sum(prompt_lengths) + 4 * 11


def test_a_new_request_joins_between_steps_and_finishes_first(model):
    async def main(url):
        async with httpx.AsyncClient(base_url=url, timeout=HTTP_TIMEOUT) as client:
            body = {"prompt": "Once upon a time", "max_tokens": 150, "temperature": 0}
            order = []
            async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                lines = r.aiter_lines()
                while not (await anext(lines)).startswith("data: {"):
                    pass
                short = asyncio.create_task(_complete(client, "The cat", 5))
                short.add_done_callback(lambda _: order.append("short"))
                async for line in lines:
                    if line == "data: [DONE]":
                        order.append("long")
                reply = await short
            return order, reply

    with running(_paced_app(model)) as url:
        order, reply = run_async(lambda: main(url))
    assert order == ["short", "long"]
    assert reply["usage"]["completion_tokens"] == 5


def test_full_queue_answers_429_with_retry_after(model):
    with running(_paced_app(model, ServerConfig(max_batch=1, max_queue=1))) as url:

        async def main():
            async with httpx.AsyncClient(base_url=url, timeout=HTTP_TIMEOUT) as client:
                slow = []
                for gauge_name in ("pybitnet_active_sequences", "pybitnet_queue_depth"):
                    slow.append(asyncio.create_task(_complete(client, "Once upon a time", 400)))
                    await wait_for_gauge(client, gauge_name, 1)
                refused = await client.post("/v1/completions", json={"prompt": "x"})
                ready = await client.get("/health/ready")
                for task in slow:
                    task.cancel()
                await asyncio.gather(*slow, return_exceptions=True)
                return refused, ready

        refused, ready = run_async(main)
        assert error(refused, 429)["code"] == "queue_full"
        assert refused.headers["retry-after"] == "1"
        assert error(ready, 503)["code"] == "queue_full"
        assert ready.headers["retry-after"] == "1"
        wait_idle(url)


def test_requests_that_find_a_free_slot_never_wait_in_the_queue(model):
    """With no queue at all, requests arriving together are all served while slots are free."""
    with running(create_app(model, ServerConfig(max_batch=4, max_queue=0))) as url:

        async def main():
            async with httpx.AsyncClient(base_url=url) as client:
                return await asyncio.gather(*(_complete(client, p, 3) for p in PROMPTS))

        replies = run_async(main)
    assert [r["usage"]["completion_tokens"] for r in replies] == [3] * 4


def test_a_scheduler_fault_fails_its_requests_and_refuses_new_ones(model):
    class Broken(StepObserver):
        def step(self, batch_size: int) -> None:
            raise RuntimeError("observer fault")

    scheduler = Scheduler(
        model, max_batch=2, max_queue=2, kv_budget_tokens=2 * model.n_ctx, observer=Broken()
    )
    scheduler.start()

    async def main():
        loop = asyncio.get_running_loop()
        gens = [
            Generation(
                [1, 2, 3],
                tokenizer=model.tokenizer,
                max_tokens=5,
                sampling=SamplerConfig(),
                loop=loop,
            )
            for _ in range(2)
        ]
        for gen in gens:
            scheduler.submit(gen)
        events = [await gen.events.get() for gen in gens]
        with pytest.raises(NotAccepting):
            scheduler.submit(
                Generation(
                    [1],
                    tokenizer=model.tokenizer,
                    max_tokens=1,
                    sampling=SamplerConfig(),
                    loop=loop,
                )
            )
        return events

    try:
        events = run_async(main, timeout=10)
    finally:
        scheduler.stop(timeout=10)
    assert all(isinstance(e, Failed) and "observer fault" in e.message for e in events), events
    assert scheduler.active == scheduler.queue_depth == scheduler.kv_used_tokens == 0


def test_kv_bytes_per_token_counts_keys_and_values_of_every_layer(model):
    c = model.config
    itemsize = model.engine.new_cache(1).k.itemsize
    per_token = model.engine.kv_bytes_per_token()
    assert per_token == 2 * c.n_layers * c.n_kv_heads * c.head_dim * itemsize


def test_kv_budget_holds_requests_in_the_queue(model):
    per_token = model.engine.kv_bytes_per_token()
    config = ServerConfig(max_batch=4, kv_budget_bytes=model.n_ctx * per_token)
    with running(_paced_app(model, config)) as url:
        health = httpx.get(f"{url}/health").json()
        assert health["kv_budget_tokens"] == model.n_ctx

        async def main():
            async with httpx.AsyncClient(base_url=url, timeout=HTTP_TIMEOUT) as client:
                # Each reserves prompt + max_tokens cache positions: 2 * (5 + 260) > 512.
                tasks = [
                    asyncio.create_task(_complete(client, "Once upon a time", 260))
                    for _ in range(2)
                ]
                seen = set()
                while not all(t.done() for t in tasks):
                    seen.add(
                        (
                            await gauge_async(client, "pybitnet_active_sequences"),
                            await gauge_async(client, "pybitnet_queue_depth"),
                        )
                    )
                    await asyncio.sleep(0.02)
                return seen, [t.result() for t in tasks]

        seen, replies = run_async(main)
        assert (1.0, 1.0) in seen and (2.0, 0.0) not in seen
        # The story ends (at BOS) before 260 tokens; the reservation held 260 all the same.
        story = model.complete("Once upon a time", max_tokens=260, temperature=0)
        assert [r["choices"][0]["text"] for r in replies] == [story.text, story.text]
        assert gauge(url, "pybitnet_kv_cache_used_tokens") == 0


def test_draining_server_answers_503(model):
    app = create_app(model)
    with running(app) as url:
        app.state.scheduler.drain()
        refused = httpx.post(f"{url}/v1/completions", json={"prompt": "x"}, timeout=HTTP_TIMEOUT)
        assert error(refused, 503)["type"] == "server_error"
        assert refused.headers["retry-after"] == "1"
        assert error(httpx.get(f"{url}/health/ready"), 503)["code"] == "unavailable"
        assert httpx.get(f"{url}/health").json()["status"] == "draining"
        assert httpx.get(f"{url}/health/live").status_code == 200


def test_a_client_that_leaves_frees_its_slot(model):
    body = {"prompt": "Once upon a time", "max_tokens": 500, "temperature": 0}
    with running(_paced_app(model)) as url:
        with httpx.stream(
            "POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=HTTP_TIMEOUT
        ) as r:
            lines = r.iter_lines()
            while not next(lines).startswith("data: {"):
                pass
            assert gauge(url, "pybitnet_active_sequences") == 1
        wait_idle(url, timeout=2)
        with pytest.raises(httpx.ReadTimeout):  # a plain request, left before its reply
            httpx.post(f"{url}/v1/completions", json=body, timeout=0.3)
        wait_idle(url, timeout=2)
        generated = gauge(url, "pybitnet_generated_tokens_total")
        # Its handler ended too (it does not wait for ever on a generation that was dropped).
        deadline = time.monotonic() + 2
        closed = 'pybitnet_requests_total{route="/v1/completions",status="499"} 1.0'
        while closed not in httpx.get(f"{url}/metrics", timeout=HTTP_TIMEOUT).text:
            assert time.monotonic() < deadline, "the left request's handler is still waiting"
            time.sleep(0.05)
    assert generated < 500, "a cancelled request ran to its end"


@pytest.mark.parametrize(
    ("where", "fault", "failure"),
    [
        ("fault", RuntimeError("injected"), "the forward pass failed: RuntimeError: injected"),
        (
            "cache_fault",
            MemoryError("injected"),
            "the KV cache could not be made: MemoryError: injected",
        ),
    ],
)
def test_a_failed_step_or_cache_answers_500_and_the_server_goes_on(model, where, fault, failure):
    forward = _Forward(model)
    body = {"prompt": "Once upon a time", "max_tokens": 3}
    with running(create_app(_with_engine(model, forward))) as url:
        setattr(forward, where, fault)
        failed = httpx.post(f"{url}/v1/completions", json=body, timeout=HTTP_TIMEOUT)
        assert error(failed, 500)["message"] == failure
        with httpx.stream(
            "POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=HTTP_TIMEOUT
        ) as r:
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and failure in events[-2]
        setattr(forward, where, None)
        ok = httpx.post(f"{url}/v1/completions", json=body, timeout=HTTP_TIMEOUT)
        assert ok.json()["usage"]["completion_tokens"] == 3
        assert httpx.get(f"{url}/health/live").status_code == 200
        wait_idle(url)
