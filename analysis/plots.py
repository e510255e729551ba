"""Matplotlib figures of an Analysis (Agg backend; every function writes one PNG and returns its path)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis.isoflop import iter_slices, patch_text  # noqa: E402
from analysis.parametric import optimal_allocation  # noqa: E402
from analysis.pipeline import Analysis  # noqa: E402
from analysis.status import NOT_APPLICABLE  # noqa: E402

COMPUTE_LABEL = "training compute C (FLOPs; true FLOPs = 2 x multiply-adds)"
GFLOPS_LABEL = "model forward Gflops (multiply-adds per image, DiT paper convention)"
LOSS_LABEL = "validation loss (per-element MSE / nats)"


def _label(an: Analysis, q: str) -> str:
    """Axis label of N or D with its unit."""
    return f"{q} ({an.units.get(q, 'parameters' if q == 'N' else 'images')})"


def _colors(values):
    v = np.log(np.asarray(values, float))
    return plt.cm.viridis((v - v.min()) / (np.ptp(v) or 1.0))


def _run_colors(pts) -> tuple:
    """(N per run, {run_id: colour by log N})."""
    ns = pts.groupby("run_id")["N"].first()
    return ns, dict(zip(ns.index, _colors(ns.to_numpy())))


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _c_range(an: Analysis, extend: float = 1.0) -> np.ndarray:
    c = an.points["C"]
    return np.logspace(np.log10(c.min()), np.log10(c.max()) + extend, 100)


def _law(ax, cc, law, fmt: str, label: str, **kw) -> None:
    """A fitted law over the compute range cc, with its bootstrap band (shaded) where it has one."""
    ax.plot(cc, law.predict(cc), fmt, label=label, **kw)
    lo, hi = law.predict_interval(cc)
    if np.isfinite(lo).all():
        ax.fill_between(cc, lo, hi, color=fmt[0], alpha=0.1)


def plot_loss_vs_compute(an: Analysis, path) -> Path:
    """Loss against compute per run (colour = model size), the frontier and the fitted laws."""
    fig, ax = plt.subplots(figsize=(7, 5))
    pts = an.points
    runs = pts.groupby("run_id")
    ns, colors = _run_colors(pts)
    several = runs.size().max() > 1
    for rid, g in runs:
        g = g.sort_values("C")
        ax.plot(g["C"], g["loss"], "-o" if several else "o", ms=3, lw=1, color=colors[rid], alpha=0.7)
    if not several and pts["model"].notna().all():  # one point per run: join each model's budgets
        for model, g in pts.groupby("model"):
            g = g.groupby("C", as_index=False)["loss"].mean().sort_values("C")  # seeds: their mean
            col = colors[pts.loc[pts["model"] == model, "run_id"].iloc[0]]
            ax.plot(g["C"], g["loss"], "-", lw=0.8, color=col, alpha=0.6)
            ax.annotate(str(model), (g["C"].iloc[-1], g["loss"].iloc[-1]), xytext=(4, 0),
                        textcoords="offset points", fontsize=7, color=col, va="center")  # fmt: skip
    fr = an.frontier.frontier
    if len(fr):
        ax.plot(fr["C"], fr["loss"], "k.", ms=5, label="frontier (min over runs)")
    cc = _c_range(an)
    if (law := an.frontier.y_law) is not None:
        _law(ax, cc, law, "k--", f"frontier law: {law.formula()}", lw=1.5)
    if an.loss_vs_compute_pure is not None:
        ax.plot(cc, an.loss_vs_compute_pure.predict(cc), ":", color="gray", label="pure power law")
    if an.parametric is not None and an.parametric.allocation_identified:
        _, _, lopt = optimal_allocation(an.parametric.params, cc, an.flops_per_param_datum)
        ax.plot(cc, lopt, "r-", lw=1, label="parametric law, compute-optimal")
    sm = plt.cm.ScalarMappable(
        cmap="viridis", norm=matplotlib.colors.LogNorm(ns.min(), max(ns.max(), ns.min() * 1.01))
    )
    fig.colorbar(sm, ax=ax, label=_label(an, "N"))
    ax.set(xscale="log", yscale="log", xlabel=COMPUTE_LABEL, ylabel=LOSS_LABEL, title="Loss vs compute")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_isoflop(an: Analysis, path) -> Path:
    """IsoFLOP profiles: loss against N per budget, the fitted parabolas in log N and their minima."""
    fig, ax = plt.subplots(figsize=(7, 5))
    slices = list(iter_slices(an.points, an.config.isoflop_gap_dex))
    cols = _colors([c for c, _, _ in slices]) if slices else []
    for (c, patch, g), col in zip(slices, cols):
        g = g.sort_values("N")
        label = f"C = {c:.2g} FLOPs{patch_text(patch)}"
        ax.plot(g["N"], g["loss"], "o:", ms=4, lw=0.8, color=col, alpha=0.7, label=label)
        for p in an.isoflop.profiles:
            if np.isclose(p.compute, c) and (np.isnan(p.patch) and np.isnan(patch) or p.patch == patch):
                nn = np.logspace(np.log10(p.n_range[0]) - 0.2, np.log10(p.n_range[1]) + 0.2, 60)
                ax.plot(nn, p.predict(nn), "-", color=col, lw=1)
                ax.plot([p.n_opt], [p.loss_opt], "k*", ms=9)
        jf = an.isoflop.joint
        if jf is not None and (np.isnan(patch) and np.isnan(an.isoflop.patch) or patch == an.isoflop.patch):
            nn = np.logspace(np.log10(g["N"].min()) - 0.2, np.log10(g["N"].max()) + 0.2, 60)
            ax.plot(nn, jf.profile(c, nn), "--", color=col, lw=1)
            ax.plot([jf.n_opt.predict(c)], [jf.profile(c, [jf.n_opt.predict(c)])[0]], "kD", ms=5)
    if slices:
        ax.legend(fontsize=7)
    else:
        ax.text(
            0.5, 0.5, "no IsoFLOP slice (points at distinct budgets)", transform=ax.transAxes, ha="center"
        )
    said = not slices and an.isoflop.status.status == NOT_APPLICABLE  # the centre text says why
    if not an.isoflop.status.ok and not said:
        msg = an.isoflop.status.reasons[0]
        ax.text(0.02, 0.02, f"{an.isoflop.status.status}: {msg[:90]}...", transform=ax.transAxes, fontsize=6)
    ax.set(
        xscale="log",
        xlabel=_label(an, "N"),
        ylabel=LOSS_LABEL,
        title="IsoFLOP slices: own parabola (-, * vertex), joint fit (--, \u25c6 vertex on the N_opt law)",
    )
    return _save(fig, path)


def plot_allocation(an: Analysis, path) -> Path:
    """N_opt(C) and D_opt(C): parametric law with bootstrap band, IsoFLOP minima and laws, frontier."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    cc = _c_range(an, extend=2.0)
    k = an.flops_per_param_datum
    pf, iso, fr = an.parametric, an.isoflop, an.frontier.frontier
    for j, (ax, q) in enumerate(zip(axes, ("N", "D"))):
        name = f"{q.lower()}_opt"  # the attribute of the profiles and the laws
        if pf is not None and pf.allocation_identified:
            opt = optimal_allocation(pf.params, cc, k)[j]
            ax.plot(cc, opt, "r-", label=f"parametric law (approach 3), C = {k:.3g} N D")
            if pf.bootstrap is not None and pf.bootstrap.n_ok > 1:
                lo, hi = pf.bootstrap.interval_of(lambda p, j=j: optimal_allocation(p, cc, k)[j])
                ax.fill_between(cc, lo, hi, color="r", alpha=0.15, label="95% bootstrap band")
        if iso.profiles:
            minima = [getattr(p, name) for p in iso.profiles]
            ax.plot([p.compute for p in iso.profiles], minima, "bs", label="IsoFLOP minima")
        if (law := getattr(iso, name)) is not None:
            how = " (joint fit)" if iso.joint is not None else ""
            _law(ax, cc, law, "b--", f"IsoFLOP law{how}, exponent {-law.params['alpha']:.3f}")
        if len(fr):
            ax.plot(fr["C"], fr[q], "k.", ms=4, label="frontier runs (approach 1)")
        if (fl := getattr(an.frontier, name)) is not None:
            ax.plot(cc, fl.predict(cc), "k:", label=f"frontier law, exponent {-fl.params['alpha']:.3f}")
        ax.set(xscale="log", yscale="log", xlabel=COMPUTE_LABEL, ylabel=_label(an, q), title=f"{q}_opt(C)")
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_fid(an: Analysis, path) -> Path | None:
    """The DiT paper's views: FID vs forward Gflops, FID vs compute with the frontier, FID vs loss."""
    pts = an.points.dropna(subset=["fid"])
    if len(pts) == 0:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    final = pts.sort_values("C").groupby("run_id").tail(1)
    colors = _run_colors(pts)[1]
    ax = axes[0]
    if final["forward_gflops"].notna().any():
        for _, r in final.iterrows():
            ax.plot(r["forward_gflops"], r["fid"], "o", color=colors[r["run_id"]])
            ax.annotate(str(r["model"]), (r["forward_gflops"], r["fid"]), fontsize=6)
    else:
        ax.text(0.5, 0.5, "no model.forward_gflops logged", transform=ax.transAxes, ha="center")
    ax.set(xscale="log", yscale="log", xlabel=GFLOPS_LABEL, ylabel="FID (final evaluation)")
    ax.set_title("FID vs Gflops")
    ax = axes[1]
    for rid, g in pts.groupby("run_id"):
        g = g.sort_values("C")
        ax.plot(g["C"], g["fid"], "-o", ms=3, lw=1, color=colors[rid], alpha=0.7)
    if an.fid_frontier is not None:
        fr = an.fid_frontier.frontier
        ax.plot(fr["C"], fr["fid"], "k.", label="frontier")
        cc = _c_range(an)
        if an.fid_frontier.y_law is not None:
            ax.plot(cc, an.fid_frontier.y_law.predict(cc), "k--", label=an.fid_frontier.y_law.formula())
        if an.fid_vs_compute_pure is not None:
            ax.plot(cc, an.fid_vs_compute_pure.predict(cc), ":", color="gray", label="pure power law")
        ax.legend(fontsize=7)
    ax.set(xscale="log", yscale="log", xlabel=COMPUTE_LABEL, ylabel="FID", title="FID vs training compute")
    ax = axes[2]
    ax.plot(pts["loss"], pts["fid"], "o", ms=3, alpha=0.6)
    if an.fid_vs_loss is not None:
        ll = np.linspace(pts["loss"].min() * 0.95, pts["loss"].max() * 1.02, 50)
        ax.plot(ll, an.fid_vs_loss.predict(ll), "r-", label=an.fid_vs_loss.formula())
        ax.legend(fontsize=7)
    ax.set(xscale="log", yscale="log", xlabel=LOSS_LABEL, ylabel="FID", title="FID vs validation loss")
    return _save(fig, path)


def plot_residuals(an: Analysis, path) -> Path | None:
    """Parametric log residuals ln(L_obs / L_fit) by budget and by model (None without a fit)."""
    res = an.residuals
    if res is None or len(res) == 0:
        return None
    fig, (by_budget, by_model) = plt.subplots(1, 2, figsize=(12, 4.5))
    models = sorted(res["model"].astype(str).unique(), key=lambda m: res.loc[res["model"] == m, "N"].iloc[0])
    colors = dict(zip(models, _colors([res.loc[res["model"] == m, "N"].iloc[0] for m in models])))
    for i, m in enumerate(models):
        g = res[res["model"].astype(str) == m]
        by_budget.plot(g["budget"], g["resid"], "o", ms=4, color=colors[m], alpha=0.8, label=m)
        x = np.full(len(g), i) + np.linspace(-0.15, 0.15, len(g))
        by_model.plot(x, g["resid"], "o", ms=4, color=colors[m])
    by_budget.axhline(0, color="k", lw=0.8)
    by_budget.set(
        xscale="log", xlabel="budget (FLOPs; true FLOPs = 2 x multiply-adds)", ylabel="ln(L_obs / L_fit)"
    )
    by_budget.set_title("Residuals of the parametric law by budget")
    if len(models) <= 12:
        by_budget.legend(fontsize=7)
    by_model.axhline(0, color="k", lw=0.8)
    by_model.set_xticks(range(len(models)), models, rotation=45, ha="right", fontsize=7)
    by_model.set(ylabel="ln(L_obs / L_fit)", title="Residuals by model (sorted by N)")
    return _save(fig, path)


def plot_influence(an: Analysis, path) -> Path | None:
    """Each run left out (`--influence`): N_opt at the budget over N_opt with every run, and the
    holdout's best-loss error, one bar per run in the table's order (None without an influence)."""
    inf = an.influence
    if inf is None or len(inf.table) == 0:
        return None
    tab = inf.table
    labels = [f"{m} @ {c:.2g}" for m, c in zip(tab["model"].astype(str), tab["budget"])]
    holdout = np.isfinite(tab["holdout"].to_numpy(float)).any()
    fig, axes = plt.subplots(1, 2 if holdout else 1, figsize=(12 if holdout else 6.5, 1.2 + 0.28 * len(tab)))
    axes = np.atleast_1d(axes)
    y = np.arange(len(tab))[::-1]
    colors = _colors(tab["budget"].to_numpy(float))
    ax = axes[0]
    ax.barh(y, inf.ratio("n_opt") - 1.0, left=1.0, color=colors)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks(y, labels, fontsize=7)
    ax.set(
        xlabel=f"N_opt at {inf.compute:.3g} FLOPs without the run / with every run",
        title=f"Leave one run out: N_opt (with every run {inf.full['n_opt']:.3g})",
    )
    if holdout:
        ax = axes[1]
        err = 100 * tab["holdout"].to_numpy(float)
        ax.barh(y, np.nan_to_num(err), color=np.where(np.isfinite(err)[:, None], colors, 0.8))
        ax.axvline(100 * inf.full["holdout"], color="r", lw=1, label="with every run")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(y, ["(held out)" if not np.isfinite(e) else "" for e in err], fontsize=7)
        ax.set(xlabel="holdout best-loss error (%)", title="... and the holdout's error")
        ax.legend(fontsize=7)
    return _save(fig, path)


#: name -> (drawing function, file in the report's folder) of every figure `plot_all` may write
FIGURES = {
    "loss_vs_compute": (plot_loss_vs_compute, "loss_vs_compute.png"),
    "isoflop": (plot_isoflop, "isoflop.png"),
    "allocation": (plot_allocation, "optimal_allocation.png"),
    "fid": (plot_fid, "fid.png"),
    "residuals": (plot_residuals, "residuals.png"),
    "influence": (plot_influence, "influence.png"),
}


def plot_all(an: Analysis, out_dir) -> dict[str, Path]:
    """Every figure of `FIGURES` into out_dir; returns name -> path (fid, residuals and influence only
    when there is something to draw)."""
    out = Path(out_dir)
    paths = {name: plot(an, out / file) for name, (plot, file) in FIGURES.items()}
    return {name: path for name, path in paths.items() if path is not None}
