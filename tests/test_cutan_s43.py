"""Session 43 (cutan): the analysis package's simplifications keep every number.

The frontier bootstrap draws its runs with `bootstrap.draw_resamples`, the helper `bootstrap_points`
uses, instead of a copy of the draw: the runs numbered in their order in the points make the same
draws as `rng.choice` over the run ids did, so every frontier interval is unchanged.
"""

from __future__ import annotations

import contextlib

import numpy as np
from _fit_helpers import sweep

from analysis.laws import compute_frontier, fit_frontier, fit_power_law
from analysis.runs import tidy


def _noisy_sweep():
    """`sweep()` with 2% noise on the loss, so the resamples' frontiers differ."""
    pts = sweep(n_sizes=4)
    pts["loss"] *= np.exp(np.random.default_rng(1).normal(0.0, 0.02, len(pts)))
    return tidy(pts.iloc[::-1])  # run ids not in sorted order


def test_the_frontier_bootstrap_draws_the_runs_its_own_copy_drew():
    pts = _noisy_sweep()
    fit = fit_frontier(pts, n_bootstrap=12, seed=5)
    rng = np.random.default_rng(5)  # the draw before session 43: rng.choice over the run ids
    runs = pts["run_id"].unique()
    expected = []
    for _ in range(12):
        pick = np.unique(rng.choice(runs, size=len(runs), replace=True))
        fr = compute_frontier(pts[pts["run_id"].isin(pick)])
        with contextlib.suppress(ValueError):  # a resample without a law: one of its failures
            expected.append(fit_power_law(fr["C"], fr["loss"], x_name="C", y_name="loss").params)
    bs = fit.y_law.bootstrap
    assert bs.n_ok == len(expected) and bs.n_ok + bs.n_failed == 12
    for k in ("E", "A", "alpha"):
        np.testing.assert_array_equal(bs.samples[k], [p[k] for p in expected])
