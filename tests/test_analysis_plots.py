"""What the figures show (`analysis.plots`): each figure is kept open instead of saved, and its lines,
points, bars, axes and labels are read back against the Analysis they draw, on a known law."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from test_analysis import TRUE, synthetic_isoflop

from analysis import plots
from analysis.influence import run_influence
from analysis.parametric import optimal_allocation
from analysis.pipeline import AnalysisConfig, analyze

BUDGETS = (1e18, 1e19, 1e20, 1e21)


@pytest.fixture(scope="module")
def an():
    """A known law on 4 budgets x 5 sizes, FID falling with compute and rising with size rank, a
    forward cost per model, a bootstrap of 8, and each run's influence."""
    pts = synthetic_isoflop(noise=0.002, seed=3, budgets=BUDGETS, n_sizes=5)
    rank = pts.groupby("C")["N"].rank()
    fid = 10 + 3 * (rank - 1) + 40 * (pts["C"] / 1e18) ** -0.3  # the frontier: 10 + 40 (C / 1e18)^-0.3
    pts = pts.assign(fid=fid, forward_gflops=pts["N"] * 1e-8)
    an = analyze(pts, AnalysisConfig(n_bootstrap=8))
    an.influence = run_influence(pts, 1e22, AnalysisConfig(n_bootstrap=0), holdout=True)
    return an


@pytest.fixture
def figures(an, tmp_path, monkeypatch):
    """name -> the open figure `plot_all` would have saved, and the paths it returned. Drawn for each
    test (~0.3 s), not once per module: mutmut runs only the tests that call a mutated function, and a
    module-scoped drawing would count for the first test alone."""
    yield _draw_all(an, tmp_path, monkeypatch)
    plt.close("all")


def _draw_all(an, out, monkeypatch):
    kept = {}

    def keep(fig, path):
        kept[Path(path).stem] = fig
        return Path(path)

    monkeypatch.setattr(plots, "_save", keep)
    return kept, plots.plot_all(an, out)


def _line(ax, label_start):
    (line,) = [ln for ln in ax.get_lines() if str(ln.get_label()).startswith(label_start)]
    return np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)


def _by_style(ax, marker, linestyle="None"):
    return [ln for ln in ax.get_lines() if ln.get_marker() == marker and ln.get_linestyle() == linestyle]


def test_plot_all_names_every_figure_and_its_file(figures):
    kept, paths = figures
    assert set(paths) == {"loss_vs_compute", "isoflop", "allocation", "fid", "residuals", "influence"}
    assert {p.name for p in paths.values()} == {f"{k}.png" for k in kept}
    assert paths["allocation"].name == "optimal_allocation.png"


def test_loss_vs_compute_draws_every_run_the_frontier_and_the_laws(an, figures):
    fig = figures[0]["loss_vs_compute"]
    ax, cbar = fig.axes
    assert tuple(fig.get_size_inches()) == (7, 5)
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == (
        plots.COMPUTE_LABEL,
        plots.LOSS_LABEL,
        "Loss vs compute",
    )
    assert cbar.get_ylabel() == "N (parameters)"
    c = an.points["C"]
    law = an.frontier.y_law
    x, y = _line(ax, "frontier law: ")
    assert x[0] == pytest.approx(c.min()) and x[-1] == pytest.approx(10 * c.max()) and len(x) == 100
    np.testing.assert_allclose(y, law.predict(x), rtol=1e-12)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"frontier law: {law.formula()}" in legend and "pure power law" in legend
    fx, fy = _line(ax, "frontier (min over runs)")
    np.testing.assert_allclose(fx, an.frontier.frontier["C"])
    np.testing.assert_allclose(fy, an.frontier.frontier["loss"])
    px, py = _line(ax, "parametric law, compute-optimal")
    np.testing.assert_allclose(py, optimal_allocation(an.parametric.params, px, an.flops_per_param_datum)[2])
    # one marker per run, coloured by log N from viridis's first colour to its last
    runs = _by_style(ax, "o")
    assert len(runs) == an.points["run_id"].nunique()
    n_of = {(x, y): n for x, y, n in an.points[["C", "loss", "N"]].itertuples(index=False)}
    ns = [n_of[(r.get_xdata()[0], r.get_ydata()[0])] for r in runs]
    first = runs[int(np.argmin(ns))].get_color()
    last = runs[int(np.argmax(ns))].get_color()
    np.testing.assert_allclose(first, plt.cm.viridis(0.0))
    np.testing.assert_allclose(last, plt.cm.viridis(1.0))
    # one point per run: each model's budgets joined, named at its largest budget
    joins = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-" and ln.get_marker() in ("None", "")]
    joins = [ln for ln in joins if not str(ln.get_label()).startswith(("frontier", "parametric"))]
    assert len(joins) == an.points["model"].nunique()
    for ln in joins:
        assert list(ln.get_xdata()) == sorted(BUDGETS)
    names = {t.get_text(): t.xy for t in ax.texts}
    assert set(names) == set(an.points["model"])
    for model, (x, y) in names.items():
        g = an.points[an.points["model"] == model]
        assert x == max(BUDGETS) and y == pytest.approx(g.loc[g["C"].idxmax(), "loss"])


def test_isoflop_draws_each_slice_its_parabola_and_vertex(an, figures):
    ax = figures[0]["isoflop"].axes[0]
    assert tuple(figures[0]["isoflop"].get_size_inches()) == (7, 5)
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "N (parameters)"
    assert ax.get_ylabel() == plots.LOSS_LABEL and ax.get_title().startswith("IsoFLOP slices")
    assert len(an.isoflop.profiles) == len(BUDGETS) and an.isoflop.joint is not None
    for c in BUDGETS:
        g = an.points[an.points["C"] == c].sort_values("N")
        x, y = _line(ax, f"C = {c:.2g} FLOPs")
        np.testing.assert_allclose(x, g["N"])
        np.testing.assert_allclose(y, g["loss"])
    stars = _by_style(ax, "*")
    assert sorted((s.get_xdata()[0], s.get_ydata()[0]) for s in stars) == sorted(
        (p.n_opt, p.loss_opt) for p in an.isoflop.profiles
    )
    parabolas = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-" and ln.get_marker() == "None"]
    assert len(parabolas) == len(BUDGETS)
    for ln, p in zip(parabolas, an.isoflop.profiles):
        x = np.asarray(ln.get_xdata(), float)
        assert x[0] == pytest.approx(p.n_range[0] / 10**0.2) and x[-1] == pytest.approx(
            p.n_range[1] * 10**0.2
        )
        np.testing.assert_allclose(ln.get_ydata(), p.predict(x), rtol=1e-12)
    jf = an.isoflop.joint
    joint = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(joint) == len(BUDGETS)
    for ln, c in zip(joint, BUDGETS):
        np.testing.assert_allclose(ln.get_ydata(), jf.profile(c, ln.get_xdata()), rtol=1e-12)
    diamonds = _by_style(ax, "D")
    assert [d.get_xdata()[0] for d in diamonds] == pytest.approx([jf.n_opt.predict(c) for c in BUDGETS])
    assert not ax.texts  # the status is ok: no warning written on the figure


def test_allocation_draws_n_opt_and_d_opt_from_every_approach(an, figures):
    left, right = figures[0]["optimal_allocation"].axes
    assert tuple(figures[0]["optimal_allocation"].get_size_inches()) == (12, 5)
    k = an.flops_per_param_datum
    for j, (ax, name, unit) in enumerate(((left, "N_opt", "N (parameters)"), (right, "D_opt", "D (images)"))):
        assert ax.get_title() == f"{name}(C)" and ax.get_ylabel() == unit
        assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
        x, y = _line(ax, f"parametric law (approach 3), C = {k:.3g} N D")
        assert x[-1] == pytest.approx(an.points["C"].max() * 100)  # extended 2 decades
        np.testing.assert_allclose(y, optimal_allocation(an.parametric.params, x, k)[j], rtol=1e-12)
        mx, my = _line(ax, "IsoFLOP minima")
        assert list(mx) == [p.compute for p in an.isoflop.profiles]
        np.testing.assert_allclose(my, [p.n_opt if j == 0 else p.d_opt for p in an.isoflop.profiles])
        law = an.isoflop.n_opt if j == 0 else an.isoflop.d_opt
        lx, ly = _line(ax, f"IsoFLOP law (joint fit), exponent {-law.params['alpha']:.3f}")
        np.testing.assert_allclose(ly, law.predict(lx), rtol=1e-12)
        fx, fy = _line(ax, "frontier runs (approach 1)")
        np.testing.assert_allclose(fy, an.frontier.frontier["N" if j == 0 else "D"])
        bands = [c for c in ax.collections if c.get_label() == "95% bootstrap band"]
        assert len(bands) == 1


def test_fid_draws_the_papers_three_views(an, figures):
    gflops, compute, vs_loss = figures[0]["fid"].axes
    assert tuple(figures[0]["fid"].get_size_inches()) == (17, 5)
    final = an.points.sort_values("C").groupby("run_id").tail(1)
    dots = sorted((ln.get_xdata()[0], ln.get_ydata()[0]) for ln in _by_style(gflops, "o"))
    assert dots == sorted(zip(final["forward_gflops"], final["fid"]))
    assert gflops.get_xlabel() == plots.GFLOPS_LABEL and gflops.get_title() == "FID vs Gflops"
    assert {t.get_text() for t in gflops.texts} == set(final["model"])
    fx, fy = _line(compute, "frontier")
    np.testing.assert_allclose(fx, an.fid_frontier.frontier["C"])
    np.testing.assert_allclose(fy, an.fid_frontier.frontier["fid"])
    assert compute.get_title() == "FID vs training compute"
    law = an.fid_frontier.y_law
    x, y = _line(compute, law.formula())
    np.testing.assert_allclose(y, law.predict(x), rtol=1e-12)
    x, y = _line(compute, "pure power law")
    np.testing.assert_allclose(y, an.fid_vs_compute_pure.predict(x), rtol=1e-12)
    x, y = _line(vs_loss, an.fid_vs_loss.formula())
    loss = an.points["loss"]
    assert (x[0], x[-1], len(x)) == pytest.approx((loss.min() * 0.95, loss.max() * 1.02, 50))
    np.testing.assert_allclose(y, an.fid_vs_loss.predict(x), rtol=1e-12)
    (pts,) = _by_style(vs_loss, "o")
    np.testing.assert_allclose(pts.get_xdata(), an.points["loss"])
    np.testing.assert_allclose(pts.get_ydata(), an.points["fid"])
    assert (vs_loss.get_xlabel(), vs_loss.get_ylabel()) == (plots.LOSS_LABEL, "FID")


def test_residuals_by_budget_and_by_model_sorted_by_size(an, figures):
    by_budget, by_model = figures[0]["residuals"].axes
    res = an.residuals
    for m in res["model"].unique():
        x, y = _line(by_budget, m)
        g = res[res["model"] == m]
        np.testing.assert_allclose(x, g["budget"])
        np.testing.assert_allclose(y, g["resid"])
    order = res.groupby("model")["N"].first().sort_values().index.tolist()
    assert [t.get_text() for t in by_model.get_xticklabels()] == order
    for i, ln in enumerate(_by_style(by_model, "o")):
        assert np.all(np.abs(np.asarray(ln.get_xdata()) - i) <= 0.15 + 1e-12)
        np.testing.assert_allclose(ln.get_ydata(), res.loc[res["model"] == order[i], "resid"])


def test_influence_bars_are_each_runs_ratio_and_holdout_error(an, figures):
    n_opt, holdout = figures[0]["influence"].axes
    tab = an.influence.table
    bars = n_opt.patches
    assert len(bars) == len(tab)
    # bars from 1 to the ratio, the first row of the table at the top
    for bar, ratio, y in zip(bars, an.influence.ratio("n_opt"), range(len(tab) - 1, -1, -1)):
        assert bar.get_x() == 1.0 and bar.get_width() == pytest.approx(ratio - 1.0)
        assert bar.get_y() + bar.get_height() / 2 == pytest.approx(y)
    assert [t.get_text() for t in n_opt.get_yticklabels()] == [
        f"{m} @ {c:.2g}" for m, c in zip(tab["model"], tab["budget"])
    ]
    assert list(n_opt.get_yticks()) == list(range(len(tab) - 1, -1, -1))
    err = 100 * tab["holdout"].to_numpy(float)
    assert [b.get_width() for b in holdout.patches] == pytest.approx(np.nan_to_num(err).tolist())
    (with_all,) = [ln for ln in holdout.get_lines() if ln.get_label() == "with every run"]
    assert with_all.get_xdata()[0] == pytest.approx(100 * an.influence.full["holdout"])
    assert holdout.get_xlabel() == "holdout best-loss error (%)"
    assert holdout.get_title() == "... and the holdout's error"


def test_the_figures_say_what_is_missing(tmp_path, monkeypatch):
    """Compute spread continuously (as in Chinchilla's Figure 4): no IsoFLOP slice, said on the
    figure; FID without a logged forward cost, said on its panel; no influence figure without
    `--influence`. Flat profiles: the IsoFLOP figure carries the status and its first reason."""
    rows = []
    for i in range(8):
        c, n = 1e18 * 10 ** (0.05 * i), 1e7 * 10 ** (0.25 * i)  # budgets 0.05 dex apart: no slice
        d = c / (6 * n)
        loss = TRUE["E"] + TRUE["A"] / n ** TRUE["alpha"] + TRUE["B"] / d ** TRUE["beta"]
        rows.append(
            {"N": n, "D": d, "C": c, "loss": loss, "run_id": f"r{i}", "model": f"m{i}", "fid": 20.0 - i}
        )
    kept, paths = _draw_all(analyze(pd.DataFrame(rows), AnalysisConfig(n_bootstrap=0)), tmp_path, monkeypatch)
    assert "influence" not in paths and "fid" in paths
    iso = kept["isoflop"].axes[0]
    assert [t.get_text() for t in iso.texts] == ["no IsoFLOP slice (points at distinct budgets)"]
    assert iso.get_legend() is None
    (note,) = kept["fid"].axes[0].texts
    assert (note.get_text(), note.get_ha()) == ("no model.forward_gflops logged", "center")
    plt.close("all")

    flat = synthetic_isoflop(noise=0.02, seed=1, budgets=BUDGETS, n_sizes=5)
    flat["loss"] = 0.05 * np.exp(0.02 * np.random.default_rng(0).standard_normal(len(flat)))
    an = analyze(flat, AnalysisConfig(n_bootstrap=0))
    assert not an.isoflop.status.ok
    kept, _ = _draw_all(an, tmp_path, monkeypatch)
    (text,) = kept["isoflop"].axes[0].texts
    assert text.get_text() == f"{an.isoflop.status.status}: {an.isoflop.status.reasons[0][:90]}..."
    plt.close("all")
