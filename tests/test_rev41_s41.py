"""Session 41 (rev41): review of the changes since 0dee57f. A module of the project uses only the
public names of the project's other modules; the docs say where the hand-placed mutants are listed."""

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


def test_the_docs_say_the_hand_mutants_are_in_their_table():
    """Session 41 moved the hand-placed mutants from `tests/hand_mutants.py` into the table
    `tests/hand_mutants.txt`; docs/testing.md's rows still said "mutants listed in the script"."""
    text = (REPO / "docs" / "testing.md").read_text()
    assert "listed in the script" not in text
    rows = [ln for ln in text.splitlines() if "python tests/hand_mutants.py" in ln and ln.startswith("|")]
    assert len(rows) >= 6 and all("tests/hand_mutants.txt" in ln for ln in rows)
    assert "tests/hand_mutants.txt" in (REPO / "README.md").read_text()
