"""The isoflop and adaptive designs (`sweeps.design`): sizes around a prior, shapes on the family
curve, the step window, priors from a fit, and the adaptive loop against a trainer whose final loss
follows a known law (this module is that trainer: ``trainer: test_sweeps_design``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_sweeps_fake_trainer import (
    WARM_IMPORTS,  # noqa: F401 - what a warm worker imports for it
    TrainConfig,  # the same config classes as the fake trainer
)

from dit_core.spec import FAMILIES, model_config, param_count, train_flops_per_image
from sweeps import launch as cli
from sweeps.design import (
    family_curve,
    ladder,
    launch_adaptive,
    load_fit_prior,
    make_prior,
    plan_budgets,
    read_record,
)
from sweeps.families import Scale
from sweeps.grid import DataSpec, ExecutorSpec, SweepSpec, expand, load_spec

# ------------------------------------------------------------------ the law trainer (a stand-in)
# L(N, D) = E + A / N^alpha + B / D^beta with D in images: Chinchilla's exponents (Hoffmann et al.
# 2022: alpha 0.34, beta 0.28), E/A/B chosen so that at 16 px the optimum sits ~6x above the
# 20-tokens-per-parameter prior: the prior's first slice cannot bracket it, the adaptive design must.
LAW = {"E": 0.03, "A": 1.8, "B": 0.26, "alpha": 0.34, "beta": 0.28}


def law_loss(n, d):
    return (
        LAW["E"]
        + LAW["A"] / np.asarray(n, float) ** LAW["alpha"]
        + LAW["B"] / np.asarray(d, float) ** LAW["beta"]
    )


def train(cfg: TrainConfig) -> dict:
    """Log at once what `analysis.runs.load_runs` reads: params (model.params, budget.train_flops,
    optim.schedule = cosine, ...), and at the final step val/loss = LAW(N, images),
    compute/train_flops and data/images_seen."""
    return log_law_run(cfg)


def log_law_run(cfg, factor: float = 1.0, params: dict | None = None) -> dict:
    """`train`'s run with its loss times ``factor`` and ``params`` logged beside the others."""
    import mlflow

    m = cfg.model
    dit = model_config(**dataclasses.asdict(m))  # name None: the custom shape in `m`
    n, fpi = param_count(dit), train_flops_per_image(dit)
    steps, batch = cfg.budget.max_steps, cfg.budget.global_batch_size
    images = steps * batch
    mlflow.set_tracking_uri(cfg.tracking.uri)
    with mlflow.start_run(run_id=cfg.tracking.run_id):
        flat = {f"model.{k}": v for k, v in dataclasses.asdict(m).items()}
        flat |= {f"budget.{k}": v for k, v in dataclasses.asdict(cfg.budget).items()}
        flat |= {"model.params": n, "optim.schedule": "cosine", "data.name": cfg.data.name, **(params or {})}
        mlflow.log_params({k: "" if v is None else str(v) for k, v in flat.items()})
        loss = float(law_loss(n, images)) * factor
        mlflow.log_metrics(
            {"val/loss": loss, "compute/train_flops": images * fpi, "data/images_seen": images}, step=steps
        )
        mlflow.set_tag("status", "finished")
    return {"loss": loss}


# ------------------------------------------------------------------ helpers


def demo_isoflop(config: str = "demo", **kw) -> SweepSpec:
    """The bundled sweep as an isoflop design, at the design's default step floor (20) unless given."""
    return load_spec(config).replace(design="isoflop", **{"min_steps": None, **kw})


def by_budget(cells) -> dict[float, list]:
    out: dict[float, list] = {}
    for c in cells:
        out.setdefault(c.budget, []).append(c)
    return out


def true_n_opt(spec: SweepSpec, compute: float) -> float:
    """argmin over the family curve of LAW(N, C / flops_per_image(N)): widths every 2, the curve's
    real depth by linear interpolation between its integer neighbours (N and FLOPs are linear in
    depth), counted with `dit_core.spec`."""
    curve = family_curve(spec.scale)
    best = (math.inf, math.nan)
    for w in range(8, 1024, 4):
        depth = max(1.0, curve.depth(w))
        lo, hi = math.floor(depth), math.floor(depth) + 1
        cfgs = [model_config(depth=d, hidden_size=w, num_heads=1, patch_size=2, input_size=16, in_channels=1,
                             num_classes=10) for d in (lo, hi)]  # fmt: skip
        t = depth - lo
        n = (1 - t) * param_count(cfgs[0]) + t * param_count(cfgs[1])
        f = (1 - t) * train_flops_per_image(cfgs[0]) + t * train_flops_per_image(cfgs[1])
        best = min(best, (float(law_loss(n, compute / f)), n))
    return best[1]


# ------------------------------------------------------------------ isoflop placement


def test_readme_isoflop_example_brackets_the_prior_with_five_usable_sizes(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--design", "isoflop", "--budgets", "1e11,3e11,1e12", "--min-steps", "50", "--dry-run"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "15 cells, isoflop design" in out and "20 tokens per parameter" in out
    spec = demo_isoflop(budgets=[1e11, 3e11, 1e12], min_steps=50)
    prior = make_prior(spec)
    for b, cells in by_budget(expand(spec)).items():
        n = np.array(sorted(c.params for c in cells), float)
        assert len(n) == 5 and all(c.steps >= 50 for c in cells)
        assert np.all(n[1:] / n[:-1] >= math.sqrt(2) - 1e-9)  # 2x targets: neighbours >= sqrt(2) apart
        centre = prior.n_opt(b, 2)
        assert n[0] < centre / 2 and n[-1] > 2 * centre  # brackets the prior on both sides
        assert n[0] > centre / 8 and n[-1] < 8 * centre  # and stays near the 4x spread
        assert all(c.cell_id in out for c in cells)


def test_ratio_prior_solves_the_compute_identity_on_real_shapes():
    spec = demo_isoflop(budgets=[1e12])
    prior = make_prior(spec)
    n_star = prior.n_opt(1e12, 2)
    # C(N) = flops_per_image(N) x images with images = 20 N / 64 tokens: log-interpolate the two
    # shapes of the curve around N* and check that they bracket C = 1e12 at N*
    curve = family_curve(spec.scale)
    pts = []
    for w in range(8, 200, 8):
        d = max(1, round(curve.depth(w)))
        kw = dict(patch_size=2, input_size=16, in_channels=1, num_classes=10)
        cfg = model_config(depth=d, hidden_size=w, num_heads=w // 8, **kw)
        n = param_count(cfg)
        pts.append((n, train_flops_per_image(cfg) * 20 * n / 64))
    n, c = np.array(pts).T
    c_at = math.exp(np.interp(math.log(n_star), np.log(n), np.log(c)))
    assert c_at == pytest.approx(1e12, rel=0.15)
    # the measurement: C ~ 264.5 N images at 16 px, so N* ~ sqrt(C 64 / (264.5 x 20))
    assert n_star == pytest.approx(math.sqrt(1e12 * 64 / (264.5 * 20)), rel=0.15)


def test_shapes_follow_the_family_curve_with_a_fixed_head_dim():
    scale = Scale(8, 4)
    curve = family_curve(scale)
    assert curve.head_dim == 8 and family_curve(Scale()).head_dim == 64
    for name, (d, w, _) in FAMILIES.items():  # the curve passes near every (scaled) family
        ratio = curve.depth(w / 8) / (d / 4)
        assert 0.6 < ratio < 1.6, name
    for c in expand(demo_isoflop("digits", budgets=[1e11, 1e12], patch_sizes=[2, 4], design_head_dim=16)):
        m = c.model
        assert m.num_heads * 16 == m.hidden_size and m.name == f"d{m.depth}w{m.hidden_size}"
        assert (
            math.floor(curve.depth(m.hidden_size)) <= m.depth <= max(1, math.ceil(curve.depth(m.hidden_size)))
        )
        assert c.cell_id == f"{m.name}-{c.patch_size}-{'1e11' if c.budget == 1e11 else '1e12'}"
    # patch variants are separate slices, each with its own distinct sizes
    slices = {(p.budget, p.patch): p for p in plan_budgets(demo_isoflop(budgets=[1e12], patch_sizes=[2, 4]))}
    assert sorted(slices) == [(1e12, 2), (1e12, 4)]
    assert all(len({c.params for c in p.cells}) == len(p.cells) >= 3 for p in slices.values())


def test_no_size_narrower_than_the_values_a_token_embeds():
    """A slice centred near the smallest widths: at patch 2 (grey, 4 values a token) width 4 is never
    proposed and width 8 is; at patch 4 (16 values) nothing up to width 16 is; RGB at patch 2 (12
    values) starts at 16."""
    low = demo_isoflop(budgets=[3e10], isoflop_centres={3e10: 2e3})
    widths = sorted({c.model.hidden_size for c in expand(low)})
    assert widths[0] == 8, widths
    curve = family_curve(low.scale)
    assert [c.model.hidden_size for c in ladder(low, 2, curve, "total", 1e4)][:2] == [8, 8]  # d2, d3
    assert ladder(low, 4, curve, "total", 1e5)[0].model.hidden_size == 20
    rgb = low.replace(data={"in_channels": 3}, train={**low.train, "data.channels": 3})
    assert ladder(rgb, 2, curve, "total", 1e5)[0].model.hidden_size == 16


def test_sizes_spread_and_count_options():
    wide = by_budget(expand(demo_isoflop(budgets=[1e12], sizes_per_budget=7, size_spread=8.0)))[1e12]
    n = sorted(c.params for c in wide)
    assert len(n) == 7 and n[-1] / n[0] > 20  # ~64x span
    with pytest.raises(ValueError, match="sizes_per_budget 2 < 3"):
        demo_isoflop(sizes_per_budget=2)
    with pytest.raises(ValueError, match="closer than 1.2x"):
        demo_isoflop(sizes_per_budget=9, size_spread=1.5)


def test_a_step_window_that_leaves_fewer_than_three_sizes_is_an_error():
    with pytest.raises(
        ValueError, match=r"IsoFLOP budget 1e11 spans [0-2] model size\(s\) with 5000\.\.100000 steps"
    ):
        expand(demo_isoflop("digits", budgets=[1e11], min_steps=5000))
    # a window that cuts one side shifts the slice and says so
    (plan,) = plan_budgets(demo_isoflop("digits", budgets=[1e11], min_steps=700))
    assert all(c.steps >= 700 for c in plan.cells) and len(plan.cells) >= 3
    assert any("cut" in n for n in plan.notes)


def test_cli_refuses_model_options_of_the_grid_design(capsys):
    assert cli.main(["--design", "isoflop", "--grid", "S,B", "--dry-run"]) == 2
    assert "--grid choose the models of the grid design" in capsys.readouterr().err
    assert cli.main(["--design", "isoflop", "--sizes-per-budget", "2", "--dry-run"]) == 2
    assert (
        "sizes_per_budget 2 < 3: an IsoFLOP parabola needs 3 sizes per budget "
        "(--sizes-per-budget 3 or more; the default is 5)" in capsys.readouterr().err
    )


# ------------------------------------------------------------------ prior from a fit


def synthetic_points(budgets=(1e18, 1e19, 1e20, 1e21), k=6.0) -> pd.DataFrame:
    rows = []
    for c in budgets:
        n_mid = 0.1 * math.sqrt(c / k)
        for f in np.logspace(-1, 1, 7):
            n = n_mid * f
            d = c / (k * n)
            rows.append({"N": n, "D": d, "C": c, "loss": float(law_loss(n, d)), "run_id": f"{c:g}-{f:.3f}"})
    return pd.DataFrame(rows)


def test_prior_from_a_fit_uses_its_parametric_law(tmp_path):
    from analysis.parametric import optimal_allocation
    from analysis.pipeline import AnalysisConfig, analyze
    from analysis.report import write_json

    an = analyze(synthetic_points(), AnalysisConfig(n_bootstrap=0, min_steps=0))
    path = write_json(tmp_path / "fit.json", an)
    prior = load_fit_prior(str(path))
    assert prior.kind == "parametric"
    want = optimal_allocation(an.parametric.params, 3e19, an.flops_per_param_datum)[0]
    assert prior.n_opt(3e19, 2) == pytest.approx(float(want), rel=1e-9)
    # ... which is the law's own N_opt for C = 6 N D (Hoffmann et al. eq. 4)
    a, b = LAW["alpha"], LAW["beta"]
    closed = (a * LAW["A"] / (b * LAW["B"])) ** (1 / (a + b)) * (3e19 / 6.0) ** (b / (a + b))
    assert prior.n_opt(3e19, 2) == pytest.approx(closed, rel=0.05)
    assert prior.path == str(path) and prior.n_axis == "total"
    spec = demo_isoflop(budgets=[1e11], prior=str(path))
    assert (
        plan_budgets(spec)[0].source == f"prior: parametric law of {path} (overall status {an.status.status})"
    )

    data = json.loads(path.read_text())
    data.update(a=None, approach3_parametric={"status": "not_identified"}, status="not_identified")
    data["approach2_isoflop"]["status"] = "censored"
    data["approach1_frontier"]["status"] = "not_identified"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    del data["approach2_isoflop"]["N_opt"]
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError) as err:
        load_fit_prior(str(bad))
    assert str(err.value).startswith(
        f"--prior {bad}: no usable N_opt law (status not_identified: parametric law not_identified, "
        "allocation withheld, isoflop censored without an N_opt law, frontier not_identified)"
    )
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="not an analysis results.json"):
        load_fit_prior(str(tmp_path / "other.json"))
    with pytest.raises(ValueError, match="no such file"):
        load_fit_prior(str(tmp_path / "missing.json"))


def test_prior_falls_back_to_the_isoflop_then_the_frontier_law(tmp_path):
    """Without an identified allocation the prior is approach 2's N_opt(C) = A C^-alpha, else
    approach 1's, on the fit's own parameter axis."""
    from analysis.pipeline import AnalysisConfig, analyze
    from analysis.report import write_json

    an = analyze(synthetic_points(), AnalysisConfig(n_bootstrap=0, min_steps=0))
    data = json.loads(write_json(tmp_path / "fit.json", an).read_text())
    data.update(a=None, approach3_parametric={"status": "not_identified"}, status="not_identified")
    data["axes"]["params"] = "non_embedding"
    iso = {"status": "ok", "N_opt": {"A": 2.0, "alpha": -0.4}}
    fr = {"status": "extrapolating", "N_opt": {"A": 3.0, "alpha": -0.5}}
    for parts, kind, law in (((iso, fr), "isoflop", iso), (({"status": "censored"}, fr), "frontier", fr)):
        data["approach2_isoflop"], data["approach1_frontier"] = parts
        path = tmp_path / f"{kind}.json"
        path.write_text(json.dumps(data))
        prior = load_fit_prior(str(path))
        assert (prior.kind, prior.path, prior.n_axis) == (kind, str(path), "non_embedding")
        want = law["N_opt"]["A"] * 1e12 ** -law["N_opt"]["alpha"]
        assert prior.n_opt(1e12, 2) == pytest.approx(want, rel=1e-12)
        name = {"isoflop": "IsoFLOP", "frontier": "frontier"}[kind]
        assert prior.describe() == f"prior: {name} N_opt law of {path} (overall status not_identified)"


def test_step_window_notes_say_which_end_it_cuts():
    """A tight step window moves the sizes off the prior's centre: the plan's note says which end
    and, when every size lands on one side of the centre, that too."""
    (small,) = plan_budgets(demo_isoflop(budgets=[1e11], isoflop_max_steps=300, min_steps=20))
    assert min(c.params for c in small.cells) > small.centre
    assert small.notes == [
        f"the step window 20..300 cuts the small end (smallest 3.37e+04 for a target "
        f"{small.centre / 4:.3g}); every size is above the centre"
    ]
    (mid,) = plan_budgets(demo_isoflop(budgets=[1e11], isoflop_max_steps=700, min_steps=20))
    assert len(mid.notes) == 1 and mid.notes[0].endswith(f"for a target {mid.centre / 4:.3g})")
    (large,) = plan_budgets(demo_isoflop(budgets=[1e11], min_steps=500))
    assert max(c.params for c in large.cells) < large.centre
    assert large.notes[-1].startswith("the step window 500..100000 cuts the large end (largest ")
    assert large.notes[-1].endswith(f"for a target {large.centre * 4:.3g}); every size is below the centre")


# ------------------------------------------------------------------ adaptive


def law_spec(tmp_path: Path, uri: str, **kw) -> SweepSpec:
    return SweepSpec(
        name="adaptive",
        experiment=f"design-{tmp_path.name}",
        tracking_uri=uri,
        output_dir=str(tmp_path / "runs"),
        scale=Scale(8, 4),
        patch_sizes=[2],
        budgets=[1e11, 3e11, 1e12, 3e12],
        design="adaptive",
        min_steps=50,
        batch_size=16,
        data=DataSpec(),
        trainer="test_sweeps_design",
        final_eval=False,
        executor=ExecutorSpec(name="debug"),
        **kw,
    )


def test_adaptive_recentres_on_the_fit_and_recovers_the_laws_optimum(job_env, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(
        str(Path(__file__).parent)
    )  # the debug executor imports this module in-process
    spec = law_spec(tmp_path, job_env)
    prior = make_prior(spec)
    truth = {b: true_n_opt(spec, b) for b in spec.budgets}
    assert truth[1e11] > 4 * prior.n_opt(1e11, 2)  # the prior's first slice cannot reach the optimum

    res = launch_adaptive(spec, poll_s=0.05)
    assert res.stopped == "" and res.errors == {} and len(res.steps) == 4
    first, last = res.steps[0], res.steps[-1]
    assert first.centre.source.startswith("prior")
    assert all(s.centre.note for s in res.steps[1:])  # each refit says why it chose its centre
    assert all("prior" not in s.centre.source or "grown" in s.centre.source for s in res.steps[1:])
    sizes = {}
    for s in res.steps:
        placed = spec.replace(budgets=[s.budget], isoflop_centres={s.budget: s.centre.n})
        sizes[s.budget] = [c.params for c in expand(placed)]
    assert max(sizes[1e11]) < truth[1e11]  # censored: the best size is the largest
    assert min(sizes[3e12]) < truth[3e12] < max(sizes[3e12])  # the last budget brackets it
    ratio = res.final.n / truth[3e12]
    assert 1 / 1.5 < ratio < 1.5, (res.final, truth[3e12])
    assert last.centre.n / truth[3e12] == pytest.approx(1.0, abs=0.5)

    # relaunch: nothing submitted, the same centres and cells
    record = read_record(Path(spec.output_dir) / spec.name)
    again = launch_adaptive(spec, poll_s=0.05)
    assert all(s.launch.submitted == [] for s in again.steps)
    assert [s.cells for s in again.steps] == [s.cells for s in res.steps]
    assert read_record(Path(spec.output_dir) / spec.name) == record
    # the CLI on the same sweep: nothing to submit, the placed budgets and the status table
    conf = tmp_path / "law.yaml"
    conf.write_text(yaml.safe_dump(dataclasses.asdict(spec)))
    assert cli.main(["-c", str(conf), "--poll", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "budget 3e12: centred on N" in out and "0 submitted, 5 already finished" in out
    assert "fit after the last budget: N_opt at 3e12" in out and out.count(" finished ") >= 20
    # other settings would place other cells for the recorded budgets: refused
    with pytest.raises(ValueError, match="budget 1e11 of adaptive sweep 'adaptive' was placed as"):
        launch_adaptive(spec.replace(size_spread=3.0), poll_s=0.05)
    with capsys.disabled():
        print(f"\nadaptive: N_opt(3e12) fitted {res.final.n:.4g}, true {truth[3e12]:.4g} ({ratio:.3f}x)")
        for s in res.steps:
            print(
                f"  {s.budget:.0e}: centre {s.centre.n:.3g} ({s.centre.source}); true {truth[s.budget]:.3g}"
            )


def test_status_of_an_isoflop_sweep_whose_prior_file_is_gone(job_env, tmp_path, capsys, monkeypatch):
    """``status`` places an isoflop design's cells again from its ``--prior`` file; once that file is
    gone it still shows the sweep's runs from MLflow, and says why the design is not placed."""
    from analysis.pipeline import AnalysisConfig, analyze
    from analysis.report import write_json
    from sweeps.runner import launch

    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # the debug executor imports this module
    fit = write_json(
        tmp_path / "fit.json", analyze(synthetic_points(), AnalysisConfig(n_bootstrap=0, min_steps=0))
    )
    base = law_spec(tmp_path, job_env)
    spec = base.replace(
        name="iso", design="isoflop", budgets=[1e11], prior=str(fit),
        isoflop_centres={1e11: make_prior(base).n_opt(1e11, 2)},  # a slice these shapes can place
    )  # fmt: skip
    cells = sorted(c.cell_id for c in expand(spec))
    assert len(cells) == 5 and launch(spec, poll_s=0.05).errors == {}
    argv = ["status", "--name", spec.name, "--output-dir", spec.output_dir]

    def finished_rows() -> list[str]:
        assert cli.main(argv) == 0
        out = capsys.readouterr().out
        return out, sorted(line.split()[0] for line in out.splitlines() if " finished " in line)

    capsys.readouterr()
    out, rows = finished_rows()
    assert rows == cells and "not placed again" not in out
    fit.unlink()
    out, rows = finished_rows()
    assert rows == cells and "5 finished" in out
    assert f"isoflop design not placed again (--prior {fit}: no such file" in out


def test_refit_falls_back_to_the_last_isoflop_minimum_then_to_the_prior():
    from sweeps.design import refit_centre

    spec = load_spec("digits").replace(budgets=[1e11, 1e12], design="adaptive")
    prior = make_prior(spec)
    a, b, k = LAW["alpha"], LAW["beta"], 264.0
    n_law = (a * LAW["A"] / (b * LAW["B"])) ** (1 / (a + b)) * (1e11 / k) ** (b / (a + b))
    n = n_law * np.logspace(-0.6, 0.6, 5)  # 5 sizes around the law's optimum: too few for the law
    one = pd.DataFrame({"N": n, "D": 1e11 / (k * n), "C": 1e11, "loss": law_loss(n, 1e11 / (k * n))})
    c = refit_centre(spec, prior, one, [1e11], 1e12, 2)
    assert c.source.startswith("IsoFLOP minimum at 1e11") and "no fit yet" in c.note
    profile_min = float(c.source.split("(")[1].split(")")[0])
    assert c.source == f"IsoFLOP minimum at 1e11 ({profile_min:.3g}) grown with the prior's exponent"
    growth = prior.n_opt(1e12, 2) / prior.n_opt(1e11, 2)
    assert c.n == pytest.approx(profile_min * growth, rel=3e-3)  # profile_min printed to 3 digits
    assert profile_min == pytest.approx(n_law, rel=0.2)
    c = refit_centre(spec, prior, one.iloc[:0], [1e11], 1e12, 2)  # nothing to fit
    assert c.source.endswith("(fit not identified)") and c.n == pytest.approx(prior.n_opt(1e12, 2))


def test_refit_keeps_the_anchor_when_the_fit_strays_and_ignores_a_one_size_budget():
    from sweeps.design import refit_centre

    spec = load_spec("digits").replace(budgets=[1e11, 1e12], design="adaptive")
    prior, a, b, k = make_prior(spec), LAW["alpha"], LAW["beta"], 264.0
    rows = []
    for c in (1e10, 3e10, 1e11, 3e11):
        n_law = (a * LAW["A"] / (b * LAW["B"])) ** (1 / (a + b)) * (c / k) ** (b / (a + b))
        for n in n_law * np.logspace(-0.8, 0.8, 7):
            rows.append({"N": n, "D": c / (k * n), "C": c, "loss": float(law_loss(n, c / (k * n)))})
    pts, done = pd.DataFrame(rows), [1e10, 3e10, 1e11, 3e11]
    fit = refit_centre(spec, prior, pts, done, 1e12, 2)
    assert fit.source.startswith("fit of budgets 1e10,3e10,1e11,3e11: parametric law")
    # the same fit, now more than size_spread from the 3e11 IsoFLOP minimum: the anchor, and why
    tight = dataclasses.replace(spec, size_spread=1.0001)
    c = refit_centre(tight, prior, pts, done, 1e12, 2)
    assert c.source.startswith("IsoFLOP minimum at 3e11") and c.n != pytest.approx(fit.n, rel=1e-3)
    assert c.note == f"the fit's N_opt {fit.n:.3g} ({fit.source}) is more than 1.0001x from this anchor"
    # one size at the last budget is no IsoFLOP slice: neither a minimum nor a best size
    one = pd.DataFrame({"N": [3e4], "D": [1e11 / (k * 3e4)], "C": [1e11]})
    one["loss"] = law_loss(one.N, one.D)
    c = refit_centre(spec, prior, one, [1e11], 1e12, 2)
    assert c.source == prior.describe() + " (fit not identified)" and c.note.startswith("no fit yet (")
    assert c.n == pytest.approx(prior.n_opt(1e12, 2))


def test_a_prior_on_non_embedding_parameters_places_sizes_on_that_axis():
    """A fit on non-embedding parameters gives its N_opt on that axis: the same centre places larger
    models than on the total axis (the embeddings no longer count towards N)."""
    from sweeps.design import FitPrior

    law = {"A": 30341 / 1e11**0.5, "alpha": -0.5}  # N_opt(1e11) = 30,341 on either axis
    plans = {ax: plan_budgets(demo_isoflop(budgets=[1e11]), FitPrior("fit.json", "frontier", law, ax))[0]
             for ax in ("total", "non_embedding")}  # fmt: skip
    total, non_emb = ([c.params for c in plans[ax].cells] for ax in ("total", "non_embedding"))
    assert plans["total"].centre == plans["non_embedding"].centre == pytest.approx(30341)
    assert total != non_emb and min(non_emb) > min(total)


def test_adaptive_needs_one_patch_size_and_a_head_dim_of_whole_4_channel_groups(tmp_path):
    spec = law_spec(tmp_path, "sqlite:///unused.db").replace(patch_sizes=[2, 4])
    with pytest.raises(
        ValueError,
        match=r"^the adaptive design refits one N_opt\(C\) law: give one patch size \(--patch 2\), "
        r"got \[2, 4\]$",
    ):
        launch_adaptive(spec)
    with pytest.raises(ValueError, match=r"^launch_adaptive needs design 'adaptive', got 'isoflop'$"):
        launch_adaptive(spec.replace(patch_sizes=[2], design="isoflop"))
    with pytest.raises(ValueError, match=r"\(C spans 5\.7e\+12\.\.2\.99e\+36 FLOPs there\); change the"):
        plan_budgets(demo_isoflop(budgets=[1e11], tokens_per_param=1e6))
    with pytest.raises(
        ValueError, match=r"^head dim 6 must be a positive multiple of 4 .*; give --head-dim 8, 16, \.\.\.$"
    ):
        family_curve(Scale(8, 4), head_dim=6)
