"""`pybitnet run`, `chat` and `perplexity` on the embedded model, against the Python API they
wrap (the other commands are tested with their modules: tests/bench, tests/gguf, tests/model,
tests/server)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import pybitnet
from pybitnet import kernels
from pybitnet.cli import app
from pybitnet.eval.perplexity import perplexity

GREEDY = ["--temperature", "0", "--max-tokens", "24"]


@pytest.fixture(scope="module")
def model() -> pybitnet.Model:
    return pybitnet.load()


def invoke(*args: str, input: str | None = None):
    result = CliRunner().invoke(app, list(args), input=input)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def test_run_prints_only_the_continuation(model):
    result = invoke("run", "Once upon a time", *GREEDY)
    expected = model.generate("Once upon a time", max_tokens=24, temperature=0)
    assert result.stdout == expected + "\n"
    assert "Once upon a time" not in result.stdout


def test_run_reads_the_prompt_from_stdin_or_a_file(tmp_path, model):
    prompt = "Once upon a time\n"  # as `echo` or an editor leaves it: the newline is kept
    expected = model.generate(prompt, max_tokens=24, temperature=0) + "\n"
    assert invoke("run", "-", *GREEDY, input=prompt).stdout == expected
    (tmp_path / "prompt.txt").write_text(prompt)
    assert invoke("run", "-f", str(tmp_path / "prompt.txt"), *GREEDY).stdout == expected


def test_inspect_defaults_to_the_embedded_model(model):
    report = json.loads(invoke("inspect", "--json").stdout)
    assert report["path"] == str(model.path)


def test_version():
    from importlib.metadata import version

    assert invoke("--version").stdout == f"pybitnet {version('pybitnet')}\n"


def test_run_json_reports_the_seed_that_replays_it(model):
    sampled = ["--max-tokens", "16", "--temperature", "1.0", "--json"]
    first = json.loads(invoke("run", "The dog", *sampled).stdout)
    assert len(first["token_ids"]) == 16 and first["finish_reason"] == "length"
    again = json.loads(invoke("run", "The dog", *sampled, "--seed", str(first["seed"])).stdout)
    assert again["token_ids"] == first["token_ids"]
    options = dict(temperature=1.0, top_k=40, top_p=0.95, min_p=0.05, seed=first["seed"])
    assert model.complete("The dog", max_tokens=16, **options).text == first["text"]


def test_run_ends_with_a_timings_line_that_json_carries_too(model):
    prompt_tokens = len(model.tokenize("Once upon a time"))
    line = invoke("run", "Once upon a time", *GREEDY).stderr.strip().splitlines()[-1]
    assert line.startswith("pybitnet: load ")
    assert f"| prompt {prompt_tokens} tokens in " in line
    assert "| decode 23 tokens in " in line and line.endswith("| 24 tokens generated")
    report = json.loads(invoke("run", "Once upon a time", *GREEDY, "--json").stdout)
    t = report["timings"]
    assert t["prompt_tokens"] == report["prompt_tokens"] == prompt_tokens
    assert t["generated_tokens"] == len(report["token_ids"]) == t["decode_tokens"] + 1
    assert t["prompt_tok_s"] == pytest.approx(t["prompt_tokens"] / t["prompt_s"])
    assert t["decode_tok_s"] == pytest.approx(t["decode_tokens"] / t["decode_s"])


def test_run_stops_at_a_stop_string():
    text = invoke("run", "Once upon a time", *GREEDY, "--stop", "Lily", "--json").stdout
    done = json.loads(text)
    assert done["finish_reason"] == "stop" and "Lily" not in done["text"]


def test_run_profile_lists_the_kernels_that_ran(model):
    result = invoke("run", "Once upon a time", *GREEDY, "--profile")
    tier = kernels.selected_tier()
    for op in ("bitlinear", "attention", "rmsnorm", "rope", "gated", "embedding"):
        assert f"{op}_{tier}" in result.stderr
    assert "(outside kernels)" in result.stderr
    assert "kernel profile" not in result.stdout


@pytest.mark.parametrize(
    "option",
    [
        ("--output-head", "q8"),
        ("--output-head", "q6_k"),
        ("--output-head", "q4_k"),
        ("--kv-cache", "f32"),
        ("--kv-cache", "q8_0"),
    ],
)
def test_run_with_another_output_head_or_kv_cache(option):
    other = json.loads(invoke("run", "Once upon a time", *GREEDY, *option, "--json").stdout)
    default = json.loads(invoke("run", "Once upon a time", *GREEDY, "--json").stdout)
    assert len(other["token_ids"]) == 24
    # int8 rows, K-quant blocks or keys and values rounded otherwise move the logits a little:
    # the first greedy tokens still agree
    assert other["token_ids"][:8] == default["token_ids"][:8]


def test_chat_keeps_history_until_reset(model):
    result = invoke(
        "chat", "--temperature", "0", "--max-tokens", "12", "--system", "Be short.",
        input="Tell me a story.\n/reset\nTell me a story.\n/exit\nnever read\n",
    )  # fmt: skip
    system = {"role": "system", "content": "Be short."}
    user = {"role": "user", "content": "Tell me a story."}
    reply = model.complete(
        model.render_chat([system, user]), parse_special=True, max_tokens=12, temperature=0
    ).text
    # after /reset the same question gets the same first reply: the history was cleared
    assert result.stdout.count(reply) == 2, result.stdout
    assert "/reset" in result.stderr and "(history cleared)" in result.stderr


def test_ctrl_c_stops_the_reply_and_the_chat_goes_on(monkeypatch):
    from pybitnet.chat import ChatSession

    def interrupted(self, text):
        yield f"[{text}]"
        if text == "stop me":
            raise KeyboardInterrupt  # as Ctrl+C does in the middle of a reply

    monkeypatch.setattr(ChatSession, "reply", interrupted)
    result = invoke("chat", input="stop me\nnext\n")
    assert "[stop me]" in result.stdout and "[next]" in result.stdout
    assert "(reply stopped)" in result.stderr


def test_chat_takes_the_sampling_options_of_run(model):
    # top-k 1 leaves one token to draw from: a hot temperature samples the greedy reply
    args = ["chat", "--max-tokens", "12", "--temperature", "1.5", "--top-k", "1", "--min-p", "0"]
    greedy = invoke("chat", "--max-tokens", "12", "--temperature", "0", input="Hi.\n").stdout
    assert invoke(*args, input="Hi.\n").stdout == greedy


def test_perplexity_json_matches_the_api(tmp_path, model):
    text = "Once upon a time, there was a little girl. She liked to play with her ball. " * 8
    path = tmp_path / "story.txt"
    path.write_text(text)
    got = json.loads(invoke("perplexity", str(path), "-c", "32", "--json").stdout)
    want = perplexity(model.logits, model.tokenize(text), 32, model.tokenizer.bos_id)
    assert got["ppl"] == pytest.approx(want.ppl, rel=1e-9)
    assert got["n_chunks"] == want.n_chunks > 1
    plain = invoke("perplexity", str(path), "-c", "32").stdout
    assert f"Final estimate: PPL = {want.ppl:.4f}" in plain


def every_command() -> list[tuple[list[str], object]]:
    """Each command of `pybitnet`, nested ones included, with the words that invoke it."""
    import typer.main

    def walk(group, words):
        for name, command in group.commands.items():
            yield [*words, name], command
            yield from walk(command, [*words, name]) if hasattr(command, "commands") else ()

    return [([], typer.main.get_command(app)), *walk(typer.main.get_command(app), [])]


def test_json_is_a_flag_that_prints_in_every_command():
    for words, command in every_command():
        for param in command.params:
            if "--json" in getattr(param, "opts", ()):
                assert param.is_flag, f"{words}: --json takes a value"


@pytest.mark.parametrize("words", [w for w, _ in every_command()], ids=" ".join)
def test_help_reads_plainly(words):
    text = invoke(*words, "--help").stdout
    assert "Usage:" in text and "<bool>" not in text and "{" not in text


def test_ten_turns_with_the_default_budget_fit_and_say_what_left(model):
    """The issue's session: ten turns with the embedded model and the default budget (the
    context left) never error; the turns dropped to make room are announced."""
    questions = "".join(f"Tell me story number {i}.\n" for i in range(10))
    result = invoke("chat", "--temperature", "0", input=questions + "/exit\n")
    assert "error" not in result.stderr.lower(), result.stderr
    assert "oldest turn(s) left the history" in result.stderr, result.stderr


def test_long_steps_print_a_line_per_stage_when_stderr_is_no_terminal(tmp_path):
    made = invoke("make-model", "-o", str(tmp_path / "m.gguf"))
    assert "pybitnet: writing the tiny model to" in made.stderr, made.stderr
    ran = invoke("run", "-m", str(tmp_path / "m.gguf"), "Once", "--max-tokens", "2")
    assert "pybitnet: loading model" in ran.stderr, ran.stderr
