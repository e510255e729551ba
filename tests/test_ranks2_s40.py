"""Session 40 (helper `ranks2`): several training processes (`accelerate launch --multi_gpu`, gloo on
CPU) when one rank fails in a validation or an evaluation, what each rank holds and writes after a
resume, and the MLflow run of a 2-process resume. Real processes and a real sqlite MLflow store
(conftest's); faults and probes come from a wrapper script that the launcher runs, which patches them
in before it runs the trainer's CLI (no hook in the library)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from _image_helpers import image_folder
from _train_helpers import metric_history, one_thread, read_until, tiny_config
from mlflow import MlflowClient

from dit_core.checkpoint import list_checkpoints, load_checkpoint
from dit_core.train import train

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
              "--num_processes", "2"]  # fmt: skip
TINY = ["--model", "none", "--depth", "2", "--width", "32", "--heads", "2", "--patch-size", "2",
        "--image-size", "16", "--experiment", "test-train", "--log-every", "2"]  # fmt: skip

#: the launched script: ``wrapper.py REPO MODE ARG <trainer flags>``; MODE
#: - ``val``: rank ARG raises OSError from its third validation on (step 8: an unreadable val image);
#: - ``nan_samples``: rank ARG's evaluation samples are NaN (a model that overflows on that rank);
#: - ``record``: each rank notes every file it writes (`dit_core.atomic`, through which all of the
#:   trainer's writes go) in ARG/writes_<rank>.txt and saves its EMA and weights once `Trainer.run`
#:   returns, in ARG/state_<rank>.pt.
_WRAPPER = """
import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: gone with the launcher the test kills
repo, mode, arg = sys.argv.pop(1), sys.argv.pop(1), sys.argv.pop(1)
sys.path.insert(0, repo)
import torch
from dit_core import atomic, diffusion
from dit_core.trainer import loop
from dit_core.trainer.cli import main

rank = int(os.environ["RANK"])
if mode == "val":
    real_val, calls = diffusion.validation_losses, []

    def failing(*a, **k):
        calls.append(1)
        if rank == int(arg) and len(calls) >= 3:
            print(f"FAULT on rank {rank}", file=sys.stderr, flush=True)
            raise OSError("injected: a val image is unreadable on this rank")
        return real_val(*a, **k)

    diffusion.validation_losses = failing
elif mode == "nan_samples":
    real_sample = diffusion.sample

    def nan_sample(*a, **k):
        x = real_sample(*a, **k)
        if rank == int(arg):
            print(f"FAULT on rank {rank}", file=sys.stderr, flush=True)
            x = x * float("nan")
        return x

    diffusion.sample = nan_sample
elif mode == "record":
    real_temp, real_run = atomic._create_temp, loop.Trainer.run

    def noted(path):
        with open(os.path.join(arg, f"writes_{rank}.txt"), "a") as f:
            f.write(os.path.basename(path) + "\\n")
        return real_temp(path)

    def run(self, *a, **k):
        result = real_run(self, *a, **k)
        state = {"ema": self.ema.state_dict(), "model": self.model.state_dict()}
        torch.save(state, os.path.join(arg, f"state_{rank}.pt"))
        return result

    atomic._create_temp, loop.Trainer.run = noted, run
sys.exit(main())
"""


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO), **extra)


def _wrapper(tmp_path: Path) -> Path:
    script = tmp_path / "wrapper.py"
    script.write_text(_WRAPPER)
    return script


def _launch_with_fault(tmp_path: Path, mode: str, flags: list[str]) -> tuple[int, float, str]:
    """A 2-process launch of the wrapper with fault ``mode`` on rank 1: (launcher's exit code, seconds
    from the fault to the launcher's exit, its stderr from the fault on)."""
    cmd = [*ACCELERATE, str(_wrapper(tmp_path)), str(REPO), mode, "1", *TINY, *flags]
    proc = subprocess.Popen(cmd, env=_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        read_until(proc, "FAULT on rank 1")
        fault = time.monotonic()
        rest = proc.stderr.read()
        rc = proc.wait(timeout=120)
        return rc, time.monotonic() - fault, rest
    finally:
        if proc.poll() is None:
            proc.kill()


def _each_step_once(client: MlflowClient, run_id: str) -> None:
    for key in client.get_run(run_id).data.metrics:
        points = Counter(m.step for m in client.get_metric_history(run_id, key))
        assert not [s for s, n in points.items() if n > 1], f"{key} logged twice: {points}"


# ---------------------------------------------------------------- 1. a rank that fails in a check
#: 12 steps of batch 8 on digits, validation every 4 steps, a checkpoint every 4 (after the validation)
VAL_RUN = ["--data", "digits", "--global-batch-size", "8", "--max-steps", "12", "--val-every", "4",
           "--val-examples", "8", "--ckpt-every", "4", "--keep-last", "0", "--eval-every", "0"]  # fmt: skip


@pytest.mark.timeout(300)
def test_a_rank_failing_in_validation_is_named_in_the_run_and_two_processes_resume_it(tmp_path):
    """Rank 1 raises OSError in the step-8 validation (its val data), while rank 0 waits for its sum in
    the all-reduce. Before, rank 0 saw only gloo's lost peer, and the MLflow run's error read
    "RuntimeError: [...] Connection closed by peer": the cause was only in rank 1's stderr. Now rank 1
    leaves its error in the process group's store before it exits, and rank 0 names it in the run's
    error tag (and its log). Rank 1 logs its error and exits with code 1 through the CLI's exit; before,
    an error the CLI has no message for was re-raised into the interpreter's teardown with the process
    group up, which aborted (SIGABRT, "terminate called without an active exception") in 2 of 8 such
    launches. The launcher exits non-zero within seconds, the step-4 checkpoint is the newest and whole,
    and the same command on 2 processes resumes from it into the same run: FINISHED, the error kept as
    error.previous, each metric once per step, the params as first logged."""
    out = tmp_path / "run"
    flags = [*VAL_RUN, "--out", str(out)]
    rc, took, rest = _launch_with_fault(tmp_path, "val", flags)
    assert rc != 0 and took < 30, (rc, took, rest[-3000:])
    run_id = (out / "mlflow_run_id").read_text().strip()
    client = MlflowClient()
    run = client.get_run(run_id)
    assert (run.info.status, run.data.tags["status"]) == ("FAILED", "failed")
    error = run.data.tags["error"]
    assert error.startswith("OSError: injected: a val image is unreadable on this rank (on rank 1); "), error
    assert "rank 1 failed: OSError: injected" in rest
    # rank 1 left through the CLI's exit (code 1), not an abort at interpreter exit with gloo still up
    assert "terminate called" not in rest and "SIGABRT" not in rest, rest[-3000:]
    assert "ERROR dit_core.train: rank 1 stopped on OSError: injected" in rest, rest[-3000:]
    assert "exitcode  : 1 (pid" in rest, rest[-3000:]
    assert [p.name for p in list_checkpoints(out)] == ["step_0000004.pt"]
    ck = load_checkpoint(out)
    assert (ck["step"], ck["ledger"]["images_seen"], ck["mlflow_run_id"]) == (4, 32, run_id)
    params = dict(run.data.params)

    proc = subprocess.run([*ACCELERATE, "-m", "dit_core.train", *TINY, *flags], env=_env(),
                          capture_output=True, text=True, timeout=200)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and "at step 4 (32 images seen)" in proc.stderr
    run = client.get_run(run_id)
    assert (run.info.status, run.data.tags["status"]) == ("FINISHED", "finished")
    assert "error" not in run.data.tags and run.data.tags["error.previous"] == error
    assert run.data.params == params and params["world_size"] == "2"
    _each_step_once(client, run_id)
    assert sorted(metric_history(client, run_id, "val/loss")) == [0, 4, 8, 12]
    assert sorted(metric_history(client, run_id, "train/loss")) == [2, 4, 6, 8, 10, 12]
    assert load_checkpoint(out)["step"] == 12


@pytest.mark.timeout(200)
def test_nan_samples_on_one_rank_name_their_error_in_the_run(tmp_path):
    """Rank 1's evaluation samples are NaN at the last step (8), so its sampler raises "sampling gave
    non-finite values" while rank 0 waits for it at the next sampling batch. The run's error tag named
    gloo's "Connection reset by peer"; now it names rank 1's error. The last step was checkpointed
    before the evaluation, which it lists as due (a relaunch runs it), and the launcher exits
    non-zero within seconds."""
    out = tmp_path / "run"
    flags = ["--data", "digits", "--global-batch-size", "8", "--max-steps", "8", "--val-every", "0",
             "--eval-every", "8", "--set", "eval.num_samples=16", "--set", "eval.steps=2", "--set",
             "eval.batch_size=4", "--set", "eval.grid_images=0", "--ckpt-every", "4", "--keep-last", "0",
             "--out", str(out)]  # fmt: skip
    rc, took, rest = _launch_with_fault(tmp_path, "nan_samples", flags)
    assert rc != 0 and took < 30, (rc, took, rest[-3000:])
    run = MlflowClient().get_run((out / "mlflow_run_id").read_text().strip())
    assert (run.info.status, run.data.tags["status"]) == ("FAILED", "failed")
    error = run.data.tags["error"]
    assert error.startswith("NonFiniteSamples: sampling gave non-finite values (NaN or inf)"), error
    assert "(on rank 1); rank 0 then stopped on RuntimeError: " in error, error
    assert [p.name for p in list_checkpoints(out)] == ["step_0000004.pt", "step_0000008.pt"]
    ck = load_checkpoint(out)
    assert (ck["step"], ck["loop"]["due"], ck["ledger"]["images_seen"]) == (8, ["eval"], 64)


def test_the_error_tag_puts_other_ranks_errors_first_and_drops_rank_zeros_own():
    """`with_peer_failures`: the errors the other ranks left come first, each naming its rank; one equal
    to rank 0's own (a non-finite loss every rank finds in the same all-reduced losses) is not repeated."""
    from dit_core.trainer.ranklog import with_peer_failures

    gloo = "RuntimeError: Connection closed by peer"
    assert with_peer_failures(gloo, {}) == gloo
    assert with_peer_failures(gloo, {2: "OSError: x", 1: gloo}) == (
        f"OSError: x (on rank 2); rank 0 then stopped on {gloo}"
    )
    nan = "FloatingPointError: non-finite training loss (nan) at step 3"
    assert with_peer_failures(nan, {1: nan}) == nan


# ---------------------------------------------------------------- 2. what each rank holds and writes
@pytest.mark.timeout(300)
def test_after_a_resume_every_rank_holds_the_one_process_ema_and_only_rank_zero_writes(tmp_path):
    """A 1-process run of 8 steps on an image folder of 15 images at batch 4 (3 batches per epoch, the
    last 3 images of each epoch's order unused, so the run crosses two epoch ends) with EMA decay 0.5
    and lr 1e-3 (an EMA that moves: at 0.9999 it would be the initial weights on every rank whatever
    happened); its step-4 checkpoint, mid-epoch, is resumed on 2 processes to step 8. Both ranks end with the
    same EMA and weights (bitwise), equal to the 1-process run's up to the all-reduce order, the same
    data position and ledger; every file of the resumed run (config, run id, checkpoints and their
    pointer, classes) is written by rank 0 and none by rank 1."""
    root = image_folder(tmp_path / "imgs", per_class=5, size=(16, 16))
    over = {"data.name": "imagefolder", "data.root": str(root), "optim.ema_decay": 0.5, "optim.lr": 1e-3,
            "log_every": 2,
            "checkpoint.every": 2, "model.class_dropout_prob": 0.1}  # fmt: skip
    with one_thread():
        ref = train(tiny_config(tmp_path / "one", steps=8, batch=4, **over))
    assert ref.status == "finished"
    one = load_checkpoint(tmp_path / "one")
    assert one["data_position"] == {"epoch": 2, "index": 8, "dataset_size": 15, "global_batch_size": 4}

    probe = tmp_path / "probe"
    probe.mkdir()
    out = tmp_path / "two"
    cmd = [*ACCELERATE, str(_wrapper(tmp_path)), str(REPO), "record", str(probe), *TINY, "--data",
           "imagefolder", "--data-root", str(root), "--global-batch-size", "4", "--max-steps", "8",
           "--ema-decay", "0.5", "--lr", "1e-3", "--ckpt-every", "2", "--keep-last", "0", "--val-every", "0",
           "--eval-every", "0", "--out", str(out),
           "--resume", str(tmp_path / "one" / "checkpoints" / "step_0000004.pt")]  # fmt: skip
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]

    states = [torch.load(probe / f"state_{r}.pt", weights_only=True) for r in (0, 1)]
    two = load_checkpoint(out)
    assert (two["step"], two["data_position"], two["ledger"]) == (8, one["data_position"], one["ledger"])
    worst = 0.0
    for key in ("ema", "model"):
        for name, t in one[key].items():
            assert torch.equal(states[0][key][name], states[1][key][name]), f"ranks differ: {key}.{name}"
            assert torch.equal(two[key][name], states[0][key][name]), f"checkpoint: {key}.{name}"
            torch.testing.assert_close(
                two[key][name], t, atol=2e-6, rtol=0, msg=f"vs 1 process: {key}.{name}"
            )
            worst = max(worst, float((two[key][name] - t).abs().max()))
    start = load_checkpoint(tmp_path / "one" / "checkpoints" / "step_0000004.pt")["ema"]
    moved = max(float((one["ema"][n] - start[n]).abs().max()) for n in start)
    assert moved > 1e-3 and worst < moved / 1000, (moved, worst)  # the EMA moved; the ranks agree

    assert not (probe / "writes_1.txt").exists(), (probe / "writes_1.txt").read_text()
    writes = Counter((probe / "writes_0.txt").read_text().split())
    assert writes == {"config.json": 1, "classes.json": 1, "mlflow_run_key": 1, "mlflow_run_id": 1,
                      "forked_from": 1, "step_0000006.pt": 1, "step_0000008.pt": 1,
                      "latest.json": 2}, writes  # fmt: skip
