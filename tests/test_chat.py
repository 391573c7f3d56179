"""pybitnet.chat against the peers' SmolLM2 chat prompt and llama.cpp's renderings (recorded by
scripts/record_smollm2_goldens.py), plus the sandbox and its errors."""

from __future__ import annotations

import pytest

from helpers.tokenizer_files import SPM_FIXTURE, goldens, smollm2_path, tokenizer_metadata
from pybitnet.chat import CHATML, LLAMA3, ChatSession, render_chat, template_for
from pybitnet.errors import TokenizerError
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
    with pytest.raises(TokenizerError, match=f"^model.gguf tokenizer.chat_template: .*{expected}"):
        render_chat(
            template,
            [{"role": "user", "content": "x"}],
            source="model.gguf tokenizer.chat_template",
        )


class ScriptedModel:
    """Stands in for a Model: the prompt is the history it was given, the reply two pieces."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[dict[str, str]], dict]] = []

    def render_chat(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        return list(messages)

    def stream(self, prompt: list[dict[str, str]], **options):
        self.calls.append((prompt, options))
        yield from ("Once", " more.")


def test_chat_session_keeps_the_history_until_reset() -> None:
    model = ScriptedModel()
    session = ChatSession(model, "Be short.", max_tokens=4)
    system = {"role": "system", "content": "Be short."}
    assert list(session.reply("Hi")) == ["Once", " more."]
    assert list(session.reply("Again")) == ["Once", " more."]
    reply = {"role": "assistant", "content": "Once more."}
    hi, again = ({"role": "user", "content": t} for t in ("Hi", "Again"))
    assert session.history == [system, hi, reply, again, reply]
    assert model.calls[1] == ([system, hi, reply, again], {"parse_special": True, "max_tokens": 4})
    session.reset()
    assert session.history == [system]
    assert ChatSession(model).history == []
