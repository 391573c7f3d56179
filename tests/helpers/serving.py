"""Running a pybitnet server inside a test: on a free loopback port, in a thread.

Every wait here has a bound, so a stuck scheduler fails the test instead of hanging the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import uvicorn

T = TypeVar("T")

# Seconds one HTTP call of a test may take: a generation of a few hundred tokens of the
# embedded model, on a loaded 2-core machine.
HTTP_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0  # for the server to stop: its lifespan stops the scheduler


@contextlib.contextmanager
def running(app: Any) -> Iterator[str]:
    """Serves `app` (its lifespan included) until the block ends; yields its base URL.
    Fails if the server does not start in 10 s or stop in STOP_TIMEOUT."""
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=2
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(STOP_TIMEOUT)
    assert not thread.is_alive(), f"the server did not stop in {STOP_TIMEOUT} s"


def run_async(main: Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
    """asyncio.run(main()), failing with TimeoutError after `timeout` seconds."""

    async def bounded() -> T:
        return await asyncio.wait_for(main(), timeout)

    return asyncio.run(bounded())


def error(response: httpx.Response, status: int) -> dict:
    """The OpenAI error object of a response that must have this status."""
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert body["message"]
    return body


def _gauge_value(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} is not in /metrics"
    return float(match.group(1))


def gauge(base_url: str, name: str) -> float:
    return _gauge_value(httpx.get(f"{base_url}/metrics", timeout=HTTP_TIMEOUT).text, name)


async def gauge_async(client: httpx.AsyncClient, name: str) -> float:
    """gauge() from inside an event loop (a blocking call there would stall the test's own
    requests); client's base_url is the server's."""
    return _gauge_value((await client.get("/metrics", timeout=HTTP_TIMEOUT)).text, name)


async def wait_for_gauge(
    client: httpx.AsyncClient, name: str, value: float, timeout: float = 10.0
) -> None:
    """Waits until the gauge reads `value`, or fails."""
    deadline = time.monotonic() + timeout
    while (seen := await gauge_async(client, name)) != value:
        assert time.monotonic() < deadline, f"{name} stayed at {seen}, not {value}"
        await asyncio.sleep(0.01)


def wait_idle(base_url: str, timeout: float = 10.0) -> None:
    """Waits until no sequence is active or queued, or fails."""
    deadline = time.monotonic() + timeout
    while gauge(base_url, "pybitnet_active_sequences") or gauge(base_url, "pybitnet_queue_depth"):
        assert time.monotonic() < deadline, "sequences were left active or queued"
        time.sleep(0.05)
