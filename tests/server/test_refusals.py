"""The server says what it does not do: an OpenAI field it would have to ignore is a 400 naming
it, a model it does not serve is OpenAI's 404, and every request leaves one access-log line."""

from __future__ import annotations

import logging
import re
import time

import httpx
import openai
import pytest

from helpers.serving import HTTP_TIMEOUT, error

MESSAGES = [{"role": "user", "content": "Hello."}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=HTTP_TIMEOUT
    )


@pytest.fixture(scope="module")
def model_id(client: openai.OpenAI) -> str:
    (card,) = client.models.list().data
    return card.id


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [TOOL]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"presence_penalty": -1}, "presence_penalty"),
        ({"logit_bias": {"50": 100}}, "logit_bias"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"store": True}, "store"),
    ],
)
def test_unsupported_fields_are_400_naming_the_field(client, model_id, fields, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=1, **fields)
    assert caught.value.status_code == 400
    assert caught.value.code == "unsupported_field"
    assert caught.value.param == param
    assert repr(param) in caught.value.message


def test_fields_no_client_knows_are_refused_too(base_url, model_id):
    for path, body in [
        ("chat/completions", {"messages": MESSAGES, "top_k": 5}),
        ("completions", {"prompt": "A", "suffix": "and the end."}),
    ]:
        response = httpx.post(f"{base_url}/v1/{path}", json={"model": model_id, **body})
        refused = error(response, 400)
        assert refused["param"] in body and refused["code"] == "unsupported_field", refused


def test_a_messages_fields_are_checked_too(client, model_id):
    named = [{"role": "user", "content": "Hello.", "name": "alice"}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model_id, messages=named, max_tokens=1)
    assert caught.value.param == "messages[0].name"
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    history = [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": calls}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model_id, messages=history, max_tokens=1)
    assert caught.value.param == "messages[1].tool_calls"


def test_the_values_that_ask_for_nothing_are_accepted(client, model_id):
    reply = client.chat.completions.create(
        model=model_id,
        messages=MESSAGES,
        max_tokens=2,
        response_format={"type": "text"},
        frequency_penalty=0,
        presence_penalty=0.0,
        logprobs=False,
        n=1,
        user="someone",
        tools=[],
        tool_choice="none",
        store=False,
    )
    assert reply.usage.completion_tokens <= 2


def test_a_model_the_server_does_not_serve_is_404_model_not_found(client, base_url, model_id):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1)
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    assert "'gpt-4o'" in caught.value.message and repr(model_id) in caught.value.message
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model=model_id + "x", prompt="A", max_tokens=1)
    # Without a model (curl, the chat page) the request goes to the one model served.
    no_model = httpx.post(f"{base_url}/v1/completions", json={"prompt": "A", "max_tokens": 1})
    assert no_model.status_code == 200 and no_model.json()["model"] == model_id


ACCESS = re.compile(r"^(GET|POST) (\S+) (\d{3}) tokens=(\d+\+\d+|-) ms=\d+\.\d$")


def access_lines(caplog, n: int, seconds: float = 10) -> list[str]:
    """The access-log lines, once there are n (or the deadline passes): the server's thread
    writes a request's line after the reply has gone, so it can come just after the client
    returns."""
    deadline = time.monotonic() + seconds
    while True:
        lines = [r.getMessage() for r in caplog.records if r.name == "pybitnet.access"]
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.01)


def test_one_access_log_line_per_request(client, base_url, model_id, caplog):
    caplog.set_level(logging.INFO, logger="pybitnet.access")
    # An earlier test's request can log its line late (a busy machine): once a request of this
    # test has logged its own, those are in, and are cleared.
    httpx.get(f"{base_url}/health/ready")
    deadline = time.monotonic() + 10
    while not any(line.startswith("GET /health/ready") for line in access_lines(caplog, 1)):
        assert time.monotonic() < deadline, "the marker request logged no line"
        time.sleep(0.01)
    caplog.clear()
    reply = client.completions.create(model=model_id, prompt="A", max_tokens=3, temperature=0)
    streamed = list(
        client.chat.completions.create(
            model=model_id,
            messages=MESSAGES,
            max_tokens=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    httpx.get(f"{base_url}/health/live")
    httpx.post(f"{base_url}/v1/chat/completions", json={"messages": MESSAGES, "tools": [TOOL]})
    lines = access_lines(caplog, 4)
    assert len(lines) == 4, lines
    parsed = [ACCESS.match(line) for line in lines]
    assert all(parsed), lines
    assert [m.group(1, 2, 3) for m in parsed] == [
        ("POST", "/v1/completions", "200"),
        ("POST", "/v1/chat/completions", "200"),
        ("GET", "/health/live", "200"),
        ("POST", "/v1/chat/completions", "400"),
    ]
    usage = reply.usage
    assert parsed[0].group(4) == f"{usage.prompt_tokens}+{usage.completion_tokens}"
    stream_usage = streamed[-1].usage
    assert parsed[1].group(4) == f"{stream_usage.prompt_tokens}+{stream_usage.completion_tokens}"
    assert parsed[2].group(4) == parsed[3].group(4) == "-"
