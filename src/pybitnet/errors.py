"""The exceptions pybitnet raises for bad input: each names the file, the field and the value."""

from typing import Any


def shown(value: Any, limit: int = 60) -> str:
    """A value from an untrusted file as an error message shows it: its repr on one line, cut
    to ``limit`` characters (a metadata value can be a megabyte string or a 100k-item array)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class PyBitnetError(ValueError):
    """Base class of every error pybitnet raises for bad input."""


class GGUFError(PyBitnetError):
    """A GGUF file is malformed, truncated, or uses something pybitnet does not support."""


class FormatError(PyBitnetError):
    """A tensor cannot be stored in, or read from, a weight format."""


class ModelError(PyBitnetError):
    """A model's metadata or tensors do not describe a model pybitnet can run."""


class ContextError(ModelError):
    """A prompt cannot fit the model's context."""


class SamplingError(PyBitnetError):
    """A sampling parameter, a logits vector or a stop string is invalid."""


class BenchError(PyBitnetError):
    """A receipt or gate configuration is invalid, or two receipts cannot be compared."""


class TokenizerError(PyBitnetError):
    """A tokenizer from a model cannot be used, or a token id is out of range."""


class TemplateError(TokenizerError):
    """A chat template fails, or passes a bound on its size, time, output or memory. The
    message names the field, never a file path: a server may pass it on to its client."""
