"""Session 39: the study designs used against the grain (docs/testing.md, session 39).

This module is also a stand-in trainer (``trainer: test_designs_s39``): the final loss follows the
known law of tests/test_sweeps_design.py, L(N, D) = 0.03 + 1.8 / N^0.34 + 0.26 / D^0.28 (D in
images), times (1 + NOISE x a standard normal draw) seeded by the cell id, its seed and NOISE_SEED
(environment ``S39_NOISE`` = "noise:noise_seed", default no noise). A cell whose id contains
``S39_FAIL`` (environment) raises.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_sweeps_design import law_spec, log_law_run, true_n_opt
from test_sweeps_fake_trainer import WARM_IMPORTS  # noqa: F401 - what a warm worker imports for it
from test_sweeps_fake_trainer import TrainConfig as FakeTrainConfig

from sweeps.design import launch_adaptive, read_record


@dataclasses.dataclass
class OptimCfg:
    lr: float = 3e-3


@dataclasses.dataclass
class TrainConfig(FakeTrainConfig):
    """The fake trainer's config with an ``optim.lr`` (the sweep's --lrs axis sets it)."""

    optim: OptimCfg = dataclasses.field(default_factory=OptimCfg)


def noise_of(cell: str, seed: int) -> float:
    """The relative noise of one cell's loss: NOISE x N(0, 1), drawn from (cell, seed, NOISE_SEED)."""
    spec = os.environ.get("S39_NOISE", "")
    if not spec:
        return 0.0
    noise, noise_seed = spec.split(":")
    key = hashlib.sha256(f"{cell}|{seed}|{noise_seed}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(key[:8], "little"))
    return float(noise) * float(rng.standard_normal())


def train(cfg) -> dict:
    """Log what `analysis.runs.load_runs` reads: the law's loss (with noise) at the final step."""
    cell = cfg.tracking.grid_cell or ""
    if (fail := os.environ.get("S39_FAIL")) and fail in cell:
        raise RuntimeError(f"S39_FAIL: cell {cell} fails")
    worse = 1.1 if cfg.optim.lr < 3e-3 else 1.0  # an lr below 3e-3 trains 10 % worse
    factor = (1.0 + noise_of(cell, cfg.seed)) * worse
    return log_law_run(cfg, factor, {"seed": cfg.seed, "optim.lr": cfg.optim.lr})


# ------------------------------------------------------------------ 1. approach 2: no ok beside a NaN a


def noisy_isoflop(seed: int, noise: float, budgets=(1e18, 1e19, 1e20, 1e21)) -> pd.DataFrame:
    """Five sizes over 2 decades around each budget's optimum of tests/_fit_helpers.LAW (C = 6 N D),
    loss x (1 + noise x N(0, 1))."""
    from _fit_helpers import LAW as FIT_LAW

    from analysis.parametric import optimal_allocation, parametric_loss

    rng, rows = np.random.default_rng(seed), []
    for c in budgets:
        n0 = optimal_allocation(FIT_LAW, c, 6.0)[0]
        for i, n in enumerate(n0 * np.logspace(-1, 1, 5)):
            loss = float(parametric_loss(FIT_LAW, n, c / (6 * n))) * (1 + noise * rng.standard_normal())
            rows.append(dict(N=n, D=c / (6 * n), C=c, loss=loss, run_id=f"{c:.0e}-{i}", budget=c, final=True))
    return pd.DataFrame(rows)


def test_noisy_parabolas_without_a_joint_fit_never_give_ok_with_a_nan_exponent():
    """At 20 % noise, seed 4 keeps 2 of 4 parabolas (two open downward): no law, a = NaN. It was
    `ok`; now `not_identified`, with the reason. Across 30 seeds no fit is ok with a NaN exponent."""
    from analysis.isoflop import fit_isoflop

    fit = fit_isoflop(noisy_isoflop(4, 0.2), joint=False)
    assert len(fit.profiles) == 2 and fit.n_opt is None and math.isnan(fit.a)
    assert fit.status.status == "not_identified"
    assert fit.status.reasons == [
        "no IsoFLOP N_opt(C) law: 4 budget(s) with >= 3 model sizes, but 2 with a parabola whose minimum "
        "lies inside its sizes: approach 2 withholds its N_opt exponent (the skipped budgets say why); add "
        "model sizes around each budget's best, seeds per cell, or budgets"
    ]
    assert fit.messages[-1] == (
        "IsoFLOP: 4 slice(s) (need 3 budgets of one patch size, each with a parabola whose minimum lies "
        "inside its sizes); no N_opt(C) law"
    )
    assert fit.to_dict()["a"] is None and fit.to_dict()["status"] == "not_identified"
    nan_ok = []
    for seed in range(30):
        for noise in (0.1, 0.2, 0.3):
            f = fit_isoflop(noisy_isoflop(seed, noise), joint=False)
            if f.status.ok and not (math.isfinite(f.a) and math.isfinite(f.b)):
                nan_ok.append((seed, noise))
    assert nan_ok == []


def test_fewer_than_three_budgets_leave_approach_2_out_without_withholding_the_analysis():
    """Two budgets: approach 2 does not apply (its message says what it needs; `a` null in
    results.json; session 40: status `not_applicable`, no longer `ok`), and the analysis, which
    approach 3 identifies, stays ok."""
    from analysis.isoflop import fit_isoflop
    from analysis.pipeline import AnalysisConfig, analyze

    two = noisy_isoflop(0, 0.0, budgets=(1e18, 1e19))
    fit = fit_isoflop(two)
    assert fit.status.status == "not_applicable" and fit.n_opt is None and fit.to_dict()["a"] is None
    assert fit.messages[-1].startswith(
        "IsoFLOP: 2 slice(s) (need 3 budgets of one patch size, each with >= 2"
    )
    an = analyze(two, AnalysisConfig(n_bootstrap=50, min_steps=0))
    assert an.status.status == "ok" and an.parametric.allocation_identified


# ------------------------------------------------------------------ 2. priors and step windows


def fit_json(tmp_path: Path, **cfg) -> dict:
    """results.json of the analysis of the law's synthetic IsoFLOP points (tests/test_sweeps_design)."""
    from test_sweeps_design import synthetic_points

    from analysis.pipeline import AnalysisConfig, analyze
    from analysis.report import write_json

    pts = synthetic_points().assign(tokens_per_image=64.0)
    an = analyze(pts, AnalysisConfig(n_bootstrap=0, min_steps=0, **cfg))
    return json.loads(write_json(tmp_path / "fit.json", an).read_text())


def test_a_prior_with_withheld_lost_or_shrinking_values_falls_through_with_reasons(tmp_path):
    """A law whose values are null (withheld), NaN, text or <= 0, or an N_opt(C) that falls with
    compute, is not used: the next approach's law is, and when none is left the error names what
    each had. These raised TypeError / ValueError("could not convert") or placed around N_opt nan."""
    from sweeps.design import load_fit_prior

    base = fit_json(tmp_path)
    assert base["approach3_parametric"]["status"] == "ok" and base["a"] is not None
    frontier = {"status": "ok", "N_opt": {"A": 2.0, "alpha": -0.5}}

    def prior(edit) -> object:
        data = copy.deepcopy(base)
        edit(data)
        path = tmp_path / "p.json"
        path.write_text(json.dumps(data))
        return load_fit_prior(str(path))

    for key, value in (("alpha", None), ("A", float("nan")), ("B", "x"), ("flops_per_param_datum", 0)):
        p = prior(lambda d, kv={key: value}: (d.update(kv), d.update(approach1_frontier=frontier)))
        assert p.kind == "frontier" and p.n_opt(1e12, 2) == pytest.approx(2e6)

    def iso_only(law):
        def edit(d):
            d.update(a=None, approach3_parametric={"status": "not_identified"})
            d["approach2_isoflop"] = {"status": "ok", "N_opt": law}
            d["approach1_frontier"] = {"status": "not_identified"}

        return edit

    for law, bad in (
        ({"A": None, "alpha": -0.5}, "has A = null (not a finite number)"),
        ({"A": float("nan"), "alpha": -0.5}, "has A = NaN (not a finite number)"),
        ({"A": 0.0, "alpha": -0.5}, "has A = 0.0"),
        ({"A": 1e20, "alpha": 0.5}, "N_opt = A C^-0.5 does not grow with compute"),
    ):
        with pytest.raises(ValueError) as err:
            prior(iso_only(law))
        assert f"isoflop ok but its N_opt law {bad}, frontier not_identified" in str(err.value)
    with pytest.raises(ValueError, match=r"parametric law ok but has alpha = null \(not a finite number\), "):
        prior(lambda d: (d.update(alpha=None), d.update(approach2_isoflop={}, approach1_frontier={})))


def test_a_prior_fitted_on_tokens_places_as_one_fitted_on_images(tmp_path):
    """The parametric prior N_opt = G (C / k)^(beta / (alpha + beta)) holds on either data axis: the
    tokens fit's B and k absorb the 64 tokens per image."""
    from sweeps.design import load_fit_prior

    fit_json(tmp_path / "i")
    tokens = fit_json(tmp_path / "t", data_axis="tokens")
    assert tokens["axes"]["data"] == "tokens" and tokens["flops_per_param_datum"] == pytest.approx(6.0 / 64)
    n_img, n_tok = (load_fit_prior(str(tmp_path / d / "fit.json")).n_opt(1e19, 2) for d in ("i", "t"))
    assert n_tok == pytest.approx(n_img, rel=1e-4)


def test_a_budget_the_step_window_cannot_place_says_which_bound_and_what_it_can_train():
    """Too few sizes: the error names the sizes the budget can train in the step window and the fix
    for the bound that cuts: a prior far off (another experiment) is named as such. It used to say
    `lower --min-steps, raise the budget, or widen --spread` in every case, also where the budget
    was too large for --max-steps or the centre far from every trainable size."""
    from test_sweeps_design import demo_isoflop

    from sweeps.design import plan_budgets

    def error(budget, **kw) -> str:
        with pytest.raises(ValueError) as err:
            plan_budgets(demo_isoflop(budgets=[budget], **kw))
        return str(err.value).split("need 3: ")[1]

    assert error(1e9) == (
        "with 20..100000 steps this budget trains N 992..3.89e+03 on the family curve; lower --min-steps "
        "(min_steps) or raise the budget; or widen --spread"
    )
    assert error(1e20).startswith(
        "with 20..100000 steps this budget trains N 1.24e+11..5.74e+14 on the family curve, all above the "
        "centre's window (smaller models make more than 100000 steps): raise --max-steps or --batch-size, "
        "or lower the budget (a prior from another data set"
    )
    assert "all below the centre's window (larger models make fewer than 20 steps): lower --min-steps" in (
        error(1e11, isoflop_centres={1e11: 1e9})
    )
    assert "(no shape on the family curve is smaller): centre it on a larger N" in (
        error(1e11, isoflop_centres={1e11: 50.0})
    )
    assert error(1e11, isoflop_centres={1e11: 3e4}, min_steps=100000).startswith(
        "even the smallest shape on the family curve (N "
    )


# ------------------------------------------------------------------ 3. the adaptive loop


def adaptive_spec(tmp_path: Path, uri: str, **kw):
    return law_spec(tmp_path, uri).replace(trainer="test_designs_s39", **kw)


@pytest.fixture
def law_env(job_env, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # the debug executor imports this module
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # a failed debug job's pdb reads EOF and goes on
    monkeypatch.delenv("S39_FAIL", raising=False)
    monkeypatch.setenv("S39_NOISE", "0.02:0")
    return job_env


def test_adaptive_with_seeds_waits_for_every_seed_and_refits_on_their_means(law_env, tmp_path, monkeypatch):
    """--seeds 0,1: a budget is done when every seed of its cells has finished (a failed seed-1 cell
    stops the loop; it used to be ignored, the next budget placed without it), and the refit sees
    both seeds (averaged), not seed 0 alone."""
    from analysis.pipeline import AnalysisConfig, prepare
    from sweeps.design import make_prior, refit_centre, sweep_points
    from sweeps.grid import expand

    spec = adaptive_spec(tmp_path, law_env, budgets=[1e11, 3e11, 1e12], seeds=[0, 1])
    monkeypatch.setenv("S39_FAIL", "d2w56-2-1e11-s1")
    first = launch_adaptive(spec, poll_s=0.05)
    assert len(first.steps) == 1 and not first.steps[0].finished
    assert first.stopped == (
        "budget 1e11 has unfinished cells (d2w56-2-1e11-s1 failed); the next budget is placed on its fit: "
        "relaunch the same command when they finish (a relaunch retries a failed or interrupted cell, up "
        "to --max-retries)"
    )
    assert len(first.steps[0].cells) == 10 and "d2w56-2-1e11-s1" in first.steps[0].cells
    monkeypatch.delenv("S39_FAIL")
    res = launch_adaptive(spec, poll_s=0.05)  # the relaunch retries the failed seed and goes on
    assert res.stopped == "" and [s.launch.submitted for s in res.steps][0] == ["d2w56-2-1e11-s1"]
    rec = read_record(Path(spec.output_dir) / spec.name)
    one = spec.replace(budgets=[1e11], isoflop_centres={1e11: rec[1e11]["centre"]})
    both = [c.cell_id for c in expand(one)]
    uri, prior = law_env, make_prior(spec)
    pts = sweep_points(spec, uri, both)
    assert len(pts) == 10 and len(prepare(pts, AnalysisConfig(n_bootstrap=0, min_steps=50)).points) == 5
    mean = refit_centre(spec, prior, pts, [1e11], 3e11, 2)
    seed0 = refit_centre(spec, prior, sweep_points(spec, uri, both[::2]), [1e11], 3e11, 2)
    assert rec[3e11]["centre"] == pytest.approx(mean.n, rel=1e-9) and mean.n != pytest.approx(
        seed0.n, rel=1e-3
    )


def test_adaptive_with_lrs_runs_every_lr_and_goes_on(law_env, tmp_path):
    """--lrs: the budget's cells end in -lr...; the loop used to read the plain ids, found no run
    and stopped at the first budget for ever ("unfinished cells")."""
    spec = adaptive_spec(tmp_path, law_env, budgets=[1e11, 3e11], lrs=[1e-3, 3e-3])
    res = launch_adaptive(spec, poll_s=0.05)
    assert res.stopped == "" and len(res.steps) == 2 and res.final is not None
    assert all(len(s.cells) == 10 and all("-lr" in c for c in s.cells) for s in res.steps)


def test_ctrl_c_between_budgets_resumes_with_the_same_placement_and_no_retraining(law_env, tmp_path):
    """A KeyboardInterrupt after the second budget (before the third is placed): the relaunch submits
    only the last two budgets and places every budget as a run without the interrupt did."""
    whole = adaptive_spec(tmp_path / "a", law_env, name="whole")
    full = launch_adaptive(whole, poll_s=0.05)
    cut = adaptive_spec(tmp_path / "b", law_env, name="cut")

    def stop(step):
        if step.budget == 3e11:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        launch_adaptive(cut, poll_s=0.05, on_step=stop)
    assert sorted(read_record(Path(cut.output_dir) / cut.name)) == [1e11, 3e11]
    again = launch_adaptive(cut, poll_s=0.05)
    assert [len(s.launch.submitted) for s in again.steps] == [0, 0, 5, 5]
    assert [(s.centre.n, s.cells) for s in again.steps] == [(s.centre.n, s.cells) for s in full.steps]
    assert again.final.n == pytest.approx(full.final.n, rel=1e-12)


def test_adaptive_recovers_the_laws_optimum_within_1_5x_on_noisy_seeds(law_env, tmp_path, monkeypatch):
    """The issue's acceptance at 2 % noise on four noise seeds (twenty in docs/testing.md, session 39:
    0.77x .. 1.49x): the final fit's N_opt at 3e12 within 1.5x of the law's optimum on the family curve."""
    ratios = []
    for seed in range(4):
        monkeypatch.setenv("S39_NOISE", f"0.02:{seed}")
        spec = adaptive_spec(tmp_path / str(seed), law_env, name=f"noise{seed}")
        res = launch_adaptive(spec, poll_s=0.05)
        assert res.stopped == "" and res.errors == {}
        ratios.append(res.final.n / true_n_opt(spec, 3e12))
    assert all(1 / 1.5 < r < 1.5 for r in ratios), ratios


def test_a_refit_that_withholds_n_opt_says_every_reason_not_only_the_first(law_env, tmp_path, monkeypatch):
    """Noise seed 1 (2 %): the last refit withholds N_opt because the approaches disagree by 3.4x
    (approach 1's frontier against 2 and 3); the centre is then the anchor. Its note gave only the
    first reason, "E ran to its floor", which withholds nothing (the allocation does not depend on E)."""
    monkeypatch.setenv("S39_NOISE", "0.02:1")
    res = launch_adaptive(adaptive_spec(tmp_path, law_env, name="noise1"), poll_s=0.05)
    assert res.final.source == f"IsoFLOP minimum at 3e12 ({res.final.n:.3g})"  # at 3e12: not "grown"
    assert res.final.note.startswith("the fit withholds N_opt (approach 3: E ran to its floor")
    assert "; the approaches disagree on N_opt by 3.42x (more than 3x" in res.final.note


def test_a_prior_fitted_at_another_patch_size_is_named_in_the_plan(tmp_path):
    """The N_opt law of a fit at patch 4 centres a patch-2 slice as fitted; the plan's note says so
    (the dry run prints it). It said nothing."""
    from test_sweeps_design import demo_isoflop, synthetic_points

    from analysis.pipeline import AnalysisConfig, analyze
    from analysis.report import write_json
    from sweeps.design import load_fit_prior, plan_budgets

    notes = {}
    for p in (2, 4):
        path = tmp_path / f"p{p}.json"
        write_json(
            path, analyze(synthetic_points().assign(patch_size=p), AnalysisConfig(n_bootstrap=0, min_steps=0))
        )
        assert load_fit_prior(str(path)).patches == (float(p),)
        (plan,) = plan_budgets(demo_isoflop(budgets=[1e11], prior=str(path)))
        notes[p] = [n for n in plan.notes if "prior was fitted" in n]
    assert notes[2] == [] and notes[4] == [
        "the prior was fitted at patch 4, this slice is patch 2: its N_opt law is used as fitted (FLOPs per "
        "image differ by patch size)"
    ]
