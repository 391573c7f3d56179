"""Chat prompts: render a model's Jinja2 chat template the way HF transformers does; a
conversation's history (`ChatSession`).

The template comes from an untrusted file (`tokenizer.chat_template`), so it renders in a
sandbox within bounds on time, output and memory (chat_template.py); a failure is a
TemplateError naming the field, never the file's path.
Files without a template get a built-in one: Llama-3's for vocabularies that have its header
tokens, ChatML otherwise (the same text llama.cpp's built-in `llama3` / `chatml` produce).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pybitnet.chat_template import DEFAULT_LIMITS, Limits, render_template
from pybitnet.errors import ContextError
from pybitnet.tokenizer import Tokenizer

if TYPE_CHECKING:
    from pybitnet.generate import Completion, Model

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{{ message['content'] | trim }}{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def template_for(tokenizer: Tokenizer) -> str:
    """The file's chat template, or the built-in one that fits its vocabulary."""
    if tokenizer.chat_template is not None:
        return tokenizer.chat_template
    return LLAMA3 if tokenizer.token_to_id("<|start_header_id|>") is not None else CHATML


def render_chat(
    template: str | None,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    source: str = "chat template",
    limits: Limits = DEFAULT_LIMITS,
) -> str:
    """The prompt text `template` makes of `messages` ([{"role": ..., "content": ...}, ...]).

    None means the built-in ChatML template. `bos_token` defaults to "" because the tokenizer
    adds BOS itself when the model wants one; pass the BOS text only when encoding with
    add_bos=False. Tokenize the result with parse_special=True. It renders within ``limits``
    (chat_template.py); a failure is a TemplateError "{source}: ...".
    """
    variables = dict(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
    )
    template = CHATML if template is None else template
    return render_template(template, variables, source=source, limits=limits)


@dataclass
class FittedChat:
    prompt: list[int]  # token ids of the messages that fit
    dropped: list[dict[str, Any]]  # the oldest turns left out, oldest first


def fit_conversation(
    model: Model, messages: Sequence[dict[str, Any]], max_tokens: int | None = None
) -> FittedChat:
    """A conversation that fits the context: while its prompt leaves less than a quarter of the
    context for the reply (or less than ``max_tokens``, when that is smaller), the oldest turn
    is dropped: a user message with the replies that follow it. The system prompt and the
    newest message are never dropped. The reply's budget is then ``max_tokens``, or all that is
    left of the context; a prompt that still fills the context fails when it is generated.

    A prompt's length falls as turns are dropped, so the cut is found by bisection: a history of
    any length costs a few renders, each of a history whose text could fit."""
    messages = list(messages)
    start = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    system, turns = messages[:start], messages[start:]
    reserve = max(1, model.n_ctx // 4 if max_tokens is None else min(max_tokens, model.n_ctx // 4))
    cuts = _turn_starts(turns)
    # A token stands for at most max_token_chars characters, so a history with more text than
    # the context could hold in them cannot fit: such cuts are passed over without a render.
    per_token = model.tokenizer.max_token_chars
    chars = [_text_chars(m) for m in turns]
    kept_chars = [sum(_text_chars(m) for m in system) + sum(chars[c:]) for c in cuts]
    high = len(cuts) - 1  # the newest turn alone is kept whether it fits or not
    if kept_chars[high] > model.n_ctx * per_token:  # not worth a render to find out
        raise ContextError(
            f"the system prompt and the newest turn have {kept_chars[high]} characters, more "
            f"than a context of {model.n_ctx} tokens can hold"
        )
    most = (model.n_ctx - reserve) * per_token
    low = next((j for j, n in enumerate(kept_chars) if n <= most), high)
    fitted: dict[int, list[int]] = {}

    def prompt(j: int) -> list[int]:
        if j not in fitted:
            text = model.render_chat(system + turns[cuts[j] :])
            fitted[j] = model.tokenize(text, parse_special=True)
        return fitted[j]

    while low < high:
        middle = (low + high) // 2
        if model.n_ctx - len(prompt(middle)) >= reserve:
            high = middle
        else:
            low = middle + 1
    return FittedChat(prompt(low), turns[: cuts[low]])


def _text_chars(message: dict[str, Any]) -> int:
    """The characters of a message's text (none counted for other kinds of content)."""
    content = message.get("content")
    return len(content) if isinstance(content, str) else 0


def _turn_starts(turns: Sequence[dict[str, Any]]) -> list[int]:
    """Where each turn starts: the first message, then each user message after it."""
    return [0, *(i for i, m in enumerate(turns) if i > 0 and m["role"] == "user")]


class ChatSession:
    """A conversation with a model: each reply sees the history that fits the context
    (`fit_conversation`: the oldest turns are dropped, never the system prompt), which `reset`
    clears back to the system prompt. After each reply, `completion` holds its finish_reason
    and the turns dropped from the history to make room (`dropped`)."""

    def __init__(self, model: Model, system: str | None = None, **options: Any) -> None:
        """``options`` go to every `Model.stream_chat` call (max_tokens, temperature, seed, ...);
        without max_tokens a reply may fill what is left of the context."""
        self._model = model
        self._options = options
        self._start = [{"role": "system", "content": system}] if system else []
        self.history = list(self._start)
        self.completion: Completion | None = None

    @property
    def dropped(self) -> list[dict[str, Any]]:
        """The turns the last reply dropped from the history, oldest first."""
        return self.completion.dropped if self.completion is not None else []

    def reset(self) -> None:
        self.history = list(self._start)
        self.completion = None

    def reply(self, text: str) -> Iterator[str]:
        """Streams the model's reply to the user's ``text``; both join the history. A reply
        stopped early (the caller closes the iterator, Ctrl+C) keeps what it said; one that
        fails before it starts leaves no trace."""
        from pybitnet.generate import Completion

        user = {"role": "user", "content": text}
        self.history.append(user)
        result = self.completion = Completion()
        try:
            yield from self._model.stream_chat(self.history, result, **self._options)
        finally:
            if result.prompt_tokens:  # generation started: the fitted history is the history
                start = len(self._start)
                del self.history[start : start + len(result.dropped)]
                self.history.append({"role": "assistant", "content": result.text})
            else:
                self.history.remove(user)
                result.dropped = []
