"""Speculative decoding through the server (`serve --draft-tokens`, the request's `draft_tokens`),
against the embedded model: greedy ids equal to plain decoding's, alone and inside a batch, and
usage and metrics counting every token a step verified."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from helpers.serving import HTTP_TIMEOUT, error, gauge, run_async, running, wait_idle
from pybitnet.generate import Model
from pybitnet.server import ServerConfig, create_app
from pybitnet.speculative import MAX_DRAFT_TOKENS

# Copies itself: prompt lookup drafts the story's repeats and most are accepted.
COPYING = "Tom had a red ball. Tom had a red ball. Tom had a red ball. Tom had"
OTHERS = ["Once upon a time", "The cat sat on the mat. The cat", "One day, Lily"]
MAX_TOKENS = 40


def _body(prompt: str, **extra) -> dict:
    return {"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, **extra}


def _complete(url: str, body: dict) -> dict:
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=HTTP_TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def _streamed_text(url: str, body: dict) -> str:
    with httpx.stream(
        "POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=HTTP_TIMEOUT
    ) as response:
        assert response.status_code == 200
        data = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return "".join(json.loads(d)["choices"][0]["text"] for d in data[:-1])


def _steps_and_tokens(url: str) -> tuple[float, float]:
    wait_idle(url)
    return gauge(url, "pybitnet_step_batch_size_count"), gauge(
        url, "pybitnet_generated_tokens_total"
    )


def test_drafting_gives_plain_decodings_text_in_fewer_steps(model: Model) -> None:
    """The request's draft_tokens turns drafting on for it, the server's default for the others;
    every verified token is counted once in usage and metrics, and a stream sends them all."""
    with running(create_app(model, ServerConfig(draft_tokens=8))) as url:
        plain = _complete(url, _body(COPYING, draft_tokens=0))
        steps0, tokens0 = _steps_and_tokens(url)
        drafted = _complete(url, _body(COPYING))  # the server's default: 8
        steps1, tokens1 = _steps_and_tokens(url)
        assert _streamed_text(url, _body(COPYING)) == plain["choices"][0]["text"]
    assert drafted["choices"][0]["text"] == plain["choices"][0]["text"]
    assert drafted["usage"] == plain["usage"]
    assert plain["usage"]["completion_tokens"] == MAX_TOKENS
    assert tokens1 - tokens0 == MAX_TOKENS
    # The plain request took a step a token (its first comes from the prompt's last step).
    assert steps0 == MAX_TOKENS
    assert steps1 - steps0 < MAX_TOKENS, "no draft was accepted: the test shows nothing"


def test_drafting_inside_a_batch_changes_no_sequences_text(model: Model) -> None:
    """One sequence drafts while others decode plain or prefill beside it: each one's text is
    the one it gets alone without drafting."""
    prompts = [COPYING, *OTHERS]
    with running(create_app(model, ServerConfig())) as url:
        alone = [_complete(url, _body(p))["choices"][0]["text"] for p in prompts]

        async def together() -> list[dict]:
            async with httpx.AsyncClient(base_url=url, timeout=HTTP_TIMEOUT) as client:
                replies = await asyncio.gather(
                    *(
                        client.post("/v1/completions", json=_body(p, draft_tokens=d))
                        for p, d in zip(prompts, (8, 0, MAX_DRAFT_TOKENS, 3), strict=True)
                    )
                )
            return [r.json() for r in replies]

        batched = run_async(together)
    assert [r["choices"][0]["text"] for r in batched] == alone
    assert all(r["usage"]["completion_tokens"] == MAX_TOKENS for r in batched)


@pytest.mark.parametrize("value", [-1, MAX_DRAFT_TOKENS + 1, "3", 2.0, True])
def test_a_bad_draft_tokens_is_400_naming_it(base_url: str, value: object) -> None:
    response = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "draft_tokens": value},
        timeout=HTTP_TIMEOUT,
    )
    body = error(response, 400)
    assert body["param"] == "draft_tokens"
    assert "draft_tokens" in body["message"]
