"""Where evaluation caches live (digits classifier weights, reference statistics) and atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

CACHE_ENV = "DITSCALE_CACHE"


def cache_dir(sub: str = "") -> Path:
    """``$DITSCALE_CACHE`` (default ``~/.cache/ditscale``) / ``sub``, created if missing."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ditscale")
    path = root / sub if sub else root
    path.mkdir(parents=True, exist_ok=True)
    return path


def stable_hash(obj: Any, n: int = 12) -> str:
    """Short sha256 of ``obj``'s canonical JSON (dict keys sorted): a cache key."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` to a temp file in the same folder, then rename (readers never see half a file)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    _atomic(path, write)


def save_torch_atomic(path: Path, obj: Any) -> None:
    """``torch.save`` to a temp file in the same folder, then rename."""
    _atomic(path, lambda tmp: torch.save(obj, tmp))
