"""Checkpoint folders used as models: a Hugging Face folder given where a GGUF file is expected
(`pybitnet run -m DIR`, `pybitnet.load(DIR)`) is converted once into the cache directory, under
a name keyed by the content of the files the conversion reads, and the GGUF file is used from
then on. A changed checkpoint (or another pybitnet version) gets a conversion of its own."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pybitnet
from pybitnet.convert import convert
from pybitnet.errors import ModelError

# What a conversion reads besides the *.safetensors files.
CHECKPOINT_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }
)
DEFAULT_TYPE = "I2_S"

Report = Callable[[str], None]


def cache_dir() -> Path:
    """Where converted and synthetic models are kept: $PYBITNET_CACHE, else ~/.cache/pybitnet."""
    return Path(os.environ.get("PYBITNET_CACHE") or Path.home() / ".cache" / "pybitnet")


def checkpoint_key(folder: Path) -> str:
    """sha256 over the names and contents of the files a conversion reads, and the version of
    the pybitnet that converts them."""
    digest = hashlib.sha256(f"pybitnet {pybitnet.__version__}\0".encode())
    names = sorted(
        p.name for p in folder.iterdir() if p.name in CHECKPOINT_FILES or p.suffix == ".safetensors"
    )
    for name in names:
        with open(folder / name, "rb") as fh:
            digest.update(f"{name}\0".encode() + hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()


def converted(
    folder: str | Path, *, weight_type: str = DEFAULT_TYPE, report: Report | None = None
) -> Path:
    """The GGUF file of a Hugging Face checkpoint folder: its conversion in the cache, made on
    first use (`report` hears each stage that takes time)."""
    path, report = Path(folder), report or (lambda _: None)
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: a folder without config.json is no Hugging Face checkpoint")
    report(f"hashing the checkpoint {path}")
    try:
        key = checkpoint_key(path)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the checkpoint: {exc}") from None
    target = cache_dir() / "checkpoints" / f"{path.resolve().name}-{key[:16]}-{weight_type}.gguf"
    if not target.is_file():
        report(f"converting {path} into {target} (once)")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ModelError(f"{target.parent}: cannot make the cache directory: {exc}") from None
        convert("hf", path, target, weight_type=weight_type)  # written whole, then renamed
    return target
