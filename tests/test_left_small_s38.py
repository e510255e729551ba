"""Session 38: what was left small in the launcher, `analysis.runs.best_lr` and `DiTConfig.validate`.
Each test failed on the code before its fix (docs/_s38_left-small.md)."""

from __future__ import annotations

import pandas as pd
import pytest
from _sweep_specs import fake_final_weight, fake_trainer_spec, runs_by_cell, states_of
from mlflow.exceptions import MlflowException

from analysis.runs import best_lr
from sweeps import runner
from sweeps.grid import ExecutorSpec, expand
from sweeps.runner import launch
from sweeps.warm import WarmExecutor


def capture_jobs(monkeypatch) -> list:
    """The job handles a launch submits (warm worker's or submitit's), appended as they go out."""
    jobs: list = []
    warm_submit = WarmExecutor.submit

    def warm(self, fn, task):
        jobs.append(warm_submit(self, fn, task))
        return jobs[-1]

    monkeypatch.setattr(WarmExecutor, "submit", warm)
    make = runner.make_executor

    def making(*args, **kwargs):
        ex = make(*args, **kwargs)
        submit = ex.submit

        def plain(fn, task):
            jobs.append(submit(fn, task))
            return jobs[-1]

        ex.submit = plain
        return ex

    monkeypatch.setattr(runner, "make_executor", making)
    return jobs


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "submitit"])
def test_a_failed_record_cancels_the_jobs_it_sent_and_a_relaunch_trains_each_cell_once(
    job_env, tmp_path, monkeypatch, warm
):
    """The tracking server failed (after its retries) while the launcher wrote the submitted jobs into
    their cells' runs: the launch raised, but its jobs trained on unrecorded (a warm worker's ran to the
    end, as `missing` cells), and a relaunch would submit a second job into each run. Now the launcher
    cancels the jobs it just sent, waits until they have ended, and says so; the relaunch then trains
    each cell once more, into its one run, to the same weights. Here the first cell's record is written
    and the second's fails. Failed before the fix: the MLflow error itself, the jobs still running (or,
    warm, their runs FINISHED without a record)."""
    # the jobs wait before their last step until `release` exists (or their Ctrl-C comes): under CI's load
    # the record and the cancel took longer than a job's 8 steps of 0.2 s, and a job trained to its end
    release = tmp_path / "release"
    spec = fake_trainer_spec(
        tmp_path, job_env, name=f"rec-{'warm' if warm else 'plain'}", experiment="rec", budgets=[2.6e9],
        train={"step_s": 0.2, "hold_file": str(release)},
        executor=ExecutorSpec(name="local", local_warm=warm),
    )  # fmt: skip
    cells = {c.cell_id: c for c in expand(spec)}
    assert len(cells) == 2 and spec.executor.local_parallelism == 2  # both go out in one batch
    jobs = capture_jobs(monkeypatch)
    real = runner.record_submissions
    sent: list = []

    def record_then_fail(uri, subs):
        sent.extend(subs)
        real(uri, subs[:1])  # the first record is written, then the server gives up
        raise MlflowException("API request to endpoint /api/2.0/mlflow/runs/log-batch failed: 503")

    monkeypatch.setattr(runner, "record_submissions", record_then_fail)
    with pytest.raises(RuntimeError) as e:
        launch(spec, poll_s=0.2)
    msg = str(e.value)
    assert len(jobs) == 2 and len(sent) == 2
    assert "503" in msg and "cancelled" in msg and "Launch again once the tracking server answers" in msg
    assert all(str(j.job_id) in msg for j in jobs) and all(c in msg for c in cells)
    assert all(j.done() for j in jobs)  # no job of it runs on
    states = states_of(spec, job_env)
    assert all(st.run_status != "FINISHED" for st in states.values()), states  # none trained to its end
    # the recorded cell's job is over (before or while its trainer ran), the other's is recorded nowhere
    recorded = next(st for st in states.values() if st.run_id == sent[0].run_id)
    assert recorded.state in ("failed", "interrupted"), states
    # the other's is recorded nowhere: missing, or, where its trainer had started the run before the
    # cancel reached it (a warm worker under load), the run's unrecorded job (interrupted)
    (other,) = [st for st in states.values() if st is not recorded]
    assert other.state == "missing" or (other.state, other.unrecorded) == ("interrupted", True), states
    run_ids = {st.cell_id: st.run_id for st in states.values()}

    monkeypatch.setattr(runner, "record_submissions", real)  # the server is back
    release.touch()
    res = launch(spec, poll_s=0.2)
    assert sorted(res.submitted) == sorted(cells) and res.errors == {}
    by_cell = runs_by_cell(job_env, spec.experiment)
    for cid, cell in cells.items():
        (run,) = by_cell[cid]  # one run per cell, the one its first submission went into
        assert run.info.run_id == run_ids[cid] and run.info.status == "FINISHED"
        out = res.results[cid]
        assert out["run_id"] == run_ids[cid]
        assert abs(out["weight"] - fake_final_weight(cell)) <= 1e-12 * fake_final_weight(cell)
    assert all(j.done() for j in jobs) and len(jobs) == 4  # two jobs in all per cell, one after the other


@pytest.mark.parametrize("order", ["small-lr-first", "large-lr-first"])
def test_best_lr_keeps_the_smaller_of_two_lrs_tied_on_the_loss_whatever_the_rows_order(order):
    """Two lrs of a cell whose final losses are equal (rounded in a CSV): `best_lr` kept the one whose row
    came first (`idxmin`), so the same data in another order fitted another point. Now the smaller lr wins
    the tie (docs/analysis.md), in either order. Failed before the fix: large-lr-first kept 3e-3."""
    rows = [
        {"model": "m", "N": 1e6, "budget": 1e15, "C": 1e15, "step": 100, "final": True, "lr": lr,
         "loss": loss, "run_id": f"r{lr:g}"}
        for lr, loss in ((1e-3, 0.5), (3e-3, 0.5), (1e-2, 0.7))
    ]  # fmt: skip
    if order == "large-lr-first":
        rows.reverse()
    pts = pd.DataFrame(rows).assign(lr_group=None)
    kept, dropped, note = best_lr(pts)
    assert list(kept["lr"]) == [1e-3]
    assert sorted(dropped["lr"]) == [3e-3, 1e-2] and "lost to lr 0.001" in dropped["reason"].iloc[0]
    assert "m at 1e+15 FLOPs: 0.001" in note


def test_dit_config_says_input_size_not_latent_size_for_a_patch_that_does_not_divide_it():
    """`DiTConfig.validate` told a pixel model (in_channels=3) to "use a patch size that divides the latent
    size": there is no latent. Now it names the input size and its field, for pixel and latent models
    alike. Failed before the fix: the message ended in "the latent size"."""
    from dit_core.spec import DiTConfig

    with pytest.raises(ValueError) as e:  # `__post_init__` validates
        DiTConfig(depth=1, hidden_size=16, num_heads=2, patch_size=3, input_size=16, in_channels=3)
    assert str(e.value) == (
        "DiTConfig.patch_size: patch_size=3 does not divide input_size=16; use a patch size that divides "
        "the input size (input_size)"
    )
