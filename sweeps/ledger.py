"""The launcher's own record of submissions: ``<sweep_dir>/launches.json`` plus a lock file.

MLflow holds what the cells did; the ledger holds what the launcher did (job ids, attempts), so a
relaunch knows which jobs may still be queued or running and how often a cell was retried.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Ledger", "Submission", "sweep_lock"]


@dataclass
class Submission:
    """One submission of a cell: executor kind (slurm/local/debug), job id, time (unix s)."""

    executor: str
    job_id: str
    submitted: float
    folder: str = ""


@dataclass
class Ledger:
    """Submissions per cell id; ``attempts(cell)`` = how many times it was submitted."""

    path: Path
    cells: dict[str, list[Submission]] = field(default_factory=dict)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, sweep_dir: Path) -> Ledger:
        path = Path(sweep_dir) / "launches.json"
        if not path.exists():
            return cls(path)
        raw = json.loads(path.read_text())
        cells = {c: [Submission(**s) for s in subs] for c, subs in raw.get("cells", {}).items()}
        return cls(path, cells, raw.get("configs", {}))

    def attempts(self, cell_id: str) -> int:
        return len(self.cells.get(cell_id, []))

    def last(self, cell_id: str) -> Submission | None:
        subs = self.cells.get(cell_id)
        return subs[-1] if subs else None

    def record(
        self, cell_id: str, executor: str, job_id: str, folder: str = "", config: dict[str, Any] | None = None
    ) -> None:
        """Append a submission (and the cell's config, to detect changed settings on relaunch)."""
        self.cells.setdefault(cell_id, []).append(Submission(executor, str(job_id), time.time(), folder))
        if config is not None:
            self.configs[cell_id] = json.loads(json.dumps(config))
        self.save()

    def changed_settings(self, cell_id: str, config: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """``{key: (launched, now)}`` where ``config`` differs from the one the cell was launched with."""
        old = self.configs.get(cell_id)
        if old is None:
            return {}
        new = json.loads(json.dumps(config))
        return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}

    def save(self) -> None:
        """Atomic write (temp file + rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        data = {
            "cells": {c: [asdict(s) for s in subs] for c, subs in self.cells.items()},
            "configs": self.configs,
        }
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.path)


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """Exclusive lock so two launches of the same sweep cannot submit the same cells twice."""
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / ".launch.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise RuntimeError(
                f"another launch of this sweep is running (pid {holder}, lock {sweep_dir / '.launch.lock'}); "
                "wait for it or use `python sweeps/launch.py status`"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
