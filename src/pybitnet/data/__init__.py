"""The embedded model: bitllama2.c's TinyStories 3M BitNet b1.58, converted (see README.md)."""

from pathlib import Path


def default_model_path() -> Path:
    return Path(__file__).resolve().parent / "tinystories-3m.gguf"
