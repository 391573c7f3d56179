"""Continuous batching, admission limits and cancellation, against the embedded model."""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import pytest

from helpers.serving import gauge, running, wait_idle
from pybitnet.server import ServerConfig, create_app
from pybitnet.server.app import kv_bytes_per_token

PROMPTS = ["Once upon a time", "The cat", "Tom had a red ball", "One day, Lily"]


class _CountingForward:
    """The real forward model, given a batched entry point that records each call's batch."""

    def __init__(self, inner):
        self.inner = inner
        self.config = inner.config
        self.batches: list[list[int]] = []

    def new_cache(self, n_ctx=None):
        return self.inner.new_cache(n_ctx)

    def forward(self, tokens, cache):
        raise AssertionError("the scheduler must use forward_batch when the model has it")

    def forward_batch(self, work, last_only=False):
        self.batches.append([len(tokens) for tokens, _ in work])
        return [self.inner.forward(tokens, cache) for tokens, cache in work]


class _WithForward:
    def __init__(self, model, forward_model):
        self._model = model
        self.forward_model = forward_model

    def __getattr__(self, name):
        return getattr(self._model, name)


async def _complete(client: httpx.AsyncClient, prompt: str, max_tokens: int, **extra) -> dict:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}
    response = await client.post("/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_one_forward_call_per_step_for_all_active_sequences(model):
    expected = [model.complete(p, max_tokens=12, temperature=0).text for p in PROMPTS]
    forward = _CountingForward(model.forward_model)
    with running(create_app(_WithForward(model, forward), ServerConfig(max_batch=4))) as url:

        async def main():
            async with httpx.AsyncClient(base_url=url) as client:
                return await asyncio.gather(*(_complete(client, p, 12) for p in PROMPTS))

        replies = asyncio.run(main())
        steps = gauge(url, "pybitnet_step_batch_size_count")
    assert [r["choices"][0]["text"] for r in replies] == expected
    assert len(forward.batches) == steps
    assert max(len(b) for b in forward.batches) == 4, "the four requests never shared a step"
    # Each sequence is fed its prompt (in one chunk, being short), then one token per step.
    prompt_lengths = sorted(r["usage"]["prompt_tokens"] for r in replies)
    fed = sorted(n for batch in forward.batches for n in batch if n > 1)
    assert fed == [n for n in prompt_lengths if n > 1]
    assert sum(n for batch in forward.batches for n in batch) == sum(prompt_lengths) + 4 * 11


def test_a_new_request_joins_between_steps_and_finishes_first(base_url):
    async def main():
        async with httpx.AsyncClient(base_url=base_url) as client:
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

    order, reply = asyncio.run(main())
    assert order == ["short", "long"]
    assert reply["usage"]["completion_tokens"] == 5


def test_full_queue_answers_429_with_retry_after(model):
    with running(create_app(model, ServerConfig(max_batch=1, max_queue=1))) as url:

        async def main():
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                slow = [_complete(client, "Once upon a time", 300) for _ in range(2)]
                tasks = [asyncio.create_task(c) for c in slow]
                while gauge(url, "pybitnet_queue_depth") < 1:
                    await asyncio.sleep(0.01)
                refused = await client.post("/v1/completions", json={"prompt": "x"})
                ready = await client.get("/health/ready")
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                return refused, ready

        refused, ready = asyncio.run(main())
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "queue_full"
        assert ready.status_code == 503 and ready.headers["retry-after"]
        wait_idle(url)


def test_kv_bytes_per_token_counts_keys_and_values_of_every_layer(model):
    c = model.config
    itemsize = model.forward_model.new_cache(1).k.itemsize
    assert kv_bytes_per_token(model) == 2 * c.n_layers * c.n_kv_heads * c.head_dim * itemsize


def test_kv_budget_holds_requests_in_the_queue(model):
    config = ServerConfig(max_batch=4, kv_budget_bytes=model.n_ctx * kv_bytes_per_token(model))
    with running(create_app(model, config)) as url:
        health = httpx.get(f"{url}/health").json()
        assert health["kv_budget_tokens"] == model.n_ctx

        async def main():
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                # Each reserves prompt + max_tokens cache positions: 2 * (5 + 260) > 512.
                tasks = [
                    asyncio.create_task(_complete(client, "Once upon a time", 260))
                    for _ in range(2)
                ]
                seen = set()
                while not all(t.done() for t in tasks):
                    seen.add(
                        (
                            gauge(url, "pybitnet_active_sequences"),
                            gauge(url, "pybitnet_queue_depth"),
                        )
                    )
                    await asyncio.sleep(0.1)
                return seen, [t.result() for t in tasks]

        seen, replies = asyncio.run(main())
        assert (1.0, 1.0) in seen and (2.0, 0.0) not in seen
        assert [r["usage"]["completion_tokens"] for r in replies] == [260, 260]
        assert gauge(url, "pybitnet_kv_cache_used_tokens") == 0


def test_draining_server_answers_503(model):
    app = create_app(model)
    with running(app) as url:
        app.state.scheduler.drain()
        refused = httpx.post(f"{url}/v1/completions", json={"prompt": "x"})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "server_error"
        assert httpx.get(f"{url}/health/ready").status_code == 503
        assert httpx.get(f"{url}/health").json()["status"] == "draining"
        assert httpx.get(f"{url}/health/live").status_code == 200


def test_a_client_that_leaves_frees_its_slot(base_url):
    body = {"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0}
    started = time.monotonic()
    with httpx.stream("POST", f"{base_url}/v1/completions", json={**body, "stream": True}) as r:
        lines = r.iter_lines()
        while not next(lines).startswith("data: {"):
            pass
        assert gauge(base_url, "pybitnet_active_sequences") == 1
    wait_idle(base_url, timeout=2)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base_url}/v1/completions", json=body, timeout=0.5)
    wait_idle(base_url, timeout=2)
    generated = gauge(base_url, "pybitnet_generated_tokens_total")
    assert time.monotonic() - started < 4
    assert generated < 400, "a cancelled request ran to its end"


async def _client(url: str, rng: random.Random, deadline: float, statuses: list[int]) -> None:
    """Streams chat completions until the deadline; leaves some requests midway."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while time.monotonic() < deadline:
            body = {
                "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
                "max_tokens": rng.randint(1, 30),
                "stream": True,
                "temperature": 0.8,
            }
            leave_after = rng.randint(1, 20) if rng.random() < 0.3 else None
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                statuses.append(r.status_code)
                if r.status_code != 200:
                    await asyncio.sleep(0.05)
                    continue
                events = 0
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        assert "error" not in json.loads(line[6:])
                        events += 1
                    if events == leave_after:
                        break


@pytest.mark.slow
def test_soak_with_random_disconnects_leaves_no_5xx_and_no_leaked_slots(model):
    with running(create_app(model, ServerConfig(max_batch=8, max_queue=8))) as url:
        statuses: list[int] = []

        async def main():
            deadline = time.monotonic() + 4
            rngs = [random.Random(i) for i in range(16)]
            await asyncio.gather(*(_client(url, rng, deadline, statuses) for rng in rngs))

        asyncio.run(main())
        wait_idle(url, timeout=5)
        assert statuses.count(200) > 16
        assert set(statuses) <= {200, 429}, statuses
        assert gauge(url, "pybitnet_kv_cache_used_tokens") == 0
        assert httpx.get(f"{url}/health/ready").status_code == 200
