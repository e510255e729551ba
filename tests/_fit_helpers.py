"""Shared helpers for the tests of the `fit_scaling` CLI: a synthetic sweep on a known law, and the CLI
run on it or on other input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.parametric import optimal_allocation, parametric_loss

LAW = {"E": 1.7, "A": 400.0, "B": 1500.0, "alpha": 0.34, "beta": 0.30}
BUDGETS = (1e18, 1e19, 1e20, 1e21)


def sweep(span=(-1.0, 1.0), n_sizes=5) -> pd.DataFrame:
    """One final point per run on IsoFLOP slices of LAW, sizes log-spaced over `span` decades around
    each budget's optimum (C = 6 N D); exactly on the law."""
    rows = []
    for c in BUDGETS:
        n0 = optimal_allocation(LAW, c, 6.0)[0]
        for i, n in enumerate(n0 * np.logspace(*span, n_sizes)):
            d = c / (6.0 * n)
            loss = float(parametric_loss(LAW, n, d))
            rows.append({"N": n, "D": d, "C": c, "loss": loss, "run_id": f"c{c:.0e}-{i}", "budget": c})
    return pd.DataFrame(rows)


def sweep_cli(tmp_path: Path, *args: str) -> int:
    """`analysis.fit_scaling.main` on a CSV of `sweep()` (unless ``args`` give --csv), the report in
    tmp_path/rep."""
    from analysis.fit_scaling import main

    csv = tmp_path / "points.csv"
    if not csv.exists():
        sweep().to_csv(csv, index=False)
    src = [] if "--csv" in args else ["--csv", str(csv)]
    return main([*src, "--out", str(tmp_path / "rep"), *args])


def run_fit_cli(tmp_path: Path, *args: str) -> tuple[int, Path]:
    """Run `analysis.fit_scaling.main` on ``args`` with a held-out largest budget, the report in
    ``tmp_path/rep`` and the JSON in ``tmp_path/fit.json``; returns (exit code, JSON path)."""
    from analysis.fit_scaling import main

    out_json = tmp_path / "fit.json"
    rc = main([*args, "--holdout", "largest", "--json", str(out_json), "--out", str(tmp_path / "rep")])
    return rc, out_json
