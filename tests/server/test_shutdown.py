"""`pybitnet serve` as a process: it serves the embedded model with no arguments, and on
SIGTERM stops admitting, finishes what is in flight (or ends it with an error after the
timeout), then ends by re-raising SIGTERM (uvicorn's way: a supervisor sees that the signal
ended it)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from pybitnet.server.config import FINAL_WORDS_SECONDS

pytestmark = pytest.mark.slow

PYBITNET = Path(sys.executable).parent / "pybitnet"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], port: int) -> subprocess.Popen:
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, process.stdout.read()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/live").status_code == 200:
                return process
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.1)


def stream_until_first_token(url: str, max_tokens: int):
    body = {"prompt": "Once upon a time", "max_tokens": max_tokens, "stream": True}
    response = httpx.Client(timeout=30).send(
        httpx.Request("POST", f"{url}/v1/completions", json=body), stream=True
    )
    lines = response.iter_lines()
    while not next(lines).startswith("data: {"):
        pass
    return response, lines


def wait_for_active(url: str, n: int, seconds: float = 30) -> None:
    """Waits until n sequences are in the server's batch (its gauge says so)."""
    deadline = time.monotonic() + seconds
    while f"pybitnet_active_sequences {float(n)}" not in httpx.get(f"{url}/metrics").text:
        assert time.monotonic() < deadline, f"{n} sequences never were in the batch"
        time.sleep(0.05)


def refused(url: str) -> bool:
    try:
        return httpx.post(f"{url}/v1/completions", json={"prompt": "a"}).status_code == 503
    except httpx.TransportError:  # the listening socket is closed
        return True


def test_serve_with_no_arguments_finishes_in_flight_requests_on_sigterm():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start([str(PYBITNET), "serve", "--port", str(port)], port)
    try:
        assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == "tinystories-3m"
        response, lines = stream_until_first_token(url, 500)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert refused(url)
        rest = list(lines)
        events = [json.loads(line[6:]) for line in rest if line.startswith("data: {")]
        # Finished, not cut: at the end of the story (BOS) or of its 500 tokens, then [DONE].
        assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        assert "data: [DONE]" in rest
        assert process.wait(timeout=15) == -signal.SIGTERM
        log = process.stdout.read()
        assert "GET /v1/models 200" in log, log  # the access log reaches the terminal
        assert "POST /v1/completions 200" in log, log
    finally:
        process.kill()


def test_requests_still_running_after_the_timeout_end_with_an_error():
    """Past the timeout, nothing is cut silently: a stream ends with an OpenAI error event and
    [DONE], a plain request gets OpenAI's 503 error as JSON, and the process then exits."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Steps of 5 ms at least: the 500 tokens take 2.5 s or more, past the 1 s timeout, however
    # fast the engine is.
    code = (
        "import time; from pybitnet.engine import Engine; from pybitnet.server import "
        "ServerConfig, serve; step = Engine.forward_batch; "
        "Engine.forward_batch = lambda *a, **k: (time.sleep(0.005), step(*a, **k))[1]; "
        f"serve(port={port}, config=ServerConfig(shutdown_timeout=1))"
    )
    process = start([sys.executable, "-c", code], port)
    try:
        plain: list[httpx.Response] = []
        body = {"prompt": "Once upon a time", "max_tokens": 500}
        waiting = threading.Thread(
            target=lambda: plain.append(httpx.post(f"{url}/v1/completions", json=body, timeout=30))
        )
        waiting.start()
        response, lines = stream_until_first_token(url, 500)
        wait_for_active(url, 2)  # the plain request too is in the batch (a busy machine may lag)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        rest = list(lines)
        waiting.join(30)
        assert process.wait(timeout=10) == -signal.SIGTERM
        assert time.monotonic() - started < 1 + FINAL_WORDS_SECONDS + 1
        events = [json.loads(line[6:]) for line in rest if line.startswith("data: {")]
        assert events[-1]["error"]["code"] == "unavailable", events[-1]
        assert [line for line in rest if line.startswith("data:")][-1] == "data: [DONE]"
        (answer,) = plain
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "unavailable"
    finally:
        process.kill()
