"""The renderer process of chat_template.py: HF transformers' Jinja2 environment (immutable
sandbox, trim_blocks / lstrip_blocks, loop controls, `{% generation %}`, its `tojson`,
`raise_exception`, `strftime_now`) with cheap bounds that fail fast and keep the process alive:

- the wall time, checked at every call, attribute or item access, operator and output piece;
- the output, counted piece by piece as the template streams it;
- `*`, `**` and `+` refuse, before computing, a string, list or integer past the bounds.

What these checks do not foresee (an allocation in C, a loop that calls nothing) meets the
process's own bounds: its address space (RLIMIT_AS, set here), and the parent's deadline, which
kills the process. Only the standard library and jinja2 are imported here, so the process
starts fast and the parent never imports jinja2.

Protocol: the parent starts `serve()`; each line on stdin is a JSON request, each line on
stdout the JSON reply ({"text": ...} or {"error": ...}); stdin's end stops the process.
"""

from __future__ import annotations

import gc
import json
import signal
import sys
import time
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_INT_BITS = 1 << 16  # a longer integer cannot be printed (Python's 4300-digit limit)
CACHED_TEMPLATES = 4  # compiled templates kept (a server uses one)


class Bound(Exception):
    """A render went past one of its bounds; the message says which, with its value."""


class _GenerationTag(jinja2.ext.Extension):
    """HF's `{% generation %}...{% endgeneration %}` marks assistant text; render its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # HF's filter: Jinja's own tojson escapes HTML characters, which a prompt must not
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with the time and size checks of one render (`start` arms them)."""

    intercepted_binops = frozenset({"*", "**", "+"})

    def __init__(self) -> None:
        super().__init__(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[_GenerationTag, jinja2.ext.loopcontrols],
        )
        self.filters["tojson"] = _tojson
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.start(float("inf"), 0)

    def start(self, seconds: float, output_chars: int) -> None:
        self.seconds, self.output_chars = seconds, output_chars
        self.deadline = time.monotonic() + seconds

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise Bound(f"rendering took longer than {self.seconds:g} s")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        # (jinja2's own signature: the double underscores keep the names free for kwargs)
        __self.check_time()
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        self.check_time()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        self.check_time()
        return super().getitem(obj, argument)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self.check_time()
        self._check_size(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def _check_size(self, operator: str, left: Any, right: Any) -> None:
        """Refuses a result past the bounds, estimated from the operands' sizes."""
        sized = (str, list, tuple)
        if operator == "+" and isinstance(left, sized) and isinstance(right, sized):
            length = len(left) + len(right)
        elif operator == "*" and isinstance(left, int) and isinstance(right, sized):
            length = len(right) * left
        elif operator == "*" and isinstance(right, int) and isinstance(left, sized):
            length = len(left) * right
        elif isinstance(left, int) and isinstance(right, int) and operator != "+":
            bits = [abs(left).bit_length(), abs(right).bit_length()]
            if operator == "**" and abs(left) > 1 and right > 0:
                bits = [(bits[0] - 1) * right]  # at least; right may be huge
            if sum(bits) > MAX_INT_BITS:
                raise Bound(f"an integer of more than {MAX_INT_BITS} bits")
            return
        else:
            return
        if length > self.output_chars:
            raise Bound(f"a value of length {length}, past the output bound ({self.output_chars})")


def render(
    env: BoundedEnvironment, compiled: dict[str, jinja2.Template], request: dict[str, Any]
) -> str:
    """The text of one request ({"template", "variables", "seconds", "output_chars"})."""
    env.start(request["seconds"], request["output_chars"])
    source = request["template"]
    template = compiled.get(source)
    if template is None:
        template = env.from_string(source)
        if len(compiled) >= CACHED_TEMPLATES:
            del compiled[next(iter(compiled))]
        compiled[source] = template
    pieces, length = [], 0
    for piece in template.generate(**request["variables"]):
        length += len(piece)
        if length > env.output_chars:
            raise Bound(f"the output passed {env.output_chars} characters")
        env.check_time()
        pieces.append(piece)
    return "".join(pieces)


def _error(exc: BaseException, memory_bytes: int) -> str:
    if isinstance(exc, Bound):
        return str(exc)
    if isinstance(exc, MemoryError):
        return f"rendering needed more than {memory_bytes >> 20} MiB of memory"
    if isinstance(exc, jinja2.TemplateSyntaxError):  # its str() spans lines: the message alone
        return f"{type(exc).__name__}: {exc.message} (line {exc.lineno})"
    if isinstance(exc, jinja2.TemplateError):
        return f"{type(exc).__name__}: {exc}"
    return f"rendering failed: {type(exc).__name__}: {exc}"


def _limit_memory(memory_bytes: int) -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    except (ImportError, ValueError, OSError):  # not on Windows; macOS may refuse: the parent
        pass  # watches the process's memory too


def serve(memory_bytes: int) -> None:
    """The renderer's loop. A request's ``alarm_seconds`` after it starts (past the parent's
    deadline), SIGALRM's default action ends the process even inside C code: no render
    outlives a parent that died."""
    _limit_memory(memory_bytes)
    env, compiled = BoundedEnvironment(), {}
    alarm = getattr(signal, "setitimer", None)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if alarm:
            alarm(signal.ITIMER_REAL, request["alarm_seconds"])
        try:
            reply = {"text": render(env, compiled, request)}
        except Exception as exc:  # the template is untrusted: any failure in it is bad input
            reply = {"error": _error(exc, memory_bytes)}
        if alarm:
            alarm(signal.ITIMER_REAL, 0)
        if "error" in reply:  # jinja's rewritten traceback holds the render's values in a cycle
            gc.collect()
        print(json.dumps(reply), flush=True)
