"""Request bodies of the OpenAI-compatible routes (the subset pybitnet serves).

No field is ignored silently: a field these models do not declare is refused with a 400 naming
it (`unsupported_field`), unless it has the value that asks for nothing (NEUTRAL: OpenAI's
default, as clients send it). Declared fields pybitnet cannot honour beyond their default (n > 1,
best_of > 1, echo, logprobs) are refused by the routes' handler.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

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


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # kept so that unsupported() can name them

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class GenerationParams(BaseModel):
    model_config = ConfigDict(extra="allow")  # kept so that unsupported() can name them

    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: int | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    logprobs: bool | int | None = None

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
