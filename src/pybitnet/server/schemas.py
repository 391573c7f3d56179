"""Request bodies of the OpenAI-compatible routes (the subset pybitnet serves).

No field is ignored silently: a field these models do not declare is refused with a 400 naming
it (`unsupported_field`), unless it has the value that asks for nothing (NEUTRAL: OpenAI's
default, as clients send it). Declared fields pybitnet cannot honour beyond their default (n > 1,
best_of > 1, echo, logprobs) are refused by the routes' handler.

Fields are strict, as OpenAI's are: `"stream": "yes"`, `"temperature": true` or
`"max_tokens": "5"` are refused, not coerced (a JSON integer is still a number). A string
anywhere in a body (a field, a message, an unknown field, a key) must be Unicode text: a lone
surrogate (`"\\ud83d"`, valid JSON escapes but no character) is refused naming where it is.
"""

from __future__ import annotations

from collections import deque
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from pybitnet.sampling import MAX_STOP_CHARS
from pybitnet.speculative import MAX_DRAFT_TOKENS

MAX_STOP_STRINGS = 4  # OpenAI's limit

# The fields of OpenAI's chat and legacy completions that pybitnet does not implement, each with
# the values that ask for nothing and so are accepted. `user` and `safety_identifier` only name
# the end user for OpenAI's abuse checks, which change no reply: any value is accepted.
ANY = object()
NEUTRAL: dict[str, tuple[object, ...]] = {
    "frequency_penalty": (0, None),
    "presence_penalty": (0, None),
    "logit_bias": ({}, None),
    "top_logprobs": (0, None),
    "response_format": ({"type": "text"}, None),
    "tools": ([], None),
    "tool_choice": ("none", "auto", None),
    "parallel_tool_calls": (True, False, None),
    "functions": ([], None),
    "function_call": ("none", "auto", None),
    "modalities": (["text"], None),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "verbosity": (None,),
    "web_search_options": (None,),
    "store": (False, None),
    "metadata": ({}, None),
    "service_tier": ("auto", "default", None),
    "prompt_cache_key": (None,),
    "suffix": (None, ""),
    "user": (ANY,),
    "safety_identifier": (ANY,),
}
# The same for a chat message's fields. A tool message's tool_call_id is accepted: its content
# reaches the prompt as any message's does.
MESSAGE_NEUTRAL: dict[str, tuple[object, ...]] = {
    "name": (None,),
    "tool_calls": ([], None),
    "function_call": (None,),
    "refusal": (None,),
    "audio": (None,),
    "tool_call_id": (ANY,),
}
MAX_SHOWN = 60  # characters of a refused value quoted back


def _refused(
    fields: dict[str, object], neutral: dict[str, tuple[object, ...]]
) -> tuple[str, str] | None:
    """The first of `fields` whose value is not a neutral one, and that value quoted."""
    for name, value in fields.items():
        allowed = neutral.get(name, ())
        if ANY not in allowed and value not in allowed:
            shown = repr(value)
            return name, shown if len(shown) <= MAX_SHOWN else shown[: MAX_SHOWN - 3] + "..."
    return None


def _lone_surrogate_at(body: Any) -> str | None:
    """Where in a JSON document a string (a value, or a key: then its object) holds a lone
    surrogate, or None. A loop, not recursion: a deeply nested body cannot exhaust the stack."""
    todo: deque[tuple[str, Any]] = deque([("body", body)])
    while todo:
        where, value = todo.popleft()
        if isinstance(value, str) and not _is_text(value):
            return where
        if isinstance(value, dict):
            if not all(_is_text(key) for key in value):
                return where
            todo.extend((f"{where}.{key}", item) for key, item in value.items())
        elif isinstance(value, list):
            todo.extend((f"{where}[{i}]", item) for i, item in enumerate(value))
    return None


def _is_text(text: str) -> bool:
    """Whether `text` is Unicode characters (UTF-8 can write it)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Strict(BaseModel):
    """Request parts: no coercion (a string is no number, a number no bool)."""

    model_config = ConfigDict(strict=True)


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    model_config = ConfigDict(extra="allow")  # kept so that unsupported() can name them

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(Strict):
    include_usage: bool = False


StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS)]


class GenerationParams(Strict):
    model_config = ConfigDict(extra="allow")  # kept so that unsupported() can name them

    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: int | None = None
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    logprobs: bool | int | None = None
    # pybitnet's extension: speculative decoding for this request (None: the server's default).
    draft_tokens: Annotated[int, Field(ge=0, le=MAX_DRAFT_TOKENS)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, body: Any) -> Any:
        """Refuses a lone surrogate anywhere in the body, before any field is looked at: such a
        string can be neither tokenized nor written back, so it must not get past the edge."""
        if (where := _lone_surrogate_at(body)) is not None:
            raise PydanticCustomError(
                "unpaired_surrogate",
                "{field} holds a lone UTF-16 surrogate (such as \\ud83d), which is no character",
                {"field": where.removeprefix("body.")},
            )
        return body

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def unsupported(self) -> tuple[str, str] | None:
        """The first field sent that pybitnet would have to ignore, and its value, quoted."""
        return _refused(self.model_extra or {}, NEUTRAL)


class ChatCompletionRequest(GenerationParams):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None  # newer name of max_tokens

    def unsupported(self) -> tuple[str, str] | None:
        """As GenerationParams', then each message's fields, named as messages[i].field."""
        refused = super().unsupported()
        if refused is not None:
            return refused
        for i, message in enumerate(self.messages):
            if (field := _refused(message.model_extra or {}, MESSAGE_NEUTRAL)) is not None:
                return f"messages[{i}].{field[0]}", field[1]
        return None


class CompletionRequest(GenerationParams):
    # One prompt: text, or token ids; a list of one text is accepted (the client's batch form).
    prompt: (
        str | Annotated[list[str], Field(min_length=1)] | Annotated[list[int], Field(min_length=1)]
    )
    echo: bool = False
    best_of: int | None = None
