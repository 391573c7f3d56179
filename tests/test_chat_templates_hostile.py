"""Hostile chat templates (issue 15, item 2): each ends in a one-line TemplateError that names
the bound it passed and no path, within a time bound, with the renderer process's peak RSS and
the caller's RSS growth bounded; the renderer serves the next template as before. Then the same
through a GGUF file: `Model.render_chat` and `pybitnet chat`."""

from __future__ import annotations

import _thread
import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from pybitnet.chat import CHATML, render_chat
from pybitnet.chat_template import _RENDERER, Limits
from pybitnet.data import default_model_path
from pybitnet.errors import TemplateError
from pybitnet.generate import Model
from pybitnet.gguf import TensorSpec, open_gguf, write_gguf

LIMITS = Limits(seconds=1.0)
MESSAGES = [{"role": "user", "content": "Hi"}]
RENDERED = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"  # by CHATML
SECONDS = 5.0  # generous: a loaded 2-core machine; the bound itself is 1 s (+0.5 s to kill)
MEMORY = "rendering needed more than 512 MiB of memory"
TIME = "rendering took longer than 1 s"
OUTPUT = "past the output bound \\(4194304\\)"
DOUBLING = "{% set s = namespace(v='x') %}{% for i in range(40) %}{% set s.v = s.v OP s.v %}"

# (name, template, what the message says after "tokenizer.chat_template: ")
CASES = [
    ("nested loops", "{% for i in range(100000) %}{% for j in range(100000) %}x"
     "{% endfor %}{% endfor %}", f"{TIME}|the output passed 4194304 characters"),
    # only the caller's kill stops it: no call, item access, operator or output to check at
    ("loops that do nothing", "{% set r = range(100000) %}{% for i in r %}{% for j in r %}"
     "{% endfor %}{% endfor %}", TIME),
    ("big-int power", "{{ (messages|length + 8) ** (9**9) }}", "an integer of more than 65536"),
    ("string times 10**9", "{{ 'x' * 10**9 }}", f"a value of length 1000000000, {OUTPUT}"),
    ("tojson indent", "{{ messages|tojson(indent=300000000) }}", f"{MEMORY}|{TIME}"),
    ("12 MB of output", "{% for i in range(12) %}{{ 'x' * 1000000 }}{% endfor %}",
     "the output passed 4194304 characters"),
    ("macro recursion", "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
     "rendering failed: RecursionError: maximum recursion depth exceeded"),
    ("doubling with ~", DOUBLING.replace("OP", "~") + "{% endfor %}{{ s.v }}", f"{MEMORY}|{TIME}"),
    ("doubling with +", DOUBLING.replace("OP", "+") + "{% endfor %}{{ s.v }}",
     f"a value of length 8388608, {OUTPUT}"),
    ("center(10**9)", "{{ 'x'|center(10**9) }}", MEMORY),
    ("center folded while compiling", "{{ 'x'|center(1000000000) }}", MEMORY),
    ("range(10**9)|list", "{{ range(10**9)|list }}",
     "rendering failed: OverflowError: Range too big"),
    ("lipsum(10**6)", "{{ lipsum(10**6) }}", f"{TIME}|{MEMORY}"),
    ("printf width", "{{ '%0999999999d' % 1 }}", MEMORY),
    ("a source of 1 MiB", "{{ 'x' }}" + " " * (1 << 20),
     "the template has 1048585 characters, more than the 1048576 allowed"),
    ("a syntax error", "{% for %}\n\n", "TemplateSyntaxError: Expected an expression, got 'end "
     "of statement block' \\(line 1\\)$"),
    ("a long, multi-line raise_exception", "{{ raise_exception('no\\nway ' * 1000) }}",
     "TemplateError: (no way ){40}no wa\\.\\.\\.$"),
]  # fmt: skip


class PeakRss(threading.Thread):
    """In a `with` block, the largest RSS of the renderer process (whichever runs), sampled
    every 10 ms: a killed renderer's peak, which getrusage would mix with other children's."""

    def __enter__(self) -> PeakRss:
        self.rss, self.done = 0, threading.Event()
        super().__init__(daemon=True)
        self.start()
        return self

    def run(self) -> None:
        while not self.done.wait(0.01):
            with contextlib.suppress(psutil.Error, AttributeError):
                rss = psutil.Process(_RENDERER._worker.proc.pid).memory_info().rss
                self.rss = max(self.rss, rss)

    def __exit__(self, *exc_info: object) -> None:
        self.done.set()
        self.join()
        self.rss = max(self.rss, running_peak_rss())


def running_peak_rss() -> int:
    """The peak RSS of the renderer still running (Linux's VmHWM); 0 when there is none."""
    worker = _RENDERER._worker
    status = Path(f"/proc/{worker.proc.pid}/status") if worker else None
    if not status or not status.exists() or worker.proc.poll() is not None:
        return 0
    line = next(s for s in status.read_text().splitlines() if s.startswith("VmHWM"))
    return int(line.split()[1]) * 1024


@pytest.mark.parametrize(
    ("template", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_hostile_template_fails_cleanly_within_its_bounds(template: str, expected: str) -> None:
    before, started = psutil.Process().memory_info().rss, time.monotonic()
    with PeakRss() as peak, pytest.raises(TemplateError) as error:
        render_chat(template, MESSAGES, source="tokenizer.chat_template", limits=LIMITS)
    assert time.monotonic() - started < SECONDS
    message = str(error.value)
    assert re.match(f"tokenizer\\.chat_template: ({expected})", message), message
    assert "\n" not in message and os.sep not in message
    assert peak.rss < 1 << 30
    assert psutil.Process().memory_info().rss - before < 100 << 20
    # the renderer serves the next template as before (started again if it was killed)
    assert render_chat(CHATML, MESSAGES) == RENDERED
    assert psutil.Process(_RENDERER._worker.proc.pid).memory_info().rss < 100 << 20


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="Linux's /proc")
def test_the_renderer_cannot_map_more_than_its_memory_bound() -> None:
    assert render_chat(CHATML, MESSAGES) == RENDERED
    limits = Path(f"/proc/{_RENDERER._worker.proc.pid}/limits").read_text()
    assert re.search(r"Max address space\s+536870912\s+536870912\s+bytes", limits), limits


def test_renders_from_many_threads_each_get_their_own_text() -> None:
    texts: dict[int, str] = {}

    def render(i: int) -> None:
        texts[i] = render_chat(
            "{{ messages[0]['content'] }}", [{"role": "user", "content": str(i)}]
        )

    threads = [threading.Thread(target=render, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert texts == {i: str(i) for i in range(16)}


def test_an_interrupted_render_does_not_answer_the_next_one() -> None:
    """Ctrl+C while a render runs: its late reply must not be taken for the next render's."""
    assert render_chat(CHATML, MESSAGES) == RENDERED  # the renderer runs: this render waits
    # interrupt_main does nothing unless Python handles SIGINT, which an earlier test of the
    # same process may have changed (the whole suite failed so, and a 60 s render ran out).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.2, _thread.interrupt_main)
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            # Loops that do nothing, with time enough for the interrupt on a busy machine.
            render_chat(CASES[1][1], MESSAGES, limits=dataclasses.replace(LIMITS, seconds=60))
    finally:
        timer.join()
        signal.signal(signal.SIGINT, previous)
    assert render_chat(CHATML, MESSAGES) == RENDERED


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="POSIX process groups")
def test_a_ctrl_c_in_the_terminal_is_for_the_caller_not_the_renderer() -> None:
    script = (
        "import os, signal, time; from pybitnet.chat import CHATML, render_chat\n"
        "m = [{'role': 'user', 'content': 'Hi'}]\n"
        "first = render_chat(CHATML, m)\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "os.killpg(os.getpgid(0), signal.SIGINT)  # what a terminal's Ctrl+C does\n"
        "time.sleep(0.2)\n"
        "print(render_chat(CHATML, m) == first)\n"
    )
    result = subprocess.run(  # in a session of its own, so that the SIGINT is for it alone
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
        start_new_session=True,
    )  # fmt: skip
    assert (result.stdout, result.stderr) == ("True\n", "")


def test_messages_that_are_not_json_are_refused() -> None:
    with pytest.raises(TemplateError, match="^chat template: the messages are not JSON values"):
        render_chat(CHATML, [{"role": "user", "content": object()}])


# -- from a GGUF file: the API and `pybitnet chat` ---------------------------------------------


def with_template(path: Path, template: str) -> Path:
    """A copy of the embedded model at ``path``, its chat template ``template``."""
    f = open_gguf(default_model_path())
    specs = [TensorSpec(n, i.shape, i.wtype, f.tensor_bytes(n)) for n, i in f.tensors.items()]
    metadata = {**f.metadata, "tokenizer.chat_template": template}
    write_gguf(path, metadata, specs, types=f.metadata_types)
    return path


def test_model_render_chat_names_the_field_not_the_path(tmp_path: Path) -> None:
    model = Model(with_template(tmp_path / "hostile.gguf", "{{ 'x' * 10**9 }}"))
    with pytest.raises(TemplateError) as error:
        model.render_chat(MESSAGES)
    assert str(error.value) == (
        "tokenizer.chat_template: a value of length 1000000000, past the output bound (4194304)"
    )


def test_pybitnet_chat_prints_one_line_and_exits(tmp_path: Path) -> None:
    """The issue's `pybitnet chat` that printed MemoryError tracebacks: the template is refused
    at start, in one line naming the file."""
    hostile = with_template(tmp_path / "hostile.gguf", "{{ messages|tojson(indent=300000000) }}")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pybitnet.cli", "chat", "-m", str(hostile)],
        input="Hi\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - started < 30
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [f"pybitnet: error: {hostile}: tokenizer.chat_template: {MEMORY}"], (
        result.stderr
    )
    assert "Traceback" not in result.stderr and result.stdout == ""
