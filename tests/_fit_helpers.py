"""Shared helper for the tests of the `fit_scaling` CLI."""

from __future__ import annotations

from pathlib import Path


def run_fit_cli(tmp_path: Path, *args: str) -> tuple[int, Path]:
    """Run `analysis.fit_scaling.main` on ``args`` with a held-out largest budget, the report in
    ``tmp_path/rep`` and the JSON in ``tmp_path/fit.json``; returns (exit code, JSON path)."""
    from analysis.fit_scaling import main

    out_json = tmp_path / "fit.json"
    rc = main([*args, "--holdout", "largest", "--json", str(out_json), "--out", str(tmp_path / "rep")])
    return rc, out_json
