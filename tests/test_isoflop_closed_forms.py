"""analysis.isoflop against closed forms: exact parabolas, hand-made budgets, slices and censoring.

The recovery of Chinchilla-style allocation exponents is in test_analysis.py; these fast tests are
also the mutation-testing selection for analysis/isoflop.py (docs/testing.md).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis import isoflop as I

C2, C1, C0 = 0.05, -2.0, 25.0  # loss = C2 (ln N)^2 + C1 ln N + C0: minimum at ln N = 20


def _parabola_slice(c, ln_n=(18.0, 19.0, 20.5, 21.0, 22.0), shift=0.0, k=6.0, patch=None, run="r"):
    n = np.exp(np.asarray(ln_n))
    loss = C2 * (np.log(n) - shift) ** 2 + C1 * (np.log(n) - shift) + C0
    rows = {"N": n, "D": c / (k * n), "C": np.full(len(n), c), "loss": loss,
            "run_id": [f"{run}-{c:.0e}-{i}" for i in range(len(n))]}  # fmt: skip
    if patch is not None:
        rows["patch_size"] = np.full(len(n), patch)
    return pd.DataFrame(rows)


def test_profile_of_an_exact_parabola_is_its_vertex():
    g = _parabola_slice(1e20)
    p = I._profile(g, 1e20, math.nan)
    np.testing.assert_allclose(p.coef, (C2, C1, C0), rtol=1e-8)
    x_opt = -C1 / (2 * C2)
    assert p.n_opt == pytest.approx(math.exp(x_opt), rel=1e-8)
    assert p.d_opt == pytest.approx(1e20 / (6 * math.exp(x_opt)), rel=1e-8)
    assert p.loss_opt == pytest.approx(C0 - C1**2 / (4 * C2), rel=1e-10)
    assert p.n_points == 5 and p.compute == 1e20 and math.isnan(p.patch)
    assert p.n_range == pytest.approx((math.exp(18.0), math.exp(22.0)), rel=1e-12)
    np.testing.assert_allclose(p.predict(g["N"]), g["loss"], rtol=1e-10)


def test_profile_says_why_a_slice_is_skipped():
    skipped: list[str] = []
    two = _parabola_slice(1e20, ln_n=(18.0, 19.0, 19.0))
    assert I._profile(two, 1e20, 2.0, skipped) is None
    assert skipped[-1] == (
        "IsoFLOP budget 1e+20 FLOPs, patch 2: 2 model size(s); a parabola of its own needs 3 (the joint "
        "fit uses 2) - "
        "add model sizes at this budget"
    )
    down = _parabola_slice(1e20).assign(loss=lambda df: -df["loss"])
    assert I._profile(down, 1e20, math.nan, skipped) is None
    assert skipped[-1] == "IsoFLOP budget 1e+20 FLOPs: the parabola opens downward (no minimum); skipped"
    low = _parabola_slice(1e20, ln_n=(20.5, 21.0, 22.0))  # vertex at ln N = 20, below the sizes
    assert I._profile(low, 1e20, math.nan, skipped, units="images") is None
    assert (
        "(N=4.85e+08 images) lies outside the models trained there (N 8e+08..3.58e+09 images)" in skipped[-1]
    )
    assert skipped[-1].endswith("budget skipped - add smaller models at this budget")
    high = _parabola_slice(1e20, ln_n=(17.0, 18.0, 19.5))
    assert I._profile(high, 1e20, math.nan, skipped) is None
    assert skipped[-1].endswith("add larger models at this budget")
    assert len(skipped) == 4
    assert I._profile(low, 1e20, math.nan) is None  # no list: skipped silently


def test_budgets_come_from_the_budget_column_or_clusters_of_log_compute():
    pts = pd.DataFrame({"C": [1.0e18, 1.2e18, 1.1e18, 1.0e19, 1.25e19, 3e19]})
    lab = I.assign_budgets(pts, gap_dex=0.1)
    assert list(lab) == [1.1e18, 1.1e18, 1.1e18, pytest.approx(1.125e19), pytest.approx(1.125e19), 3e19]
    # a wider gap merges the last two decades' points
    assert I.assign_budgets(pts, gap_dex=0.5).nunique() == 2
    planned = pts.assign(budget=[1e18] * 3 + [1e19] * 3, final=[1, 0, 1, 1, 1, 0])
    lab = I.assign_budgets(planned)
    assert lab.tolist()[:3] == [1e18, pytest.approx(float("nan"), nan_ok=True), 1e18]
    assert lab.isna().tolist() == [False, True, False, False, False, True]
    # without the `final` column the budget column is not used
    assert I.assign_budgets(planned.drop(columns="final")).tolist()[0] == 1.1e18


def test_slices_split_by_patch_and_drop_continuous_compute():
    pts = pd.concat([
        _parabola_slice(1e19, patch=2), _parabola_slice(1e19, patch=4, run="p4"),
        _parabola_slice(1e20, patch=2),
    ])  # fmt: skip
    got = [(c, p, len(g)) for c, p, g in I.iter_slices(pts)]
    assert got == [(1e19, 2.0, 5), (1e19, 4.0, 5), (1e20, 2.0, 5)]
    assert [p for _, p, _ in I.iter_slices(pts.drop(columns="patch_size"))] == [math.nan] * 2 or all(
        math.isnan(p) for _, p, _ in I.iter_slices(pts.drop(columns="patch_size"))
    )
    # points spread over 0.25 dex within one cluster (gap 0.1 between neighbours) are not a slice
    spread = pd.DataFrame({"C": 10 ** np.arange(19.0, 19.26, 0.05), "N": 1.0, "D": 1.0, "loss": 1.0})
    assert list(I.iter_slices(spread)) == []
    narrow = pd.DataFrame({"C": 10 ** np.arange(19.0, 19.2, 0.05), "N": 1.0, "D": 1.0, "loss": 1.0})
    assert len(list(I.iter_slices(narrow))) == 1


def test_slice_sides_and_censoring():
    def sl(c, ln_n, shift):
        return _parabola_slice(c, ln_n=ln_n, shift=shift)

    sizes = (18.0, 19.0, 20.0)
    below = pd.concat([sl(1e19, sizes, -3.0), sl(1e20, sizes, -2.0)])  # vertex below the smallest size
    sides = I.slice_sides(below)
    assert [s.side for s in sides] == ["below", "below"] and [s.compute for s in sides] == [1e19, 1e20]
    assert sides[0].sizes == pytest.approx(tuple(np.exp(sizes))) and sides[0].best_n == sides[0].sizes[0]
    st = I.censoring(sides, units="images")
    assert st.status == "censored"
    (reason,) = st.reasons
    # the smallest wins, so (one minimum in N) the optimum is below the second-smallest size, e^19: not
    # below the smallest itself, as it said until session 60 (it may lie between the two)
    assert reason.startswith(f"N_opt below {math.exp(19.0):.3g} images at every budget: the smallest model")
    assert "each of the 2 budget(s) (1e+19 FLOPs: < 1.78e+08; 1e+20 FLOPs: < 1.78e+08: with one" in reason
    assert reason.endswith(
        f"add models smaller than {math.exp(18.0):.3g} (at least two sizes below it) at every budget"
    )

    above = pd.concat([sl(1e19, sizes, 3.0), sl(1e20, (18.5, 19.5, 20.5), 3.0)])
    sides = I.slice_sides(above)
    assert [s.side for s in sides] == ["above", "above"]
    (reason,) = I.censoring(sides).reasons
    assert reason.startswith(f"N_opt above {math.exp(19.0):.3g} parameters at every budget: the largest")
    assert "1e+19 FLOPs: > 1.78e+08" in reason
    # each budget's own largest size (session 61: "larger than 4.85e+08 at every budget" bracketed nothing
    # at 1e20, whose largest is 8e+08)
    ends = f"{math.exp(20.0):.3g}, {math.exp(20.5):.3g}"
    assert f"add models larger than each budget's largest size ({ends})" in reason

    mixed = pd.concat([sl(1e19, sizes, -3.0), sl(1e20, (*sizes, 21.0), 0.0)])
    assert [s.side for s in I.slice_sides(mixed)] == ["below", "interior"]
    assert I.censoring(I.slice_sides(mixed)).status == "ok"
    # one slice of two sizes is too little to call; one slice of three sizes is enough
    assert I.censoring(I.slice_sides(sl(1e19, (18.0, 19.0), -3.0))).status == "ok"
    assert I.censoring(I.slice_sides(sl(1e19, sizes, -3.0))).status == "censored"
    single = I.slice_sides(sl(1e19, (18.0, 18.0), 0.0))
    assert [s.side for s in single] == ["single"] and I.censoring(single).status == "ok"


def _law_points(patch=None, budgets=(1e18, 1e19, 1e20, 1e21), a=0.5, run="r"):
    """Per budget an exact parabola in ln N with its vertex at N_opt = 1e-3 C^a."""
    frames = []
    for c in budgets:
        x = math.log(1e-3 * c**a)
        ln_n = x + np.array([-2.0, -1.0, 0.5, 1.0, 2.0])
        frames.append(_parabola_slice(c, ln_n=ln_n, shift=x + C1 / (2 * C2), patch=patch, run=run))
    return pd.concat(frames, ignore_index=True)


def test_fit_isoflop_recovers_the_vertex_law_per_patch():
    pts = pd.concat(
        [_law_points(patch=2, a=0.5), _law_points(patch=4, budgets=(1e18, 1e19, 1e20), a=0.6, run="p4")]
    )
    fit = I.fit_isoflop(pts, joint=False)
    assert fit.patch == 2.0  # the patch size with the most usable budgets
    assert fit.n_opt.params["alpha"] == pytest.approx(-0.5, abs=1e-8)
    assert fit.n_opt.params["A"] == pytest.approx(1e-3, rel=1e-6)
    assert fit.d_opt.params["alpha"] == pytest.approx(-0.5, abs=1e-8)  # D = C / (6 N): exponent 1 - a
    assert fit.a == pytest.approx(0.5, abs=1e-8) and fit.b == pytest.approx(0.5, abs=1e-8)
    assert set(fit.by_patch) == {2.0, 4.0}
    n4, d4 = fit.by_patch[4.0]
    assert n4.params["alpha"] == pytest.approx(-0.6, abs=1e-8) and d4.params["alpha"] == pytest.approx(
        -0.4, abs=1e-8
    )
    assert [(p.patch, p.compute) for p in fit.profiles][:4] == [(2.0, c) for c in (1e18, 1e19, 1e20, 1e21)]
    d = fit.to_dict()
    assert d["patch"] == 2.0 and d["by_patch"]["4.0"] == {"a": pytest.approx(0.6), "b": pytest.approx(0.4)}
    assert (
        d["profiles"][0]["N_opt"] == pytest.approx(1e-3 * 1e18**0.5, rel=1e-6)
        and d["profiles"][0]["patch"] == 2.0
    )
    assert d["status"] == "ok" and d["a"] == pytest.approx(0.5)
    text = fit.summary()
    assert "IsoFLOP profiles: 7 usable slice(s)" in text and "N_opt = 0.001 C^0.5000" in text
    # equal counts: the smaller patch size wins
    tie = pd.concat([_law_points(patch=4, a=0.6, run="p4"), _law_points(patch=2, a=0.5)])
    assert I.fit_isoflop(tie, joint=False).patch == 2.0


def test_fit_isoflop_without_three_budgets_gives_no_law_and_says_why():
    fit = I.fit_isoflop(_law_points(budgets=(1e18, 1e19)))
    assert fit.n_opt is None and fit.d_opt is None and fit.a != fit.a or fit.n_opt is None
    assert fit.messages[-1].startswith("IsoFLOP: 2 slice(s) (need 3 budgets of one patch size")
    assert fit.to_dict()["N_opt"] is None and math.isnan(fit.patch)


def test_isoflop_bootstrap_of_exact_profiles_has_no_spread():
    fit = I.fit_isoflop(_law_points(), n_bootstrap=8, seed=1, joint=False)
    bs = fit.bootstrap
    assert bs.n_requested == 8 and bs.n_failed + bs.n_ok == 8 and bs.n_ok >= 1
    np.testing.assert_allclose(bs.samples["N_opt_exp"], 0.5, atol=1e-8)
    np.testing.assert_allclose(bs.samples["D_opt_exp"], 0.5, atol=1e-8)
    np.testing.assert_allclose(bs.samples["N_opt_A"], 1e-3, rtol=1e-6)
    assert "bootstrap: 8 resamples of runs" in fit.summary() and "ci95" in fit.to_dict()


def test_summary_lists_each_profile_and_both_laws_in_their_units():
    fit = I.fit_isoflop(
        _law_points(budgets=(1e18, 1e19, 1e20)), units="params", data_units="tokens", joint=False
    )
    lines = fit.summary().splitlines()
    assert lines[0] == "IsoFLOP profiles: 3 usable slice(s) (budget x patch size)"
    n_opt, d_opt = 1e-3 * 1e9, 1e18 / (6 * 1e6)
    assert lines[1].startswith(f"  C=1e+18 FLOPs: N_opt={n_opt:.3g} params, D_opt={d_opt:.3g} tokens, L_opt=")
    assert lines[1].endswith("(5 points)")
    law_lines = [line for line in lines if " C^" in line]
    assert [line.split(" = ")[0] for line in law_lines] == ["  N_opt", "  D_opt"]
    assert law_lines[0].startswith("  N_opt = 0.001 C^0.5000 (se nan)")
    assert law_lines[1].startswith(f"  D_opt = {1 / 6e-3:.4g} C^0.5000 (se nan)")
    boot = I.fit_isoflop(_law_points(), n_bootstrap=20, seed=0, joint=False)
    assert boot.bootstrap.n_ok >= 2
    assert "(se nan)" not in boot.summary() and "bootstrap: 20 resamples of runs" in boot.summary()


def test_laws_are_pure_power_laws_named_after_what_they_predict():
    fit = I.fit_isoflop(_law_points(), joint=False)
    assert fit.n_opt.kind == "pure" and fit.d_opt.kind == "pure"
    assert (fit.n_opt.x_name, fit.n_opt.y_name, fit.d_opt.x_name, fit.d_opt.y_name) == (
        "C",
        "N_opt",
        "C",
        "D_opt",
    )
    assert fit.n_opt.formula() == "N_opt = 0.001 * C^(0.5)"


def test_units_and_the_budget_gap_reach_every_message():
    pts = _law_points()
    # at the largest budget keep only models above the optimum: that slice is skipped with the units
    n_opt = 1e-3 * 1e21**0.5
    pts = pts[(pts["C"] != 1e21) | (pts["N"] > 1.5 * n_opt)]
    default = I.fit_isoflop(pts, joint=False)
    assert default.units == ("parameters", "images")
    assert any("parameters); budget skipped" in m for m in default.messages)
    fit = I.fit_isoflop(pts, units="params", data_units="tokens", joint=False)
    assert any("params); budget skipped" in m for m in fit.messages) and fit.units == ("params", "tokens")
    # censoring reasons carry the units too: every budget's best model is its smallest
    below = pd.concat([_parabola_slice(c, ln_n=(18.0, 19.0, 20.0), shift=-3.0) for c in (1e18, 1e19, 1e20)])
    assert " params at every budget" in I.fit_isoflop(below, units="params", joint=False).status.reasons[0]
    assert " parameters at every budget" in I.fit_isoflop(below, joint=False).status.reasons[0]
    # gap_dex reaches the slicing: budgets 0.3 dex apart are one cluster with gap 0.5
    close = pd.concat([_parabola_slice(c) for c in (1e20, 2e20)])
    assert len(I.isoflop_profiles(close)) == 2 and len(I.slice_sides(close)) == 2
    assert [p.compute for p in I.isoflop_profiles(close, gap_dex=0.5)] == [pytest.approx(1.5e20)]
    assert len(I.slice_sides(close, gap_dex=0.5)) == 1
    assert (
        len(I.fit_isoflop(close, joint=False).profiles) == 2
        and len(I.fit_isoflop(close, gap_dex=0.5, joint=False).slices) == 1
    )


def test_profiles_of_unknown_patch_come_first():
    nan_patch = _parabola_slice(1e20)
    nan_patch["patch_size"] = np.nan
    pts = pd.concat([nan_patch, _parabola_slice(1e19, patch=1, run="p1")])
    assert [(p.compute, p.patch) for p in I.isoflop_profiles(pts)][0][0] == 1e20
    assert math.isnan(I.isoflop_profiles(pts)[0].patch) and I.isoflop_profiles(pts)[1].patch == 1.0


def test_to_dict_is_the_json_report_of_the_fit():
    """The report written to results.json (test_analysis_status.py reads "slices"/"side"/"sizes")."""
    import json

    pts = pd.concat([_law_points(patch=2), _law_points(patch=4, budgets=(1e18, 1e19, 1e20), run="p4")])
    fit = I.fit_isoflop(pts, n_bootstrap=6, seed=0, joint=False)
    d = json.loads(json.dumps(fit.to_dict()))
    base = {"status", "reasons", "profiles", "slices", "patch", "a", "b", "N_opt", "D_opt", "by_patch"}
    base |= {"method", "joint", "minima_a"}
    assert set(d) == base | {"se", "ci95", "bootstrap"}
    assert d["status"] == fit.status.status and d["reasons"] == list(fit.status.reasons)
    assert d["patch"] == 2.0 and fit.status.status == "not_identified"  # 6 refits: too few for 95%
    assert d["a"] is None and d["b"] is None  # withheld, as the report withholds them (session 38)
    assert d["N_opt"] == json.loads(json.dumps(fit.n_opt.to_dict()))
    assert d["D_opt"] == json.loads(json.dumps(fit.d_opt.to_dict()))
    assert len(d["profiles"]) == len(fit.profiles) == 7
    for got, p in zip(d["profiles"], fit.profiles):
        assert got == {"C": p.compute, "patch": p.patch, "N_opt": pytest.approx(p.n_opt),
                       "D_opt": pytest.approx(p.d_opt), "loss_opt": pytest.approx(p.loss_opt),
                       "n_points": 5}  # fmt: skip
    for got, s in zip(d["slices"], fit.slices):
        assert got == {"C": s.compute, "patch": s.patch, "sizes": pytest.approx(list(s.sizes)),
                       "best_N": pytest.approx(s.best_n), "side": "interior"}  # fmt: skip
    # withheld with a (session 39): the exponents' errors and the minima's exponent; the coefficients' kept
    assert all(d[key][k] is None for key in ("se", "ci95") for k in ("N_opt_exp", "D_opt_exp"))
    coef = ("N_opt_A", "D_opt_A")
    se = fit.bootstrap.se()
    assert {k: d["se"][k] for k in coef} == pytest.approx({k: se[k] for k in coef}, nan_ok=True)
    assert d["minima_a"] is None
    assert set(d["ci95"]) == set(fit.bootstrap.conf_int()) and d["bootstrap"] == fit.bootstrap.to_dict()
    nan = I.fit_isoflop(_law_points(), joint=False).to_dict()
    assert nan["patch"] is None and nan["profiles"][0]["patch"] is None and nan["slices"][0]["patch"] is None
    assert "se" not in nan and "bootstrap" not in nan
    failed = fit.bootstrap.n_failed
    assert f"{failed} failed ({100 * failed / 6:.0f}%: fewer than 3 usable budgets)" in fit.summary()
    assert fit.summary().count("\n") == len(fit.summary().splitlines()) - 1


def test_censoring_edges():
    def sl(c, ln_n, shift):
        return _parabola_slice(c, ln_n=ln_n, shift=shift)

    two = I.slice_sides(sl(1e19, (18.0, 19.0), -3.0))
    assert [s.side for s in two] == ["below"]  # two sizes already have a side
    # two budgets of two sizes each, the smallest winning at both: censored below the larger of the two
    # second-smallest sizes (the optimum of each budget lies below its other size)
    pair = I.slice_sides(pd.concat([sl(1e19, (18.0, 19.0), -3.0), sl(1e20, (18.5, 19.5), -3.0)]))
    st = I.censoring(pair)
    assert st.status == "censored" and st.reasons[0].startswith(
        f"N_opt below {math.exp(19.5):.3g} parameters"
    )
    assert I.censored_bound(pair) == {"side": "below", "N": pytest.approx(math.exp(19.5))}
    above = I.slice_sides(pd.concat([sl(1e19, (18.0, 19.0), 3.0), sl(1e20, (18.5, 19.5), 3.0)]))
    assert I.censoring(above).reasons[0].startswith(f"N_opt above {math.exp(18.0):.3g} parameters")
    # a slice with one size has no side and does not break the pattern of the others
    single = sl(1e21, (18.0, 18.0), 0.0)
    with_single = I.slice_sides(
        pd.concat([sl(1e19, (18.0, 19.0), -3.0), sl(1e20, (18.5, 19.5), -3.0), single])
    )
    assert [s.side for s in with_single] == ["below", "below", "single"]
    assert I.censoring(with_single).status == "censored"


def test_unreadable_patch_sizes_and_continuous_groups_before_real_slices():
    pts = _parabola_slice(1e20).assign(patch_size=["n/a", None, "n/a", None, "n/a"])
    assert [math.isnan(p) for _, p, _ in I.iter_slices(pts)] == [True]
    spread = pd.DataFrame({"C": 10 ** np.arange(17.0, 17.26, 0.05), "N": 1.0, "D": 1.0, "loss": 1.0})
    pts = pd.concat([spread, _parabola_slice(1e20)])
    assert [c for c, _, _ in I.iter_slices(pts)] == [1e20]  # the continuous group is skipped, not the end


def test_d_opt_is_the_linear_fit_of_ln_d_in_ln_n_at_the_vertex():
    g = _parabola_slice(1e20)
    ln_n = np.log(g["N"].to_numpy())
    g["D"] = g["D"] * np.exp(0.1 * (ln_n - 20.0) ** 2)  # measured D bends away from C / (6 N)
    p = I._profile(g, 1e20, math.nan)
    line = np.polyfit(ln_n, np.log(g["D"].to_numpy()), 1)
    assert p.d_opt == pytest.approx(math.exp(np.polyval(line, math.log(p.n_opt))), rel=1e-10)


def test_bootstrap_resamples_whole_runs_reproducibly():
    """Each run contributes two points (checkpoints): resampling runs keeps both or neither."""
    pts = _law_points()
    pts = pd.concat([pts, pts.assign(loss=pts["loss"] + 1e-9)], ignore_index=True)  # a second point per run
    a = I.fit_isoflop(pts, n_bootstrap=6, seed=2, joint=False).bootstrap
    b = I.fit_isoflop(pts, n_bootstrap=6, seed=2, joint=False).bootstrap
    assert a.unit == "groups" and a.n_requested == 6  # resampled by run_id
    assert set(a.samples) == {"N_opt_exp", "D_opt_exp", "N_opt_A", "D_opt_A"}
    for k in a.samples:
        np.testing.assert_array_equal(a.samples[k], b.samples[k])
    np.testing.assert_allclose(a.samples["D_opt_A"], 1 / 6e-3, rtol=1e-5)
    assert I.fit_isoflop(pts, joint=False).bootstrap is None
