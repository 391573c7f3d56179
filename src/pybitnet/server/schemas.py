"""Request bodies of the OpenAI-compatible routes (the subset pybitnet serves).

Fields OpenAI defines that change nothing here (user, logit_bias, ...) are accepted and ignored,
as other OpenAI-compatible servers do; fields that would change the answer in a way pybitnet
cannot honour (n > 1, best_of > 1, echo, logprobs) are refused with a 400 by the routes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

MAX_STOP_STRINGS = 4  # OpenAI's limit


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class GenerationParams(BaseModel):
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


class ChatCompletionRequest(GenerationParams):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None  # newer name of max_tokens


class CompletionRequest(GenerationParams):
    # One prompt: text, or token ids; a list of one text is accepted (the client's batch form).
    prompt: (
        str | Annotated[list[str], Field(min_length=1)] | Annotated[list[int], Field(min_length=1)]
    )
    echo: bool = False
    best_of: int | None = None
