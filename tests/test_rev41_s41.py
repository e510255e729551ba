"""Session 41 (rev41): review of the changes since 0dee57f. A module of the project uses only the
public names of the project's other modules; the docs say where the hand-placed mutants are listed;
and code paths the session changed that no test reached: the dry run's threads per cell with several
processes, the unreadable images of a shard's later batch, the lr note's "..." past its list, and the
hand-mutant table applying to the code."""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

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


def test_a_local_dry_run_counts_every_process_of_a_cell_in_its_threads(capsys, monkeypatch, tmp_path):
    """8 cores, 2 cells at a time: 1 process a cell gets 8 // 2 = 4 threads; 2 processes a cell get
    8 // (2 x 2) = 2 threads each, again 4 for the cell (`CpuEstimate.threads`: all of a cell's
    processes), so the estimate is the same, not twice as long."""
    from sweeps import launch as cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    argv = ["--grid", "S,B", "--budgets", "1e12", "--executor", "local", "--dry-run"]
    said = {}
    for tasks in (1, 2):
        assert cli.main([*argv, "--tasks-per-node", str(tasks)]) == 0
        out = capsys.readouterr().out
        m = re.search(
            r"estimate: ([\d.]+) to ([\d.]+) min wall .* 2 at a time \(--parallel\), (\d+) threads", out
        )
        assert m, out
        said[tasks] = m.groups()
    assert said[1] == said[2] and said[1][2] == "4"


def test_an_unreadable_image_in_a_later_batch_is_named_as_itself(vae_dir, tmp_path, monkeypatch, caplog):
    """A shard of 5 images read in batches of 2: the one that fails is the 5th (the third batch); the
    warning and the manifest name that file, not the first of its batch (a file index restarted per
    batch) nor another one (session 41 names it by zipping the batch's errors with the shard's files)."""
    from PIL import Image
    from test_extract_latents import fail_to_load

    from dit_core.extract_latents import ExtractConfig, extract_latents

    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    bad = str(root / "cat" / "4.png")
    fail_to_load(monkeypatch, bad)
    out = tmp_path / "lat"
    cfg = ExtractConfig(data_path=str(root), output=str(out), vae=str(vae_dir), image_size=16, batch_size=2,
                        shard_size=5, posterior="mean", num_workers=0, device="cpu")  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="dit_core"):
        m = extract_latents(cfg)
    assert m["skipped"] == [bad] and m["num_items"] == 9
    named = [r.getMessage() for r in caplog.records if "skipping unreadable image" in r.getMessage()]
    assert named == [f"skipping unreadable image {bad} (OSError: disk hiccup)"]


def _lr_points(cells: int, lrs=(1e-3, 2e-3)) -> pd.DataFrame:
    """One finished run per (cell, lr): cells differ in N, the lower lr wins every cell."""
    from analysis.runs import tidy

    rows = []
    for i in range(cells):
        for j, lr in enumerate(lrs):
            n = 1e5 * (i + 1)
            rows.append(dict(N=n, D=1e6, C=6 * n * 1e6, loss=1.0 + j, run_id=f"r{i}-{j}", model=f"m{i}",
                             step=100, final=True, lr=lr))  # fmt: skip
    return tidy(pd.DataFrame(rows))


def test_the_best_lr_note_lists_twelve_cells_then_an_ellipsis():
    """13 cells at 2 lrs: the note names the first 12 cells' lr and ends its list with ", ..."; 12 cells:
    all 12, no ellipsis (`analysis.runs._first`, session 41's shared form of the notes' lists)."""
    from analysis.runs import best_lr

    _, _, note13 = best_lr(_lr_points(13))
    listed = note13.split("(--all-lrs keeps every lr): ")[1].split("; ")[0]
    assert listed.count(" FLOPs: ") == 12 and listed.endswith(", ...")
    _, _, note12 = best_lr(_lr_points(12))
    listed = note12.split("(--all-lrs keeps every lr): ")[1].split("; ")[0]
    assert listed.count(" FLOPs: ") == 12 and "..." not in listed


def test_every_hand_mutant_applies_once_and_compiles():
    """`tests/hand_mutants.txt` (session 41's table) as `hand_mutants.run` checks it before each run:
    each original text occurs exactly once in its module and each mutant compiles, and each module's
    test files exist. Session 41 cut lines in four of its seven modules; only a manual check caught
    a table that no longer applied."""
    import hand_mutants

    assert sum(len(ms) for _, ms in hand_mutants.MUTANTS.values()) == 851
    for module, (tests, mutants) in hand_mutants.MUTANTS.items():
        source = (REPO / module).read_text()
        assert all((REPO / t.split("::")[0]).exists() for t in tests if t.startswith("tests/")), module
        # a block's tests join its module's first block's, and pytest keeps the last -k: a second -k would
        # narrow every earlier mutant's tests (session 58's `-k without_c` did, for analysis/runs.py)
        assert tests.count("-k") <= 1, module
        for name, old, new in mutants:
            assert source.count(old) == 1, (module, name)
            compile(source.replace(old, new), module, "exec")
