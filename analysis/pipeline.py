"""The whole analysis over a tidy points frame: point selection, axes, outliers, the three
approaches, FID, diagnostics, prediction with a status, holdout."""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis.bootstrap import percentile_interval
from analysis.config import AnalysisConfig
from analysis.fidloss import fit_fid_vs_loss
from analysis.isoflop import IsoFlopFit, censored_bound, fit_isoflop, iter_slices
from analysis.laws import FrontierFit, PowerLawFit, cluster_budgets, fit_frontier, power_law
from analysis.parametric import (
    ParametricConfig,
    ParametricFit,
    fit_parametric,
    optimal_allocation,
    single_threaded_blas,
)
from analysis.runs import (
    LrRedraw,
    average_seeds,
    best_lr,
    cell_key,
    count_runs,
    diverged_runs,
    effective_data,
    lr_groups,
    one_fid_protocol,
    select_points,
    select_seeds,
    set_axes,
    split_seeds,
    tidy,
    validate_points,
)
from analysis.shapes import Shape, family_shapes, nearest_shape, shapes_from_points
from analysis.status import CENSORED, EXTRAPOLATING, NOT_IDENTIFIED, Status

if TYPE_CHECKING:  # influence.py imports this module
    from analysis.influence import Influence

log = logging.getLogger(__name__)

COMPUTE_UNITS = "FLOPs (true FLOPs = 2 x multiply-adds)"
LOSS_UNITS = "val loss (per-element MSE)"
REMOVED_COLUMNS = ["run_id", "model", "N", "D", "C", "loss", "reason"]


def units_of(cfg: AnalysisConfig, r_star: float | None = None) -> dict[str, str]:
    """The unit of each quantity, as printed beside every number."""
    n = "parameters" if cfg.params == "total" else "non-embedding parameters"
    d = cfg.data_units or cfg.data_axis
    if cfg.effective_data:
        d = f"effective {d} (Muennighoff D', R* = {r_star:.3g})" if r_star else f"effective {d}"
    return {"N": n, "D": d, "C": COMPUTE_UNITS, "loss": LOSS_UNITS}


@dataclass
class Analysis:
    """All fits of one data set. Any fit that the data cannot support is None (see `messages`)."""

    points: pd.DataFrame
    removed: pd.DataFrame
    config: AnalysisConfig
    flops_per_param_datum: float  # median C / (N D): 6 for LMs; for DiT ~ 4 x tokens per image
    parametric: ParametricFit | None
    frontier: FrontierFit
    isoflop: IsoFlopFit
    loss_vs_compute_pure: PowerLawFit | None
    fid_frontier: FrontierFit | None
    fid_vs_loss: PowerLawFit | None
    fid_vs_compute_pure: PowerLawFit | None = None
    messages: list[str] = field(default_factory=list)
    selection_notes: list[str] = field(default_factory=list)
    units: dict[str, str] = field(default_factory=dict)
    r_star: float | None = None
    r_star_fitted: bool = False
    residuals: pd.DataFrame | None = None
    ranking: list[dict] = field(default_factory=list)
    influence: Influence | None = None  # set by fit_scaling.py --influence
    checks: Status = field(default_factory=Status)  # what the analysis could not check or fit itself

    @property
    def fid_protocol(self) -> str | None:
        """How the FIDs in the fits were scored (`analysis.runs.fid_protocol`; one protocol, see
        `prepare`), or None when unknown (CSV input) or no FID was logged."""
        p = self.points.loc[self.points["fid"].notna(), "fid_protocol"].dropna().unique()
        return str(p[0]) if len(p) == 1 else None

    @property
    def status(self) -> Status:
        """What the data identify, before any prediction: the fits' statuses (approach 2: censoring), and
        what the analysis could not check (`checks`: no bootstrap, a parametric law not fitted)."""
        st = Status().merge(self.checks)
        st.merge(self.parametric.status if self.parametric else None, "approach 3: ")
        return st.merge(self.isoflop.status, "approach 2: ").merge(self.frontier.status, "approach 1: ")

    def to_dict(self) -> dict:
        """JSON-ready results; the parametric law's E, A, B, alpha, beta are at the top level."""
        st, cfg = self.status, self.config
        out: dict = {"status": st.status, "reasons": list(st.reasons)}
        if self.parametric is not None:
            out.update({k: v for k, v in self.parametric.to_dict().items() if k not in ("status", "reasons")})
            out["approach3_parametric"] = self.parametric.status.to_dict()
        out["units"] = dict(self.units)
        out["axes"] = {"data": cfg.data_axis, "params": cfg.params}
        out["effective_data"] = {
            "on": cfg.effective_data,
            "R_star": self.r_star,
            "fitted": self.r_star_fitted,
        }
        out["n_points"], out["n_runs"] = len(self.points), count_runs(self.points["run_id"])
        out["removed_points"] = self.removed.to_dict(orient="records")
        notes = list(self.selection_notes)
        out["point_selection"] = {"min_steps": cfg.min_steps, "all_points": cfg.all_points, "notes": notes}
        out["flops_per_param_datum"] = self.flops_per_param_datum
        out["approach1_frontier"] = self.frontier.to_dict()
        out["approach2_isoflop"] = self.isoflop.to_dict()
        for key in ("loss_vs_compute_pure", "fid_frontier", "fid_vs_compute_pure", "fid_vs_loss"):
            fit = getattr(self, key)
            out[key] = fit.to_dict() if fit else None
        out["fid_protocol"] = self.fid_protocol
        out["token_space"] = token_space(self.points)
        out["diagnostics"] = {"ranking": self.ranking, "residuals": residual_summary(self.residuals)}
        out["diagnostics"]["influence"] = self.influence.to_dict() if self.influence else None
        out["config"] = asdict(cfg)
        out["messages"] = self.messages
        return out


#: results.json's ``token_space`` keys -> the points' columns: what a token is (`sweeps.design` checks
#: a prior against it)
TOKEN_SPACE = {"data": "data_name", "input_size": "input_size", "in_channels": "in_channels"}
TOKEN_SPACE |= {"patch_size": "patch_size"}


def token_space(points: pd.DataFrame) -> dict[str, list]:
    """The data and token space the fit's points come from: per `TOKEN_SPACE` key, the sorted distinct
    values (empty where none was recorded, e.g. a CSV without the column)."""
    out = {}
    for key, col in TOKEN_SPACE.items():
        v = points[col].dropna().unique() if col in points.columns else []
        out[key] = sorted(str(x) for x in v) if key == "data" else sorted(float(x) for x in v)
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
        dev = np.abs(r - np.median(r))
        bad = dev > sigma * (1.4826 * np.median(dev))
        removed.append(pts[bad].assign(reason=f"log residual > {sigma:g} robust sigma"))
        pts = pts[~bad]
    rem = pd.concat(removed)[REMOVED_COLUMNS] if removed else pd.DataFrame(columns=REMOVED_COLUMNS)
    return pts, rem.reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# preparing the points


@dataclass
class Prepared:
    """Points after schedule-based selection, axes and effective data; what was dropped and why."""

    points: pd.DataFrame
    dropped: pd.DataFrame
    notes: list[str]
    raw: pd.DataFrame  # the selected points before seeds are averaged and the best lr kept (`tidy`'s columns)
    diverged: pd.DataFrame | None = None  # seeds left out as diverged (`analysis.runs.diverged_runs`)
    r_star: float | None = None
    r_star_fitted: bool = False


def fit_r_star(points: pd.DataFrame, cfg: AnalysisConfig) -> float:
    """R* of D' minimising the parametric objective (a profile over a log grid of R*)."""
    best = (math.inf, math.nan)
    # cheaper fits along the profile (fewer starts, no polish); the final fit at R* is the full one
    quick = ParametricConfig(
        delta=cfg.delta, n_starts=4, n_varpro_starts=2, polish_ftol=None, polish_gtol=None
    )
    for r in np.logspace(-0.5, 2.5, 13):
        d = effective_data(points["D"], points["unique"], float(r))
        try:
            f = fit_parametric(points["N"], d, points["loss"], quick).objective
        except (ValueError, RuntimeError):
            continue
        best = min(best, (f, float(r)))
    if not math.isfinite(best[0]):
        raise ValueError("no R* on the grid gave a parametric fit; pass --r-star")
    return best[1]


def prepare(points: pd.DataFrame, cfg: AnalysisConfig) -> Prepared:
    """Select valid points (schedule, --min-steps), set N and D axes, optionally D -> D'."""
    load_notes = list(points.attrs.get("notes", []))  # e.g. `load_runs`: runs not finished, left out
    points, seeds_note = select_seeds(points, cfg.train_seeds)
    load_notes += [seeds_note] if seeds_note else []
    if cfg.average_seeds and (split := split_seeds(points.attrs.get("settings", []), cfg.train_seeds)):
        load_notes.append(split)  # seeds of one cell that its other settings keep apart
    diverged = diverged_runs(points)
    points = tidy(validate_points(points))
    pts, dropped, notes = select_points(points, cfg.min_steps, cfg.all_points)
    if len(pts) == 0:  # the steps below leave every cell a point
        raise ValueError(
            f"no points left after dropping runs below --min-steps {cfg.min_steps}; lower --min-steps "
            "or train longer cells"
        )
    notes = load_notes + notes
    raw = pts
    if cfg.average_seeds:
        pts, note = average_seeds(pts)
        notes.append(note)
    if cfg.best_lr:
        pts, lost, note = best_lr(pts, diverged)
        dropped = pd.concat([dropped, lost]) if len(lost) else dropped
        notes.append(note)
    pts, _, note = one_fid_protocol(pts)
    notes = [n for n in [*notes, note] if n]  # None: nothing to say
    pts = set_axes(pts, cfg.data_axis, cfg.params)
    r_star, fitted = None, False
    if cfg.effective_data:
        u = pts["unique"].to_numpy(float)
        if np.isnan(u).all():
            raise ValueError(
                "--effective-data needs the unique training images of the runs (metric data/unique_images, "
                "or data/epochs; CSV column unique); none were logged"
            )
        pts["D_raw"] = pts["D"]
        reps = pts["D_raw"] / np.where(np.isfinite(u) & (u > 0), u, np.inf)
        if not (reps > 1).any():  # D' = D for every R*: nothing to fit
            notes.append(
                "effective data: no run saw an image twice (an unbounded stream, or under one epoch), so "
                "D' = D and R* is not fitted"
            )
            return Prepared(pts, dropped, notes, raw, diverged)
        r_star = cfg.r_star if cfg.r_star is not None else fit_r_star(pts, cfg)
        fitted = cfg.r_star is None
        pts["D"] = effective_data(pts["D"], pts["unique"], r_star)
        notes.append(
            f"effective data D' (Muennighoff et al. 2023) with R* = {r_star:.3g} "
            f"({'fitted' if fitted else 'given'}); "
            f"at most {float(np.nanmax(reps)):.3g} epochs over the unique data"
        )
    return Prepared(pts, dropped, notes, raw, diverged, r_star, fitted)


# ----------------------------------------------------------------------------------------------
# analysis


def analyze(points: pd.DataFrame, config: AnalysisConfig | None = None) -> Analysis:
    """Run every fit the data supports. The parametric law needs > 5 points and spread in N and D."""
    cfg = config or AnalysisConfig()
    return analyze_prepared(prepare(points, cfg), cfg)


@single_threaded_blas
def analyze_prepared(prep: Prepared, cfg: AnalysisConfig) -> Analysis:
    """The fits on already prepared points (see `prepare`)."""
    units = units_of(cfg, prep.r_star)
    pts, removed = remove_outliers(prep.points, cfg.drop_highest_loss, cfg.outlier_sigma, cfg.delta)
    if len(prep.dropped):
        parts = [prep.dropped, removed] if len(removed) else [prep.dropped]
        removed = pd.concat([p[REMOVED_COLUMNS] for p in parts], ignore_index=True)
    if len(pts) <= 5:
        n_out = len(prep.points) - len(pts)  # removed by --drop-highest-loss / --outlier-sigma
        flags = f"; --drop-highest-loss / --outlier-sigma removed {n_out} of {len(prep.points)}"
        raise ValueError(
            f"{len(pts)} points after point selection; the parametric law needs more than 5: "
            "add runs (more sizes or budgets), or keep more points (--all-points, a lower --min-steps"
            f"{flags if n_out else ''})"
        )
    msgs: list[str] = []
    per_nd = pts["C"] / (pts["N"] * pts.get("D_raw", pts["D"]))  # C / (N D), D before --effective-data
    k = float(np.median(per_nd))
    # the input's own N and D (`set_axes`)
    k_raw = float(np.median(pts["C"] / (pts["N_total"] * pts["images"])))
    if k_raw < 1.0:  # a forward pass alone costs 2 FLOPs per parameter per token
        raise ValueError(
            f"C / (N D) is {k_raw:.3g} (the median over the points), below 1, though training costs at "
            "least 2 FLOPs per parameter per token (6 with the backward pass): C is not in true FLOPs "
            "(in PF-days? 1 PF-day = 8.64e19 FLOPs), or N or D is not in parameters and images or tokens; "
            "give C in FLOPs, or leave the C column out (C = k N D, --flops-per-param-datum)"
        )
    spread = np.ptp(np.log(per_nd))
    if spread > math.log(2):
        msgs.append(
            f"C/(N D) varies by {math.exp(spread):.3g}x across points (patch sizes differ? try --data-axis "
            f"tokens); the compute-optimal allocation uses its median {k:.4g} FLOPs per {units['N'][:-1]} "
            f"per {units['D'].rstrip('s')}"
        )
    several = pts.groupby("run_id").size().max() > 1
    groups = pts["run_id"].to_numpy() if (cfg.bootstrap_by_run and several) else None
    B, seed, lvl = cfg.n_bootstrap, cfg.seed, cfg.level
    parametric, checks = None, Status()
    boot = {"n_bootstrap": B, "seed": seed}
    # the best lr redrawn in each resample, for all three approaches alike; the seeds' weights for two
    redraw = lr_redraw(prep, pts, cfg)
    weighted = {**boot, "weights": seed_weights(pts), "redraw": redraw}
    if B and cfg.best_lr and not cfg.average_seeds and several_lrs(prep.raw):
        msgs.append(
            "--per-seed: the bootstrap keeps the lr chosen on the full data in each cell trained at several "
            "lrs (the points are that lr's seeds; a resample choosing another lr would fit another set of "
            "points), so the intervals leave out the noise of the choice; without --per-seed each resample "
            "chooses the lr again"
        )
    try:
        pcfg = ParametricConfig(delta=cfg.delta)
        parametric = fit_parametric(
            pts["N"], pts["D"], pts["loss"], pcfg, groups=groups, level=lvl, **weighted
        )
    except (ValueError, RuntimeError) as e:  # ConvergenceError is a RuntimeError
        checks.add(
            NOT_IDENTIFIED,
            f"approach 3: parametric law not fitted ({type(e).__name__}: {e}); the recommendation comes "
            "from the other approaches",
        )
    if B == 0:
        checks.add(
            NOT_IDENTIFIED,
            "no bootstrap (--bootstrap 0): whether the data identify the exponents was not checked (the "
            "point estimates are shown without intervals); rerun with --bootstrap 200",
        )
    frontier = fit_frontier(pts, "loss", level=lvl, units=units["N"], redraw=redraw, **boot)
    iso = fit_isoflop(pts, gap_dex=cfg.isoflop_gap_dex, units=units["N"], data_units=units["D"], **weighted)
    msgs.extend(iso.messages)
    fid_front = None
    if pts["fid"].notna().sum() > 3:
        fid_front = fit_frontier(pts, "fid", level=lvl, units=units["N"], **boot)
    try:
        fvl = fit_fid_vs_loss(pts, groups=groups, **boot)  # a run's points together, as the laws above
    except ValueError as e:
        fvl = None
        msgs.append(f"FID(loss) not fitted: {e}")
    an = Analysis(
        points=pts,
        removed=removed,
        config=cfg,
        flops_per_param_datum=k,
        parametric=parametric,
        frontier=frontier,
        isoflop=iso,
        loss_vs_compute_pure=frontier.pure,
        fid_frontier=fid_front,
        fid_vs_loss=fvl,
        fid_vs_compute_pure=fid_front.pure if fid_front is not None else None,
        messages=msgs,
        selection_notes=list(prep.notes),
        units=units,
        r_star=prep.r_star,
        r_star_fitted=prep.r_star_fitted,
        checks=checks,
    )
    if parametric is not None:
        an.residuals = residuals(an)
        an.ranking = ranking_check(an)
        for r in an.ranking:
            if not r["agrees"]:
                msgs.append(
                    f"ranking: at {r['C']:.3g} FLOPs the fitted law orders the models {r['predicted']}, "
                    f"the data {r['observed']}"
                )
    return an


def seed_weights(pts: pd.DataFrame) -> np.ndarray | None:
    """(n,) weight of each point in the parametric fit and the IsoFLOP parabolas: the number of seeds its
    cell averages (a mean of k seeds has variance sigma^2 / k), None when the seeds were not averaged
    (`--per-seed`). The frontier takes none (a minimum over cells; docs/analysis.md)."""
    return pts["n_seeds"].fillna(1).to_numpy(float) if "n_seeds" in pts.columns else None


def several_lrs(raw: pd.DataFrame) -> bool:
    """Whether a cell (`analysis.runs.lr_groups`) of the selected points was trained at several lrs."""
    return bool(raw.groupby(lr_groups(raw))["lr"].nunique().max() > 1)


def lr_redraw(prep: Prepared, pts: pd.DataFrame, cfg: AnalysisConfig) -> LrRedraw | None:
    """The best-lr choice redone in each bootstrap resample (`analysis.runs.LrRedraw`), where cells were
    trained at several lrs and their seeds averaged; else None (the resamples fit the points as they are)."""
    redraw = LrRedraw(prep.raw, pts, prep.diverged) if cfg.best_lr and cfg.average_seeds else None
    return redraw or None  # one without a cell at several lrs is falsy


# ----------------------------------------------------------------------------------------------
# diagnostics


def budget_labels(points: pd.DataFrame) -> pd.Series:
    """A budget per point: the `budget` column, else its cluster of C (`cluster_budgets`) rounded to
    2 significant digits."""
    if points["budget"].notna().all():
        return points["budget"]
    return cluster_budgets(points["C"]).map(lambda c: float(f"{c:.2g}"))


def residuals(an: Analysis) -> pd.DataFrame:
    """Log residuals ln(L_obs / L_pred) of the parametric law, with run, model and budget per point."""
    pts = an.points
    resid = np.log(pts["loss"].to_numpy(float) / an.parametric.predict(pts["N"], pts["D"]))
    return pts[["run_id", "model", "N", "C"]].assign(budget=budget_labels(pts), resid=resid)


def residual_summary(res: pd.DataFrame | None) -> dict | None:
    """Mean and largest absolute log residual per budget and per model."""
    if res is None or len(res) == 0:
        return None

    def agg(col):
        g = res.groupby(col)["resid"]
        return [
            {col: k, "mean": float(m), "max_abs": float(a), "n": int(n)}
            for (k, m), a, n in zip(g.mean().items(), g.apply(lambda r: r.abs().max()), g.size())
        ]

    return {
        "by_budget": agg("budget"),
        "by_model": agg("model"),
        "rmse": float(np.sqrt(np.mean(res["resid"] ** 2))),
    }


def ranking_check(an: Analysis) -> list[dict]:
    """Per IsoFLOP slice: does the fitted law order the models' final losses as observed (sizes whose
    losses tie, e.g. rounded, in either order)?"""
    out = []
    for c, patch, g in iter_slices(an.points, an.config.isoflop_gap_dex):
        best = g.sort_values("loss").drop_duplicates("model")
        if len(best) < 2:
            continue
        pred = an.parametric.predict(best["N"], best["D"])
        order = np.argsort(pred, kind="stable")
        out.append(
            {
                "C": c,
                "patch": None if math.isnan(patch) else patch,
                "observed": list(best["model"].astype(str)),
                "predicted": list(best["model"].astype(str).to_numpy()[order]),
                # tied losses (rounded) agree in either order: the observed losses rise in the law's order
                "agrees": bool(np.all(np.diff(best["loss"].to_numpy(float)[order]) >= 0)),
            }
        )
    return out


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
        if math.isnan(self.lo) or math.isnan(self.hi):
            return f"{self.value:.4g} (no bootstrap interval)"
        return f"{self.value:.4g} [{self.lo:.4g}, {self.hi:.4g}]"


@dataclass
class Prediction:
    """Recommended N, D and expected loss / FID at one compute budget (true FLOPs), with a status.

    n_opt, d_opt, loss and fid are None when withheld (status not_identified or censored); then
    `n_opt_bound` ({"side": "below" | "above", "N": x, "measured_up_to_C": c}) says what is known when the
    result is censored: N_opt is below (above) x at every budget measured, up to c FLOPs, not beyond.
    """

    compute: float
    n_opt: Estimate | None
    d_opt: Estimate | None
    loss: Estimate | None
    fid: Estimate | None
    nearest_run_shape: Shape | None
    nearest_dit_shape: Shape | None
    source: str
    level: float = 0.95
    alternatives: dict[str, float] = field(default_factory=dict)
    status: Status = field(default_factory=Status)
    n_opt_bound: dict | None = None
    units: dict[str, str] = field(default_factory=dict)
    holdout: dict | None = None
    extrapolation: float = 1.0  # compute / the largest compute measured
    extrapolating: bool = False  # extrapolation > AnalysisConfig.extrapolation_factor

    def to_dict(self) -> dict:
        out = {"compute": self.compute, "source": self.source, "level": self.level}
        out["extrapolation"] = self.extrapolation
        out.update(self.status.to_dict())
        for k in ("n_opt", "d_opt", "loss", "fid", "n_opt_bound", "nearest_run_shape", "nearest_dit_shape"):
            v = getattr(self, k)
            out[k] = asdict(v) if is_dataclass(v) else v  # None where withheld
        out["alternatives"] = self.alternatives
        out["n_opt_spread"] = self.n_opt_spread()
        out["units"] = dict(self.units)
        out["holdout"] = self.holdout
        return out

    def text(self) -> str:
        pct = f"{100 * self.level:g}%"
        u = {"N": "parameters", "D": "images", "loss": LOSS_UNITS, **self.units}
        lines = [
            f"Compute budget: {self.compute:.3g} {COMPUTE_UNITS}; from {self.source}",
            f"  {self.status.text()}",
        ]
        if self.n_opt is None:
            bound = self.n_opt_bound
            known = "not identified"
            if bound:
                known = f"N_opt {bound['side']} {bound['N']:.3g} {u['N']} at every budget measured"
                if "measured_up_to_C" in bound:
                    known += f", up to {bound['measured_up_to_C']:.3g} FLOPs"
            lines += [f"  model size N_opt : withheld ({known})", "  data D_opt       : withheld"]
        else:
            interval = "" if math.isnan(self.n_opt.lo) else f" ({pct} interval)"
            lines.append(f"  model size N_opt : {self.n_opt} {u['N']}{interval}")
            for shape, what, whose, px in (
                (self.nearest_run_shape, "run", "run's", ""),
                (self.nearest_dit_shape, "DiT", "paper", ", 256 px latents"),
            ):
                if shape:
                    ratio = shape.n_params / self.n_opt.value
                    far = "" if 1 / 3 <= ratio <= 3 else f"; {ratio:.3g}x N_opt, no {whose} shape is near it"
                    lines.append(
                        f"  nearest {what} shape: {shape.name} ({shape.n_params:.4g} {u['N']}{px}{far})"
                    )
            lines.append(f"  data D_opt       : {self.d_opt} {u['D']}")
        lines.append(f"  expected loss    : {self.loss if self.loss else 'withheld'} ({u['loss']})")
        lines.append(f"  expected FID     : {self.fid if self.fid else 'n/a'}")
        for k, v in self.alternatives.items():
            unit = u["N"] if "N_opt" in k else (u["loss"] if "loss law" in k else "")
            lines.append(f"  ({k}: {v:.4g} {unit}".rstrip() + ")")
        if self.holdout:
            h = self.holdout
            lines.append(
                f"  holdout (largest budget left out): loss error mean {100 * h['mape_loss']:.2f}%, "
                f"max {100 * h['max_ape_loss']:.2f}%, "
                f"best loss at its compute {100 * h['frontier_error']:+.2f}%"
            )
        return "\n".join(lines)

    def n_opt_spread(self) -> float:
        """max / min of N_opt over the approaches that gave one (1.0 if only one did)."""
        ns = [v for k, v in self.alternatives.items() if k.startswith("N_opt") and math.isfinite(v) and v > 0]
        return max(ns) / min(ns) if ns else 1.0


def _disagreement(estimates: list[Estimate], factor: float) -> float:
    """The largest ratio of two approaches' N_opt that are more than `factor` apart and whose intervals
    (an approach without one: its point) do not overlap; 1.0 when no pair disagrees so."""
    ests = sorted((e for e in estimates if 0 < e.value < math.inf), key=lambda e: e.value)
    top = [e.hi if math.isfinite(e.hi) else e.value for e in ests]
    bottom = [e.lo if math.isfinite(e.lo) else e.value for e in ests]
    apart = [
        ests[j].value / ests[i].value
        for i, j in itertools.combinations(range(len(ests)), 2)
        if ests[j].value > factor * ests[i].value and top[i] < bottom[j]
    ]
    return max(apart, default=1.0)


def _at(law: PowerLawFit, compute: float, level: float) -> Estimate:
    """A law's value at ``compute`` with its bootstrap band."""
    return Estimate(float(law.predict(compute)), *law.predict_interval(compute, level))


def allocation_draws(pf, compute: float, k: float) -> np.ndarray | None:
    """(n_ok, 3) compute-optimal N, D and loss at ``compute`` from each bootstrap fit of the
    parametric law ``pf``; None without a bootstrap."""
    if pf.bootstrap is None or pf.bootstrap.n_ok <= 1:
        return None
    return np.array([optimal_allocation(p, compute, k) for p in pf.bootstrap.draws()], dtype=float)


def _parametric_estimates(
    pf, compute: float, k: float, level: float
) -> tuple[list[Estimate], np.ndarray | None]:
    """Compute-optimal [N, D, loss] at ``compute`` from the parametric law ``pf`` with their bootstrap
    intervals (`allocation_draws`), and the loss of each bootstrap fit (None without a bootstrap)."""
    point = [float(v) for v in optimal_allocation(pf.params, compute, k)]
    draws = allocation_draws(pf, compute, k)
    if draws is None:
        return [Estimate(v) for v in point], None
    return [Estimate(v, *percentile_interval(draws[:, j], level)) for j, v in enumerate(point)], draws[:, 2]


#: The frontier's N_opt(C) when its exponent is not resolved: printed beside the others, not counted
#: in the approaches' disagreement (an unresolved law's value is not evidence either way).
UNRESOLVED_APPROACH1 = "approach 1's N_opt, its exponent not resolved"


def predict(analysis: Analysis, compute: float) -> Prediction:
    """Compute-optimal N, D, loss and FID at `compute` FLOPs, with bootstrap intervals and a status.

    Uses the parametric law (approach 3) when fitted, else the IsoFLOP laws, else the frontier. The
    status folds in what the fits could not identify, IsoFLOP censoring, approaches that disagree by
    more than `disagreement_factor` with intervals apart (`_disagreement`), and extrapolation beyond
    `extrapolation_factor` x the largest compute measured. N_opt, D_opt and the loss are withheld
    unless the status is ok or extrapolating (an E at its floor alone withholds nothing: the
    allocation does not depend on E).
    FID comes from FID(loss) applied to the predicted loss (bootstrap pairs resampled together).
    """
    if not (compute > 0):
        raise ValueError(f"compute must be > 0 FLOPs, got {compute}")
    cfg, k, lvl = analysis.config, analysis.flops_per_param_datum, analysis.config.level
    pf, iso, fr = analysis.parametric, analysis.isoflop, analysis.frontier
    alt, st = {}, Status()
    voting: list[Estimate] = []  # the N_opt of each approach that identifies one, with its interval
    n_e = d_e = loss_e = loss_samples = None
    withhold = False
    if pf is not None:
        st.merge(pf.status, "approach 3: ")
        source = "parametric law L(N, D) (approach 3)"
        withhold = not pf.allocation_identified
        (n_e, d_e, loss_e), loss_samples = _parametric_estimates(pf, compute, k, lvl)
        if not withhold:
            alt["N_opt from parametric law (approach 3)"] = n_e.value
            voting.append(n_e)
    elif iso.n_opt is not None:
        n_e, d_e = _at(iso.n_opt, compute, lvl), _at(iso.d_opt, compute, lvl)
        loss_e = _at(fr.y_law, compute, lvl) if fr.y_law else None
        source = "IsoFLOP laws (approach 2)"
        withhold = not iso.status.ok  # its exponent unresolved (or censored): no answer from it
    else:
        source = "compute-efficient frontier (approach 1)"
        laws = {"N_opt(C)": fr.n_opt, "D_opt(C)": fr.d_opt, "loss L(C)": fr.y_law}
        if missing := [name for name, law in laws.items() if law is None]:
            st.add(
                NOT_IDENTIFIED,
                "no approach gives an answer: neither the parametric law (approach 3) nor the IsoFLOP laws "
                f"(approach 2) were fitted, and the frontier (approach 1) has no {' or '.join(missing)} law",
            )
            withhold = True
        else:
            n_e, d_e, loss_e = (_at(law, compute, lvl) for law in (fr.n_opt, fr.d_opt, fr.y_law))
            withhold = not fr.status.ok
    # the other approaches' N_opt, where they identify one (their statuses are folded in below)
    if iso.n_opt is not None and iso.status.ok:
        voting.append(_at(iso.n_opt, compute, lvl))  # the joint fit gives a point (no band at a budget)
        alt["N_opt from IsoFLOP (approach 2)"] = voting[-1].value
    if fr.n_opt is not None:  # an unresolved one is shown for comparison; not in the disagreement check
        e = _at(fr.n_opt, compute, lvl)
        alt["N_opt from frontier (approach 1)" if fr.status.ok else UNRESOLVED_APPROACH1] = e.value
        voting += [e] if fr.status.ok else []
    if fr.y_law is not None:
        alt["frontier loss law L(C)"] = float(fr.y_law.predict(compute))
    st.merge(iso.status, "approach 2: ")
    st.merge(fr.status, "approach 1: ")
    bound, c_max = None, float(analysis.points["C"].max())
    if iso.status.status == CENSORED:  # a bound at the budgets measured: the optimum may cross it beyond
        withhold, bound = True, censored_bound(iso.slices)
        if bound is not None:
            bound["measured_up_to_C"] = c_max
    for col, what in (("N", "model size"), ("D", "amount of data")):
        if analysis.points[col].nunique() < 2:  # every approach would read the design as a law
            withhold = True
            st.add(
                NOT_IDENTIFIED,
                f"every point has one {what} ({col} = {float(analysis.points[col].iloc[0]):.4g}): how the "
                f"loss depends on {col} was not measured, so N_opt is not identified; train other "
                f"{'model sizes' if col == 'N' else 'budgets for each model'} (spanning at least 10x)",
            )
    if (spread := _disagreement(voting, cfg.disagreement_factor)) > 1.0:
        withhold = True
        st.add(
            NOT_IDENTIFIED,
            f"the approaches disagree on N_opt by {spread:.3g}x (more than {cfg.disagreement_factor:g}x, and "
            f"their {100 * lvl:g}% intervals do not overlap): the grid probably does not bracket the "
            "optimum; add smaller or larger models, or more budgets",
        )
    extrapolating = compute > cfg.extrapolation_factor * c_max
    if extrapolating:
        st.add(
            EXTRAPOLATING,
            f"{compute:.3g} FLOPs is {compute / c_max:.3g}x the largest compute measured "
            f"({c_max:.3g} FLOPs), more than {cfg.extrapolation_factor:g}x: trust it as far as the "
            "holdout error (--holdout largest)",
        )
    c_min = float(analysis.points["C"].min())
    if compute * cfg.extrapolation_factor < c_min:  # below the data: no holdout measures that side
        st.add(
            EXTRAPOLATING,
            f"{compute:.3g} FLOPs is {c_min / compute:.3g}x below the smallest compute measured "
            f"({c_min:.3g} FLOPs), more than {cfg.extrapolation_factor:g}x: the laws were not measured "
            "there; train runs near that budget before trusting it",
        )
    fid_e = None
    fvl = analysis.fid_vs_loss
    if fvl is not None and loss_e is not None:
        fid_e = Estimate(float(fvl.predict(loss_e.value)))
        if fvl.bootstrap is not None and loss_samples is not None:
            s = fvl.bootstrap.samples
            m = min(len(loss_samples), fvl.bootstrap.n_ok)
            f = power_law({k: v[:m] for k, v in s.items()}, loss_samples[:m])
            fid_e.lo, fid_e.hi = percentile_interval(f, lvl)
    if analysis.fid_frontier is not None and analysis.fid_frontier.y_law is not None:
        alt["FID frontier law FID(C)"] = float(analysis.fid_frontier.y_law.predict(compute))
    if withhold:
        n_e = d_e = loss_e = fid_e = None
    run_shapes = shapes_from_points(analysis.points)
    return Prediction(
        compute=float(compute),
        n_opt=n_e,
        d_opt=d_e,
        loss=loss_e,
        fid=fid_e,
        nearest_run_shape=nearest_shape(n_e.value, run_shapes) if (run_shapes and n_e) else None,
        nearest_dit_shape=nearest_shape(n_e.value, family_shapes(cfg.params)) if n_e else None,
        source=source,
        level=lvl,
        alternatives=alt,
        status=st,
        n_opt_bound=bound,
        units=dict(analysis.units),
        extrapolation=compute / c_max,
        extrapolating=extrapolating,
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
    best_loss_pred: float  # the predicted best loss at the held-out max C ...
    best_loss_obs: float  # ... and the observed one
    mape_fid: float = math.nan
    best_model_pred: str | None = None  # the held-out model with the lowest predicted loss (parametric law)
    best_model_obs: str | None = None  # ... with the lowest observed loss (mean over its runs, e.g. seeds)
    best_model_gap: float = math.nan  # the predicted one's observed loss / the best's - 1 (0: same)
    pure_law_error: float = math.nan  # frontier_error of the frontier's pure power law L = A C^-alpha
    best_loss_interval: tuple[float, float] = (math.nan, math.nan)  # the prediction's bootstrap interval

    @property
    def frontier_error(self) -> float:
        """(predicted best loss - observed best loss) / observed, at the held-out max C."""
        return (self.best_loss_pred - self.best_loss_obs) / self.best_loss_obs

    def to_dict(self) -> dict:
        return {
            "n_held_out": len(self.held_out),
            "held_out_runs": sorted(map(str, self.held_out["run_id"].unique())),
            "held_out_min_C": float(self.held_out["C"].min()),
            **{k: getattr(self, k) for k in HOLDOUT_KEYS},
            "best_loss_interval": list(self.best_loss_interval),
            "best_loss_inside": self.inside,
            "status_without_them": self.analysis.status.status,
        }

    @property
    def inside(self) -> bool | None:
        """Whether the observed best loss lies in the prediction's interval (None without one)."""
        lo, hi = self.best_loss_interval
        return bool(lo <= self.best_loss_obs <= hi) if np.isfinite([lo, hi]).all() else None

    def text(self) -> str:
        h, (lo, hi), pct = self.held_out, self.best_loss_interval, 100 * self.analysis.config.level
        lines = [
            f"Holdout (largest compute): {len(h)} points from {count_runs(h['run_id'])} run(s), "
            f"C >= {h['C'].min():.3g} FLOPs",
            f"  loss: mean abs error {100 * self.mape_loss:.2f}%, max {100 * self.max_ape_loss:.2f}%; "
            f"best-loss-at-C error {100 * self.frontier_error:+.2f}%",
        ]
        if np.isfinite(self.pure_law_error):
            lines[-1] += f" (the frontier's pure power law: {100 * self.pure_law_error:+.2f}%)"
        if self.inside is not None:
            lines.append(
                f"  best loss there: predicted {self.best_loss_pred:.4g}, {pct:g}% [{lo:.4g}, {hi:.4g}] "
                f"(bootstrap); observed {self.best_loss_obs:.4g}, {'inside' if self.inside else 'outside'} "
                "the interval"
            )
        if np.isfinite(self.mape_fid):
            lines.append(f"  FID: mean abs error {100 * self.mape_fid:.1f}%")
        if self.best_model_pred:
            lines.append(
                f"  best model there: predicted {self.best_model_pred}, observed {self.best_model_obs}"
            )
            if self.best_model_gap > 0:  # a near tie reads differently from a wrong ranking
                lines[-1] += (
                    f" ({self.best_model_pred}'s observed loss {100 * self.best_model_gap:.2f}% above)"
                )
        return "\n".join(lines)


#: the numbers of `HoldoutResult.to_dict`, in its order
HOLDOUT_KEYS = ("mape_loss", "max_ape_loss", "frontier_error", "mape_fid", "best_model_pred")
HOLDOUT_KEYS += ("best_model_obs", "best_model_gap", "pure_law_error", "best_loss_pred", "best_loss_obs")


def largest_compute_runs(points: pd.DataFrame, frac: float = 0.1) -> np.ndarray:
    """Run ids of the largest budget: the `budget` column, else the top cluster of final C
    (`cluster_budgets`; cells of one budget end a few steps apart) when it holds >= 2 runs and
    not all of them, else the top `frac` of runs by final C."""
    final = points.groupby("run_id").agg(C=("C", "max"), budget=("budget", "first"))
    if final["budget"].notna().all() and final["budget"].nunique() > 1:
        return final.index[final["budget"] == final["budget"].max()].to_numpy()
    cluster = cluster_budgets(final["C"])
    top = final.index[cluster == cluster.max()]
    if 2 <= len(top) < len(final):
        return top.to_numpy()
    k = max(1, int(round(frac * len(final))))
    return final["C"].nlargest(k).index.to_numpy()


def holdout_largest(points: pd.DataFrame, config: AnalysisConfig | None = None) -> HoldoutResult:
    """Fit on all runs but the largest-compute ones and measure the error on those."""
    cfg = config or AnalysisConfig()
    return holdout_prepared(prepare(points, cfg), cfg)


def holdout_prepared(prep: Prepared, cfg: AnalysisConfig) -> HoldoutResult:
    """`holdout_largest` on already prepared points (see `prepare`)."""
    pts = prep.points
    ids = largest_compute_runs(pts)
    test = pts[pts["run_id"].isin(ids)].copy()
    train = pts[~pts["run_id"].isin(ids)]
    if len(train) <= 5:
        raise ValueError(
            f"holdout: without the {len(ids)} run(s) of the largest budget, {len(train)} point(s) are left "
            "to fit and the parametric law needs more than 5; add runs at the smaller budgets, or fit "
            "without --holdout"
        )
    an = analyze_prepared(replace(prep, points=train), cfg)
    c_max = float(test["C"].max())
    interval = (math.nan, math.nan)
    if an.parametric is not None:
        test["pred_loss"] = an.parametric.predict(test["N"], test["D"])
        opt = _parametric_estimates(an.parametric, c_max, an.flops_per_param_datum, cfg.level)[0][2]
        best_pred, interval = opt.value, (opt.lo, opt.hi)
    elif an.frontier.y_law is not None:
        test["pred_loss"] = an.frontier.y_law.predict(test["C"])
        best_pred = float(an.frontier.y_law.predict(c_max))
    else:
        raise ValueError("holdout: no law could be fitted on the remaining runs")
    ape = np.abs(test["pred_loss"] - test["loss"]) / test["loss"]
    # the best cell's loss, its seeds averaged as the fitted points are by default (with --per-seed too:
    # the lowest single seed is the luckiest run, below what the cell trains to)
    cell = cell_key(test)  # with --per-seed on a CSV of seeds too: its seed column marks the cells
    # a run's point at a step; without a step, a run's only point, or else each row its own point
    alone = test.groupby("run_id")["loss"].transform("size") == 1
    own = pd.Series(-2.0 - np.arange(len(test)), test.index).where(~alone, -1.0)
    cells = test.groupby([cell, test["step"].where(test["step"].notna(), own)])[["C", "loss"]].mean()
    best_true = float(cells.loc[cells["C"] >= c_max / 1.5, "loss"].min())
    mape_fid = math.nan
    if an.fid_vs_loss is not None and test["fid"].notna().any():
        test["pred_fid"] = an.fid_vs_loss.predict(test["pred_loss"])
        f = test.dropna(subset=["fid"])
        mape_fid = float(np.mean(np.abs(f["pred_fid"] - f["fid"]) / f["fid"]))
    best, gap = (None, None), math.nan
    if an.parametric is not None and test["model"].notna().all():  # a C-only law cannot rank models
        by_model = test.groupby("model")[["pred_loss", "loss"]].mean()
        pred_best, obs_best = by_model["pred_loss"].idxmin(), by_model["loss"].idxmin()
        best = (str(pred_best), str(obs_best))
        gap = float(by_model.at[pred_best, "loss"] / by_model.at[obs_best, "loss"] - 1)
    pure = an.loss_vs_compute_pure
    pure_error = (float(pure.predict(c_max)) - best_true) / best_true if pure is not None else math.nan
    return HoldoutResult(
        test, an, float(ape.mean()), float(ape.max()), best_pred, best_true, mape_fid, *best, gap,
        pure_law_error=pure_error, best_loss_interval=interval,
    )  # fmt: skip
