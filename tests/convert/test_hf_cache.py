"""`-m DIR`: a Hugging Face checkpoint folder is converted once into a cache keyed by content."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers.hf_tiny import make_checkpoint
from pybitnet import load
from pybitnet.cli import app
from pybitnet.convert.cache import checkpoint_key, model_path
from pybitnet.errors import ModelError


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("PYBITNET_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_folder_converts_once_and_content_keys_the_cache(tmp_path: Path, cache: Path) -> None:
    folder = tmp_path / "ckpt"
    make_checkpoint(folder, "bitnet", seed=4)
    seen: list[str] = []

    def progress(total: int):
        seen.append(f"total {total}")
        return seen.append

    first = model_path(folder, progress=progress)
    assert first.parent == cache / "hf" and first.name == checkpoint_key(folder) + ".gguf"
    assert seen[0] == f"total {len(seen) - 1}" and "token_embd.weight" in seen
    seen.clear()
    assert model_path(folder, progress=progress) == first and not seen  # cached: no conversion
    assert load(folder).config.arch == "bitnet-b1.58"
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-6}))
    assert model_path(folder) != first  # new content, new file
    assert model_path(tmp_path / "x.gguf") == tmp_path / "x.gguf"  # files pass through
    with pytest.raises(ModelError, match="without config.json"):
        model_path(cache)


def test_cli_runs_and_inspects_a_folder(tmp_path: Path, cache: Path) -> None:
    folder = tmp_path / "ckpt"
    make_checkpoint(folder, "llama", seed=4, linear_class="bitlinear")
    runner = CliRunner()
    args = ["run", "-m", str(folder), "--max-tokens", "4", "--temperature", "0", "--json", "the"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    ids = json.loads(result.stdout.strip().splitlines()[-1])["token_ids"]
    assert ids == load(folder).complete("the", max_tokens=4, temperature=0).token_ids
    result = runner.invoke(app, ["inspect", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["architecture"] == "llama"
    assert len(list((cache / "hf").glob("*.gguf"))) == 1
