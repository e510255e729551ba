"""Power laws in one variable and the compute-efficient frontier (Chinchilla approach 1).

- pure power law        y = A * x^-alpha          (least squares on log y vs log x)
- saturating power law  y = E + A * x^-alpha      (least squares on log y; E = exp(e) >= 0)
A positive exponent `alpha` means y falls with x; for growth laws (N_opt ~ C^a) alpha = -a.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from analysis.bootstrap import BootstrapResult, bootstrap_points, draw_resamples, parallel_map
from analysis.status import NOT_IDENTIFIED, Status, flag_bootstrapped_exponent

log = logging.getLogger(__name__)


def power_law(params: dict, x) -> np.ndarray:
    """y = E + A x^-alpha (E = 0 where ``params`` has none); params may be arrays that broadcast with x."""
    return params.get("E", 0.0) + params["A"] * np.asarray(x, float) ** (-params["alpha"])


@dataclass
class PowerLawFit:
    """y = E + A x^-alpha (E = 0 for the pure law); params in the units of the data."""

    kind: str  # "pure" | "saturating"
    params: dict[str, float]
    rmse_log: float  # root mean square of log residuals
    n_points: int
    x_name: str = "x"
    y_name: str = "y"
    bootstrap: BootstrapResult | None = None
    #: pure law only: 95% t-intervals of the log-log least squares line (n - 2 degrees of freedom),
    #: the intervals reported when the bootstrap cannot vary (n <= 3 points: every resample that can
    #: be fitted holds the same points)
    t_interval: dict[str, tuple[float, float]] | None = None
    #: how `t_interval` was made, as ``to_dict`` names it (the joint IsoFLOP fit's: from its Jacobian)
    t_interval_kind: str = "t (log-log least squares)"

    def predict(self, x) -> np.ndarray:
        return power_law(self.params, x)

    def predict_interval(self, x, level: float = 0.95):
        """Bootstrap percentile band of the prediction at x: (lo, hi), or (nan, nan) without bootstrap."""
        x = np.asarray(x, float)
        if self.bootstrap is None or self.bootstrap.n_ok < 2:
            return np.full_like(x, np.nan), np.full_like(x, np.nan)
        return self.bootstrap.interval_of(lambda p: power_law(p, x), level)

    @property
    def se(self) -> dict[str, float]:
        return self.bootstrap.se() if self.bootstrap is not None else {}

    def conf_int(self, level: float = 0.95) -> dict[str, tuple[float, float]]:
        """Bootstrap percentile intervals; without a bootstrap, a pure law's 95% t-intervals."""
        if self.bootstrap is not None:
            return self.bootstrap.conf_int(level)
        return dict(self.t_interval or {}) if level == 0.95 else {}

    def formula(self) -> str:
        p = self.params
        body = f"{p['A']:.4g} * {self.x_name}^({-p['alpha']:.4g})"
        return f"{self.y_name} = " + (f"{p['E']:.4g} + {body}" if self.kind == "saturating" else body)

    def to_dict(self) -> dict:
        out = {"kind": self.kind, **self.params, "rmse_log": self.rmse_log, "n_points": self.n_points}
        if self.bootstrap is not None:
            out["se"] = self.se
            out["bootstrap"] = self.bootstrap.to_dict()
        if self.conf_int():
            out["ci95"] = {k: list(v) for k, v in self.conf_int().items()}
            out["interval"] = "bootstrap" if self.bootstrap is not None else self.t_interval_kind
        return out


def _check_xy(x, y, n_params: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    if len(x) != len(y):
        raise ValueError(f"{what}: x and y lengths differ ({len(x)} vs {len(y)})")
    if np.any(~np.isfinite(x) | (x <= 0)) or np.any(~np.isfinite(y) | (y <= 0)):
        raise ValueError(f"{what}: x and y must be positive and finite")
    if len(x) <= n_params:
        raise ValueError(
            f"{what}: {len(x)} points for {n_params} parameters; need more points than parameters"
        )
    if np.ptp(np.log(x)) == 0:
        raise ValueError(f"{what}: all x are equal; a power law needs a range of x")
    return x, y


def _pure(lx: np.ndarray, ly: np.ndarray) -> tuple[float, float]:
    slope, icpt = np.polyfit(lx, ly, 1)
    if not -700 < icpt < 700:
        raise ValueError(
            f"power-law exponent {-slope:.3g} is implausibly steep (the prefactor overflows); "
            "the points span too little x or jump between few values"
        )
    return math.exp(icpt), -slope


def saturating_exp(v: float) -> float:
    """exp(v) capped at exp(709) ~ 8e307 instead of overflowing (very negative v underflows to 0)."""
    return math.exp(min(v, 709.0))


def _pure_t_interval(
    lx: np.ndarray, ly: np.ndarray, a: float, alpha: float
) -> dict[str, tuple[float, float]]:
    """95% t-intervals of A and alpha of the least squares line ln y = ln A - alpha ln x (n >= 3) that
    `_pure` fitted."""
    from scipy.stats import t as student_t

    n = len(lx)
    slope, icpt = -alpha, math.log(a)
    s = math.sqrt(float(np.sum((ly - (icpt + slope * lx)) ** 2)) / (n - 2))
    sxx = float(np.sum((lx - lx.mean()) ** 2))
    q = float(student_t.ppf(0.975, n - 2))
    se_slope, se_icpt = s / math.sqrt(sxx), s * math.sqrt(1 / n + lx.mean() ** 2 / sxx)
    return t_intervals(icpt, -slope, q * se_icpt, q * se_slope)


def t_intervals(
    ln_a: float, alpha: float, half_ln_a: float, half_alpha: float
) -> dict[str, tuple[float, float]]:
    """The intervals {"A", "alpha"} of a pure law: ln A +- ``half_ln_a`` (exponentiated; a wide one
    saturates instead of overflowing) and alpha +- ``half_alpha``."""
    return {
        "A": (saturating_exp(ln_a - half_ln_a), saturating_exp(ln_a + half_ln_a)),
        "alpha": (alpha - half_alpha, alpha + half_alpha),
    }


def _saturating(lx: np.ndarray, ly: np.ndarray) -> tuple[float, float, float]:
    """(E, A, alpha) minimising sum (log(E + A x^-alpha) - log y)^2, x centred for conditioning.

    Bounded (0 <= E <= min y, 0 <= alpha <= 10) so that flat or noisy data, which small sweeps
    produce, ends at a boundary instead of diverging."""
    xc = lx.mean()
    u = lx - xc
    y = np.exp(ly)
    lo = np.array([math.log(1e-9 * y.min()), math.log(1e-12 * y.max()), 0.0])
    hi = np.array([math.log(y.min()), math.log(y.max()) + 5.0, 10.0])

    def res(th):
        return np.logaddexp(th[0], th[1] - th[2] * u) - ly

    def start(frac: float):  # E as a fraction of min(y)
        e0 = frac * y.min()
        a0, al0 = _pure(u, np.log(y - e0))
        x0 = np.array([math.log(max(e0, 1e-6 * y.min())), math.log(a0), al0])
        x0 = np.clip(x0, lo + 1e-9 * (hi - lo), hi - 1e-9 * (hi - lo))
        return least_squares(res, x0, bounds=(lo, hi), method="trf", xtol=1e-12, ftol=1e-12)

    e, a, alpha = min(map(start, (0.0, 0.5, 0.9)), key=lambda r: r.cost).x  # the first of equal costs
    if alpha >= 0.999 * hi[2]:
        raise ValueError(
            f"the saturating law's exponent ran to its bound ({hi[2]:g}): the points do not determine "
            "E, A and alpha (too few, or a drop followed by a plateau); use the pure power law"
        )
    return math.exp(e), math.exp(a + alpha * xc), float(alpha)


def fit_power_law(
    x,
    y,
    *,
    saturating: bool = True,
    n_bootstrap: int = 0,
    seed: int = 0,
    x_name: str = "x",
    y_name: str = "y",
    groups=None,
) -> PowerLawFit:
    """Fit y = E + A x^-alpha (saturating) or y = A x^-alpha (pure); optional bootstrap over the
    points, or over whole ``groups`` (one label per point: a run's points are correlated)."""
    names, fit_one = (("E", "A", "alpha"), _saturating) if saturating else (("A", "alpha"), _pure)
    n_params = len(names)
    x, y = _check_xy(x, y, n_params, f"power law {y_name}({x_name})")
    lx, ly = np.log(x), np.log(y)

    def params_of(idx) -> dict[str, float]:
        return dict(zip(names, fit_one(lx[idx], ly[idx]), strict=True))

    params = params_of(np.arange(len(x)))
    fit = PowerLawFit("saturating" if saturating else "pure", params, 0.0, len(x), x_name, y_name)
    fit.rmse_log = float(np.sqrt(np.mean((np.log(fit.predict(x)) - ly) ** 2)))
    if not saturating and len(x) > 2:
        fit.t_interval = _pure_t_interval(lx, ly, params["A"], params["alpha"])
    if n_bootstrap > 0 and len(x) <= n_params + 1:
        log.info("%s(%s): %d points, no bootstrap (every resample would hold the same points)",
                 y_name, x_name, len(x))  # fmt: skip
    elif n_bootstrap > 0:

        def one(idx):
            if len(np.unique(lx[idx])) <= n_params - 1 or len(np.unique(idx)) <= n_params:
                return None
            return params_of(idx)

        fit.bootstrap = bootstrap_points(
            one, len(x), n_bootstrap, seed=seed, groups=groups, desc=f"bootstrap {y_name}({x_name})"
        )
    return fit


# ----------------------------------------------------------------------------------------------
# frontier


def cluster_budgets(c: pd.Series, gap_dex: float = 0.1) -> pd.Series:
    """A budget (FLOPs) per point where none was recorded: sorted log10 C split wherever neighbours
    are more than `gap_dex` apart, each cluster labelled by its median C. The cells of one budget end
    a few steps' compute apart (whole steps), so their exact C differ by up to a few percent."""
    lc = np.log10(c.to_numpy(float))
    order = np.argsort(lc)
    cluster = np.zeros(len(lc), int)
    cluster[order] = np.r_[0, np.cumsum(np.diff(lc[order]) > gap_dex)]
    med = pd.Series(c.to_numpy(float)).groupby(cluster).median()
    return pd.Series(med.loc[cluster].to_numpy(), index=c.index)


def _frontier_span(pts: pd.DataFrame) -> tuple[float, float]:
    """The compute (FLOPs) where the frontier starts and ends: the last of the model sizes' first
    evaluations that lie within 0.1 dex of the earliest one, and the first of their last evaluations
    within 0.1 dex of the latest one (runs of one budget end a few steps' compute apart)."""
    c = pts.groupby("N")["C"]
    first, last = c.min().to_numpy(float), c.max().to_numpy(float)
    start, end = first[first <= first.min() * 10**0.1].max(), last[last >= last.max() / 10**0.1].min()
    return float(start), float(end)


def _tied(s: pd.Series):
    """One value for the sizes tied at a budget's best: the geometric mean of N, D or C (ids joined)."""
    if s.nunique() == 1:
        return s.iloc[0]
    if s.name in ("run_id", "model"):
        return " + ".join(map(str, s))
    return float(np.exp(np.log(s.to_numpy(float)).mean()))


def _best_per_budget(pts: pd.DataFrame, key: pd.Series, y: str) -> pd.DataFrame:
    """The best run of each budget (label `key`), by C. Runs of different sizes that tie for the
    lowest y (losses rounded, e.g. to 3 digits in a CSV) are one point at the geometric mean of their
    N, D and C: the optimum lies between them, and the first or last of them would win by row order."""
    best = pts[pts[y] == pts.groupby(key)[y].transform("min")]
    cols = ["C", y, "N", "D", "run_id", "model"]
    return best[cols].groupby(key.loc[best.index]).agg(_tied).sort_values("C")


def on_grid(points: pd.DataFrame) -> bool:
    """Whether `compute_frontier` interpolates the runs onto a grid of budgets (some run has several
    points) rather than taking the Pareto set of one point per run. Grid rows are not independent
    measurements: a few runs give all of them, so their count says nothing about the noise."""
    return bool(len(points)) and int(points.groupby("run_id").size().max()) >= 2


def compute_frontier(points: pd.DataFrame, y: str = "loss", n_grid: int = 40) -> pd.DataFrame:
    """Lower envelope of y over runs against compute (Chinchilla approach 1, docs/analysis.md): on a
    log grid of `n_grid` budgets over `_frontier_span`, or the Pareto set with one point per run.
    Returns columns C, y, N, D, run_id, model (one row per frontier point, by C)."""
    pts = points.dropna(subset=[y]).sort_values("C")
    if len(pts) == 0:
        return pd.DataFrame(columns=["C", y, "N", "D", "run_id", "model"])
    start, end = _frontier_span(pts)
    if not on_grid(pts):
        # one point per run: at one budget (the `budget` column, else a cluster of C) only the best
        # run is on the frontier, whatever order the tied points come in
        has_budget = "budget" in pts.columns and pts["budget"].notna().all()
        key = pts["budget"] if has_budget else cluster_budgets(pts["C"])
        pts = _best_per_budget(pts, key, y)
        start = _frontier_span(pts)[0]
        first = pts[pts["C"] <= start]
        pts = pd.concat([first.loc[[first[y].idxmin()]], pts[pts["C"] > start]])  # best of the first budget
        v = pts[y].to_numpy()
        keep = np.r_[True, v[1:] < np.minimum.accumulate(v)[:-1]]  # a new running minimum
        return pts.loc[keep, ["C", y, "N", "D", "run_id", "model"]].reset_index(drop=True)
    end = max(end, start)
    grid = np.linspace(math.log(start), math.log(end), n_grid)
    best_y = np.full(n_grid, np.inf)
    rows: list[dict | None] = [None] * n_grid
    for rid, g in pts.groupby("run_id"):
        g = g.sort_values("C")
        gc = np.log(g["C"].to_numpy())
        inside = (grid >= gc.min()) & (grid <= gc.max())
        if not inside.any():
            continue
        yi = np.interp(grid[inside], gc, g[y].to_numpy())
        di = np.exp(np.interp(grid[inside], gc, np.log(g["D"].to_numpy())))
        n, model = g["N"].iloc[0], g["model"].iloc[0]
        for j, yv, dv in zip(np.flatnonzero(inside), yi, di):
            if yv < best_y[j]:
                best_y[j] = yv
                rows[j] = {"C": math.exp(grid[j]), y: yv, "N": n, "D": dv, "run_id": rid, "model": model}
    return pd.DataFrame([r for r in rows if r is not None])


class AllocationExponents:
    """`a` and `b` of N_opt ~ C^a and D_opt ~ C^b from fitted `n_opt` / `d_opt` pure laws (NaN if absent)."""

    n_opt: PowerLawFit | None
    d_opt: PowerLawFit | None
    status: Status

    @property
    def a(self) -> float:
        return -self.n_opt.params["alpha"] if self.n_opt else math.nan

    @property
    def b(self) -> float:
        return -self.d_opt.params["alpha"] if self.d_opt else math.nan

    def exponents_dict(self) -> dict[str, float | None]:
        """{"a", "b"} for results.json: None unless the approach's `status` is ok, as the report
        withholds them (its reasons give the estimate and why it is not an answer); None where there is
        no law (NaN)."""
        ok = self.status.ok
        return {k: v if ok and math.isfinite(v) else None for k, v in (("a", self.a), ("b", self.b))}


@dataclass
class FrontierFit(AllocationExponents):
    """Approach 1: the frontier and power laws fitted to it: y(C), N_opt(C), D_opt(C).

    The bootstrap resamples whole runs, chooses the lr again (`LrRedraw`) and recomputes the frontier
    each time. When one model holds the whole frontier there is no N_opt(C) law (None) and `status`
    says so.
    """

    frontier: pd.DataFrame
    y_law: PowerLawFit | None
    n_opt: PowerLawFit | None
    d_opt: PowerLawFit | None
    pure: PowerLawFit | None = None  # y = A C^-alpha, the saturating law's E = 0 case, for comparison
    status: Status = field(default_factory=Status)

    def to_dict(self) -> dict:
        return {
            **self.status.to_dict(),
            "n_frontier_points": len(self.frontier),
            "frontier_models": sorted(map(str, self.frontier["model"].unique())),
            "law": self.y_law.to_dict() if self.y_law else None,
            "N_opt": self.n_opt.to_dict() if self.n_opt else None,
            "D_opt": self.d_opt.to_dict() if self.d_opt else None,
            **self.exponents_dict(),
        }


def _frontier_laws(fr: pd.DataFrame, y: str, grid: bool = False) -> list[PowerLawFit | None]:
    """y(C) saturating, N_opt(C) and D_opt(C) pure laws, and y(C) pure on a frontier; None where not
    identified.

    N_opt and D_opt are None when one model holds the whole frontier (its N is then constant and its
    D is just C / (k N): no allocation law). ``grid``: the frontier's rows were interpolated onto a grid
    of budgets (`on_grid`), so the pure laws get no t-interval (its n - 2 degrees of freedom would
    count the grid's rows as measurements; the bootstrap over runs gives their intervals)."""
    laws: list[PowerLawFit | None] = [None, None, None, None]
    one_model = fr["N"].nunique() < 2  # also for an empty frontier
    which = ((y, True, y), ("N", False, "N_opt"), ("D", False, "D_opt"), (y, False, y))
    for i, (col, sat, name) in enumerate(which):
        if col == y or not one_model:
            try:
                laws[i] = fit_power_law(fr["C"], fr[col], saturating=sat, x_name="C", y_name=name)
            except ValueError as e:
                log.info("frontier %s(C) not fitted: %s", name, e)
            if grid and laws[i] is not None:
                laws[i].t_interval = None
    return laws


def fit_frontier(
    points: pd.DataFrame,
    y: str = "loss",
    *,
    n_bootstrap: int = 0,
    seed: int = 0,
    n_grid: int = 40,
    level: float = 0.95,
    units: str = "parameters",
    redraw=None,
) -> FrontierFit:
    """Frontier of y against C, a saturating law y(C) on it, N_opt(C), D_opt(C) and y(C) pure power laws
    (`FrontierFit`); a law that cannot be fitted (too few frontier points, one model everywhere) is None.

    redraw: rng -> (len(points),) values of y for each bootstrap resample (`analysis.runs.LrRedraw`: the
    best lr chosen again), so a resample's frontier may hold another cell. The laws take no weights
    for the seeds behind a point (docs/analysis.md, "Bootstrap"): a frontier point is a minimum over
    cells, not a measurement with a variance."""
    pts = points.dropna(subset=[y])
    fr = compute_frontier(pts, y, n_grid)
    laws = _frontier_laws(fr, y, grid=on_grid(pts))
    st = Status()
    if len(fr) and fr["N"].nunique() < 2:
        n_hold = float(fr["N"].iloc[0])
        sizes = np.sort(pts["N"].unique())
        if len(fr) == 1 and len(sizes) > 1:  # nothing beat the first budget's best: no model "wins"
            where = f"the best at the lowest budget, with a {y} that no run at more compute improves on"
            fix = f"check that the {y} falls with compute (runs that diverged or stalled)"
        elif len(sizes) < 2:  # both the smallest and the largest: nothing on either side brackets it
            where = "the only model size trained" if y == "loss" else f"the only model size with a {y}"
            where += " (no smaller or larger one to bracket it)"
            fix = "add smaller and larger models (spanning at least 10x in N)"
            if y != "loss":
                fix = f"score the other models' {y}, or {fix}"
        elif n_hold <= sizes[0]:
            where, fix = "the smallest model trained", "add smaller models"
        elif n_hold >= sizes[-1]:
            where, fix = "the largest model trained", "add larger models"
        else:
            where, fix = "a model in the middle of the grid", "add budgets at lower and higher compute"
        st.add(
            NOT_IDENTIFIED,
            f"one model ({fr['model'].iloc[0]}, N = {n_hold:.4g} {units}), {where}, holds the whole "
            f"{y} frontier: no N_opt(C) or D_opt(C) law from approach 1; {fix}",
        )
    fit = FrontierFit(fr, *laws, status=st)
    if n_bootstrap > 0 and len(fr):
        _bootstrap_frontier(fit, points, y, n_bootstrap, seed, n_grid, redraw)
        if fit.n_opt is not None:
            had = "an N_opt(C) law (a frontier of at least 3 points and 2 model sizes)"
            what, fix = f"the frontier's N_opt exponent a = {fit.a:.3g}", "add budgets or model sizes"
            flag_bootstrapped_exponent(
                st, what, fit.n_opt.bootstrap, "alpha", negate=True, approach=1, had=had, fix=fix, level=level
            )
    return fit


def _bootstrap_frontier(
    fit: FrontierFit, points: pd.DataFrame, y: str, n_bootstrap: int, seed: int, n_grid: int, redraw=None
):
    """Resample runs with replacement (`draw_resamples`, as `bootstrap_points` does, the runs numbered
    in their order in ``points``), recompute the frontier, refit its laws (the pure one too); attach to
    each law (a resample that gives no such law is one of its failures). redraw: as in `fit_frontier`."""
    run_ids = points.dropna(subset=[y])["run_id"]
    picks = draw_resamples(len(run_ids), n_bootstrap, seed, pd.factorize(run_ids)[0], redraw)

    def refit(item) -> list[dict | None]:  # the (y, N_opt, D_opt) laws' parameters
        idx, values = item if redraw is not None else (item, None)
        pts = (points if values is None else points.assign(**{y: values})).dropna(subset=[y])
        fr = compute_frontier(pts[pts["run_id"].isin(run_ids.iloc[idx])], y, n_grid)
        if not len(fr):
            return [None] * 4
        return [None if law is None else law.params for law in _frontier_laws(fr, y)]

    draws = parallel_map(refit, picks, desc=f"bootstrap {y} frontier")
    for j, law in enumerate((fit.y_law, fit.n_opt, fit.d_opt, fit.pure)):
        if law is not None:
            ok = [d[j] for d in draws if d[j] is not None]
            samples = {k: np.array([r[k] for r in ok], float) for k in law.params}
            law.bootstrap = BootstrapResult(samples, n_bootstrap, unit="runs", n_failed=n_bootstrap - len(ok))
