"""Matplotlib figures of an Analysis (Agg backend; every function writes one PNG and returns its path)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis.parametric import optimal_allocation  # noqa: E402
from analysis.pipeline import Analysis  # noqa: E402

COMPUTE_LABEL = "training compute C (FLOPs; true FLOPs = 2 x multiply-adds)"
GFLOPS_LABEL = "model forward Gflops (multiply-adds per image, DiT paper convention)"
LOSS_LABEL = "validation loss (per-element MSE / nats)"
N_LABEL = "parameters N"
D_LABEL = "training data D (images or tokens)"


def _colors(values):
    v = np.log(np.asarray(values, float))
    span = np.ptp(v) or 1.0
    return plt.cm.viridis((v - v.min()) / span)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _c_range(an: Analysis, extend: float = 1.0) -> np.ndarray:
    c = an.points["C"]
    return np.logspace(np.log10(c.min()), np.log10(c.max()) + extend, 100)


def plot_loss_vs_compute(an: Analysis, path) -> Path:
    """Loss against compute per run (colour = model size), the frontier and the fitted laws."""
    fig, ax = plt.subplots(figsize=(7, 5))
    pts = an.points
    runs = pts.groupby("run_id")
    ns = runs["N"].first()
    colors = dict(zip(ns.index, _colors(ns.to_numpy())))
    several = runs.size().max() > 1
    for rid, g in runs:
        g = g.sort_values("C")
        ax.plot(g["C"], g["loss"], "-o" if several else "o", ms=3, lw=1, color=colors[rid], alpha=0.7)
    fr = an.frontier.frontier
    if len(fr):
        ax.plot(fr["C"], fr["loss"], "k.", ms=5, label="frontier (min over runs)")
    cc = _c_range(an)
    if an.frontier.y_law is not None:
        law = an.frontier.y_law
        ax.plot(cc, law.predict(cc), "k--", lw=1.5, label=f"frontier law: {law.formula()}")
        lo, hi = law.predict_interval(cc)
        if np.isfinite(lo).all():
            ax.fill_between(cc, lo, hi, color="k", alpha=0.1)
    if an.loss_vs_compute_pure is not None:
        ax.plot(cc, an.loss_vs_compute_pure.predict(cc), ":", color="gray", label="pure power law")
    if an.parametric is not None:
        _, _, lopt = optimal_allocation(an.parametric.params, cc, an.flops_per_param_datum)
        ax.plot(cc, lopt, "r-", lw=1, label="parametric law, compute-optimal")
    sm = plt.cm.ScalarMappable(
        cmap="viridis", norm=matplotlib.colors.LogNorm(ns.min(), max(ns.max(), ns.min() * 1.01))
    )
    fig.colorbar(sm, ax=ax, label=N_LABEL)
    ax.set(xscale="log", yscale="log", xlabel=COMPUTE_LABEL, ylabel=LOSS_LABEL, title="Loss vs compute")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_isoflop(an: Analysis, path) -> Path:
    """IsoFLOP profiles: loss against N per budget, the fitted parabolas in log N and their minima."""
    fig, ax = plt.subplots(figsize=(7, 5))
    profiles = an.isoflop.profiles
    cols = _colors([p.compute for p in profiles]) if profiles else []
    from analysis.isoflop import assign_budgets

    lab = assign_budgets(an.points, an.config.isoflop_gap_dex)
    pts = an.points.assign(_b=lab).dropna(subset=["_b"])
    for p, col in zip(profiles, cols):
        g = pts[np.isclose(pts.groupby("_b")["C"].transform("median"), p.compute)]
        ax.plot(g["N"], g["loss"], "o", ms=3, color=col, alpha=0.6)
        nn = np.logspace(np.log10(p.n_range[0]) - 0.2, np.log10(p.n_range[1]) + 0.2, 60)
        ax.plot(nn, p.predict(nn), "-", color=col, lw=1, label=f"C = {p.compute:.2g} FLOPs")
        ax.plot([p.n_opt], [p.loss_opt], "k*", ms=9)
    if profiles:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no budget with >= 3 model sizes", transform=ax.transAxes, ha="center")
    ax.set(
        xscale="log",
        xlabel=N_LABEL,
        ylabel=LOSS_LABEL,
        title="IsoFLOP profiles (parabola in log N; * = minimum)",
    )
    return _save(fig, path)


def plot_allocation(an: Analysis, path) -> Path:
    """N_opt(C) and D_opt(C): parametric law with bootstrap band, IsoFLOP minima and laws, frontier."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    cc = _c_range(an, extend=2.0)
    k = an.flops_per_param_datum
    for j, (ax, name, label) in enumerate(zip(axes, ("N_opt", "D_opt"), (N_LABEL, D_LABEL))):
        pf = an.parametric
        if pf is not None:
            ax.plot(
                cc,
                optimal_allocation(pf.params, cc, k)[j],
                "r-",
                label=f"parametric law (approach 3), C = {k:.3g} N D",
            )
            if pf.bootstrap is not None and pf.bootstrap.n_ok > 1:
                lo, hi = pf.bootstrap.interval_of(lambda p, j=j: optimal_allocation(p, cc, k)[j])
                ax.fill_between(cc, lo, hi, color="r", alpha=0.15, label="95% bootstrap band")
        iso = an.isoflop
        if iso.profiles:
            ax.plot(
                [p.compute for p in iso.profiles],
                [p.n_opt if j == 0 else p.d_opt for p in iso.profiles],
                "bs",
                label="IsoFLOP minima",
            )
        law = iso.n_opt if j == 0 else iso.d_opt
        if law is not None:
            ax.plot(cc, law.predict(cc), "b--", label=f"IsoFLOP law, exponent {-law.params['alpha']:.3f}")
            lo, hi = law.predict_interval(cc)
            if np.isfinite(lo).all():
                ax.fill_between(cc, lo, hi, color="b", alpha=0.1)
        fl = an.frontier.n_opt if j == 0 else an.frontier.d_opt
        fr = an.frontier.frontier
        if len(fr):
            ax.plot(fr["C"], fr["N" if j == 0 else "D"], "k.", ms=4, label="frontier runs (approach 1)")
        if fl is not None:
            ax.plot(cc, fl.predict(cc), "k:", label=f"frontier law, exponent {-fl.params['alpha']:.3f}")
        ax.set(xscale="log", yscale="log", xlabel=COMPUTE_LABEL, ylabel=label, title=f"{name}(C)")
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_fid(an: Analysis, path) -> Path | None:
    """The DiT paper's views: FID vs forward Gflops, FID vs compute with the frontier, FID vs loss."""
    pts = an.points.dropna(subset=["fid"])
    if len(pts) == 0:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    final = pts.sort_values("C").groupby("run_id").tail(1)
    ns = pts.groupby("run_id")["N"].first()
    colors = dict(zip(ns.index, _colors(ns.to_numpy())))
    ax = axes[0]
    if final["forward_gflops"].notna().any():
        for _, r in final.iterrows():
            ax.plot(r["forward_gflops"], r["fid"], "o", color=colors[r["run_id"]])
            ax.annotate(str(r["model"]), (r["forward_gflops"], r["fid"]), fontsize=6)
    else:
        ax.text(0.5, 0.5, "no model.forward_gflops logged", transform=ax.transAxes, ha="center")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel=GFLOPS_LABEL,
        ylabel="FID (final evaluation)",
        title="FID vs Gflops",
    )
    ax = axes[1]
    for rid, g in pts.groupby("run_id"):
        g = g.sort_values("C")
        ax.plot(g["C"], g["fid"], "-o", ms=3, lw=1, color=colors[rid], alpha=0.7)
    if an.fid_frontier is not None:
        fr = an.fid_frontier.frontier
        ax.plot(fr["C"], fr["fid"], "k.", label="frontier")
        if an.fid_frontier.y_law is not None:
            cc = _c_range(an)
            ax.plot(cc, an.fid_frontier.y_law.predict(cc), "k--", label=an.fid_frontier.y_law.formula())
        if an.fid_vs_compute_pure is not None:
            cc = _c_range(an)
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


def plot_all(an: Analysis, out_dir) -> dict[str, Path]:
    """Every figure into out_dir; returns name -> path (FID figure only when FID was logged)."""
    out = Path(out_dir)
    paths = {
        "loss_vs_compute": plot_loss_vs_compute(an, out / "loss_vs_compute.png"),
        "isoflop": plot_isoflop(an, out / "isoflop.png"),
        "allocation": plot_allocation(an, out / "optimal_allocation.png"),
    }
    fid = plot_fid(an, out / "fid.png")
    if fid is not None:
        paths["fid"] = fid
    return paths
