"""Running a pybitnet server inside a test: on a free loopback port, in a thread."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn


@contextlib.contextmanager
def running(app: Any) -> Iterator[str]:
    """Serves `app` (its lifespan included) until the block ends; yields its base URL."""
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
        thread.join(10)


def gauge(base_url: str, name: str) -> float:
    text = httpx.get(f"{base_url}/metrics").text
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} is not in /metrics"
    return float(match.group(1))


def wait_idle(base_url: str, timeout: float = 10.0) -> None:
    """Waits until no sequence is active or queued, or fails."""
    deadline = time.monotonic() + timeout
    while gauge(base_url, "pybitnet_active_sequences") or gauge(base_url, "pybitnet_queue_depth"):
        assert time.monotonic() < deadline, "sequences were left active or queued"
        time.sleep(0.05)
