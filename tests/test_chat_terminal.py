"""`pybitnet chat` in a real terminal (tmux), as a newcomer uses it: ten turns with the embedded
model and the default budget, /reset, Ctrl+C during a reply, one more turn, /exit."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

PYBITNET = Path(sys.executable).parent / "pybitnet"
PROMPT = "> "

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="tmux is not installed (Debian: apt-get install tmux)"
)


class Terminal:
    """A detached tmux session running one command."""

    def __init__(self, command: str) -> None:
        self.name = f"pybitnet-{uuid.uuid4().hex[:8]}"
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", self.name, "-x", "200", "-y", "50", command],
            check=True,
        )

    def screen(self) -> str:
        """Everything the session printed (scrollback included)."""
        out = subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", self.name, "-S", "-5000"],
            capture_output=True,
            text=True,
        )
        return out.stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def wait_for_prompts(self, n: int, seconds: float = 60) -> str:
        """The screen once n chat prompts have been shown (a reply has ended before each)."""
        deadline = time.monotonic() + seconds
        while True:
            screen = self.screen()
            lines = screen.splitlines()
            if sum(line.startswith(PROMPT.rstrip()) for line in lines) >= n:
                return screen
            assert time.monotonic() < deadline, f"{n} prompts never came:\n{screen}"
            time.sleep(0.1)

    def wait_for_reply_text(self, seconds: float = 30) -> None:
        """Until the reply's first text shows (the last line is no longer the typed message)."""
        deadline = time.monotonic() + seconds
        while True:
            lines = self.screen().rstrip("\n").splitlines()
            if lines and not lines[-1].startswith(PROMPT.rstrip()):
                return
            assert time.monotonic() < deadline, "the reply never began"
            time.sleep(0.005)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def test_ten_turns_reset_and_ctrl_c_in_a_terminal():
    # `; sleep 30` keeps the pane (and what chat printed) after chat exits
    term = Terminal(f"{PYBITNET} chat; echo chat-exit-$?; sleep 30")
    try:
        term.wait_for_prompts(1)
        for i in range(10):
            term.keys(f"Tell me a story about a dog number {i}.", "Enter")
            term.wait_for_prompts(i + 2)
        term.keys("/reset", "Enter")
        term.wait_for_prompts(12)
        term.keys("Tell me a very long story about a big red castle.", "Enter")
        term.wait_for_reply_text()
        term.keys("C-c")
        term.wait_for_prompts(13)
        term.keys("And then?", "Enter")
        term.wait_for_prompts(14)
        term.keys("/exit", "Enter")
        deadline = time.monotonic() + 30
        while "chat-exit-" not in (screen := term.screen()):
            assert time.monotonic() < deadline, screen
            time.sleep(0.1)
    finally:
        term.close()
    assert "chat-exit-0" in screen, screen
    assert "Traceback" not in screen and "error" not in screen.lower(), screen
    assert "oldest turn(s) left the history to fit the context" in screen, screen
    assert "(history cleared)" in screen, screen
    assert "(reply stopped)" in screen, screen
