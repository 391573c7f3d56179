"""The chat page at `/`, driven in headless Chromium as a person would use it: type a message,
press Enter, watch the reply stream in.

Chromium is driven through the DevTools protocol over --remote-debugging-pipe (JSON messages
ending in NUL on the browser's fds 3 and 4), so no client library is needed.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import subprocess
import time
from typing import Any

import pytest

from helpers.chromium import CHROMIUM, HEADLESS_FLAGS, needs_chromium
from helpers.serving import running
from pybitnet.server import ServerConfig, create_app

pytestmark = [needs_chromium, pytest.mark.slow]


class Browser:
    """One headless Chromium page, spoken to over the DevTools protocol."""

    def __init__(self, profile_dir: str) -> None:
        read_end, self._out = os.pipe()
        self._in, write_end = os.pipe()
        # Above fd 9, so that putting them on 3 and 4 cannot overwrite one with the other.
        to_browser, from_browser = (
            fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (read_end, write_end)
        )
        os.close(read_end)
        os.close(write_end)
        flags = [
            *HEADLESS_FLAGS,
            f"--user-data-dir={profile_dir}",
            "--remote-debugging-pipe",
        ]
        # bash (dash refuses fds above 9) puts them on the fds Chromium reads (3) and writes (4).
        self._process = subprocess.Popen(
            [
                "/bin/bash",
                "-c",
                f'exec "$0" "$@" 3<&{to_browser} 4>&{from_browser}',
                CHROMIUM,
                *flags,
            ],
            pass_fds=(to_browser, from_browser),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        self._session: str | None = None

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.send("Page.navigate", url=url)
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")

    def send(self, method: str, timeout: float = 20, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self._session and not method.startswith("Target."):
            message["sessionId"] = self._session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                assert "error" not in reply, reply["error"]
                return reply["result"]

    def js(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while not (value := self.js(expression)):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.05)
        return value

    def type_and_enter(self, selector: str, text: str) -> None:
        self.js(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", text=text)
        for kind in ("keyDown", "keyUp"):
            key = dict(key="Enter", code="Enter", windowsVirtualKeyCode=13)
            self.send("Input.dispatchKeyEvent", type=kind, **key)

    def close(self) -> None:
        self._process.kill()
        self._process.wait()
        os.close(self._out)
        os.close(self._in)

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._in], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, "Chromium did not answer in time"
            chunk = os.read(self._in, 1 << 16)
            assert chunk, "Chromium closed the pipe"
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)


@pytest.fixture
def browser(tmp_path):
    b = Browser(str(tmp_path / "profile"))
    yield b
    b.close()


# Records the reply's length at every change, to see it grow piece by piece.
WATCH_REPLIES = """
window.lengths = [];
new MutationObserver(() => {
  const replies = document.querySelectorAll(".assistant");
  if (replies.length) window.lengths.push(replies[replies.length - 1].textContent.length);
}).observe(document.getElementById("log"), {childList: true, subtree: true, characterData: true});
"""


def greedy_chat(model, messages):
    prompt = model.render_chat(messages)
    return model.complete(prompt, parse_special=True, max_tokens=40, temperature=0).text


def test_typing_a_message_streams_the_reply_into_the_page(browser, model):
    with running(create_app(model)) as url:
        browser.open(url + "/")
        browser.wait_for(f"document.getElementById('model').textContent === '{model.path.stem}'")
        browser.js(WATCH_REPLIES)
        browser.js("document.getElementById('temperature').value = '0'")
        browser.js("document.getElementById('max-tokens').value = '40'")
        conversation = []
        for message in ("Tell me a story about a dog.", "What happened next?"):
            browser.js("window.lengths = []")
            browser.type_and_enter("#input", message)
            browser.wait_for("document.querySelector('.assistant:last-child')?.dataset.done")
            reply = browser.js("document.querySelector('.assistant:last-child').textContent")
            conversation.append({"role": "user", "content": message})
            assert reply == greedy_chat(model, conversation)
            conversation.append({"role": "assistant", "content": reply})
            lengths = browser.js("window.lengths")
            assert len(set(lengths)) > 2 and lengths == sorted(lengths), lengths
        shown = browser.js(
            "[...document.querySelectorAll('.message')].map(e => [e.className, e.textContent])"
        )
        assert shown == [[f"message {m['role']}", m["content"]] for m in conversation]
        assert browser.js("document.getElementById('input').value") == ""


def test_the_page_asks_for_the_api_key_when_one_is_set(browser, model):
    with running(create_app(model, ServerConfig(api_key="s3cret"))) as url:
        browser.open(url + "/")
        browser.wait_for("document.getElementById('model').textContent === 'enter the API key'")
        assert browser.js("document.getElementById('key-label').hidden") is False
        browser.js(
            "const key = document.getElementById('api-key'); key.value = 's3cret';"
            "key.dispatchEvent(new Event('change'))"
        )
        assert browser.wait_for(
            f"document.getElementById('model').textContent === '{model.path.stem}'"
        )
        browser.type_and_enter("#input", "Hello")
        browser.wait_for("document.querySelector('.assistant')?.dataset.done")
        assert browser.js("document.querySelector('.assistant').className") == "message assistant"
        assert browser.js("document.querySelector('.assistant').textContent")


def test_ten_turns_fit_and_new_chat_starts_over(browser, model):
    """With the page's defaults (no max tokens: a reply may fill the rest of the context), the
    embedded model's 512-token context fills within two turns; the page drops the oldest turns
    as the server did, marks replies that stopped on length, and never shows an error."""
    with running(create_app(model)) as url:
        browser.open(url + "/")
        browser.wait_for(f"document.getElementById('model').textContent === '{model.path.stem}'")
        for turn in range(10):
            browser.type_and_enter("#input", f"Tell me story number {turn}.")
            browser.wait_for(
                "document.querySelector('.assistant:last-child')?.dataset.done"
                " && !document.getElementById('send').disabled"
            )
            assert browser.js("document.querySelectorAll('.error').length") == 0, turn
        # What the page sends next is what is left on screen, not faded out.
        kept = browser.js(
            "[...document.querySelectorAll('.message:not(.dropped)')].map(e => e.textContent)"
        )
        assert browser.js("conversation.map(m => m.content)") == kept
        assert browser.js("document.querySelectorAll('.dropped').length") > 0
        assert "no longer fit" in browser.js("document.querySelector('.note').textContent")
        marked = "document.querySelector('[data-finish=length]')"
        assert browser.js(f"getComputedStyle({marked}, '::after').content").find("length") > 0

        browser.js("document.getElementById('new-chat').click()")
        assert browser.js("document.getElementById('log').children.length") == 0
        assert browser.js("conversation.length") == 0
        browser.js("document.getElementById('temperature').value = '0'")
        browser.js("document.getElementById('max-tokens').value = '40'")
        browser.type_and_enter("#input", "Hello")
        browser.wait_for("document.querySelector('.assistant:last-child')?.dataset.done")
        reply = browser.js("document.querySelector('.assistant').textContent")
        assert reply == greedy_chat(model, [{"role": "user", "content": "Hello"}])
        assert browser.js("document.querySelectorAll('.message').length") == 2
