"""Reply bodies as OpenAI writes them: the model card, a whole completion, a stream's chunks,
and usage."""

from __future__ import annotations

import json
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from pybitnet.generate import Model
from pybitnet.server.scheduler import Finished

# The usage of the request being answered, for its access-log line: the access middleware sets a
# fresh dict per request, the reply fills it when it writes its usage.
answered_usage: ContextVar[dict[str, int] | None] = ContextVar("answered_usage", default=None)


@dataclass(frozen=True)
class ModelCard:
    """The one model a server serves, as /v1/models lists it (named after its file)."""

    id: str
    created: int

    @classmethod
    def of(cls, model: Model) -> ModelCard:
        return cls(model.path.stem, int(time.time()))

    def body(self) -> dict[str, Any]:
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": "pybitnet"}


class Reply:
    """The id, object type and model shared by a reply's body or its stream's chunks."""

    def __init__(self, id_prefix: str, object: str, model: str) -> None:
        self.id = f"{id_prefix}-{uuid.uuid4().hex}"
        self.object = object
        self.model = model
        self.created = int(time.time())
        self.chat = object == "chat.completion"

    @classmethod
    def chat_completion(cls, model: str) -> Reply:
        return cls("chatcmpl", "chat.completion", model)

    @classmethod
    def text_completion(cls, model: str) -> Reply:
        return cls("cmpl", "text_completion", model)

    def whole(self, text: str, finished: Finished) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text}
        choice.update(logprobs=None, finish_reason=finished.reason)
        return self._envelope(self.object, choices=[choice], usage=_usage(finished))

    def chunk(
        self,
        *,
        first: bool = False,
        text: str = "",
        finish_reason: str | None = None,
        usage: Finished | None = None,
    ) -> str:
        """One server-sent event's data: the role (chat's first), text, the finish reason, or
        the usage chunk (which has no choices)."""
        if usage is not None:
            body = self._envelope(self._chunk_object, choices=[], usage=_usage(usage))
            return json.dumps(body)
        if self.chat:
            delta = (
                {"role": "assistant", "content": ""} if first else {"content": text} if text else {}
            )
            choice = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "text": text}
        choice.update(logprobs=None, finish_reason=finish_reason)
        return json.dumps(self._envelope(self._chunk_object, choices=[choice]))

    @property
    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.chat else self.object

    def _envelope(self, object: str, **fields: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            **fields,
        }


def _usage(finished: Finished) -> dict[str, int]:
    usage = {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }
    note = answered_usage.get()
    if note is not None:
        note.update(usage)
    return usage
