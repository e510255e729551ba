"""Session 43 (swedge): what a dry run says where SLURM is asked for and no cluster answers, the lr redraw
of cells trained at one lr (the hand mutant `redraw_one_lr_cells`), and a second Ctrl-C of a local
launch. The CLI's tests carry "cli" in their names: `tests/hand_mutants.txt` runs this file for the
mutants of `analysis/runs.py` with ``-k 'not cli'``, which keeps the redraw tests alone."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _sweep_specs import (
    fake_sweep_yaml,
    fake_trainer_spec,
    one_s_cell,
    pid_alive,
    states_of,
    step_of,
    wait_for,
    write_sweep_config,
)

from analysis.runs import LrRedraw, best_lr, tidy
from sweeps import launch as cli
from sweeps.grid import ExecutorSpec, expand
from sweeps.runner import sweep_dir

REPO = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------ dry run: no cluster, nothing to submit


def _main(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.fixture(scope="module")
def done(tmp_path_factory, session_mlflow_dir) -> tuple[list[str], str, Path]:
    """The one-cell sweep ``w0`` (S-2-3e9) launched and finished on the debug executor, in experiment
    ``w0-<folder>`` of the session's store: (its command line, store URI, the folder, which holds an
    empty ``bin``: a PATH without sbatch, sinfo, squeue or sacct)."""
    root = tmp_path_factory.mktemp("swedge")
    yaml_text = fake_sweep_yaml("w0", f"w0-{root.name}")
    (root / "w0.yaml").write_text(yaml_text)
    (root / "slurm.yaml").write_text(yaml_text + "executor: {name: slurm}\n")
    (root / "bin").mkdir()
    uri = f"sqlite:///{session_mlflow_dir}/mlflow.db"  # made once per session
    argv = ["--tracking-uri", uri, "--output-dir", str(root / "runs")]
    assert cli.main(["-c", str(root / "w0.yaml"), *argv, "--executor", "debug"]) == 0
    return argv, uri, root


NO_SBATCH = "but `sbatch` is not on PATH; bring a cluster up (`sudo bash slurm/slurm-ci.sh up`), load"


@pytest.mark.parametrize("how", ["flag", "config"])
def test_cli_dry_run_of_a_finished_slurm_sweep_without_a_cluster_prices_nothing_and_says_so(
    done, capsys, monkeypatch, how
):
    """`--executor slurm` (or `executor.name: slurm` in the config), no sbatch on PATH, every cell
    finished: the dry run printed no bill and then "(a real launch here refuses; the bill is priced all
    the same)". Now it says that a launch here refuses although it would submit nothing, and where the
    sweep can be read; the refusal names the config's key too (it said "--executor slurm" where only
    the config asked for SLURM). A real launch here does refuse (exit 2), submitting nothing."""
    argv, _, root = done
    monkeypatch.setenv("PATH", str(root / "bin"))
    given = (
        ["-c", str(root / "w0.yaml"), "--executor", "slurm"]
        if how == "flag"
        else ["-c", str(root / "slurm.yaml")]
    )
    code, out, err = _main([*given, *argv, "--dry-run"], capsys)
    assert code == 0, err
    assert "priced all the same" not in out and "estimate:" not in out, out
    assert "a launch would submit 0 of 1 cells: nothing to submit, so no bill" in out
    assert (
        "SLURM was requested (--executor slurm, or executor.name: slurm in the sweep's config) " + NO_SBATCH
    ) in out
    assert (
        "or use --executor local (a real launch here refuses, although it would submit nothing; `python "
        "sweeps/launch.py status` reads the sweep without a cluster)\ndry run: nothing submitted\n"
    ) in out
    code, out, err = _main([*given, *argv], capsys)  # what the dry run says a launch here does
    assert (code, out) == (2, "") and NO_SBATCH in err
    code, out, err = _main(["status", *argv, "--name", "w0"], capsys)  # and what it says reads it
    assert code == 0 and "1 finished" in out, err


def test_cli_dry_run_without_a_cluster_still_prices_what_a_launch_would_submit(done, capsys, monkeypatch):
    """Checked fine (no change), the other branch: seed 1 added, one cell to submit, the bill is for it and
    the note says it is priced all the same."""
    argv, _, root = done
    monkeypatch.setenv("PATH", str(root / "bin"))
    code, out, err = _main(["-c", str(root / "slurm.yaml"), *argv, "--seeds", "0,1", "--dry-run"], capsys)
    assert code == 0, err
    assert "CPU core-hours on SLURM for 1 cells" in out and "a launch would submit 1 of 2 cells" in out
    assert "(a real launch here refuses; the bill is priced all the same)\n" in out


def _unknown_run(uri: str, experiment: str, cell: str) -> str:
    """A run of ``cell`` recorded as submitted to SLURM (job 4242) and not ended: with no squeue on PATH
    its job's state is unknown, as for a sweep read where its cluster does not answer."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment).experiment_id
    tags = {"sweep": "w0", "grid_cell": cell, "executor": "slurm", "job_id": "4242", "attempts": "1"}
    return client.create_run(exp, tags=tags).info.run_id


def test_cli_dry_run_with_a_cell_of_unknown_job_state_says_a_launch_refuses_and_takes_slurm_jobs_gone(
    done, capsys, monkeypatch
):
    """Seeds 0,1,2: seed 0 finished, seed 1's SLURM job of unknown state (no squeue), seed 2 new. A launch
    refuses (`check_known`); the dry run said "a launch would submit 1 of 3 cells". Now it says that a
    launch refuses until SLURM answers, and the way out (--slurm-jobs-gone, and --executor local where no
    cluster answers). With --slurm-jobs-gone the dry run ignored the flag; now it counts seed 1 in the
    bill as the launch would (2 cells) and says so. Nothing is made or changed in the store."""
    from mlflow.tracking import MlflowClient

    argv, uri, root = done
    monkeypatch.setenv("PATH", str(root / "bin"))
    run_id = _unknown_run(uri, f"w0-{root.name}", "S-2-3e9-s1")
    try:
        base = ["-c", str(root / "w0.yaml"), *argv, "--seeds", "0,1,2", "--dry-run"]
        code, out, err = _main([*base, "--executor", "slurm"], capsys)
        assert code == 0, err
        assert "a launch would submit" not in out and "for 1 cells" in out, out
        assert (
            "1 finished, 0 running or queued, 0 out of retries, 1 of unknown job state; a launch refuses "
            "until SLURM answers about the 1 of unknown job state, then submits 1 of 3 cells (the estimate "
            "above is for those 1) and those of the 1 found over\n"
        ) in out
        assert (
            "job state unknown (SLURM does not answer): S-2-3e9-s1; a launch refuses until `squeue` answers, "
            "unless --slurm-jobs-gone (and, where no cluster answers as here, --executor local) says that "
            "cluster is gone for good\n"
        ) in out
        code, out, err = _main([*base, "--executor", "local", "--slurm-jobs-gone"], capsys)
        assert code == 0, err
        assert "for 2 cells" in out and "a launch would submit 2 of 3 cells" in out, out
        assert "--slurm-jobs-gone: a launch takes the SLURM jobs of 1 cell(s) whose state is unknown " \
            "(S-2-3e9-s1) for over and submits those cells again" in out  # fmt: skip
        assert "job state unknown" not in out
        code, out, err = _main([*base, "--executor", "local", "--seeds", "0,1"], capsys)  # nothing else
        assert code == 0 and "a launch would submit 0 of 2 cells: nothing to submit" in out, err
        assert "(and, where no cluster answers" not in out  # a local launch needs no cluster
        assert MlflowClient(uri).get_run(run_id).info.status == "RUNNING"
        assert not (root / "runs" / "w0" / "cells" / "S-2-3e9-s2").exists()
    finally:
        MlflowClient(uri).delete_run(run_id)


# ------------------------------------------------------------------ the lr redraw of one-lr cells


def _cells(lrs_by_cell: dict[str, list[float]], seeds: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-seed final points of cells ``{lr_group: [lr, ...]}`` (the later lrs 5 % worse, seeds spread
    1 %), and the fitted points as `best_lr` then `average_seeds` give them: each cell at its best lr,
    its seeds' mean (run ids joined by " + ")."""
    rows = []
    for i, (g, lrs) in enumerate(lrs_by_cell.items()):
        for j, lr in enumerate(lrs):
            for s in range(seeds):
                loss = (3.0 - 0.1 * i) * (1 + 0.05 * j) * (1 + 0.01 * (s - 1))
                rows.append({"model": f"m{i}", "N": 1e6 * (i + 1), "D": 1e7, "C": 6e13 * (i + 1),
                             "step": 100.0, "lr": lr, "lr_group": g, "loss": loss,
                             "run_id": f"{g}-{lr:g}-s{s}"})  # fmt: skip
    raw = tidy(pd.DataFrame(rows)).assign(final=True)
    kept, _, _ = best_lr(raw)
    fitted = kept.groupby("lr_group", as_index=False).agg(
        loss=("loss", "mean"), lr=("lr", "first"), step=("step", "first"), run_id=("run_id", " + ".join)
    )
    return raw, fitted


def test_redraw_of_a_sweep_whose_cells_each_have_one_lr_is_nothing_to_redraw():
    """An lr rule across budgets (`optim.lr_flops_ref`, docs/sweeps.md) gives each budget's cells their
    own lr: the points hold several lrs, but no cell chose among lrs (`best_lr` keeps every point). So
    the redraw has nothing to do: falsy (`analysis.pipeline.lr_redraw` then gives the bootstrap none, and
    the resamples fit the points as they are), and a call draws nothing from the generator and returns
    the losses as fitted."""
    raw, fitted = _cells({"g0": [1e-3], "g1": [7e-4], "g2": [5e-4]})
    assert best_lr(raw)[1].empty  # nothing chosen
    redraw = LrRedraw(raw, fitted)
    assert not redraw and redraw.cells == []
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    assert np.array_equal(redraw(rng), fitted["loss"].to_numpy(float))
    assert rng.bit_generator.state == before


def test_redraw_of_the_cells_at_several_lrs_is_the_same_beside_cells_of_one_lr():
    """Cells g0, g1 at one lr each (sorted before) and g2, g3 at two: the one-lr cells have no choice to
    redo, so they draw nothing, and the draws of g2 and g3 are resample for resample those of the same two
    cells alone; only those two cells are redrawn."""
    lrs = {"g0": [1e-3], "g1": [1e-3], "g2": [1e-3, 2e-3], "g3": [1e-3, 2e-3]}
    raw, fitted = _cells(lrs)
    b = raw["lr"] == 2e-3
    raw.loc[b, "loss"] /= 1.05  # the two lrs alike, so that resamples flip the choice
    both = LrRedraw(raw, fitted)
    alone = LrRedraw(raw[raw["lr_group"].isin(["g2", "g3"])], fitted.iloc[2:].reset_index(drop=True))
    assert len(both.cells) == len(alone.cells) == 2
    flips = 0
    for seed in range(20):
        a, w = alone(np.random.default_rng(seed)), both(np.random.default_rng(seed))
        assert np.array_equal(w[:2], fitted["loss"].to_numpy(float)[:2])
        assert np.array_equal(w[2:], a)
        flips += int(not np.array_equal(a, alone.loss))
    assert flips >= 3  # the choice does flip


# ------------------------------------------------------------------ a second Ctrl-C of a local launch


def fake_trainer_spec_of(tmp_path: Path, uri: str, **train):
    """Families S and B through the stand-in trainer (``train``: its settings), locally; the trainer
    ignores a Ctrl-C (one slow to reach its step boundary)."""
    train = {"sigint": "ignore", **train}
    return fake_trainer_spec(tmp_path, uri, name="cc", experiment="swedge-ctrl-c", budgets=[1e10],
                             train=train, executor=ExecutorSpec(name="local"))  # fmt: skip


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "plain"])
def test_cli_second_ctrl_c_kills_the_local_cells_at_once_and_ends_their_runs_killed_once(
    job_env, tmp_path, warm
):
    """``sweeps/launch.py`` (a real process, local executor) whose cell does not stop on the first
    Ctrl-C (a trainer slow to reach its step boundary; here it ignores the SIGINT that the launcher
    passes on, session 44): the launcher waits up to 10 s for it. A second
    Ctrl-C during that wait made the launcher leave that wait, but a warm worker was then waited for up
    to 30 s more (the cell trained on meanwhile), and without one the launcher exited at once, leaving
    the cell's processes training and its run RUNNING. Now the second Ctrl-C kills every process of the
    cell and ends its run KILLED, tag status=interrupted, at once (exit 130 within seconds); the
    submission counts as an interrupt, not a try; the cell's checkpoint is kept (the relaunch resumes)."""
    from mlflow.tracking import MlflowClient

    spec, cell, progress = one_s_cell(fake_trainer_spec_of, tmp_path, job_env, step_s=0.05)
    spec = spec.replace(budgets=[3e11])  # about 1,000 steps: 50 s
    (cell,) = expand(spec)
    cfg = write_sweep_config(spec, tmp_path / "sweep.yaml", families=["S"], local_warm=warm)
    cmd = [sys.executable, str(REPO / "sweeps" / "launch.py"), "-c", str(cfg), "--poll", "0.2"]
    proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_sigint_default, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    run_dir = sweep_dir(spec) / "cells" / cell.cell_id
    try:
        wait_for(lambda: step_of(progress) >= 3 or proc.poll() is not None, "the cell's third step", 60)
        trainer = int((run_dir / "pid").read_text())
        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C, the cell not reached
        client = MlflowClient(job_env)
        run_id = (run_dir / "mlflow_run_id").read_text().strip()
        wait_for(
            lambda: client.get_run(run_id).data.tags.get("interrupts") == "1", "the interrupt's record", 30
        )
        assert pid_alive(trainer) and proc.poll() is None
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C again
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - t0
        print(f"second Ctrl-C to exit: {took:.1f} s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, (out, err)
    said = err.split("\ninterrupted: ")[-1]
    assert said.startswith("local job(s) ") and said.endswith(
        " killed (SIGKILL) on a second Ctrl-C, the MLflow runs their trainers left open ended KILLED "
        "(status=interrupted); not counted as tries (--max-retries). Relaunch the same command to resume "
        "them from their last checkpoints\n"
    ), err
    assert took < 25, (took, err)  # 1-3 s idle, 5-8 s loaded; before: 30 s (warm) or never (plain)
    wait_for(lambda: not pid_alive(trainer), "the cell's trainer to be gone", 5)
    run = client.get_run(run_id)
    assert (run.info.status, run.data.tags["status"]) == ("KILLED", "interrupted"), run.data.tags
    assert run.data.tags["interrupts"] == "1" and run.data.tags["attempts"] == "1"
    reached = json.loads((run_dir / "checkpoint.json").read_text())["step"]
    assert 3 <= reached < cell.steps
    st = states_of(spec, job_env)[cell.cell_id]
    assert (st.state, st.tries) == ("interrupted", 0)
