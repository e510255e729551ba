"""Session 41 (lead): what the review left and the lead fixed."""

from __future__ import annotations

import numpy as np
from test_analysis2_s40 import _power_law_cells

from analysis.runs import LrRedraw


def test_a_cell_the_fits_do_not_see_draws_nothing_in_the_lr_redraw():
    """The holdout builds its `LrRedraw` from every run (`prep.raw`) but fits only the runs below the
    held-out budget. Held-out cells used to take their seed draws from the resamples' generator all the
    same, so the holdout's bootstrap differed from the bootstrap of the same runs fitted alone. Now a
    cell with no fitted point is left out: the redraw, resample for resample, is that of the runs alone."""
    raw, fitted = _power_law_cells(12, 3, 0.05, np.random.default_rng(3))
    b = raw["lr"] != raw["lr"].min()
    raw.loc[b, "loss"] /= 1.5  # the two lrs alike, so that resamples flip the choice
    keep = fitted.index[:8]
    cells = {f"g{i}" for i in range(8)}
    alone = LrRedraw(raw[raw["lr_group"].isin(cells)], fitted.loc[keep].reset_index(drop=True))
    with_held_out = LrRedraw(raw, fitted.loc[keep].reset_index(drop=True))
    assert len(with_held_out.cells) == len(alone.cells) == 8
    flips = 0
    for seed in range(20):
        a, b = alone(np.random.default_rng(seed)), with_held_out(np.random.default_rng(seed))
        assert np.array_equal(a, b)
        flips += int(not np.array_equal(a, alone.loss))
    assert flips >= 5  # the choice does flip
