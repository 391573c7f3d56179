"""Where a receipt's figures come from: the tool, the host and the model file.

Every value is read from the running process, the machine or the file; nothing is typed in.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import subprocess
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pybitnet
from pybitnet import kernels
from pybitnet.bench import receipt as rc
from pybitnet.errors import BenchError
from pybitnet.generate import Model


def kernel_tier(kernel_id: str) -> str:
    """The tier of a kernel id (``bitlinear_avx512`` -> ``avx512``)."""
    return kernel_id.rpartition("_")[2]


def receipt_head(kind: str, threads: Sequence[int], kernel_ids: Iterable[str]) -> dict[str, Any]:
    """The fields every receipt opens with: schema, kind, time, tool and host."""
    return {
        "schema_version": rc.SCHEMA_VERSION,
        "kind": kind,
        "created_at": rc.utc_now(),
        "tool": tool_info(),
        "host": host_info(threads, kernel_ids),
    }


def tool_info() -> dict[str, Any]:
    return {"name": "pybitnet", "version": pybitnet.__version__, "git_commit": _git_commit()}


def _git_commit() -> str | None:
    """HEAD of the checkout pybitnet runs from (an editable install), else None."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(pybitnet.__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if re.fullmatch(r"[0-9a-f]{40}", commit) else None


def host_info(threads: Sequence[int], kernel_ids: Iterable[str]) -> dict[str, Any]:
    """The host; cpu_features_used: what the tiers of the kernels that ran need of the CPU."""
    info = kernels.describe()
    used = {f for k in kernel_ids for f in kernels.registry.TIER_FEATURES[kernel_tier(k)]}
    return {
        "cpu_model": info["cpu"] or "unknown",
        "cpu_features_used": sorted(used & set(info["features"])),
        "logical_cores": os.cpu_count() or 1,
        "threads": list(dict.fromkeys(threads)),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def model_info(model: Model) -> dict[str, Any]:
    tensors = model.file.tensors.values()
    return {
        "path": str(model.path.resolve()),
        "sha256": file_sha256(model.path),
        "bytes": model.file.size,
        "architecture": model.config.arch,
        "parameter_count": sum(t.n_elements for t in tensors),
        "vocab_size": model.config.vocab_size,
        "tensor_types": dict(sorted(Counter(t.wtype.name for t in tensors).items())),
    }


def file_sha256(path: str | Path) -> str:
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        raise BenchError(f"{path}: cannot read the model to hash it: {exc}") from None
