"""Session 41 (lnsw): the status table's val loss and FID of cells that are not finished."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from _sweep_specs import migrated_store
from mlflow.tracking import MlflowClient

from sweeps.executor import JobRef
from sweeps.lock import cell_job_lock_lines
from sweeps.state import Submission, create_cell_runs, read_states, record_submissions
from sweeps.table import status_table


@contextlib.contextmanager
def live_job(run_dir: Path):
    """A live local job of a cell: a shell holding the cell's lock as a submitted job does."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [*cell_job_lock_lines(run_dir), "echo locked", "exec sleep 120"]
    job = subprocess.Popen(" && ".join(lines), shell=True, stdout=subprocess.PIPE, text=True,
                           start_new_session=True)  # fmt: skip
    try:
        assert job.stdout.readline().strip() == "locked"
        yield
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        job.stdout.close()


def test_status_table_does_not_pass_an_earlier_val_loss_off_as_the_cells_result(tmp_path_factory, tmp_path):
    """MLflow keeps each key's latest point, so a cell stopped (or still training) before its next
    validation showed the val/loss of step 0, the untrained model's, as if it were its result: that
    value now carries the step it was measured at; a finished cell's (measured at its last step) not."""
    store, exp = migrated_store(tmp_path_factory, "lnsw-table"), "e"
    names = ("done", "stopped", "training")
    dirs = {c: tmp_path / c for c in names}
    ids = create_cell_runs(store, exp, "s", dict.fromkeys(names, "h"))
    client = MlflowClient(store)
    refs = {c: JobRef("local", "1", str(d / "submitit"), str(d)) for c, d in dirs.items()}
    record_submissions(store, [Submission(ids[c], refs[c], 1, "h", False) for c in names])
    for c in names:
        client.log_metric(ids[c], "val/loss", 1.25, step=0)  # the untrained model, at step 0
        for step in (1, 2, 3):
            client.log_metric(ids[c], "train/loss", 1.0 / step, step=step)
        client.update_run(ids[c], "RUNNING")
    client.log_metric(ids["done"], "val/loss", 0.375, step=3)  # its last step
    client.log_metric(ids["done"], "eval/fid", 12.5, step=3)
    client.update_run(ids["done"], "FINISHED")
    client.log_metric(ids["stopped"], "eval/fid", 40.0, step=2)  # an evaluation before it stopped
    with live_job(dirs["training"]):
        states = read_states(store, exp, "s", {c: str(d) for c, d in dirs.items()})
    assert {c: st.state for c, st in states.items()} == {
        "done": "finished",
        "stopped": "interrupted",
        "training": "running",
    }
    rows = status_table(list(states.values()), {}).splitlines()
    table = [dict(zip(re.split(r"\s{2,}", rows[0]), re.split(r"\s{2,}", r))) for r in rows[2:]]
    assert [(r["cell"], r["step"], r["val loss"], r["FID"]) for r in table] == [
        ("done", "3", "0.3750", "12.50"),
        ("stopped", "3", "1.2500 (step 0)", "40.00 (step 2)"),
        ("training", "3", "1.2500 (step 0)", "-"),
    ]
    docs = " ".join((Path(__file__).parents[1] / "docs" / "sweeps.md").read_text().split())
    assert "each carries the step it was measured at (`1.0123 (step 0)`" in docs


@pytest.mark.parametrize("state", ["finished", "running"])
def test_a_val_loss_without_a_known_step_is_shown_bare(state):
    """A `CellState` built without the metric's step (none read) shows the value as before."""
    from sweeps.state import CellState

    row = status_table([CellState("c", state, val_loss=0.5, fid=3.0)], {}).splitlines()[2]
    assert re.split(r"\s{2,}", row)[5:7] == ["0.5000", "3.00"]


def test_status_command_shows_an_interrupted_cells_step_0_val_loss_with_its_step(
    tmp_path_factory, tmp_path, capsys
):
    """`python sweeps/launch.py status`: a cell interrupted after its step-0 validation (the loss of
    the untrained model) said ``1.2500`` in the val loss column, like a finished cell's result."""
    from sweeps import launch

    store = migrated_store(tmp_path_factory, "lnsw-cli")
    (cell,) = ids = create_cell_runs(store, "e", "x", {"a": "h"})
    run_dir = tmp_path / "x" / "cells" / "a"
    ref = JobRef("local", "1", str(run_dir / "submitit"), str(run_dir))
    record_submissions(store, [Submission(ids[cell], ref, 1, "h", False)])
    client = MlflowClient(store)
    client.log_metric(ids[cell], "val/loss", 1.25, step=0)
    client.log_metric(ids[cell], "train/loss", 0.5, step=2)
    client.update_run(ids[cell], "RUNNING")  # its job gone: interrupted
    argv = [
        "status",
        "--name",
        "x",
        "--experiment",
        "e",
        "--tracking-uri",
        store,
        "--output-dir",
        str(tmp_path),
    ]
    assert launch.main(argv) == 0
    rows = capsys.readouterr().out.splitlines()
    header = next(i for i, r in enumerate(rows) if r.startswith("cell "))
    row = dict(zip(re.split(r"\s{2,}", rows[header]), re.split(r"\s{2,}", rows[header + 2])))
    assert (row["state"], row["step"], row["val loss"]) == ("interrupted", "2", "1.2500 (step 0)")
