"""The whole analysis over a tidy points frame: outliers, the three approaches, FID, prediction, holdout."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from analysis.fidloss import fit_fid_vs_loss
from analysis.isoflop import IsoFlopFit, fit_isoflop
from analysis.laws import FrontierFit, PowerLawFit, fit_frontier, fit_power_law
from analysis.parametric import ParametricConfig, ParametricFit, fit_parametric, single_threaded_blas
from analysis.runs import tidy, validate_points
from analysis.shapes import Shape, family_shapes, nearest_shape, shapes_from_points

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalysisConfig:
    """Everything the analysis needs besides the points."""

    n_bootstrap: int = 200
    seed: int = 0
    drop_highest_loss: int = 0  # drop the k highest-loss points (Epoch's Chinchilla convention: 5)
    outlier_sigma: float | None = None  # drop points whose log-residual from a first fit is > s robust sigmas
    delta: float = 1e-3
    bootstrap_by_run: bool = True  # resample whole runs when there are several points per run
    isoflop_gap_dex: float = 0.1
    level: float = 0.95


@dataclass
class Analysis:
    """All fits of one data set. Any fit that the data cannot support is None (see `messages`)."""

    points: pd.DataFrame
    removed: pd.DataFrame
    config: AnalysisConfig
    flops_per_param_datum: float  # median C / (N D): 6 for LMs; for DiT ~ 6 x tokens per image
    parametric: ParametricFit | None
    frontier: FrontierFit
    isoflop: IsoFlopFit
    loss_vs_compute_pure: PowerLawFit | None
    fid_frontier: FrontierFit | None
    fid_vs_loss: PowerLawFit | None
    fid_vs_compute_pure: PowerLawFit | None = None
    messages: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready results; the parametric law's E, A, B, alpha, beta are at the top level."""
        out: dict = {}
        if self.parametric is not None:
            out.update(self.parametric.to_dict())
        out["n_points"] = len(self.points)
        out["n_runs"] = int(self.points["run_id"].nunique())
        out["removed_points"] = self.removed.to_dict(orient="records")
        out["flops_per_param_datum"] = self.flops_per_param_datum
        out["approach1_frontier"] = self.frontier.to_dict()
        out["approach2_isoflop"] = self.isoflop.to_dict()
        out["loss_vs_compute_pure"] = (
            self.loss_vs_compute_pure.to_dict() if self.loss_vs_compute_pure else None
        )
        out["fid_frontier"] = self.fid_frontier.to_dict() if self.fid_frontier else None
        out["fid_vs_compute_pure"] = self.fid_vs_compute_pure.to_dict() if self.fid_vs_compute_pure else None
        out["fid_vs_loss"] = self.fid_vs_loss.to_dict() if self.fid_vs_loss else None
        out["config"] = asdict(self.config)
        out["messages"] = self.messages
        return out


def remove_outliers(
    points: pd.DataFrame, drop_highest_loss: int = 0, sigma: float | None = None, delta: float = 1e-3
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drop the k highest-loss points and/or points far from a first parametric fit.

    Returns (kept, removed); `removed` has a `reason` column. Nothing is removed unless asked.
    """
    removed = []
    pts = points
    if drop_highest_loss > 0:
        idx = pts["loss"].nlargest(drop_highest_loss).index
        removed.append(pts.loc[idx].assign(reason=f"one of the {drop_highest_loss} highest losses"))
        pts = pts.drop(idx)
    if sigma is not None:
        fit = fit_parametric(pts["N"], pts["D"], pts["loss"], ParametricConfig(delta=delta))
        r = np.log(pts["loss"].to_numpy()) - np.log(fit.predict(pts["N"], pts["D"]))
        scale = 1.4826 * np.median(np.abs(r - np.median(r)))
        bad = np.abs(r - np.median(r)) > sigma * scale
        removed.append(pts[bad].assign(reason=f"log residual > {sigma:g} robust sigma"))
        pts = pts[~bad]
    cols = ["run_id", "model", "N", "D", "C", "loss", "reason"]
    rem = pd.concat(removed)[cols] if removed else pd.DataFrame(columns=cols)
    return pts, rem.reset_index(drop=True)


def analyze(points: pd.DataFrame, config: AnalysisConfig | None = None) -> Analysis:
    """Run every fit the data supports. The parametric law needs > 5 points and spread in N and D."""
    with single_threaded_blas():
        return _analyze(points, config)


def _analyze(points: pd.DataFrame, config: AnalysisConfig | None) -> Analysis:
    cfg = config or AnalysisConfig()
    points = tidy(validate_points(points))
    pts, removed = remove_outliers(points, cfg.drop_highest_loss, cfg.outlier_sigma, cfg.delta)
    if len(pts) <= 5:
        raise ValueError(f"{len(pts)} points after outlier removal; the parametric law needs more than 5")
    msgs: list[str] = []
    k = float(np.median(pts["C"] / (pts["N"] * pts["D"])))
    spread = np.ptp(np.log(pts["C"] / (pts["N"] * pts["D"])))
    if spread > math.log(2):
        msgs.append(
            f"C/(N D) varies by {math.exp(spread):.3g}x across points (patch sizes differ?); "
            f"the compute-optimal allocation uses its median {k:.4g}"
        )
    several = pts.groupby("run_id").size().max() > 1
    groups = pts["run_id"].to_numpy() if (cfg.bootstrap_by_run and several) else None
    B, seed = cfg.n_bootstrap, cfg.seed
    parametric = None
    try:
        parametric = fit_parametric(
            pts["N"],
            pts["D"],
            pts["loss"],
            ParametricConfig(delta=cfg.delta),
            n_bootstrap=B,
            seed=seed,
            groups=groups,
        )
    except (ValueError, RuntimeError) as e:
        msgs.append(f"parametric law not fitted: {e}")
    frontier = fit_frontier(pts, "loss", n_bootstrap=B, seed=seed)
    pure = _pure_law(frontier, "loss", B, seed)
    iso = fit_isoflop(pts, n_bootstrap=B, seed=seed, gap_dex=cfg.isoflop_gap_dex)
    msgs.extend(iso.messages)
    fid_front = fit_frontier(pts, "fid", n_bootstrap=B, seed=seed) if pts["fid"].notna().sum() > 3 else None
    try:
        fvl = fit_fid_vs_loss(pts, n_bootstrap=B, seed=seed)
    except ValueError as e:
        fvl = None
        msgs.append(f"FID(loss) not fitted: {e}")
    fid_pure = _pure_law(fid_front, "fid", B, seed) if fid_front is not None else None
    return Analysis(
        points=pts,
        removed=removed,
        config=cfg,
        flops_per_param_datum=k,
        parametric=parametric,
        frontier=frontier,
        isoflop=iso,
        loss_vs_compute_pure=pure,
        fid_frontier=fid_front,
        fid_vs_loss=fvl,
        fid_vs_compute_pure=fid_pure,
        messages=msgs,
    )


def _pure_law(frontier: FrontierFit, y: str, n_bootstrap: int, seed: int) -> PowerLawFit | None:
    """Pure power law y = A C^-alpha through the frontier (the saturating law's E = 0 special case)."""
    fr = frontier.frontier
    if len(fr) <= 2 or np.ptp(np.log(fr["C"].to_numpy(float))) == 0:
        return None
    try:
        return fit_power_law(
            fr["C"], fr[y], saturating=False, n_bootstrap=n_bootstrap, seed=seed, x_name="C", y_name=y
        )
    except ValueError as e:
        log.info("pure power law %s(C) not fitted: %s", y, e)
        return None


# ----------------------------------------------------------------------------------------------
# prediction


@dataclass
class Estimate:
    """A value with a bootstrap interval (nan bounds when there is no bootstrap)."""

    value: float
    lo: float = math.nan
    hi: float = math.nan

    def __post_init__(self) -> None:
        self.value, self.lo, self.hi = float(self.value), float(self.lo), float(self.hi)

    def __str__(self) -> str:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            return f"{self.value:.4g} (no bootstrap interval)"
        return f"{self.value:.4g} [{self.lo:.4g}, {self.hi:.4g}]"


@dataclass
class Prediction:
    """Recommended N, D and expected loss / FID at one compute budget (true FLOPs)."""

    compute: float
    n_opt: Estimate
    d_opt: Estimate
    loss: Estimate
    fid: Estimate | None
    nearest_run_shape: Shape | None
    nearest_dit_shape: Shape
    source: str
    level: float = 0.95
    alternatives: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"compute": self.compute, "source": self.source, "level": self.level}
        for k in ("n_opt", "d_opt", "loss", "fid"):
            v = getattr(self, k)
            out[k] = None if v is None else asdict(v)
        out["nearest_run_shape"] = asdict(self.nearest_run_shape) if self.nearest_run_shape else None
        out["nearest_dit_shape"] = asdict(self.nearest_dit_shape)
        out["alternatives"] = self.alternatives
        out["n_opt_spread"] = self.n_opt_spread()
        return out

    def text(self) -> str:
        pct = f"{100 * self.level:g}%"
        lines = [
            f"Compute budget: {self.compute:.3g} FLOPs (true FLOPs = 2 x multiply-adds); from {self.source}",
            f"  model size N_opt : {self.n_opt} parameters ({pct} interval)",
        ]
        if self.nearest_run_shape:
            lines.append(
                f"  nearest run shape: {self.nearest_run_shape.name} ({self.nearest_run_shape.n_params:.4g})"
            )
        lines.append(
            f"  nearest DiT shape: {self.nearest_dit_shape.name} "
            f"({self.nearest_dit_shape.n_params:.4g}, 256 px latents)"
        )
        lines.append(f"  data D_opt       : {self.d_opt} images/tokens")
        lines.append(f"  expected loss    : {self.loss}")
        lines.append(f"  expected FID     : {self.fid if self.fid else 'n/a (no FID logged)'}")
        for k, v in self.alternatives.items():
            lines.append(f"  ({k}: {v:.4g})")
        spread = self.n_opt_spread()
        if spread > 5.0:
            lines.append(
                f"  caution: the approaches disagree on N_opt by {spread:.3g}x - the grid probably does not "
                "bracket the optimum (add smaller or larger models, or more budgets); see the report"
            )
        return "\n".join(lines)

    def n_opt_spread(self) -> float:
        """max / min of N_opt over the approaches that gave one (1.0 if only one did)."""
        ns = [self.n_opt.value] + [v for k, v in self.alternatives.items() if k.startswith("N_opt")]
        ns = [v for v in ns if math.isfinite(v) and v > 0]
        return max(ns) / min(ns) if ns else 1.0


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    s = samples[np.isfinite(samples)]
    if len(s) < 2:
        return math.nan, math.nan
    q = 100 * (1 - level) / 2
    return float(np.percentile(s, q)), float(np.percentile(s, 100 - q))


def predict(analysis: Analysis, compute: float) -> Prediction:
    """Compute-optimal N, D, loss and FID at `compute` FLOPs, with bootstrap intervals.

    Uses the parametric law (approach 3) when fitted, else the IsoFLOP laws, else the frontier.
    FID comes from FID(loss) applied to the predicted loss (bootstrap pairs resampled together).
    """
    if not (compute > 0):
        raise ValueError(f"compute must be > 0 FLOPs, got {compute}")
    lvl = analysis.config.level
    k = analysis.flops_per_param_datum
    pf, alt = analysis.parametric, {}
    loss_samples = None
    if pf is not None:
        n, d, loss = (float(v) for v in pf.optimal_allocation(compute, k))
        source = "parametric law L(N, D) (approach 3)"
        if pf.bootstrap is not None and pf.bootstrap.n_ok > 1:
            s = pf.bootstrap.samples
            from analysis.parametric import optimal_allocation

            arr = np.array(
                [
                    [float(v) for v in optimal_allocation({p: s[p][i] for p in s}, compute, k)]
                    for i in range(pf.bootstrap.n_ok)
                ]
            )
            n_e, d_e = Estimate(n, *_interval(arr[:, 0], lvl)), Estimate(d, *_interval(arr[:, 1], lvl))
            loss_e, loss_samples = Estimate(loss, *_interval(arr[:, 2], lvl)), arr[:, 2]
        else:
            n_e, d_e, loss_e = Estimate(n), Estimate(d), Estimate(loss)
    elif analysis.isoflop.n_opt is not None:
        iso = analysis.isoflop
        n_e = Estimate(float(iso.n_opt.predict(compute)), *iso.n_opt.predict_interval(compute, lvl))
        d_e = Estimate(float(iso.d_opt.predict(compute)), *iso.d_opt.predict_interval(compute, lvl))
        law = analysis.frontier.y_law
        loss_e = (
            Estimate(float(law.predict(compute)), *law.predict_interval(compute, lvl))
            if law
            else Estimate(math.nan)
        )
        source = "IsoFLOP laws (approach 2)"
    else:
        fr = analysis.frontier
        if fr.n_opt is None or fr.d_opt is None or fr.y_law is None:
            raise ValueError("no law could be fitted to these points; cannot predict")
        n_e = Estimate(float(fr.n_opt.predict(compute)), *fr.n_opt.predict_interval(compute, lvl))
        d_e = Estimate(float(fr.d_opt.predict(compute)), *fr.d_opt.predict_interval(compute, lvl))
        loss_e = Estimate(float(fr.y_law.predict(compute)), *fr.y_law.predict_interval(compute, lvl))
        source = "compute-efficient frontier (approach 1)"
    if analysis.isoflop.n_opt is not None:
        alt["N_opt from IsoFLOP (approach 2)"] = float(analysis.isoflop.n_opt.predict(compute))
    if analysis.frontier.n_opt is not None:
        alt["N_opt from frontier (approach 1)"] = float(analysis.frontier.n_opt.predict(compute))
    if analysis.frontier.y_law is not None:
        alt["frontier loss law L(C)"] = float(analysis.frontier.y_law.predict(compute))
    fid_e = None
    fvl = analysis.fid_vs_loss
    if fvl is not None:
        fid_e = Estimate(float(fvl.predict(loss_e.value)))
        if fvl.bootstrap is not None and loss_samples is not None:
            s = fvl.bootstrap.samples
            m = min(len(loss_samples), fvl.bootstrap.n_ok)
            f = s["A"][:m] * loss_samples[:m] ** (-s["alpha"][:m])
            fid_e.lo, fid_e.hi = _interval(f, lvl)
    if analysis.fid_frontier is not None and analysis.fid_frontier.y_law is not None:
        alt["FID frontier law FID(C)"] = float(analysis.fid_frontier.y_law.predict(compute))
    run_shapes = shapes_from_points(analysis.points)
    return Prediction(
        compute=float(compute),
        n_opt=n_e,
        d_opt=d_e,
        loss=loss_e,
        fid=fid_e,
        nearest_run_shape=nearest_shape(n_e.value, run_shapes) if run_shapes else None,
        nearest_dit_shape=nearest_shape(n_e.value, family_shapes()),
        source=source,
        level=lvl,
        alternatives=alt,
    )


# ----------------------------------------------------------------------------------------------
# holdout


@dataclass
class HoldoutResult:
    """Fit without the largest-compute runs, then the error of its predictions on them."""

    held_out: pd.DataFrame  # the held-out points with columns pred_loss (and pred_fid)
    analysis: Analysis
    mape_loss: float  # mean |pred - true| / true over held-out points
    max_ape_loss: float
    frontier_error: float  # (predicted best loss - observed best loss) / observed, at the held-out max C
    mape_fid: float = math.nan

    def to_dict(self) -> dict:
        return {
            "n_held_out": len(self.held_out),
            "held_out_runs": sorted(map(str, self.held_out["run_id"].unique())),
            "held_out_min_C": float(self.held_out["C"].min()),
            "mape_loss": self.mape_loss,
            "max_ape_loss": self.max_ape_loss,
            "frontier_error": self.frontier_error,
            "mape_fid": self.mape_fid,
        }

    def text(self) -> str:
        return (
            f"Holdout (largest compute): {len(self.held_out)} points from "
            f"{self.held_out['run_id'].nunique()} run(s), C >= {self.held_out['C'].min():.3g} FLOPs\n"
            f"  loss: mean abs error {100 * self.mape_loss:.2f}%, max {100 * self.max_ape_loss:.2f}%; "
            f"best-loss-at-C error {100 * self.frontier_error:+.2f}%"
            + (f"\n  FID: mean abs error {100 * self.mape_fid:.1f}%" if np.isfinite(self.mape_fid) else "")
        )


def largest_compute_runs(points: pd.DataFrame, frac: float = 0.1) -> np.ndarray:
    """Run ids of the largest budget (the `budget` column), else of the top `frac` of runs by final C."""
    final = points.groupby("run_id").agg(C=("C", "max"), budget=("budget", "first"))
    if final["budget"].notna().all() and final["budget"].nunique() > 1:
        return final.index[final["budget"] == final["budget"].max()].to_numpy()
    k = max(1, int(round(frac * len(final))))
    return final["C"].nlargest(k).index.to_numpy()


def holdout_largest(points: pd.DataFrame, config: AnalysisConfig | None = None) -> HoldoutResult:
    """Fit on all runs but the largest-compute ones and measure the error on those."""
    cfg = config or AnalysisConfig()
    points = tidy(validate_points(points))
    ids = largest_compute_runs(points)
    test = points[points["run_id"].isin(ids)].copy()
    train = points[~points["run_id"].isin(ids)]
    if len(train) <= 5:
        raise ValueError(f"holdout leaves {len(train)} training points; need more than 5")
    an = analyze(train, cfg)
    if an.parametric is not None:
        test["pred_loss"] = an.parametric.predict(test["N"], test["D"])
    elif an.frontier.y_law is not None:
        test["pred_loss"] = an.frontier.y_law.predict(test["C"])
    else:
        raise ValueError("holdout: no law could be fitted on the remaining runs")
    ape = np.abs(test["pred_loss"] - test["loss"]) / test["loss"]
    c_max = float(test["C"].max())
    best_true = float(test.loc[test["C"] >= c_max / 1.5, "loss"].min())
    if an.parametric is not None:
        best_pred = float(an.parametric.optimal_allocation(c_max, an.flops_per_param_datum)[2])
    else:
        best_pred = float(an.frontier.y_law.predict(c_max))
    mape_fid = math.nan
    if an.fid_vs_loss is not None and test["fid"].notna().any():
        test["pred_fid"] = an.fid_vs_loss.predict(test["pred_loss"])
        f = test.dropna(subset=["fid"])
        mape_fid = float(np.mean(np.abs(f["pred_fid"] - f["fid"]) / f["fid"]))
    return HoldoutResult(
        test, an, float(ape.mean()), float(ape.max()), (best_pred - best_true) / best_true, mape_fid
    )
