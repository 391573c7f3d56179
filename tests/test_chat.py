"""pybitnet.chat against the peers' SmolLM2 chat prompt and llama.cpp's renderings (recorded by
scripts/record_smollm2_goldens.py) and HF transformers' (tests/fixtures/hf), plus the sandbox
and its errors."""

from __future__ import annotations

import json

import pytest

import pybitnet
from helpers.chat_history import story_history as long_history
from helpers.tokenizer_files import FIXTURES, SPM_FIXTURE, goldens, smollm2_path, tokenizer_metadata
from pybitnet.chat import (
    CHATML,
    LLAMA3,
    ChatSession,
    fit_conversation,
    render_chat,
    template_for,
)
from pybitnet.errors import ContextError, ModelError, SamplingError, TemplateError
from pybitnet.generate import Completion, Model
from pybitnet.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def smol_template() -> str:
    return tokenizer_metadata(smollm2_path())["tokenizer.chat_template"]


def test_smollm2_renders_the_peers_chat_prompt(smol_template: str) -> None:
    chat = next(g for g in goldens("peers")["smollm2"]["greedy"] if g["kind"] == "chat")
    assert render_chat(smol_template, chat["messages"]) == chat["prompt"]


@pytest.mark.parametrize("index", range(4))
def test_renderings_match_llama_cpp(smol_template: str, index: int) -> None:
    recorded = goldens("smollm2")["chat"]
    conversation = recorded["conversations"][index]
    kwargs = {
        "add_generation_prompt": conversation["add_generation_prompt"],
        "bos_token": recorded["bos_token"],
        "eos_token": recorded["eos_token"],
    }
    messages = conversation["messages"]
    # the file's Jinja template, rendered by llama-cpp-python's Jinja2ChatFormatter
    assert render_chat(smol_template, messages, **kwargs) == conversation["file_template_jinja"]
    # the built-in fallbacks, against libllama's own (non-Jinja) llama_chat_apply_template
    assert render_chat(CHATML, messages, **kwargs) == conversation["builtin_chatml"]
    assert render_chat(LLAMA3, messages, **kwargs) == conversation["builtin_llama3"]
    assert render_chat(None, messages, **kwargs) == conversation["builtin_chatml"]


@pytest.mark.parametrize("name", sorted(goldens("hf")["fixtures"]))
def test_renderings_match_hf_transformers(name: str) -> None:
    """The chat each checkpoint's recorder rendered with apply_chat_template, rendered here."""
    config = json.loads((FIXTURES / "hf" / name / "tokenizer_config.json").read_text())
    (chat,) = [p for p in goldens("hf")["fixtures"][name]["prompts"] if "chat" in p]
    tokens = {k: config[k] for k in ("bos_token", "eos_token")}
    assert render_chat(config["chat_template"], chat["chat"], **tokens) == chat["rendered"]


def test_template_for_prefers_the_file_then_fits_the_vocabulary() -> None:
    metadata = dict(tokenizer_metadata(SPM_FIXTURE))
    assert template_for(Tokenizer.from_metadata(metadata)) == CHATML  # no template, no Llama-3
    metadata["tokenizer.chat_template"] = "{{ messages[0]['content'] }}"
    assert template_for(Tokenizer.from_metadata(metadata)) == "{{ messages[0]['content'] }}"
    metadata = dict(tokenizer_metadata(SPM_FIXTURE))
    metadata["tokenizer.ggml.tokens"] = [
        *metadata["tokenizer.ggml.tokens"][:-1],
        "<|start_header_id|>",
    ]
    assert template_for(Tokenizer.from_metadata(metadata)) == LLAMA3


def test_hf_rendering_conventions() -> None:
    # trim_blocks / lstrip_blocks, HF's tojson (no HTML escaping), loop controls, generation tag
    template = (
        "{% for m in messages %}\n    {% if loop.index > 1 %}{% break %}{% endif %}\n"
        "{{ m | tojson }}{% generation %}!{% endgeneration %}{% endfor %}"
    )
    messages = [{"role": "user", "content": "<b>é</b>"}, {"role": "x", "content": "y"}]
    assert render_chat(template, messages) == '{"role": "user", "content": "<b>é</b>"}!'


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ raise_exception('only user and assistant roles') }}", "only user and assistant"),
        ("{% for %}", "TemplateSyntaxError"),
        ("{{ ''.__class__.__mro__ }}", "SecurityError"),
        ("{{ messages.append(1) }}", "SecurityError"),
        ("{{ messages[0]['content'] + 1 }}", "TypeError"),
    ],
)
def test_template_errors_name_the_source(template: str, expected: str) -> None:
    with pytest.raises(TemplateError, match=f"^model.gguf tokenizer.chat_template: .*{expected}"):
        render_chat(
            template,
            [{"role": "user", "content": "x"}],
            source="model.gguf tokenizer.chat_template",
        )


class ScriptedModel:
    """Stands in for a Model: records the history it was given, the reply two pieces."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[dict[str, str]], dict]] = []

    def stream_chat(self, messages: list[dict[str, str]], result: Completion, **options):
        self.calls.append((list(messages), options))
        result.prompt_tokens = len(messages)
        for piece in ("Once", " more."):
            result.text += piece
            yield piece


def test_chat_session_keeps_the_history_until_reset() -> None:
    model = ScriptedModel()
    session = ChatSession(model, "Be short.", max_tokens=4)
    system = {"role": "system", "content": "Be short."}
    assert list(session.reply("Hi")) == ["Once", " more."]
    assert list(session.reply("Again")) == ["Once", " more."]
    reply = {"role": "assistant", "content": "Once more."}
    hi, again = ({"role": "user", "content": t} for t in ("Hi", "Again"))
    assert session.history == [system, hi, reply, again, reply]
    assert model.calls[1] == ([system, hi, reply, again], {"max_tokens": 4})
    session.reset()
    assert session.history == [system] and session.completion is None
    assert ChatSession(model).history == []


# -- conversations that fit, on the embedded model ---------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> Model:
    return pybitnet.load()


def room_left(model: Model, messages: list[dict[str, str]]) -> int:
    return model.n_ctx - len(model.tokenize(model.render_chat(messages), parse_special=True))


@pytest.mark.parametrize(("max_tokens", "reserve"), [(None, 128), (500, 128), (40, 40)])
def test_fit_drops_the_fewest_oldest_turns_and_never_the_system_prompt(
    tiny: Model, max_tokens: int | None, reserve: int
) -> None:
    """The rule: drop whole turns, oldest first, until a quarter of the context (or max_tokens,
    when smaller) is left for the reply."""
    messages = long_history(8)
    fitted = fit_conversation(tiny, messages, max_tokens)
    n = len(fitted.dropped)
    assert n and n % 2 == 0  # whole turns: a user message and its reply
    assert fitted.dropped == messages[1 : 1 + n]
    kept = [messages[0], *messages[1 + n :]]
    assert fitted.prompt == tiny.tokenize(tiny.render_chat(kept), parse_special=True)
    assert room_left(tiny, kept) >= reserve
    assert room_left(tiny, [messages[0], *messages[n - 1 :]]) < reserve  # one turn fewer


def test_a_long_history_costs_a_few_renders(tiny: Model, monkeypatch) -> None:
    """A client may send thousands of turns: the cut is found by bisection, past the turns
    whose text alone cannot fit, not by rendering the history once per dropped turn."""
    messages = long_history(3000)
    renders = []
    render = tiny.render_chat
    monkeypatch.setattr(tiny, "render_chat", lambda m: renders.append(len(m)) or render(m))
    fitted = fit_conversation(tiny, messages)
    kept = [messages[0], *messages[1 + len(fitted.dropped) :]]
    assert fitted.prompt == tiny.tokenize(render(kept), parse_special=True)
    n = len(fitted.dropped)
    assert room_left(tiny, kept) >= 128 > room_left(tiny, [messages[0], *messages[n - 1 :]])
    assert len(renders) <= 12 and max(renders) < 60  # never the whole history


def test_a_history_that_fits_is_kept_whole(tiny: Model) -> None:
    assert fit_conversation(tiny, long_history(1)).dropped == []
    # Only the newest message left and still too long: nothing more to drop, generation says so.
    long = [{"role": "user", "content": "story " * 300}]
    assert fit_conversation(tiny, long).dropped == []
    with pytest.raises(ContextError, match="context holds 512"):
        tiny.chat(long)
    # So long that its characters alone say so: refused before it is rendered and tokenized.
    huge = [{"role": "user", "content": "story " * 10_000}]
    with pytest.raises(ContextError, match="newest turn have 60000 characters, more than a con"):
        fit_conversation(tiny, huge)


def test_a_reply_budget_is_the_rest_of_the_context(tiny: Model) -> None:
    reply = tiny.complete_chat(long_history(8), temperature=0)
    assert reply.dropped and reply.finish_reason in ("stop", "length")
    if reply.finish_reason == "length":
        assert reply.prompt_tokens + len(reply.token_ids) == tiny.n_ctx
    assert (
        tiny.chat(long_history(0), temperature=0, max_tokens=3)
        == tiny.complete(
            tiny.render_chat(long_history(0)), parse_special=True, temperature=0, max_tokens=3
        ).text
    )


def test_ten_turns_with_the_default_model_keep_fitting(tiny: Model) -> None:
    session = ChatSession(tiny, "You tell stories.", temperature=0)
    dropped_any = False
    for turn in range(10):
        before = list(session.history)
        reply = "".join(session.reply(f"Tell me story {turn}."))
        done = session.completion
        assert done.finish_reason in ("stop", "length") and done.text == reply
        assert session.dropped == before[1 : 1 + len(session.dropped)]
        kept = [before[0], *before[1 + len(session.dropped) :]]
        user = {"role": "user", "content": f"Tell me story {turn}."}
        assert session.history == [*kept, user, {"role": "assistant", "content": reply}]
        dropped_any = dropped_any or bool(session.dropped)
    assert dropped_any  # the story replies fill the 512-token context within a few turns


def test_a_reply_that_fails_leaves_no_trace_and_a_stopped_one_keeps_its_text(tiny: Model) -> None:
    session = ChatSession(tiny, "tell " * 600)  # a system prompt longer than the context
    with pytest.raises(ModelError, match="context holds 512"):
        list(session.reply("Hi"))
    assert session.history == [{"role": "system", "content": "tell " * 600}]
    assert session.dropped == []
    session = ChatSession(tiny, temperature=-2)  # refused by the sampler, before generating
    with pytest.raises(SamplingError, match="temperature"):
        list(session.reply("Hi"))
    assert session.history == []
    session = ChatSession(tiny, temperature=0)
    pieces = session.reply("Hi")
    said = next(pieces) + next(pieces)
    pieces.close()  # as a caller that stops the reply does
    assert session.history[-1] == {"role": "assistant", "content": said}
