"""IsoFLOP profiles (Chinchilla approach 2): loss = parabola in log N per budget -> N_opt(C), D_opt(C).

Points are grouped into budgets by their `budget` column when present (the planned FLOPs of a sweep
cell; each run contributes its final point) and otherwise by clustering log10 C: sorted points
whose neighbours are within `gap_dex` fall in one budget.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.bootstrap import BootstrapResult, bootstrap_points
from analysis.laws import AllocationExponents, PowerLawFit, fit_power_law

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IsoFlopProfile:
    """One budget: loss ~ c2 (ln N)^2 + c1 ln N + c0 and its minimum."""

    compute: float  # budget (FLOPs): the median C of its points (true FLOPs)
    coef: tuple[float, float, float]  # (c2, c1, c0)
    n_opt: float
    d_opt: float
    loss_opt: float
    n_points: int
    n_range: tuple[float, float]

    def predict(self, n) -> np.ndarray:
        return np.polyval(self.coef, np.log(np.asarray(n, float)))


def assign_budgets(points: pd.DataFrame, gap_dex: float = 0.1) -> pd.Series:
    """A budget label (FLOPs) per row: the `budget` column of final points, or clusters of log10 C."""
    if "budget" in points.columns and points["budget"].notna().all() and "final" in points.columns:
        lab = points["budget"].where(points["final"].astype(bool))
        return lab
    lc = np.log10(points["C"].to_numpy(float))
    order = np.argsort(lc)
    cluster = np.zeros(len(lc), int)
    cluster[order] = np.r_[0, np.cumsum(np.diff(lc[order]) > gap_dex)]
    med = pd.Series(points["C"].to_numpy(float)).groupby(cluster).median()
    return pd.Series(med.loc[cluster].to_numpy(), index=points.index)


def _profile(g: pd.DataFrame, c: float, skipped: list[str] | None = None) -> IsoFlopProfile | None:
    ln = np.log(g["N"].to_numpy(float))
    if len(np.unique(ln)) < 3:
        return None
    coef = np.polyfit(ln, g["loss"].to_numpy(float), 2)
    if coef[0] <= 0:
        log.info("budget %.3g: parabola opens downward, no minimum; skipped", c)
        return None
    x_opt = -coef[1] / (2 * coef[0])
    if not ln.min() <= x_opt <= ln.max():
        side = "smaller" if x_opt < ln.min() else "larger"
        if skipped is not None:
            skipped.append(
                f"IsoFLOP budget {c:.3g}: the parabola's minimum (N={math.exp(x_opt):.3g}) lies outside "
                f"the models trained there (N {math.exp(ln.min()):.3g}..{math.exp(ln.max()):.3g}); "
                f"budget skipped - add {side} models at this budget"
            )
        return None
    # D at the optimum: ln D is linear in ln N at a fixed budget (exactly ln(C/kN) for C = kND)
    dcoef = np.polyfit(ln, np.log(g["D"].to_numpy(float)), 1)
    return IsoFlopProfile(
        compute=float(c),
        coef=tuple(float(v) for v in coef),
        n_opt=math.exp(x_opt),
        d_opt=math.exp(np.polyval(dcoef, x_opt)),
        loss_opt=float(np.polyval(coef, x_opt)),
        n_points=len(g),
        n_range=(float(np.exp(ln.min())), float(np.exp(ln.max()))),
    )


def isoflop_profiles(
    points: pd.DataFrame, gap_dex: float = 0.1, skipped: list[str] | None = None
) -> list[IsoFlopProfile]:
    """Fit a parabola per budget with >= 3 distinct N; budgets with a maximum or fewer N are skipped.

    A group of points spanning more than 2 x gap_dex in log10 C is not an IsoFLOP slice (continuous
    compute, e.g. the Chinchilla Figure 4 points) and is skipped too. So is a budget whose minimum
    lies outside its sampled model sizes (an extrapolation); `skipped` collects why.
    """
    lab = assign_budgets(points, gap_dex)
    out = []
    for _, g in points.assign(_b=lab).dropna(subset=["_b"]).groupby("_b"):
        if np.ptp(np.log10(g["C"].to_numpy(float))) > 2 * gap_dex:
            continue
        p = _profile(g, float(g["C"].median()), skipped)
        if p is not None:
            out.append(p)
    return sorted(out, key=lambda p: p.compute)


@dataclass
class IsoFlopFit(AllocationExponents):
    """Approach 2: the per-budget profiles and N_opt(C), D_opt(C) power laws through their minima."""

    profiles: list[IsoFlopProfile]
    n_opt: PowerLawFit | None
    d_opt: PowerLawFit | None
    bootstrap: BootstrapResult | None = None
    messages: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"IsoFLOP profiles: {len(self.profiles)} budgets"]
        for p in self.profiles:
            lines.append(
                f"  C={p.compute:.3g}: N_opt={p.n_opt:.3g} D_opt={p.d_opt:.3g} L_opt={p.loss_opt:.4g} "
                f"({p.n_points} points)"
            )
        se = self.bootstrap.se() if self.bootstrap else {}
        for name, law in (("N_opt", self.n_opt), ("D_opt", self.d_opt)):
            if law:
                e = -law.params["alpha"]
                lines.append(
                    f"  {name} = {law.params['A']:.4g} C^{e:.4f} (se {se.get(name + '_exp', math.nan):.3g})"
                )
        return "\n".join(lines + self.messages)

    def to_dict(self) -> dict:
        out: dict = {
            "profiles": [
                {
                    "C": p.compute,
                    "N_opt": p.n_opt,
                    "D_opt": p.d_opt,
                    "loss_opt": p.loss_opt,
                    "n_points": p.n_points,
                }
                for p in self.profiles
            ],
            "a": self.a,
            "b": self.b,
            "N_opt": self.n_opt.to_dict() if self.n_opt else None,
            "D_opt": self.d_opt.to_dict() if self.d_opt else None,
        }
        if self.bootstrap is not None:
            out["se"] = self.bootstrap.se()
            out["ci95"] = {k: list(v) for k, v in self.bootstrap.conf_int().items()}
        return out


def _laws(profiles: list[IsoFlopProfile]) -> tuple[PowerLawFit, PowerLawFit]:
    c = [p.compute for p in profiles]
    n = fit_power_law(c, [p.n_opt for p in profiles], saturating=False, x_name="C", y_name="N_opt")
    d = fit_power_law(c, [p.d_opt for p in profiles], saturating=False, x_name="C", y_name="D_opt")
    return n, d


def fit_isoflop(
    points: pd.DataFrame, *, n_bootstrap: int = 0, seed: int = 0, gap_dex: float = 0.1
) -> IsoFlopFit:
    """Approach 2. Needs >= 3 budgets with >= 3 model sizes each; otherwise the laws are None.

    The bootstrap resamples points within the data set and refits everything (profiles and laws).
    """
    skipped: list[str] = []
    profiles = isoflop_profiles(points, gap_dex, skipped)
    if len(profiles) < 3:
        msg = (
            f"IsoFLOP: {len(profiles)} usable budget(s) (need 3, each with >= 3 model sizes and its "
            "minimum inside them); no N_opt(C) law"
        )
        log.info(msg)
        return IsoFlopFit(profiles, None, None, messages=skipped + [msg])
    n_law, d_law = _laws(profiles)
    fit = IsoFlopFit(profiles, n_law, d_law, messages=skipped)
    if n_bootstrap > 0:
        pts = points.reset_index(drop=True)

        def one(idx):
            prof = isoflop_profiles(pts.iloc[idx], gap_dex)
            if len(prof) < 3:
                return None
            nl, dl = _laws(prof)
            return {
                "N_opt_exp": -nl.params["alpha"],
                "D_opt_exp": -dl.params["alpha"],
                "N_opt_A": nl.params["A"],
                "D_opt_A": dl.params["A"],
            }

        fit.bootstrap = bootstrap_points(one, len(pts), n_bootstrap, seed=seed)
    return fit
