"""Learning rates as a sweep axis (`SweepSpec.lrs`, `--lrs`): every cell once per lr, the lr in the
cell id and in the task's `optim.lr`, and runs the analysis sees as one cell at several lrs, keeping
the best (`analysis.runs.best_lr`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_sweeps_real import tiny_spec
from test_sweeps_seeds import URI, logged_params

from analysis.runs import LR_PARAMS, best_lr, load_runs, replicate_key
from sweeps import launch as cli
from sweeps.grid import expand, load_spec
from sweeps.runner import launch
from sweeps.task import make_task


def test_lrs_repeat_every_cell_with_the_lr_in_its_id_and_its_optim_lr():
    spec = load_spec("demo").replace(lrs=[1e-2, 3e-2], seeds=[0, 1])
    plain, cells = expand(load_spec("demo")), expand(spec)
    suffixes = ("-lr1e-2", "-lr1e-2-s1", "-lr3e-2", "-lr3e-2-s1")
    assert [c.cell_id for c in cells] == [c.cell_id + s for c in plain for s in suffixes]
    assert [(c.lr, c.seed) for c in cells[:4]] == [(1e-2, 0), (1e-2, 1), (3e-2, 0), (3e-2, 1)]
    tasks = [make_task(spec, c, Path("s"), URI) for c in cells[:4]]
    assert [t.overrides["optim.lr"] for t in tasks] == [1e-2, 1e-2, 3e-2, 3e-2]  # the demo's 3e-2 replaced
    assert len({t.run_dir for t in tasks}) == 4
    # the analysis: the two seeds of an lr are one replicate; the two lrs are one lr group
    params = [logged_params(t.overrides) for t in tasks]
    reps = [replicate_key(p) for p in params]
    assert reps[0] == reps[1] != reps[2] == reps[3]
    assert len({replicate_key(p, without=LR_PARAMS) for p in params}) == 1
    other = logged_params(make_task(spec, cells[4], Path("s"), URI).overrides)  # the next model
    assert replicate_key(other, without=LR_PARAMS) != replicate_key(params[0], without=LR_PARAMS)


@pytest.mark.parametrize(
    ("lrs", "phrase"),
    [
        ([0.0], "lr 0.0 must be a positive number"),
        ([float("nan")], "lr nan must be a positive number"),
        ([True], "lr True must be a positive number"),
        ([1e-2, 0.01], "repeat an lr"),
    ],
)
def test_bad_lrs_are_refused(lrs, phrase):
    with pytest.raises(ValueError, match=phrase):
        load_spec("demo").replace(lrs=lrs)


def test_the_cli_takes_lrs_and_a_yaml_wants_a_list(tmp_path, capsys):
    assert cli.main(["--dry-run", "--grid", "S", "--budgets", "1e11", "--lrs", "1e-2,3e-2"]) == 0
    out = capsys.readouterr().out
    assert "S-2-1e11-lr1e-2" in out and "S-2-1e11-lr3e-2" in out
    assert cli.main(["--dry-run", "--grid", "S", "--budgets", "1e11", "--lrs", "fast"]) == 2
    assert "--lrs" in capsys.readouterr().err
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nlrs: 1e-2\n")
    with pytest.raises(ValueError, match=r"lrs must be a list, e.g. `lrs: \[1e-2\]`"):
        load_spec(path)
    path.write_text("name: s\nlrs: [1e-2, 3e-2]\n")  # YAML 1.1 reads 1e-2 as text: parsed as a number
    assert load_spec(path).lrs == [1e-2, 3e-2]


@pytest.mark.slow
def test_one_cell_at_two_lrs_through_the_real_trainer_is_one_cell_to_the_analysis(tmp_path, job_env):
    """The real trainer logs `optim.lr` and the peak it derives (`optim.lr_effective`): the two runs
    share an lr group, and `best_lr` keeps the one with the lower final validation loss. Under an lr rule
    across budgets (here (C / 1e8)^-0.5 at C ~ 3e8) the analysis names each lr with the peak it became."""
    spec = tiny_spec(tmp_path, job_env)
    rule = {"optim.lr_flops_ref": 1e8, "optim.lr_flops_exponent": 0.5}
    spec = spec.replace(shapes=[[1, 32, 2]], lrs=[1e-4, 3e-3], train={**spec.train, **rule})
    res = launch(spec, poll_s=0.5)
    assert res.errors == {} and sorted(res.submitted) == ["d1w32h2-4-3e8-lr1e-4", "d1w32h2-4-3e8-lr3e-3"]
    pts = load_runs(spec.experiment, job_env)
    finals = pts[pts["final"]]
    assert sorted(finals["lr"]) == [1e-4, 3e-3] and finals["lr_group"].nunique() == 1
    assert finals["replicate"].nunique() == 2
    kept, dropped, note = best_lr(pts)
    winner = finals.loc[finals["loss"].idxmin(), "lr"]
    assert set(kept["lr"]) == {winner} and set(dropped["lr"]) == {1e-4, 3e-3} - {winner}
    assert note.startswith("1 cell(s) trained at several learning rates")
    ratio = finals["lr_peak"] / finals["lr"]  # the rule's factor, the same for both lrs of the cell
    assert ratio.iloc[0] == pytest.approx(ratio.iloc[1], rel=1e-9) and 0.5 < ratio.iloc[0] < 0.65
    peak = {lr: p for lr, p in zip(finals["lr"], finals["lr_peak"])}
    loser = ({1e-4, 3e-3} - {winner}).pop()
    assert f": {winner:.3g} (peak {peak[winner]:.3g})" in note
    named = {lr: f"lr {lr:.3g} (peak {p:.3g})" for lr, p in peak.items()}
    assert dropped["reason"].iloc[0] == f"{named[loser]} lost to {named[winner]} in its cell"
