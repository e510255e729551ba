"""FID as a function of validation loss: FID = K * loss^gamma (a line in log-log), so FID can be
predicted from cheap loss-only runs. Fitted on every point where both were logged."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.laws import PowerLawFit, fit_power_law


def fit_fid_vs_loss(
    points: pd.DataFrame, *, n_bootstrap: int = 0, seed: int = 0, groups=None
) -> PowerLawFit | None:
    """Pure power law fid(loss); None when fewer than 3 points carry a FID. ``groups``: one label per
    row of ``points`` (its run), to bootstrap whole runs (`analysis.laws.fit_power_law`)."""
    has_fid = points["fid"].notna().to_numpy()
    pts = points[has_fid]
    if len(pts) < 3 or np.ptp(np.log(pts["loss"].to_numpy(float))) == 0:
        return None
    return fit_power_law(
        pts["loss"],
        pts["fid"],
        saturating=False,
        n_bootstrap=n_bootstrap,
        seed=seed,
        x_name="loss",
        y_name="FID",
        groups=None if groups is None else np.asarray(groups)[has_fid],
    )
