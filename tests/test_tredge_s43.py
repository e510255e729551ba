"""Session 43 (helper `tredge`): a run trained without MLflow, then resumed with it (its MLflow run starts
mid-way: said and tagged), and a rank that fails while its `Trainer` is being built, in a real
2-process Accelerate run on CPU (gloo) whose failing process does not end (`PeerWatch` covers the set-up
too)."""

from __future__ import annotations

import logging
import os

import pytest
from _train_helpers import metric_history, train_cli
from mlflow import MlflowClient
from test_gloo_s42 import ACCELERATE, PROMPT_S, REPO, _launch

from dit_core.tracking import (
    RESUMED_FROM_STEP_TAG,
    RESUMED_WITHOUT_HISTORY_TAG,
    TRAIN_LOSS,
    UNTRACKED_STEPS_TAG,
)

TINY = ["--model", "none", "--depth", "1", "--width", "16", "--heads", "2", "--patch-size", "2",
        "--data", "digits", "--image-size", "8", "--global-batch-size", "8",
        "--model.frequency_embedding_size", "16", "--log-every", "1"]  # fmt: skip


# ---------------------------------------------------------------- 1. tracking switched on at a resume
def test_a_resume_with_mlflow_of_a_run_trained_without_it_is_said_and_tagged(tmp_path, capsys, caplog):
    """Steps 1-2 with --no-mlflow, then a resume with MLflow on: its run holds steps 3-4 only. Before,
    nothing said so (the run looked whole, started at step 3). Now rank 0 warns, naming the checkpoint,
    the step and what to do for a whole run, and the run is tagged ``resumed_without_history=true``,
    ``resumed_from_step=2``. A later resume continues that one run (no second run, no second warning)."""
    caplog.set_level(logging.WARNING, logger="dit_core.train")
    out, exp = tmp_path / "run", f"tredge-{tmp_path.name}"
    code, err = train_cli(capsys, [*TINY, "--max-steps", "2", "--no-mlflow", "--out", str(out)])
    assert code == 0 and not (out / "mlflow_run_id").exists(), err
    code, err = train_cli(capsys, [*TINY, "--max-steps", "4", "--experiment", exp, "--out", str(out)])
    assert code == 0, err
    said = [r.getMessage() for r in caplog.records if "without MLflow tracking" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]
    run_id = (out / "mlflow_run_id").read_text().strip()
    assert said[0] == (
        f"checkpoint {out / 'checkpoints' / 'step_0000002.pt'} (step 2) was trained without MLflow "
        f"tracking (--no-mlflow): MLflow run {run_id} holds this run's metrics from step 3 on only, "
        "tagged resumed_without_history=true and resumed_from_step=2; for the whole run in MLflow, "
        "train it again with --out a new folder"
    )
    client = MlflowClient()
    run = client.get_run(run_id)
    assert (
        run.data.tags[RESUMED_WITHOUT_HISTORY_TAG] == "true" and run.data.tags[RESUMED_FROM_STEP_TAG] == "2"
    )
    assert sorted(metric_history(client, run_id, TRAIN_LOSS)) == [3, 4]
    caplog.clear()
    code, err = train_cli(capsys, [*TINY, "--max-steps", "6", "--experiment", exp, "--out", str(out)])
    assert code == 0, err
    assert not [r for r in caplog.records if "without MLflow tracking" in r.getMessage()]
    runs = client.search_runs([client.get_experiment_by_name(exp).experiment_id])
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.status == "FINISHED"
    assert sorted(metric_history(client, run_id, TRAIN_LOSS)) == [3, 4, 5, 6]


def test_steps_trained_with_no_mlflow_between_tracked_ones_are_said_and_tagged(tmp_path, capsys, caplog):
    """The ordinary resume (tracked from step 1) carries no tag nor warning. Steps 1-4 tracked, 5-6 with
    --no-mlflow, 7-10 tracked: before, the resume at 6 continued the run silently, its metrics missing
    steps 5-6. Now rank 0 warns once, naming the run, the steps and the checkpoint, and tags the run
    ``untracked_steps=5-6`` (its checkpoints carry the first untracked step, ``loop.untracked_from``)."""
    caplog.set_level(logging.WARNING, logger="dit_core.train")
    out, exp = tmp_path / "run", f"tredge-{tmp_path.name}"
    for steps, more in (("2", []), ("4", []), ("6", ["--no-mlflow"]), ("8", []), ("10", [])):
        if steps == "6":  # 2 -> 4 tracked: nothing to say
            assert not [r for r in caplog.records if "without MLflow tracking" in r.getMessage()]
            tags = MlflowClient().get_run((out / "mlflow_run_id").read_text().strip()).data.tags
            assert not {RESUMED_WITHOUT_HISTORY_TAG, RESUMED_FROM_STEP_TAG, UNTRACKED_STEPS_TAG} & set(tags)
        args = [*TINY, "--max-steps", steps, "--experiment", exp, "--out", str(out), *more]
        code, err = train_cli(capsys, args)
        assert code == 0, err
    run_id = (out / "mlflow_run_id").read_text().strip()
    said = [r.getMessage() for r in caplog.records if "without MLflow tracking" in r.getMessage()]
    assert said == [
        f"MLflow run {run_id} has no metrics for steps 5-6: they were trained without MLflow tracking "
        f"(--no-mlflow) before checkpoint {out / 'checkpoints' / 'step_0000006.pt'}; the run is tagged "
        "untracked_steps"
    ]
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(exp).experiment_id])
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].data.tags[UNTRACKED_STEPS_TAG] == "5-6"
    assert sorted(metric_history(client, run_id, TRAIN_LOSS)) == [1, 2, 3, 4, 7, 8, 9, 10]


# ---------------------------------------------------------------- 2. a rank fails building its Trainer
#: ``wrapper.py REPO OUT URI RUN_ID RANK``: a sweep's job body (`sweeps.executor.run_task`) for one cell
#: whose MLflow run the launcher created (SCHEDULED), with a non-daemon thread that keeps the process
#: from ending; rank RANK fails to build its dataset (in `Trainer.__init__`), while the other rank goes on
#: to DDP's first collective (the parameters' shapes, in `accelerator.prepare`).
_INIT = """
import ctypes, os, signal, sys, threading, time
ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: gone with the launcher the test kills
repo, out, uri, run_id, bad, slow_end = sys.argv[1:7]
sys.path.insert(0, repo)
from dit_core import tracking
from dit_core.trainer import loop
from sweeps.executor import run_task
from sweeps.task import CellTask

rank, real = int(os.environ["RANK"]), loop.build_dataset

def failing(*a, **k):
    if rank == int(bad):
        print(f"FAULT on rank {rank}", file=sys.stderr, flush=True)
        raise OSError("injected: the data does not load on this rank")
    return real(*a, **k)

loop.build_dataset = failing
if slow_end == "slow":  # the failing rank's MLflow write outlasts rank 0's watch (a loaded store)
    end_run_if = tracking.end_run_if

    def slow_end_run_if(*a, **k):
        print(f"ENDING on rank {rank}", file=sys.stderr, flush=True)
        time.sleep(10)
        return end_run_if(*a, **k)

    tracking.end_run_if = slow_end_run_if
threading.Thread(target=time.sleep, args=(600,), name="not-a-daemon").start()
cell = {"model.name": None, "model.depth": 1, "model.hidden_size": 16, "model.num_heads": 2,
        "model.patch_size": 4, "data.name": "digits", "data.image_size": 8, "budget.global_batch_size": 4,
        "budget.max_steps": 50, "eval.val_every": 0, "eval.eval_every": 0, "checkpoint.every": 0,
        "out": out, "tracking.uri": uri, "tracking.run_id": run_id, "tracking.experiment": "test-tredge"}
run_task(CellTask("s43", "c0", out, cell), job_id="job-1", rank=rank)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("end", ["quick", "slow"])
def test_a_rank_that_fails_building_its_trainer_and_does_not_end_is_not_waited_for(tmp_path, end):
    """Rank 1's dataset does not load (in `Trainer.__init__`) and its process does not end; rank 0 waits
    in DDP's set-up for it. Before, rank 0 waited there for gloo's timeout (30 min; the peer watch ran
    only in `Trainer.run`, and rank 1 left no error for it). Now rank 1 leaves its error in the store and
    rank 0's watch, already running while the trainer is built, ends rank 0 5 s on, naming rank 1 and
    its error (exit 1); the launcher then stops rank 1 and exits 1. The cell's MLflow run is ended once,
    by rank 1's job (FAILED, died_before_training, the error "on rank 1"), and no other run is made.
    ``slow``: rank 1's write of that run takes 10 s, so rank 0 has exited and torchrun SIGTERMs rank 1 in
    the middle of it; the write holds the signal until it is done (session 44: before, the SIGTERM killed
    rank 1 mid-write and the run stayed SCHEDULED, seen once on a loaded machine)."""
    from sweeps.state import create_cell_runs

    uri = os.environ["MLFLOW_TRACKING_URI"]
    exp = f"tredge-{tmp_path.name}"
    run_id = create_cell_runs(uri, exp, "s43", {"c0": "hash"})["c0"]
    script = tmp_path / "wrapper.py"
    script.write_text(_INIT)
    out = tmp_path / "run"
    cmd = [*ACCELERATE, str(script), str(REPO), str(out), uri, run_id, "1", end]
    rc, took, err = _launch(cmd, "FAULT on rank 1", PROMPT_S)
    assert rc is not None, f"still running {took:.0f} s after rank 1 failed:\n{err[-3000:]}"
    assert rc == 1 and took < PROMPT_S, (rc, took, err[-3000:])
    print(f"exit {took:.1f} s after the fault")
    assert "rank 1 failed: OSError: injected: the data does not load on this rank" in err, err[-3000:]
    assert "rank 1 failed and had not ended 5 s later; rank 0 stopped waiting for it (exit 1)" in err, err[
        -3000:
    ]
    assert (end == "slow") == ("ENDING on rank 1" in err), err[-3000:]
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(exp).experiment_id])
    assert [r.info.run_id for r in runs] == [run_id], runs
    run = runs[0]
    assert (run.info.status, run.data.tags.get("status")) == ("FAILED", "died_before_training"), err[-3000:]
    assert run.data.tags["error"] == "OSError: injected: the data does not load on this rank (on rank 1)"
