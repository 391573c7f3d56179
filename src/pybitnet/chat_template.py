"""Rendering an untrusted chat template within bounds on time, output and memory (`Limits`).

A template from a file can loop for hours, build a gigabyte string or compute a huge power in
one C call. A Python thread running it cannot be stopped, and an in-process check can only
catch what it foresaw. So templates render in a separate renderer process (chat_sandbox.py)
that gives the bounds by design:

- time: the caller waits `seconds` (plus a grace) for the reply, then kills the process;
- memory: the process's address space is capped (RLIMIT_AS), and the caller also kills it
  past `memory_bytes` of RSS where the cap is not enforced (macOS, Windows);
- output: the process counts the text as it streams and stops past `output_chars`;
- source: a template longer than `source_chars` is refused before it is sent or compiled.

Inside the process, cheap checks (chat_sandbox.py) stop the common runaway cases early with a
precise message and keep the process alive; a killed or crashed process is started again on
the next render. It is started lazily, at the first render (so loading a model and `pybitnet
run` never pay for it), from `sys.executable` (never a fork of a possibly multi-threaded
server), and reused: it compiles each template once, and a render costs one round trip. It is
a plain subprocess speaking JSON lines on its stdin and stdout, not a multiprocessing one:
multiprocessing's spawn and forkserver methods import the caller's `__main__` script again in
the child, which would break a user's script that calls `Model.chat` without a main guard.

Measured on the 2-core development machine (under a load of ~8): the process starts in
0.1-0.3 s and holds ~20 MB of RSS; a render of SmolLM2's template or of the embedded model's
built-in one then costs ~0.11 ms (median), where the in-process rendering it replaces, which
compiled the template on each call, cost 7 and 1.8 ms.

Errors are TemplateError, whose message names the field and the bound but never a file path,
so a server may return it to its client as it is; the CLI adds the file's path.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Any

from pybitnet.errors import TemplateError

GRACE_SECONDS = 0.5  # past `seconds`, the caller's kill; the process's own checks come first
START_SECONDS = 60.0  # for the process to start (a loaded machine may take long)
WATCH_SECONDS = 0.05  # how often a long render's memory is looked at
MESSAGE_CHARS = 300  # of an error message (a template's raise_exception may be long)
_BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from pybitnet.chat_sandbox import serve; serve(int(sys.argv[2]))"
)


@dataclass(frozen=True)
class Limits:
    """The bounds of one render. 4 Mi characters is about a million tokens, more than any
    context pybitnet runs; a real template renders in about a millisecond."""

    seconds: float = 2.0  # wall time, compiling included
    output_chars: int = 4 << 20
    source_chars: int = 1 << 20  # the template's own length
    memory_bytes: int = 512 << 20  # the renderer process's


DEFAULT_LIMITS = Limits()


def render_template(
    template: str, variables: dict[str, Any], *, source: str, limits: Limits = DEFAULT_LIMITS
) -> str:
    """``template`` rendered with ``variables`` (JSON values) within ``limits``; errors are
    TemplateError("{source}: ..."), so ``source`` must name a field, never a path."""
    if len(template) > limits.source_chars:
        raise TemplateError(
            f"{source}: the template has {len(template)} characters, more than the "
            f"{limits.source_chars} allowed"
        )
    request = dict(
        template=template,
        variables=variables,
        seconds=limits.seconds,
        output_chars=limits.output_chars,
        alarm_seconds=limits.seconds + 2 * GRACE_SECONDS,  # see chat_sandbox.serve
    )
    try:
        line = json.dumps(request)
    except (TypeError, ValueError) as exc:
        raise TemplateError(f"{source}: the messages are not JSON values: {exc}") from None
    reply = _RENDERER.ask(line, limits)
    if "error" in reply:
        message = " ".join(str(reply["error"]).split())  # one line, whatever the template said
        if len(message) > MESSAGE_CHARS:
            message = message[:MESSAGE_CHARS] + "..."
        raise TemplateError(f"{source}: {message}")
    return reply["text"]


class _Worker:
    """One renderer process; its replies arrive on a queue that a reader thread fills (a
    portable way to wait with a timeout), None once the process's output ends."""

    def __init__(self, memory_bytes: int) -> None:
        self.memory_bytes = memory_bytes
        args = [sys.executable, "-I", "-c", _BOOT, json.dumps(sys.path), str(memory_bytes)]
        try:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,  # a terminal's Ctrl+C is for the caller, not for it
            )
        except OSError as exc:
            raise TemplateError(f"cannot start the chat template renderer: {exc}") from None
        self.replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()
        try:
            ready = self._wait(time.monotonic() + START_SECONDS)
        except BaseException:  # interrupted (Ctrl+C): no process is left behind
            self.stop()
            raise
        if ready is None:
            self.stop()
            raise TemplateError("the chat template renderer did not start")

    def usable(self, memory_bytes: int) -> bool:
        return self.memory_bytes == memory_bytes and self.proc.poll() is None

    def ask(self, line: str, limits: Limits) -> dict[str, Any]:
        deadline = time.monotonic() + limits.seconds + GRACE_SECONDS
        try:
            with contextlib.suppress(OSError):  # if it died, its replies queue says how
                self.proc.stdin.write(line + "\n")
                self.proc.stdin.flush()
            reply = self._wait(deadline)
        except BaseException:  # interrupted (Ctrl+C): the reply would answer the next request
            self.stop()
            raise
        if reply is not None:
            return reply
        rss = self._rss()  # too slow, too big or dead: this process is done
        self.stop()
        if rss > self.memory_bytes:
            return {"error": f"rendering needed more than {self.memory_bytes >> 20} MiB of memory"}
        if time.monotonic() >= deadline:
            return {"error": f"rendering took longer than {limits.seconds:g} s"}
        return {"error": f"the renderer process stopped (exit status {self.proc.returncode})"}

    def _wait(self, deadline: float) -> dict[str, Any] | None:
        """The next reply; None when the process ended, or at the deadline, or (checked every
        WATCH_SECONDS) when its memory passes the bound."""
        while (left := deadline - time.monotonic()) > 0:
            try:
                return self.replies.get(timeout=min(left, WATCH_SECONDS))
            except queue.Empty:
                if self._rss() > self.memory_bytes:
                    return None
        return None

    def _rss(self) -> int:
        import psutil

        try:
            return psutil.Process(self.proc.pid).memory_info().rss
        except psutil.Error:  # it has ended
            return 0

    def _read(self, stdout: IO[str]) -> None:
        with stdout:
            for line in stdout:
                self.replies.put(json.loads(line))
        self.replies.put(None)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        with contextlib.suppress(OSError):  # an interrupted write's buffer has nowhere to go
            self.proc.stdin.close()


class _Renderer:
    """The process-wide renderer: one render at a time (callers on other threads wait their
    turn), in a process started on first use and again after it was killed or died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._worker: _Worker | None = None

    def ask(self, line: str, limits: Limits) -> dict[str, Any]:
        with self._lock:
            worker = self._worker
            if worker is None or not worker.usable(limits.memory_bytes):
                if worker is not None:
                    worker.stop()
                worker = self._worker = _Worker(limits.memory_bytes)
            return worker.ask(line, limits)


_RENDERER = _Renderer()
if hasattr(os, "register_at_fork"):  # a forked child starts its own renderer, and its own lock
    os.register_at_fork(after_in_child=_RENDERER.__init__)
