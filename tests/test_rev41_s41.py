"""Session 41 (rev41): review of the changes since 0dee57f. A module of the project uses only the
public names of the project's other modules."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("dit_core", "sweeps", "analysis")


def _private_imports(path: Path) -> list[str]:
    """``from <one of PACKAGES> import _name`` (and ``from . import _name``) lines of ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        own = node.level > 0 or (node.module or "").split(".")[0] in PACKAGES
        for alias in node.names:
            if own and alias.name.startswith("_") and not alias.name.startswith("__"):
                out.append(f"{path.relative_to(REPO)}:{node.lineno}: from {node.module} import {alias.name}")
    return out


def test_no_module_imports_another_modules_private_name():
    """`sweeps/launch.py` imported `sweeps.runner._threads_per_process` for the dry run's CPU estimate
    (session 41): a helper another module needs is public (`threads_per_process`)."""
    found = [line for p in PACKAGES for f in sorted((REPO / p).rglob("*.py")) for line in _private_imports(f)]
    assert found == []
