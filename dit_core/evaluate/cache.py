"""Where evaluation caches live (domain classifier weights, reference statistics) and their keys."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

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
