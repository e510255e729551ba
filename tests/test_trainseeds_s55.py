"""`fit_scaling.py --train-seeds`: one fit per training seed (session 55).

1. on MLflow runs, the seed comes from each run's param `seed`, and a diverged seed of another seed's
   runs does not demote an lr in this seed's fit;
2. on a CSV with a seed column, the fit of one seed equals the fit of a CSV holding that seed's rows alone;
3. bad input: no seed in the runs, a seed no run has, a list that is not seeds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _fit_helpers import sweep, sweep_cli
from test_analysis_s40 import diverged_lr_store

from analysis.config import AnalysisConfig
from analysis.pipeline import analyze, prepare
from analysis.runs import load_csv, load_runs, select_seeds
from analysis.status import EXIT_BAD_INPUT, EXIT_NOT_IDENTIFIED

# ------------------------------------------------------------------ 1. MLflow runs


def test_a_seeds_fit_keeps_its_own_best_lr_and_only_its_own_diverged_seeds(tmp_path):
    """Pooled, lr 0.03 loses for its diverged seed 2 (session 40's rule). Seed 0 alone trained 0.03
    without diverging, so its fit keeps 0.03 (0.040 < 0.050); seed 2 alone keeps 0.01, its only finite lr,
    and the load's note names the diverged run."""
    runs = load_runs("div", tracking_uri=diverged_lr_store(tmp_path))  # seed 2 at lr 0.03: a NaN loss
    assert sorted(runs["seed"]) == [0, 0, 1, 1, 2]  # the param `seed`; the NaN run is not a point
    assert "settings" not in runs.attrs  # no seeds kept apart by other settings: no params carried along
    pooled = prepare(runs, AnalysisConfig(min_steps=0))
    assert list(pooled.points["lr"]) == [0.01] and pooled.points["n_seeds"].tolist() == [3]
    assert np.isnan(pooled.points["seed"]).all()  # a mean over seeds has no seed

    zero = prepare(runs, AnalysisConfig(min_steps=0, train_seeds=(0,)))
    assert list(zero.points["lr"]) == [0.03] and list(zero.points["loss"]) == [0.040]
    assert list(zero.points["seed"]) == [0]
    assert "--train-seeds 0: 2 of 5 runs, those trained with seed 0 (the runs' seeds: 0, 1, 2)" in zero.notes
    assert "diverged" not in next(n for n in zero.notes if "learning rates" in n)

    two = prepare(runs, AnalysisConfig(min_steps=0, train_seeds=(2,)))
    assert list(two.points["lr"]) == [0.01]
    assert any("left out for a value that is not a finite positive number" in n for n in two.notes)

    both = prepare(runs, AnalysisConfig(min_steps=0, train_seeds=(0, 1)))
    assert list(both.points["lr"]) == [0.03] and both.points["n_seeds"].tolist() == [2]


# ------------------------------------------------------------------ 2. a CSV with a seed column


def _two_seeds() -> pd.DataFrame:
    """`sweep()`'s runs twice, each seed with its own multiplicative noise (sd 2 %)."""
    base = sweep()
    rng = np.random.default_rng(55)
    seeds = [
        base.assign(seed=s, loss=base["loss"] * (1 + 0.02 * rng.standard_normal(len(base)))) for s in (0, 1)
    ]
    out = pd.concat(seeds, ignore_index=True)
    return out.assign(run_id=[f"{r}-s{s}" for r, s in zip(out["run_id"], out["seed"])])


def test_a_seeds_fit_is_the_fit_of_its_rows_alone(tmp_path):
    both, alone = tmp_path / "both.csv", tmp_path / "alone.csv"
    pts = _two_seeds()
    pts.to_csv(both, index=False)
    pts[pts["seed"] == 1].to_csv(alone, index=False)
    cfg = AnalysisConfig(n_bootstrap=0, min_steps=0)
    one = analyze(load_csv(both), AnalysisConfig(n_bootstrap=0, min_steps=0, train_seeds=(1,)))
    ref = analyze(load_csv(alone), cfg)
    assert one.parametric.params == ref.parametric.params
    assert len(one.points) == len(ref.points) == len(pts) // 2
    pooled = analyze(load_csv(both), cfg)  # the seeds averaged: another fit
    assert pooled.parametric.params["alpha"] != pytest.approx(ref.parametric.params["alpha"], rel=1e-3)


def test_the_cli_fits_one_seed_and_says_so_in_the_report(tmp_path):
    csv = tmp_path / "points.csv"
    _two_seeds().to_csv(csv, index=False)
    rc = sweep_cli(tmp_path, "--csv", str(csv), "--train-seeds", "0", "--bootstrap", "0")
    assert rc == EXIT_NOT_IDENTIFIED  # no intervals without a bootstrap
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "--train-seeds 0: 20 of 40 runs, those trained with seed 0 (the runs' seeds: 0, 1)" in report


# ------------------------------------------------------------------ 3. bad input


def test_seeds_that_no_run_has_are_named_with_the_seeds_there_are():
    pts = _two_seeds()
    with pytest.raises(ValueError, match=r"no run was trained with seed 3, 7; the runs' seeds are 0, 1$"):
        select_seeds(pts, (0, 3, 7))
    with pytest.raises(ValueError, match="the runs carry no training seed .*leave the flag out"):
        select_seeds(pts.drop(columns="seed"), (0,))
    with pytest.raises(ValueError, match="the runs carry no training seed"):
        select_seeds(pts.assign(seed=np.nan), (0,))
    assert select_seeds(pts, ())[0] is pts  # no seeds given: every run, no note
    assert select_seeds(pts, ())[1] is None


@pytest.mark.parametrize(
    "value, message",
    [
        ("1,x", "'1,x' is not a list of seeds; write whole numbers >= 0, e.g. 0,1"),
        ("-1", "'-1' is not a list of seeds"),
    ],
)
def test_the_cli_refuses_a_list_that_is_not_seeds(tmp_path, capsys, value, message):
    csv = tmp_path / "points.csv"
    _two_seeds().to_csv(csv, index=False)
    with pytest.raises(SystemExit) as e:
        sweep_cli(tmp_path, "--csv", str(csv), f"--train-seeds={value}", "--bootstrap", "0")
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()


def test_the_cli_names_a_seed_no_run_has_and_writes_no_report(tmp_path, capsys):
    csv = tmp_path / "points.csv"
    _two_seeds().to_csv(csv, index=False)
    assert (
        sweep_cli(tmp_path, "--csv", str(csv), "--train-seeds", "0,5", "--bootstrap", "0") == EXIT_BAD_INPUT
    )
    err = capsys.readouterr().err
    assert "error: --train-seeds 0,5: no run was trained with seed 5; the runs' seeds are 0, 1" in err
    assert not (tmp_path / "rep" / "report.md").exists()


def test_the_config_refuses_seeds_that_are_not_whole_numbers():
    with pytest.raises(ValueError, match=r"train_seeds \(--train-seeds\) must be whole numbers >= 0"):
        AnalysisConfig(train_seeds=(0, -1))
    with pytest.raises(ValueError, match="train_seeds"):
        AnalysisConfig(train_seeds=(0.5,))


# ------------------------------------------------------------------ 4. seeds kept apart by other settings


def _log(client, exp_id, seed: int, loss: float, **extra) -> None:
    from mlflow.entities import Metric, Param

    rid = client.create_run(exp_id).info.run_id
    params = {"model.params": 1000, "model.depth": 2, "model.hidden_size": 8, "model.patch_size": 2}
    params |= {"model.input_size": 16, "optim.schedule": "cosine", "optim.lr": "0.03", "seed": seed}
    params |= {"budget.train_flops": 6e9, "out": f"/runs/{rid}", "tracking.run_id": rid, **extra}
    metrics = [Metric("val/loss", loss, 0, 100), Metric("compute/train_flops", 6e9, 0, 100)]
    metrics.append(Metric("data/images_seen", 1e6, 0, 100))
    client.log_batch(rid, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
    client.set_terminated(rid, "FINISHED")


def test_seeds_that_differ_in_another_setting_are_named_as_not_averaged(tmp_path):
    """Seed 0 launched with FID (eval.eval_every 100), seeds 1 and 2 with --set eval.eval_every=0: the same
    training, but two cells to the analysis. The note names the cell and the setting; it is silent where
    nothing would be averaged anyway (one seed's side, --per-seed) and for a variant that repeats a seed
    (batch 16 and 32 of seed 0: an ablation, not seeds)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("split", artifact_location=(tmp_path / "a").as_uri())
    _log(client, exp_id, 0, 0.050, **{"eval.eval_every": 100})
    _log(client, exp_id, 1, 0.052, **{"eval.eval_every": 0})
    _log(client, exp_id, 2, 0.054, **{"eval.eval_every": 0})
    runs = load_runs("split", tracking_uri=uri)
    prep = prepare(runs, AnalysisConfig(min_steps=0))
    assert sorted(prep.points["n_seeds"]) == [1, 2]  # not one cell of three
    note = next(n for n in prep.notes if "not averaged" in n)
    assert note.startswith("1 cell(s) have seeds that are not averaged because their other settings differ: ")
    assert "DiT-d2-w8/2 at 6e+09 FLOPs (eval.eval_every 100 / 0)" in note
    quiet = [
        AnalysisConfig(min_steps=0, train_seeds=(1, 2)),
        AnalysisConfig(min_steps=0, average_seeds=False),
    ]
    for cfg in quiet:
        assert not any("not averaged" in n for n in prepare(runs, cfg).notes)
    two = next(
        n for n in prepare(runs, AnalysisConfig(min_steps=0, train_seeds=(0, 2))).notes if "not averaged" in n
    )
    assert "(eval.eval_every 100 / 0)" in two  # seeds 0 and 2 are still apart

    exp_id = client.create_experiment("ablation", artifact_location=(tmp_path / "b").as_uri())
    for batch in (16, 32):
        _log(client, exp_id, 0, 0.050, **{"budget.global_batch_size": batch})
    _log(client, exp_id, 1, 0.051, **{"budget.global_batch_size": 16})
    prep = prepare(load_runs("ablation", tracking_uri=uri), AnalysisConfig(min_steps=0))
    assert not any("not averaged" in n for n in prep.notes)
