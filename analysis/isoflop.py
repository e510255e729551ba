"""IsoFLOP profiles (Chinchilla approach 2): loss = parabola in log N per slice (budget, patch size)
-> N_opt(C), D_opt(C); `censored` when the smallest (or largest) model trained wins at every budget.
How slices are formed and the laws fitted: docs/analysis.md ("Methods", approach 2).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.bootstrap import BootstrapResult, bootstrap_points, min_resamples
from analysis.joint_isoflop import WEIGHT, JointIsoFlop, d_at, fit_joint_isoflop
from analysis.laws import AllocationExponents, PowerLawFit, cluster_budgets, fit_power_law
from analysis.parametric import point_weights
from analysis.status import (
    CENSORED,
    NOT_APPLICABLE,
    NOT_IDENTIFIED,
    Status,
    flag_bootstrapped_exponent,
    flag_unresolved_exponent,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IsoFlopProfile:
    """One slice (budget, patch size): loss ~ c2 (ln N)^2 + c1 ln N + c0 and its minimum."""

    compute: float  # budget (FLOPs): the median C of its points (true FLOPs)
    coef: tuple[float, float, float]  # (c2, c1, c0)
    n_opt: float
    d_opt: float
    loss_opt: float
    n_points: int
    n_range: tuple[float, float]
    patch: float = math.nan  # patch size of the slice (NaN when unknown)

    def predict(self, n) -> np.ndarray:
        return np.polyval(self.coef, np.log(np.asarray(n, float)))


@dataclass(frozen=True)
class IsoFlopSlice:
    """Where the best observed model of one slice sits among the sizes trained there."""

    compute: float
    patch: float
    sizes: tuple[float, ...]  # distinct N trained (sorted)
    best_n: float  # N of the lowest observed loss
    side: str  # "below" (smallest wins alone), "above" (largest alone), "interior" (or a tie), "single"


def assign_budgets(points: pd.DataFrame, gap_dex: float = 0.1) -> pd.Series:
    """A budget label (FLOPs) per row: the `budget` column of final points, or clusters of log10 C."""
    if "budget" in points.columns and points["budget"].notna().all() and "final" in points.columns:
        return points["budget"].where(points["final"].astype(bool))
    return cluster_budgets(points["C"], gap_dex)


def _patch_of(points: pd.DataFrame) -> pd.Series:
    patch = points.get("patch_size", pd.Series(np.nan, index=points.index))
    return pd.to_numeric(patch, errors="coerce").fillna(-1.0)


def iter_slices(points: pd.DataFrame, gap_dex: float = 0.1):
    """Yield (compute, patch, group) per IsoFLOP slice; a group spanning > 2 gap_dex in log10 C is
    not a slice (continuous compute, e.g. the Chinchilla Figure 4 points) and is left out."""
    lab = assign_budgets(points, gap_dex)
    pts = points.assign(_b=lab, _p=_patch_of(points)).dropna(subset=["_b"])
    for (_, patch), g in pts.groupby(["_b", "_p"]):
        if np.ptp(np.log10(g["C"].to_numpy(float))) > 2 * gap_dex:
            continue
        yield float(g["C"].median()), (math.nan if patch < 0 else float(patch)), g


def patch_text(patch: float) -> str:
    return "" if math.isnan(patch) else f", patch {patch:g}"


def _profile(
    g: pd.DataFrame, c: float, patch: float, skipped: list[str] | None = None, units: str = "parameters"
) -> IsoFlopProfile | None:
    skipped = [] if skipped is None else skipped
    where = f"IsoFLOP budget {c:.3g} FLOPs{patch_text(patch)}"
    ln = np.log(g["N"].to_numpy(float))
    if len(np.unique(ln)) < 3:
        skipped.append(
            f"{where}: {len(np.unique(ln))} model size(s); a parabola of its own needs 3 (the joint fit uses "
            "2) - add model sizes at this budget"
        )
        return None
    w = np.sqrt(g[WEIGHT].to_numpy(float)) if WEIGHT in g.columns else None  # polyfit's w: 1 / sd
    coef = np.polyfit(ln, g["loss"].to_numpy(float), 2, w=w)
    if coef[0] <= 0:
        skipped.append(f"{where}: the parabola opens downward (no minimum); skipped")
        return None
    x_opt = -coef[1] / (2 * coef[0])
    if not ln.min() <= x_opt <= ln.max():
        side = "smaller" if x_opt < ln.min() else "larger"
        skipped.append(
            f"{where}: the parabola's minimum (N={math.exp(x_opt):.3g} {units}) lies outside the models "
            f"trained there (N {math.exp(ln.min()):.3g}..{math.exp(ln.max()):.3g} {units}); budget skipped - "
            f"add {side} models at this budget"
        )
        return None
    return IsoFlopProfile(
        compute=float(c),
        coef=tuple(float(v) for v in coef),
        n_opt=math.exp(x_opt),
        d_opt=d_at(g, x_opt),
        loss_opt=float(np.polyval(coef, x_opt)),
        n_points=len(g),
        n_range=(float(np.exp(ln.min())), float(np.exp(ln.max()))),
        patch=patch,
    )


def isoflop_profiles(
    points: pd.DataFrame, gap_dex: float = 0.1, skipped: list[str] | None = None, units: str = "parameters"
) -> list[IsoFlopProfile]:
    """A parabola per slice (budget, patch) with >= 3 distinct N and its minimum inside them;
    `skipped` collects why the other slices were left out."""
    out = [
        p
        for c, patch, g in iter_slices(points, gap_dex)
        if (p := _profile(g, c, patch, skipped, units)) is not None
    ]
    return sorted(out, key=lambda p: (p.patch if not math.isnan(p.patch) else -1, p.compute))


def slice_sides(points: pd.DataFrame, gap_dex: float = 0.1) -> list[IsoFlopSlice]:
    """Per slice, whether its best observed model is the smallest, the largest or an interior size."""
    out = []
    for c, patch, g in iter_slices(points, gap_dex):
        best = g.groupby("N")["loss"].min()
        sizes = tuple(float(n) for n in best.index)
        n_best = float(best.idxmin())
        side = "single" if len(sizes) < 2 else {sizes[0]: "below", sizes[-1]: "above"}.get(n_best, "interior")
        if side in ("below", "above") and (best == best.min()).sum() > 1:  # an edge tied with another size
            side = "interior"  # the optimum may lie between them: no evidence that it is outside the grid
        out.append(IsoFlopSlice(c, patch, sizes, n_best, side))
    return sorted(out, key=lambda s: s.compute)


def censored_bound(slices: list[IsoFlopSlice]) -> dict | None:
    """{"side": "below" | "above", "N": x} when the smallest (largest) model trained wins at every budget:
    with one minimum in N, each budget's optimum then lies below its second-smallest size (above its
    second-largest; not below the smallest itself: it may lie between the two), so x is the largest
    (smallest) of those over the budgets."""
    usable = [s for s in slices if s.side != "single"]
    if not usable or (len(usable) < 2 and len(usable[0].sizes) < 3):
        return None  # one slice of two sizes is too little to call (and may be an accidental cluster)
    if (side := usable[0].side) == "interior" or any(s.side != side for s in usable):
        return None
    bounds = [s.sizes[1 if side == "below" else -2] for s in usable]
    return {"side": side, "N": max(bounds) if side == "below" else min(bounds)}


def censoring(slices: list[IsoFlopSlice], units: str = "parameters") -> Status:
    """`censored` when the best model is the smallest (or the largest) trained at every budget."""
    if (bound := censored_bound(slices)) is None:
        return Status()
    usable = [s for s in slices if s.side != "single"]
    side, below = bound["side"], bound["side"] == "below"
    sign, second, edge = ("<", 1, 0) if below else (">", -2, -1)
    per = "; ".join(
        f"{s.compute:.3g} FLOPs{patch_text(s.patch)}: {sign} {s.sizes[second]:.3g}" for s in usable
    )
    ends = sorted({s.sizes[edge] for s in usable})
    which = "smallest" if below else "largest"
    # each budget's own end: one threshold (the largest smallest size) brackets nothing at the others
    end = (
        f"{ends[0]:.3g}"
        if len(ends) == 1
        else f"each budget's {which} size ({', '.join(f'{e:.3g}' for e in ends)})"
    )
    return Status().add(
        CENSORED,
        f"N_opt {side} {bound['N']:.3g} {units} at every budget: the {which} model trained wins at each of "
        f"the {len(usable)} budget(s) ({per}: with one minimum in N, {side} the second-{which} size), so no "
        f"model on the optimum's other side was trained and the grid does not bracket it - add models "
        f"{'smaller' if below else 'larger'} than {end} (at least two sizes {side} it) at every budget",
    )


@dataclass
class IsoFlopFit(AllocationExponents):
    """Approach 2: the per-slice profiles and the N_opt(C), D_opt(C) power laws, from the joint fit
    (`joint`) or through the per-slice minima; `by_patch`: each patch size's laws, `n_opt` / `d_opt`:
    those of `patch`, the one with the most usable budgets. `minima_a`: the exponent through the minima."""

    profiles: list[IsoFlopProfile]
    n_opt: PowerLawFit | None
    d_opt: PowerLawFit | None
    bootstrap: BootstrapResult | None = None
    messages: list[str] = field(default_factory=list)
    slices: list[IsoFlopSlice] = field(default_factory=list)
    status: Status = field(default_factory=Status)
    patch: float = math.nan  # the patch size of n_opt / d_opt
    by_patch: dict[float, tuple[PowerLawFit, PowerLawFit]] = field(default_factory=dict)
    units: tuple[str, str] = ("parameters", "images")  # of N and D
    joint: JointIsoFlop | None = None
    minima_a: float = math.nan

    def summary(self) -> str:
        lines = [f"IsoFLOP profiles: {len(self.profiles)} usable slice(s) (budget x patch size)"]
        for p in self.profiles:
            lines.append(
                f"  C={p.compute:.3g} FLOPs{patch_text(p.patch)}: N_opt={p.n_opt:.3g} {self.units[0]}, "
                f"D_opt={p.d_opt:.3g} {self.units[1]}, L_opt={p.loss_opt:.4g} ({p.n_points} points)"
            )
        se = self.bootstrap.se() if self.bootstrap else {}
        j = self.joint
        if j is not None:
            lo, hi = j.a_interval
            ci = f"[{lo:.3g}, {hi:.3g}]" if math.isfinite(lo) and math.isfinite(hi) else "none finite"
            minima = (
                f"a = {self.minima_a:.4f}" if math.isfinite(self.minima_a) else "none (< 3 usable budgets)"
            )
            lines.append(
                f"  joint fit of {len(j.budgets)} budgets ({j.n_points} points, one curvature in log loss "
                f"{j.curvature:.4g}, rmse of ln L {j.rmse_log:.3g}): a = {j.a:.4f}, 95% {ci} "
                f"(t, {j.dof} dof); through the per-budget minima above: {minima}"
            )
        for name, law in (("N_opt", self.n_opt), ("D_opt", self.d_opt)):
            if law:
                e = -law.params["alpha"]
                err = "" if j is not None else f" (se {se.get(name + '_exp', math.nan):.3g})"
                lines.append(f"  {name} = {law.params['A']:.4g} C^{e:.4f}{err}{patch_text(self.patch)}")
        bs = self.bootstrap
        if bs is not None and bs.n_ok == 0:
            lines.append(
                f"  bootstrap: {bs.n_requested} resamples of runs, no refit succeeded (each had fewer than "
                "3 usable budgets): no interval"
            )
        elif bs is not None:
            lines.append(
                f"  bootstrap: {bs.n_requested} resamples of runs, {bs.n_failed} "
                f"failed ({100 * bs.share_failed:.0f}%: fewer than 3 usable budgets)"
                + ("; too few left for an interval" if bs.n_ok < 2 else "")
                + (
                    f"; {bs.n_ok} refits, too few for a 95% interval (needs {min_resamples()})"
                    if bs.too_few()
                    else ""
                )
            )
        return "\n".join(lines + self.messages + [self.status.text()])

    def to_dict(self) -> dict:
        """JSON-ready. Where `status` is not ok the exponents are withheld, as the report withholds them:
        ``a``, ``b``, ``minima_a``, the joint fit's ``a`` and ``a_ci95``, and the exponents' ``se`` and
        ``ci95`` are null, with the status and its reasons beside them."""
        ok = self.status.ok
        exps = ("N_opt_exp", "D_opt_exp")  # the bootstrap's exponents (its other keys are coefficients)
        out: dict = {
            **self.status.to_dict(),
            "profiles": [
                {
                    "C": p.compute,
                    "patch": None if math.isnan(p.patch) else p.patch,
                    "N_opt": p.n_opt,
                    "D_opt": p.d_opt,
                    "loss_opt": p.loss_opt,
                    "n_points": p.n_points,
                }
                for p in self.profiles
            ],
            "slices": [
                {
                    "C": s.compute,
                    "patch": None if math.isnan(s.patch) else s.patch,
                    "sizes": list(s.sizes),
                    "best_N": s.best_n,
                    "side": s.side,
                }
                for s in self.slices
            ],
            "patch": None if math.isnan(self.patch) else self.patch,
            **self.exponents_dict(),
            "N_opt": self.n_opt.to_dict() if self.n_opt else None,
            "D_opt": self.d_opt.to_dict() if self.d_opt else None,
            "method": "joint" if self.joint is not None else "per-budget minima",
            "joint": self.joint.to_dict() if self.joint is not None else None,
            "minima_a": self.minima_a if ok else None,
            "by_patch": {  # the main patch size's withheld with its status
                str(k): self.exponents_dict()
                if k == self.patch
                else {"a": -n.params["alpha"], "b": -d.params["alpha"]}
                for k, (n, d) in self.by_patch.items()
            },
        }
        if self.joint is not None and not ok:
            out["joint"].update(a=None, a_ci95=None)
        if self.bootstrap is not None:
            out["se"] = {k: v if ok or k not in exps else None for k, v in self.bootstrap.se().items()}
            ci = self.bootstrap.conf_int().items()
            out["ci95"] = {k: list(v) if ok or k not in exps else None for k, v in ci}
            out["bootstrap"] = self.bootstrap.to_dict()
        return out


def _laws(profiles: list[IsoFlopProfile]) -> tuple[PowerLawFit, PowerLawFit]:
    c = [p.compute for p in profiles]
    n = fit_power_law(c, [p.n_opt for p in profiles], saturating=False, x_name="C", y_name="N_opt")
    d = fit_power_law(c, [p.d_opt for p in profiles], saturating=False, x_name="C", y_name="D_opt")
    return n, d


def _by_patch(pairs) -> dict[float, list]:
    """{patch size (-1.0 when unknown): [items]} from (patch, item) pairs."""
    out: dict[float, list] = {}
    for patch, item in pairs:
        out.setdefault(-1.0 if math.isnan(patch) else patch, []).append(item)
    return out


def _flag_no_law(fit: IsoFlopFit, by_slice: dict[float, list], joint: bool) -> None:
    """`not_identified` when approach 2 had the budgets for an N_opt(C) law but gives no finite
    exponent: 3 slices of one patch size with >= 2 sizes (the joint fit) or, with ``joint=False``,
    >= 3 sizes (parabolas), whose fits were all lost (noisy parabolas that open downward or put their
    minimum outside the sizes; too few points for the joint fit), or a law with a NaN exponent. So
    ``ok`` never stands beside a NaN ``a`` where the design could give one. With fewer such slices
    approach 2 does not apply: status `not_applicable` with the reason (``a`` NaN, null in
    results.json; the whole analysis's status ignores it); a censored fit keeps its status."""
    if fit.status.status == CENSORED or (math.isfinite(fit.a) and math.isfinite(fit.b)):
        return
    least = 2 if joint else 3
    tried = {k: sum(g["N"].nunique() >= least for _, g in v) for k, v in by_slice.items()}
    if fit.n_opt is None and max(tried.values(), default=0) < 3:  # the design has too few budgets
        fit.status.status = (
            NOT_APPLICABLE  # not `ok` beside a null `a`, and no exit 3 where approach 3 answers
        )
        fit.status.reasons.append(
            f"approach 2 does not apply: it needs 3 budgets of one patch size with >= {least} model sizes "
            f"each, the design has {max(tried.values(), default=0)}, so it gives no N_opt(C) law (a, b "
            "null); the other approaches answer; add budgets for approach 2"
        )
        return
    if fit.n_opt is not None:
        why = f"the IsoFLOP N_opt exponent is not a finite number (a = {fit.a}, b = {fit.b})"
    else:
        k = max(tried, key=tried.get)
        why = (
            f"no IsoFLOP N_opt(C) law: {tried[k]} budget(s){patch_text(math.nan if k < 0 else k)} with >= "
            f"{least} model sizes, but {len(fit.profiles)} with a parabola whose minimum lies inside its "
            "sizes"
            + ("" if not joint else " and no joint fit (it needs >= 2 degrees of freedom: more sizes)")
        )
    fit.status.add(
        NOT_IDENTIFIED,
        f"{why}: approach 2 withholds its N_opt exponent (the skipped budgets say why); add model sizes "
        "around each budget's best, seeds per cell, or budgets",
    )


def fit_isoflop(
    points: pd.DataFrame,
    *,
    n_bootstrap: int = 0,
    seed: int = 0,
    gap_dex: float = 0.1,
    units: str = "parameters",
    data_units: str = "images",
    joint: bool = True,
    weights=None,
    redraw=None,
) -> IsoFlopFit:
    """Approach 2 (`IsoFlopFit`; docs/analysis.md). `joint=False`: laws through the per-slice minima
    only; those get a bootstrap over runs (`n_bootstrap`), the joint fit's exponent a t-interval.

    weights: (n,) of the points, e.g. a cell mean's number of seeds (`pipeline.seed_weights`; scaled
    by `point_weights`, equal ones are none): each slice's parabola and the joint fit are weighted
    least squares (the laws through the minima are not: a vertex is no mean of seeds). redraw: rng ->
    (n,) losses for each resample of the bootstrap over runs (`analysis.runs.LrRedraw`)."""
    w = point_weights(weights, len(points))
    if w is not None:
        points = points.assign(**{WEIGHT: w})
    skipped: list[str] = []
    profiles = isoflop_profiles(points, gap_dex, skipped, units)
    slices = slice_sides(points, gap_dex)
    status = censoring(slices, units)
    by_slice = _by_patch((patch, (c, g)) for c, patch, g in iter_slices(points, gap_dex))
    joints = {
        k: jf
        for k, v in by_slice.items()
        if joint and (jf := fit_joint_isoflop(sorted(v, key=lambda t: t[0])))
    }
    groups = {k: v for k, v in _by_patch((p.patch, p) for p in profiles).items() if len(v) >= 3}
    if not groups and not joints:
        need = (
            "each with >= 2 model sizes"
            if joint
            else "each with a parabola whose minimum lies inside its sizes"
        )
        msg = f"IsoFLOP: {len(slices)} slice(s) (need 3 budgets of one patch size, {need}); no N_opt(C) law"
        log.info(msg)
        skipped.append(msg)
    by_patch = {k: _laws(v) for k, v in groups.items()}
    minima = {k: -v[0].params["alpha"] for k, v in by_patch.items()}
    by_patch.update({k: (jf.n_opt, jf.d_opt) for k, jf in joints.items()})
    # the patch size with the most budgets in the joint fits (else in the parabolas'); of equal, the smallest
    n_budgets = {k: len(jf.budgets) for k, jf in joints.items()} or {k: len(v) for k, v in groups.items()}
    main = max(n_budgets, key=lambda k: (n_budgets[k], -k), default=-1.0)
    n_law, d_law = by_patch.get(main, (None, None))
    fit = IsoFlopFit(
        profiles,
        n_law,
        d_law,
        messages=skipped,
        slices=slices,
        status=status,
        patch=math.nan if main < 0 else main,
        by_patch={k: v for k, v in by_patch.items() if k >= 0},
        units=(units, data_units),
        joint=joints.get(main),
        minima_a=minima.get(main, math.nan),
    )
    _flag_no_law(fit, by_slice, joint)
    if (jf := fit.joint) is not None:
        what = f"the IsoFLOP N_opt exponent a = {jf.a:.3g} (joint fit of {len(jf.budgets)} budgets)"
        flag_unresolved_exponent(status, what, jf.a_interval, 2)
    elif n_bootstrap > 0 and groups:
        of_main = _patch_of(points).to_numpy() == main
        pts = points[of_main].reset_index(drop=True)

        def one(idx, losses=None):
            prof = isoflop_profiles(
                pts.iloc[idx].assign(loss=losses[idx]) if losses is not None else pts.iloc[idx], gap_dex
            )
            if len(prof) < 3:
                return None
            nl, dl = _laws(prof)
            return {
                "N_opt_exp": -nl.params["alpha"],
                "D_opt_exp": -dl.params["alpha"],
                "N_opt_A": nl.params["A"],
                "D_opt_A": dl.params["A"],
            }

        fit.bootstrap = bootstrap_points(
            one,
            len(pts),
            n_bootstrap,
            seed=seed,
            groups=pts["run_id"].to_numpy(),
            desc="bootstrap IsoFLOP",
            redraw=None if redraw is None else lambda rng: redraw(rng)[of_main],
        )
        what, fix = f"the IsoFLOP N_opt exponent a = {fit.a:.3g}", "add budgets or model sizes per budget"
        flag_bootstrapped_exponent(
            status,
            what,
            fit.bootstrap,
            "N_opt_exp",
            negate=False,
            approach=2,
            had="3 usable budgets",
            fix=fix,
        )
    return fit
