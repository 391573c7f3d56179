"""What every verify rule shares: its verdict, the receipt it reads (with the model file it
names), the tolerance of recomputed figures, and how a rule words its problems."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

from pybitnet import kernels

TOLERANCE = 0.01  # how far a derived figure may be from its recomputation (docs/SPEC.md: 1%)
ABS_TOLERANCE = 1e-9  # for figures that are zero (a standard deviation of equal samples)
MAX_SHOWN = 4  # problems shown per rule; the rest are counted


class Verdict(enum.StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"  # the rule does not apply to this receipt, or could not be run


Result = tuple[Verdict, str]


@dataclass
class Context:
    doc: dict[str, Any]
    model_override: str | Path | None
    now: dt.datetime

    @property
    def generation(self) -> bool:
        return self.doc["kind"] == "generation"

    @cached_property
    def model(self) -> ModelFile:
        m = self.doc["model"]
        return ModelFile(Path(self.model_override or m["path"]), m["sha256"], m["bytes"])


class ModelFile:
    """The model file a generation receipt names; hashed once, only when it is present."""

    def __init__(self, path: Path, sha256: str, nbytes: int) -> None:
        self.path, self.sha256, self.nbytes = path, sha256, nbytes

    @property
    def present(self) -> bool:
        return self.path.is_file()

    @cached_property
    def mismatch(self) -> str | None:
        """Why the present file is not the receipt's model, or None when it is."""
        size = self.path.stat().st_size
        if size != self.nbytes:
            return f"{self.path} has {size:,} bytes, the receipt's model.bytes is {self.nbytes:,}"
        with self.path.open("rb") as f:
            sha = hashlib.file_digest(f, "sha256").hexdigest()
        if sha != self.sha256:
            return f"{self.path} has sha256 {sha}, the receipt's model.sha256 is {self.sha256}"
        return None

    def vocab_size(self) -> int:
        # the GGUF reader and model config are needed only when the file is present
        from pybitnet.gguf import open_gguf
        from pybitnet.model import ModelConfig

        with open_gguf(self.path) as f:
            return ModelConfig.from_metadata(f.metadata, str(self.path)).vocab_size


def outcome(problems: list[str], ok: str) -> Result:
    if not problems:
        return Verdict.PASS, ok
    more = len(problems) - MAX_SHOWN
    return Verdict.FAIL, "; ".join(problems[:MAX_SHOWN]) + (
        f"; and {more} more" if more > 0 else ""
    )


@cache
def known_kernels() -> dict[str, tuple[str, str]]:
    """(op, tier) of every id the installed registry knows (ids are `<op>_<tier>`)."""
    return {kid: tuple(kid.rsplit("_", 1)) for kid in kernels.known_ids()}
