"""The OpenAI-compatible API, through the real `openai` client, against the embedded model;
the expected texts come from the single-sequence path (Model.complete), not from the server."""

from __future__ import annotations

import copy

import httpx
import openai
import pytest

from helpers.serving import HTTP_TIMEOUT, error, running
from pybitnet.server import ServerConfig, create_app
from pybitnet.tokenizer import Tokenizer

MESSAGES = [{"role": "user", "content": "Tell me a story about a cat."}]
ID = "tinystories-3m"  # the embedded model's id: its file's stem, as /v1/models lists it


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=HTTP_TIMEOUT
    )


def greedy_chat(model, messages, max_tokens):
    return model.complete(
        model.render_chat(messages), parse_special=True, max_tokens=max_tokens, temperature=0
    )


def test_models_lists_the_loaded_model(client, model):
    (card,) = client.models.list().data
    assert card.id == model.path.stem
    assert client.models.retrieve(card.id).id == card.id
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_chat_completion_matches_the_single_sequence_path(client, model):
    expected = greedy_chat(model, MESSAGES, 24)
    reply = client.chat.completions.create(
        model=ID, messages=MESSAGES, max_tokens=24, temperature=0
    )
    (choice,) = reply.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason == "length"
    assert reply.usage.prompt_tokens == expected.prompt_tokens
    assert reply.usage.completion_tokens == len(expected.token_ids) == 24
    assert reply.usage.total_tokens == expected.prompt_tokens + 24


def test_chat_stream_delivers_the_same_text_in_pieces_then_usage(client, model):
    expected = greedy_chat(model, MESSAGES, 24)
    chunks = list(
        client.chat.completions.create(
            model=ID,
            messages=MESSAGES,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1, "the reply came in one piece, not streamed"
    assert "".join(pieces) == expected.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 24
    assert chunks[-1].usage.prompt_tokens == expected.prompt_tokens
    assert len({c.id for c in chunks}) == 1


def test_completions_plain_and_streamed(client, model):
    expected = model.complete("Once upon a time", max_tokens=30, temperature=0)
    reply = client.completions.create(
        model=ID, prompt="Once upon a time", max_tokens=30, temperature=0
    )
    assert reply.choices[0].text == expected.text
    assert reply.usage.prompt_tokens == expected.prompt_tokens
    stream = client.completions.create(
        model=ID, prompt="Once upon a time", max_tokens=30, temperature=0, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == expected.text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_completion_from_token_ids(client, model):
    ids = model.tokenize("Once upon a time")
    expected = model.complete(ids, max_tokens=10, temperature=0)
    reply = client.completions.create(model=ID, prompt=ids, max_tokens=10, temperature=0)
    assert reply.choices[0].text == expected.text


def test_stop_string_ends_the_reply_before_it(client, model):
    text = model.complete("Once upon a time", max_tokens=40, temperature=0).text
    stop = text[15:22]
    reply = client.completions.create(
        model=ID, prompt="Once upon a time", max_tokens=40, temperature=0, stop=[stop, "zzz"]
    )
    assert reply.choices[0].text == text[: text.index(stop)]
    assert reply.choices[0].finish_reason == "stop"
    chunks = client.completions.create(
        model=ID, prompt="Once upon a time", max_tokens=40, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in chunks) == text[: text.index(stop)]


class _EndsAt(Tokenizer):
    """The model's tokenizer, with `token` as its one end-of-generation id."""

    def __init__(self, inner: Tokenizer, token: int) -> None:
        vars(self).update(vars(inner))
        self._eog_at = frozenset({token})

    @property
    def eog_ids(self) -> frozenset[int]:
        return self._eog_at


def test_end_of_generation_token_stops_with_reason_stop(model):
    # The TinyStories model never ends a story with EOS, so one of the tokens it writes
    # greedily is declared end-of-generation instead.
    ids = model.complete("Once upon a time", max_tokens=20, temperature=0).token_ids
    k = next(i for i in range(8, 20) if ids[i] not in ids[:i])
    ends_early = copy.copy(model)
    ends_early.tokenizer = _EndsAt(model.tokenizer, ids[k])
    with running(create_app(ends_early)) as url:
        body = {"prompt": "Once upon a time", "max_tokens": 20, "temperature": 0}
        reply = httpx.post(f"{url}/v1/completions", json=body).json()
    assert reply["choices"][0]["finish_reason"] == "stop"
    assert (
        reply["choices"][0]["text"]
        == model.complete("Once upon a time", max_tokens=k, temperature=0).text
    )
    assert reply["usage"]["completion_tokens"] == k


def test_seeded_sampling_is_reproducible_and_matches_generate(client, model):
    options = dict(max_tokens=20, temperature=1.0, top_p=0.9, seed=1234)
    expected = model.complete("The dog", **options).text
    first = client.completions.create(model=ID, prompt="The dog", **options)
    second = client.completions.create(model=ID, prompt="The dog", **options)
    other = client.completions.create(model=ID, prompt="The dog", **{**options, "seed": 99})
    assert first.choices[0].text == second.choices[0].text == expected
    assert other.choices[0].text != expected


def test_generation_stops_at_the_end_of_the_context(client, model):
    prompt = [model.tokenizer.bos_id] + [300] * (model.n_ctx - 5)
    reply = client.completions.create(model=ID, prompt=prompt, max_tokens=100, temperature=0)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 4
    assert reply.choices[0].text == model.complete(prompt, max_tokens=100, temperature=0).text


def chat(base_url: str, **fields) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/chat/completions", json={"messages": MESSAGES, **fields})


def test_only_n_1(base_url, client):
    assert error(chat(base_url, n=2), 400)["param"] == "n"
    with pytest.raises(openai.BadRequestError, match="n=1"):
        client.chat.completions.create(model=ID, messages=MESSAGES, n=3)
    assert chat(base_url, n=1, max_tokens=1).status_code == 200


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_invalid_fields_are_400_naming_the_field(base_url, fields, param):
    assert error(chat(base_url, **fields), 400)["param"] == param


def test_bad_requests_are_400(base_url, model):
    post = httpx.post
    not_json = post(
        f"{base_url}/v1/completions", content=b"{oops", headers={"content-type": "application/json"}
    )
    assert "JSON" in error(not_json, 400)["message"]
    too_long = post(f"{base_url}/v1/completions", json={"prompt": [1] * model.n_ctx})
    assert error(too_long, 400)["code"] == "context_length_exceeded"
    bad_id = post(f"{base_url}/v1/completions", json={"prompt": [1, 10**6]})
    assert "10000" in error(bad_id, 400)["message"]
    two = post(f"{base_url}/v1/completions", json={"prompt": ["a", "b"]})
    assert error(two, 400)["param"] == "prompt"
    assert error(chat(base_url, logprobs=True), 400)["param"] == "logprobs"
    assert error(chat(base_url, stop=[""]), 400)["message"]


def test_unknown_routes_are_404(base_url):
    assert error(httpx.get(f"{base_url}/v2/nothing"), 404)["code"] == "not_found"
    assert error(httpx.get(f"{base_url}/v1/models/nope"), 404)["code"] == "model_not_found"


def test_large_bodies_are_413_with_or_without_a_length(model):
    with running(create_app(model, ServerConfig(max_body_bytes=1000))) as url:
        big = {"messages": [{"role": "user", "content": "x" * 2000}]}
        assert error(httpx.post(f"{url}/v1/chat/completions", json=big), 413)["code"]

        def chunked():
            yield b'{"prompt": "'
            yield b"y" * 2000
            yield b'"}'

        response = httpx.post(f"{url}/v1/completions", content=chunked())
        assert error(response, 413)["code"] == "request_too_large"


def test_api_key_guards_v1_only(model):
    with running(create_app(model, ServerConfig(api_key="s3cret"))) as url:
        assert error(httpx.get(f"{url}/v1/models"), 401)["code"] == "invalid_api_key"
        wrong = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer nope"})
        assert error(wrong, 401)["code"] == "invalid_api_key"
        assert error(httpx.post(f"{url}/v1/completions", json={"prompt": "a"}), 401)
        for path in ("/health", "/health/live", "/health/ready", "/metrics", "/"):
            assert httpx.get(url + path).status_code == 200, path
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(
                base_url=f"{url}/v1", api_key="nope", max_retries=0, timeout=HTTP_TIMEOUT
            ).models.list()
        good = openai.OpenAI(
            base_url=f"{url}/v1", api_key="s3cret", max_retries=0, timeout=HTTP_TIMEOUT
        )
        reply = good.chat.completions.create(model=ID, messages=MESSAGES, max_tokens=3)
        assert reply.usage.completion_tokens <= 3


def test_cors_is_off_unless_configured(base_url, model):
    preflight = {"Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST"}
    response = httpx.options(f"{base_url}/v1/chat/completions", headers=preflight)
    assert "access-control-allow-origin" not in response.headers
    app = create_app(model, ServerConfig(cors_origins=("http://elsewhere.example",)))
    with running(app) as url:
        response = httpx.options(f"{url}/v1/chat/completions", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "http://elsewhere.example"


def test_health_and_metrics(base_url, client, model):
    assert httpx.get(f"{base_url}/health/live").json() == {"status": "ok"}
    assert httpx.get(f"{base_url}/health/ready").json() == {"status": "ready"}
    health = httpx.get(f"{base_url}/health").json()
    assert health["status"] == "ok" and health["model"] == model.path.stem
    assert health["n_ctx"] == model.n_ctx and health["kv_cache"] == model.engine.kv_cache == "f16"
    client.completions.create(model=ID, prompt="A", max_tokens=5, temperature=0)
    chat(base_url, n=2)
    metrics = httpx.get(f"{base_url}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for line in (
        'pybitnet_requests_total{route="/v1/completions",status="200"}',
        'pybitnet_requests_total{route="/v1/chat/completions",status="400"}',
        "pybitnet_prompt_tokens_total",
        "pybitnet_generated_tokens_total",
        "pybitnet_queue_depth 0.0",
        "pybitnet_active_sequences 0.0",
        "pybitnet_time_to_first_token_seconds_count",
        "pybitnet_inter_token_latency_seconds_bucket",
    ):
        assert line in text, line
