"""The chat route fits a conversation to the context as ChatSession does (one rule:
chat.fit_conversation) and says in a header how many messages it dropped."""

from __future__ import annotations

import json

import httpx
import pytest

from helpers.chat_history import story_history as history
from helpers.serving import HTTP_TIMEOUT, error
from pybitnet.chat import fit_conversation
from pybitnet.server.serving import DROPPED_HEADER


def post(base_url: str, **fields) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/chat/completions", json=fields, timeout=HTTP_TIMEOUT)


@pytest.mark.parametrize("stream", [False, True])
def test_a_long_chat_drops_its_oldest_turns_and_says_how_many(base_url, model, stream):
    messages = history(8)
    fitted = fit_conversation(model, messages, 16)
    assert fitted.dropped, "the history was meant not to fit"
    expected = model.complete(fitted.prompt, max_tokens=16, temperature=0)
    response = post(base_url, messages=messages, max_tokens=16, temperature=0, stream=stream)
    assert response.status_code == 200
    assert response.headers[DROPPED_HEADER] == str(len(fitted.dropped))
    if stream:
        events = [line[5:].strip() for line in response.text.splitlines() if line[:5] == "data:"]
        chunks = [json.loads(e) for e in events if e != "[DONE]"]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    else:
        body = response.json()
        text = body["choices"][0]["message"]["content"]
        assert body["usage"]["prompt_tokens"] == len(fitted.prompt)
    assert text == expected.text


def test_a_chat_that_fits_has_no_header_and_one_too_long_is_refused(base_url, model):
    response = post(base_url, messages=history(1), max_tokens=4)
    assert response.status_code == 200 and DROPPED_HEADER not in response.headers
    huge = [{"role": "user", "content": "story " * 600}]  # the newest message alone is too long
    body = error(post(base_url, messages=huge, max_tokens=4), 400)
    assert body["code"] == "context_length_exceeded" and body["param"] == "messages"
