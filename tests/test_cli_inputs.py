"""Every bad CLI input the issue names gets one line in the user's terms (the option as typed,
and the value) and exit status 2 before any work starts, never a traceback."""

from __future__ import annotations

import socket

import pytest
from typer.testing import CliRunner

from pybitnet.cli import app

# (arguments, environment, expected exit status, expected message); {busy} is a port in use,
# {free} one that is not, {binary} a file that is not text, {text} a short story.
CASES = [
    (["serve", "--port", "70000"], {}, 2,
     "'--port': 70000 is out of range: it must be from 1 to 65535"),
    (["serve", "--port", "-1"], {}, 2, "'--port': -1 is out of range"),
    (["serve", "--port", "{busy}"], {}, 2, "--port: cannot listen on 127.0.0.1:{busy}"),
    (["serve", "--ctx", "-5"], {}, 2, "'--ctx': -5 is out of range: it must be 1 or more"),
    (["serve", "--ctx", "0"], {}, 2, "'--ctx': 0 is out of range"),
    (["serve", "--port", "{free}", "--ctx", "100000"], {}, 2,
     "--ctx: 100000 is more than the 512 tokens of context tinystories-3m.gguf"),
    (["serve", "--api-key", ""], {}, 2, "--api-key: the key is empty"),
    (["serve"], {"PYBITNET_API_KEY": ""}, 2, "PYBITNET_API_KEY: the variable is set but empty"),
    (["serve", "--max-batch", "0"], {}, 2, "'--max-batch': 0 is out of range"),
    (["serve", "--draft-tokens", "-1"], {}, 2,
     "'--draft-tokens': -1 is out of range: it must be from 0 to 15"),
    (["serve", "--replicas", "2"], {}, 2, "--replicas: only with --ray"),
    (["serve", "--address", "auto"], {}, 2, "--address: only with --ray"),
    (["serve", "--model-sha256", "abc"], {}, 2,
     "--model-sha256: expected 64 hexadecimal digits, got 'abc'"),
    (["serve", "--ray", "--replicas", "0"], {}, 2, "'--replicas': 0 is out of range"),
    (["serve", "--ray", "--autoscale", "3:1"], {}, 2,
     "--autoscale: expected MIN:MAX with 1 <= MIN <= MAX, got '3:1'"),
    (["serve", "--ray", "--autoscale", "0:2"], {}, 2,
     "--autoscale: expected MIN:MAX with 1 <= MIN <= MAX, got '0:2'"),
    (["serve", "--ray", "--autoscale", "2"], {}, 2,
     "--autoscale: expected MIN:MAX with 1 <= MIN <= MAX, got '2'"),
    (["serve", "--ray", "--replicas", "2", "--autoscale", "1:2"], {}, 2,
     "--autoscale: give --replicas N or --autoscale MIN:MAX, not both"),
    (["serve", "--ray", "--port", "{busy}"], {}, 2, "--port: cannot listen on 127.0.0.1:{busy}"),
    (["run", "x", "--threads", "100000", "--max-tokens", "1"], {}, 0,
     "--threads 100000: this machine has {cores} cores; using {cores}"),
    (["run", "x", "--threads", "0"], {}, 2, "'--threads': 0 is out of range"),
    (["run", "x", "--max-tokens", "0"], {}, 2, "'--max-tokens': 0 is out of range"),
    (["bench", "--draft-tokens", "16"], {}, 2,
     "'--draft-tokens': 16 is out of range: it must be from 0 to 15"),
    (["run", "x", "--draft-tokens", "16"], {}, 2,
     "'--draft-tokens': 16 is out of range: it must be from 0 to 15"),
    (["run", "x", "--top-p", "2"], {}, 2,
     "'--top-p': 2.0 is out of range: it must be from 0.0 to 1.0"),
    (["run", "x", "--output-head", "q4"], {}, 2,
     "--output-head: expected one of q8, q6_k, q4_k, got 'q4'"),
    (["run", "x", "--kv-cache", "q4_0"], {}, 2,
     "--kv-cache: expected one of f16, f32, q8_0, got 'q4_0'"),
    (["chat", "--kv-cache", "F16"], {}, 2, "--kv-cache: expected one of f16, f32, q8_0, got 'F16'"),
    (["serve", "--kv-cache", ""], {}, 2, "--kv-cache: expected one of f16, f32, q8_0, got ''"),
    (["bench", "--kv-cache", "f64"], {}, 2,
     "--kv-cache: expected one of f16, f32, q8_0, got 'f64'"),
    (["run", "-m", "{missing}", "x"], {}, 2, "error: {missing}: cannot open: No such file"),
    (["run", "--max-tokens", "1"], {}, 2, "PROMPT: give a prompt, - to read it from stdin, or -f"),
    (["run", "x", "-f", "{text}"], {}, 2, "PROMPT: give a prompt, - to read it from stdin, or -f"),
    (["run", "-f", "{binary}"], {}, 2, "-f: {binary} is not UTF-8 text"),
    (["run", "-f", "{missing}"], {}, 2, "-f: cannot read {missing}: No such file or directory"),
    (["chat", "--temperature", "-2"], {}, 2, "'--temperature': -2.0 is out of range"),
    (["perplexity", "-c", "1024", "{text}"], {}, 2,
     "-c: 1024 tokens per chunk; tinystories-3m.gguf holds 512 tokens of context"),
    (["perplexity", "-c", "1", "{text}"], {}, 2,
     "'-c' / '--ctx': 1 is out of range: it must be 2 or more"),
    (["perplexity", "{binary}"], {}, 2,
     "TEXT_FILE: {binary} is not UTF-8 text (byte 0xff at offset 0)"),
    (["accuracy", "--text", "{binary}"], {}, 2, "--text: {binary} is not UTF-8 text"),
]  # fmt: skip


@pytest.fixture(scope="module")
def names(tmp_path_factory) -> dict[str, str]:
    import os

    root = tmp_path_factory.mktemp("inputs")
    (root / "binary.bin").write_bytes(b"\xff\xfe\x00\x01")
    (root / "story.txt").write_text("Once upon a time there was a cat. " * 4)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    free_port = free.getsockname()[1]
    free.close()
    yield {
        "busy": str(busy.getsockname()[1]),
        "free": str(free_port),
        "binary": str(root / "binary.bin"),
        "text": str(root / "story.txt"),
        "missing": str(root / "missing.gguf"),
        "cores": str(os.cpu_count()),
    }
    busy.close()


@pytest.mark.parametrize(
    ("args", "env", "status", "message"), CASES, ids=[" ".join(c[0]) for c in CASES]
)
def test_bad_input_is_one_clean_line(names, args, env, status, message):
    args = [a.format(**names) for a in args]
    result = CliRunner().invoke(app, args, env=env, input="")
    # click's usage box may wrap a long line: compare the words, not the layout
    text = " ".join(result.stderr.replace("│", " ").split())
    assert result.exit_code == status, (text, result.exception)
    assert " ".join(message.format(**names).split()) in text
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
