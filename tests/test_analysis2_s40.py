"""Session 40 (alys2): the three approaches treat seeds and lrs alike.

1. the frontier's and the IsoFLOP bootstraps choose the lr again in each resample (`LrRedraw`, the
   parametric law's), and the IsoFLOP parabolas and joint fit weigh a cell by its seeds
   (`pipeline.seed_weights`, the parametric law's); equal seeds everywhere change nothing, bit for bit;
2. the redraw no longer counts a cell's seed noise twice: where the choice never flips, the bootstrap
   is the plain cell bootstrap, and its sd of a log-log slope is the OLS standard error;
3. `--per-seed` keeps the full data's lr choice in the bootstrap, and the messages say so.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _fit_helpers import sweep

from analysis.bootstrap import bootstrap_points
from analysis.isoflop import fit_isoflop
from analysis.laws import fit_frontier
from analysis.pipeline import AnalysisConfig, analyze, lr_redraw, prepare, seed_weights
from analysis.runs import LrRedraw, tidy

LR_A, LR_B = 1e-3, 3e-3


# ------------------------------------------------------------------ 2. the seeds' noise counted once


def _power_law_cells(n_cells: int, k: int, sigma: float, rng) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-seed points, fitted cell means) of cells on y = 2 x^-0.3 with log-normal noise `sigma`
    per seed, k seeds at LR_A and k at LR_B, LR_B 50 % worse (it never wins a resample)."""
    x = np.exp(rng.uniform(0.0, 5.0, n_cells))
    rows, fitted = [], []
    for i, xi in enumerate(x):
        for lr, shift in ((LR_A, 1.0), (LR_B, 1.5)):
            ys = 2.0 * xi**-0.3 * shift * np.exp(sigma * rng.standard_normal(k))
            ids = [f"c{i}-{lr:g}-s{s}" for s in range(k)]
            base = {"N": xi, "D": 1e7, "C": 6e7 * xi, "step": 100.0, "lr": lr, "lr_group": f"g{i}"}
            rows += [{**base, "loss": y, "run_id": r} for y, r in zip(ys, ids)]
            if lr == LR_A:
                fitted.append({**base, "loss": float(ys.mean()), "run_id": " + ".join(ids)})
    return tidy(pd.DataFrame(rows)), tidy(pd.DataFrame(fitted))


def test_a_stable_lr_choice_gives_the_cell_bootstrap_and_the_ols_standard_error():
    """200 cells of a pure power law, 4 seeds per lr (sd 0.02 each, so sd 0.01 of a cell's mean): the
    slope of log mean loss on log x has the OLS standard error sigma / sqrt(k Sxx) with the known sigma.
    The bootstrap over cells with the lr chosen again must give it: the same resamples as without the
    redraw (the choice never flips), and an sd within 15 % of the closed form (the bootstrap's own error:
    1 / sqrt(2 x 200) from the residuals, 1 / sqrt(2 x 400) from the resamples, 6 % together). Before,
    each cell also took its resampled seeds' mean: a cell drawn c times added c^2 (k-1)/k sigma^2 / k, and
    the sd was sqrt(1 + 2 (k-1)/k) = 1.58 x the closed form."""
    k, sigma = 4, 0.02
    raw, fitted = _power_law_cells(200, k, sigma, np.random.default_rng(1))
    lx, ly = np.log(fitted["N"].to_numpy()), np.log(fitted["loss"].to_numpy())

    def slope(idx, losses=None):
        y = ly[idx] if losses is None else np.log(losses[idx])
        return {"slope": float(np.polyfit(lx[idx], y, 1)[0])}

    redraw = LrRedraw(raw, fitted)
    assert redraw  # every cell at two lrs
    plain = bootstrap_points(slope, len(fitted), 400, seed=0, workers=1)
    redone = bootstrap_points(slope, len(fitted), 400, seed=0, workers=1, redraw=redraw)
    assert np.array_equal(plain.samples["slope"], redone.samples["slope"])
    closed = sigma / np.sqrt(k) / np.sqrt(np.sum((lx - lx.mean()) ** 2))
    assert redone.se()["slope"] / closed == pytest.approx(1.0, abs=0.15)


# ------------------------------------------------------------------ 1. frontier and IsoFLOP alike


def _lr_points(gap: float, seed: int = 0, seeds=lambda i: 3) -> pd.DataFrame:
    """`sweep()`'s 15 cells at LR_A and LR_B with `seeds(i)` seeds each (1 % log-normal noise); LR_B's
    mean `gap` (relative) above LR_A's: 0.002 makes the choice flip between resamples, 0.5 never."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, r in sweep().iterrows():
        for lr, shift in ((LR_A, 0.0), (LR_B, gap)):
            for s in range(seeds(i)):
                loss = r["loss"] * (1 + shift) * np.exp(0.01 * rng.standard_normal())
                rows.append(dict(r, model=f"m{i}", lr=lr, seed=s, loss=loss, run_id=f"c{i}-lr{lr:g}-s{s}"))
    return pd.DataFrame(rows)


def _prepared(points: pd.DataFrame):
    cfg = AnalysisConfig(n_bootstrap=30)
    prep = prepare(points, cfg)
    return prep.points, lr_redraw(prep, prep.points, cfg)


@pytest.mark.parametrize("gap", [0.002, 0.5])
def test_the_frontier_and_isoflop_bootstraps_choose_the_lr_again(gap):
    """The frontier's and the (per-budget minima) IsoFLOP bootstraps take the redraw: with lrs within
    the seeds' noise (gap 0.2 %) the choice flips in some resamples, and their refits differ from those
    with the full data's choice; with LR_B 50 % worse it never flips, and every refit is the same bit
    for bit. Before, neither took a redraw."""
    pts, redraw = _prepared(_lr_points(gap))
    assert redraw
    fits = [
        (
            fit_frontier(pts, n_bootstrap=30, seed=0, redraw=r).y_law.bootstrap.samples,
            fit_isoflop(pts, n_bootstrap=30, seed=0, joint=False, redraw=r).bootstrap.samples,
        )
        for r in (None, redraw)
    ]
    same = [
        all(np.array_equal(a[key], b[key], equal_nan=True) for key in a) for a, b in zip(fits[0], fits[1])
    ]
    assert same == ([False, False] if gap < 0.1 else [True, True])


def test_the_isoflop_fits_weigh_a_cell_as_its_seeds_replicated():
    """Weights k on the parabolas and on the joint fit equal the same fits with each point given k
    times (both are least squares: sums over points), the reference here; k = 1 and 3 in turn by cell.
    Equal weights are no weights: the fit is the same, bit for bit."""
    pts = sweep()
    pts["loss"] *= np.exp(0.01 * np.random.default_rng(3).standard_normal(len(pts)))
    k = np.where(np.arange(len(pts)) % 2 == 0, 1, 3)
    rep = pts.iloc[np.repeat(np.arange(len(pts)), k)].reset_index(drop=True)
    for joint in (False, True):
        weighted = fit_isoflop(pts, weights=k, joint=joint)
        reference = fit_isoflop(rep, joint=joint)
        assert len(weighted.profiles) == len(reference.profiles) >= 3
        for p, q in zip(weighted.profiles, reference.profiles):
            assert p.n_opt == pytest.approx(q.n_opt, rel=1e-9)
        assert weighted.a == pytest.approx(reference.a, rel=1e-6)
        assert weighted.a != pytest.approx(fit_isoflop(pts, joint=joint).a, rel=1e-6)  # the weights count
    assert fit_isoflop(pts, weights=np.full(len(pts), 3.0)).to_dict() == fit_isoflop(pts).to_dict()


def test_the_analysis_gives_approach_2_the_seed_weights():
    """Cells with 1 seed among cells with 3: `analyze` fits approach 2 with `seed_weights`, as approach
    3; before, approach 2 weighed every cell alike."""
    points = _lr_points(0.5, seeds=lambda i: 1 if i % 3 == 0 else 3)
    an = analyze(points, AnalysisConfig(n_bootstrap=0))
    pts = an.points
    assert sorted(set(seed_weights(pts))) == [1.0, 3.0]
    assert an.isoflop.a == fit_isoflop(pts, weights=seed_weights(pts)).a
    assert an.isoflop.a != pytest.approx(fit_isoflop(pts).a, rel=1e-6)


# ------------------------------------------------------------------ 3. --per-seed


def test_per_seed_says_its_bootstrap_keeps_the_full_datas_lr_choice():
    """With the seeds kept apart the points are the chosen lr's seeds, and the bootstrap does not choose
    the lr again: the messages say so (before, nothing did). With seeds averaged there is no such message."""
    points = _lr_points(0.002)
    per_seed = analyze(points, AnalysisConfig(n_bootstrap=2, average_seeds=False))
    assert any("keeps the lr chosen on the full data" in m for m in per_seed.messages)
    averaged = analyze(points, AnalysisConfig(n_bootstrap=2))
    assert not any("keeps the lr chosen on the full data" in m for m in averaged.messages)
