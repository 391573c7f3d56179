"""Hostile and malformed requests (issue 15): each gets a clean answer (an OpenAI error object
naming the field, within a bounded time) while /health/live answers within a second, and the
server serves a normal request after it. Real servers throughout: most cases are about what a
request does to the process (its event loop, its scheduler thread, its connections)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from helpers.gguf_files import rewrite
from helpers.serving import HTTP_TIMEOUT, error, run_async, running
from pybitnet.convert.synthetic import make_model
from pybitnet.generate import Model, load
from pybitnet.sampling import SamplerConfig
from pybitnet.server import ServerConfig, create_app
from pybitnet.server.scheduler import Event, Failed, Finished, Generation, Piece, Scheduler

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY_TIMEOUT = 1.0  # seconds; the default is 30
LIVE_WITHIN = 1.0  # seconds /health/live may take, whatever else a request does
MESSAGES = [{"role": "user", "content": "Hello."}]
SMALL = dict(dim=64, layers=1, heads=2, kv_heads=1, ffn=128, ctx=64)  # a fast synthetic model


@pytest.fixture(scope="module")
def url(model: Model) -> Iterator[str]:
    with running(create_app(model, ServerConfig(api_key=KEY, body_timeout=BODY_TIMEOUT))) as url:
        yield url


class Liveness:
    """Asks /health/live every 50 ms while a block runs; the slowest answer it got."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.slowest = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with httpx.Client(timeout=HTTP_TIMEOUT) as client:
            while not self._done.wait(0.05):
                started = time.monotonic()
                assert client.get(f"{self.url}/health/live").status_code == 200
                self.slowest = max(self.slowest, time.monotonic() - started)

    def __enter__(self) -> Liveness:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(HTTP_TIMEOUT)
        assert self.slowest < LIVE_WITHIN, f"/health/live took {self.slowest:.2f} s"


def serves(url: str) -> None:
    """The server still answers a normal completion."""
    reply = httpx.post(
        f"{url}/v1/completions",
        json={"prompt": "Once", "max_tokens": 2},
        headers=AUTH,
        timeout=HTTP_TIMEOUT,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] <= 2


def raw(text: str) -> bytes:
    """A body written by hand: JSON escapes such as \\ud83d reach the server as sent."""
    return text.encode()


@dataclass(frozen=True)
class Case:
    name: str
    path: str  # under /v1
    body: dict[str, Any] | bytes
    status: int
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=lambda: AUTH)
    says: str = ""  # in the error's message


STOP = "x" * 257  # one more than a stop string may have
LONG_PROMPT = "a" * 900_000  # under the body limit, far over what 512 tokens can hold
NESTED = b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

CASES = [
    Case("stop string too long", "completions", {"prompt": "a", "stop": STOP}, 400, "invalid_value",
         "stop"),
    Case("stop list item too long", "chat/completions", {"messages": MESSAGES, "stop": ["a", STOP]},
         400, "invalid_value", "stop"),
    Case("lone surrogate in a prompt", "completions", raw(r'{"prompt": "x\ud83d"}'), 400,
         "invalid_value", "prompt"),
    Case("lone surrogate in a streamed prompt", "completions",
         raw(r'{"prompt": "x\ud83d", "stream": true}'), 400, "invalid_value", "prompt"),
    Case("lone surrogate in a message", "chat/completions",
         raw(r'{"messages": [{"role": "user", "content": "x\udc00"}]}'), 400, "invalid_value",
         "messages[0].content"),
    Case("lone surrogate in a streamed message", "chat/completions",
         raw(r'{"messages": [{"role": "user", "content": "\ud83dx"}], "stream": true}'), 400,
         "invalid_value", "messages[0].content"),
    Case("lone surrogate in a text part", "chat/completions",
         raw(r'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud83d"}]}]}'),
         400, "invalid_value", "messages[0].content[0].text"),
    Case("lone surrogate in a key", "completions", raw(r'{"prompt": "a", "\ud83d": 1}'), 400,
         "invalid_value", "body"),
    Case("invalid UTF-8", "completions", b'{"prompt": "x\xff"}', 400, says="decode byte 0xff"),
    Case("JSON nested 100,000 deep", "completions", NESTED, 400, says="recursion"),
    Case('"stream": "yes"', "completions", {"prompt": "a", "stream": "yes"}, 400,
         "invalid_value", "stream"),
    Case('"temperature": true', "chat/completions", {"messages": MESSAGES, "temperature": True},
         400, "invalid_value", "temperature"),
    Case('"max_tokens": "5"', "completions", {"prompt": "a", "max_tokens": "5"}, 400,
         "invalid_value", "max_tokens"),
    Case('"include_usage": "yes"', "completions",
         {"prompt": "a", "stream": True, "stream_options": {"include_usage": "yes"}}, 400,
         "invalid_value", "stream_options"),
    Case('"temperature": 1 (an integer is a number)', "completions",
         {"prompt": "a", "temperature": 1, "max_tokens": 2}, 200),
    Case("a prompt too long by its length alone", "completions", {"prompt": LONG_PROMPT}, 400,
         "context_length_exceeded", "prompt"),
    Case("no API key, a malformed body", "completions", b"{oops", 401, "invalid_api_key",
         headers={}),
    Case("a wrong API key, a valid body", "completions", {"prompt": "a"}, 401, "invalid_api_key",
         headers={"Authorization": "Bearer nope"}),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_hostile_request_gets_a_clean_answer(url: str, case: Case) -> None:
    content = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
    headers = {"Content-Type": "application/json", **case.headers}
    with Liveness(url):
        response = httpx.post(
            f"{url}/v1/{case.path}", content=content, headers=headers, timeout=HTTP_TIMEOUT
        )
    if case.status == 200:
        assert response.status_code == 200, response.text
    else:
        body = error(response, case.status)
        assert (body["code"], body["param"]) == (case.code, case.param), body
        assert case.says in body["message"]
    serves(url)


def test_four_big_chat_bodies_do_not_hold_up_liveness(url: str) -> None:
    """Their template and tokens are made off the event loop (each some 0.6 s of work here)."""
    big = {"messages": [{"role": "user", "content": "the cat sat. " * 12_000}]}
    results: list[httpx.Response] = []

    def post() -> None:
        results.append(
            httpx.post(f"{url}/v1/chat/completions", json=big, headers=AUTH, timeout=HTTP_TIMEOUT)
        )

    with Liveness(url):
        posts = [threading.Thread(target=post) for _ in range(4)]
        for thread in posts:
            thread.start()
        for thread in posts:
            thread.join(HTTP_TIMEOUT)
    assert [error(r, 400)["code"] for r in results] == ["context_length_exceeded"] * 4
    serves(url)


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=HTTP_TIMEOUT)


def status_of(sock: socket.socket) -> int:
    """The status of the response the socket receives first."""
    head = sock.recv(4096).split(b"\r\n", 1)[0]
    return int(head.split()[1])


def test_auth_comes_before_the_body_is_read(url: str) -> None:
    """A request without the key is answered from its headers: its declared body (far over
    the size limit, or within it) never has to come."""
    for length in (10**9, 50_000):
        with connect(url) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n{" % length
            )
            sock.settimeout(5)
            assert status_of(sock) == 401
    serves(url)


def test_a_slow_upload_is_cut_off(url: str) -> None:
    """A body sent a byte every 0.2 s is answered 408 once BODY_TIMEOUT has passed."""
    body = json.dumps({"prompt": "a" * 60}).encode()
    with Liveness(url), connect(url) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (KEY.encode(), len(body))
        )
        sock.settimeout(0.2)
        started = time.monotonic()
        answer = b""
        for byte in body:
            try:
                sock.sendall(bytes([byte]))
                answer = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:  # the server closed the connection as it answered
                break
            if answer:
                break
        assert answer.startswith(b"HTTP/1.1 408"), answer
        sock.settimeout(5)
        while b'"}}' not in answer:  # the head and the body may come apart
            more = sock.recv(4096)
            assert more, answer  # not closed before the body
            answer += more
        assert b'"request_timeout"' in answer
        assert time.monotonic() - started < BODY_TIMEOUT + 2
    serves(url)


def test_keep_alive_survives_a_refused_request(url: str) -> None:
    """After a 400 for a lone surrogate, the next request on the same connection is served."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=HTTP_TIMEOUT)
    headers = {"Content-Type": "application/json", **AUTH}
    try:
        for stream in ("false", "true"):
            bad = f'{{"prompt": "x\\ud83d", "stream": {stream}}}'
            connection.request("POST", "/v1/completions", bad.encode(), headers)
            first = connection.getresponse()
            assert first.status == 400 and json.loads(first.read())["error"]["param"] == "prompt"
            sock = connection.sock
            good = json.dumps({"prompt": "Once", "max_tokens": 2})
            connection.request("POST", "/v1/completions", good.encode(), headers)
            second = connection.getresponse()
            assert second.status == 200, second.read()
            second.read()
            assert connection.sock is sock  # the same connection
    finally:
        connection.close()


# A model whose tokenizer has 300 tokens and its token_embd 1,000 rows (issue 15: the first
# completion sampled an id without text and stopped the scheduler for good).
@pytest.fixture(scope="module")
def short_tokenizer_model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    folder = tmp_path_factory.mktemp("short-tokenizer")
    full = make_model(folder / "full.gguf", vocab=1000, **SMALL)

    def keep_300_tokens(md: dict) -> None:
        for key in ("tokens", "scores", "token_type"):
            md[f"tokenizer.ggml.{key}"] = md[f"tokenizer.ggml.{key}"][:300]
        md["bitnet.vocab_size"] = np.uint32(1000)

    model = load(rewrite(full, folder / "short.gguf", keep_300_tokens))
    assert (model.tokenizer.vocab_size, model.config.vocab_size) == (300, 1000)
    return model


def test_embedding_rows_past_the_tokenizer_stop_nothing(short_tokenizer_model: Model) -> None:
    with running(create_app(short_tokenizer_model, ServerConfig())) as url:
        for seed in range(4):
            body = {"prompt": "a b", "max_tokens": 16, "temperature": 2, "seed": seed}
            reply = httpx.post(f"{url}/v1/completions", json=body, timeout=HTTP_TIMEOUT)
            assert reply.status_code == 200, reply.text
        # An id with an embedding row but no text is no token a client can send.
        refused = httpx.post(f"{url}/v1/completions", json={"prompt": [1, 925]})
        assert "925" in error(refused, 400)["message"]
        assert httpx.get(f"{url}/health/live").status_code == 200
        assert httpx.get(f"{url}/health/ready").status_code == 200


def test_one_sequences_fault_fails_it_alone(short_tokenizer_model: Model) -> None:
    """A sequence whose sampler refuses its history (an id past the tokenizer, under a
    repetition penalty) fails with an event; the one beside it finishes; the thread goes on."""
    model = short_tokenizer_model
    scheduler = Scheduler(model, max_batch=2, max_queue=0, kv_budget_tokens=2 * model.n_ctx)

    async def bad_and_good() -> list[Event]:
        def generation(prompt: list[int], **sampling: Any) -> Generation:
            return Generation(
                prompt,
                tokenizer=model.tokenizer,
                max_tokens=4,
                sampling=SamplerConfig(temperature=0, **sampling),
                loop=asyncio.get_running_loop(),
            )

        gens = [generation([1, 925], repeat_penalty=1.1), generation([1, 5])]
        for gen in gens:
            scheduler.submit(gen)
        return [await last_event(gen) for gen in gens]

    scheduler.start()
    try:
        failed, finished = run_async(bad_and_good)
        assert isinstance(failed, Failed) and "925" in failed.message, failed
        assert isinstance(finished, Finished) and finished.completion_tokens == 4, finished
        assert scheduler.alive and scheduler.accepting
    finally:
        scheduler.stop(HTTP_TIMEOUT)


async def last_event(gen: Generation) -> Event:
    while isinstance(event := await gen.events.get(), Piece):
        pass
    return event


def test_live_says_when_the_scheduler_is_gone(model: Model) -> None:
    app = create_app(model, ServerConfig())
    with running(app) as url:
        assert httpx.get(f"{url}/health/live").status_code == 200
        app.state.scheduler.stop(HTTP_TIMEOUT)
        assert error(httpx.get(f"{url}/health/live"), 503)["code"] == "scheduler_stopped"
        assert httpx.get(f"{url}/health").json()["status"] == "stopped"
        assert error(httpx.get(f"{url}/health/ready"), 503)


SLOW_FAILING_TEMPLATE = (
    "{% for i in range(4000) %}{% for j in range(4000) %}{% endfor %}{% endfor %}{{ 1 // 0 }}"
)


@pytest.mark.parametrize(
    "template", [SLOW_FAILING_TEMPLATE, "{{ messages | no_such_filter }}"], ids=["slow", "broken"]
)
def test_a_bad_chat_template_is_a_400_that_shows_no_path(tmp_path: Path, template: str) -> None:
    small = make_model(tmp_path / "small.gguf", vocab=300, **SMALL)
    path = rewrite(small, tmp_path / "templated.gguf",
                   lambda md: md.update({"tokenizer.chat_template": template}))  # fmt: skip
    with running(create_app(load(path), ServerConfig())) as url, Liveness(url):
        response = httpx.post(
            f"{url}/v1/chat/completions", json={"messages": MESSAGES}, timeout=HTTP_TIMEOUT
        )
    assert "template" in error(response, 400)["message"]
    assert str(tmp_path) not in response.text
