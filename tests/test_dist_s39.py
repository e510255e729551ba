"""Session 39: several training processes (`accelerate launch --multi_gpu`, gloo on CPU) used against the
grain: a run resumed on another number of processes, a rank killed mid-run, Accelerate set up for
gradient accumulation. Real processes, a real sqlite MLflow store (conftest's)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from _train_helpers import metric_history, one_thread, read_until, tiny_config
from mlflow import MlflowClient

from dit_core.checkpoint import list_checkpoints, load_checkpoint
from dit_core.train import train

REPO = Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
          "0", "-m", "dit_core.train"]  # fmt: skip
#: `tiny_config`'s run as flags, with a validation loss every 3 steps on 7 examples (4 + 3 on 2 ranks)
#: and a log interval (4) that checkpoints every 3 steps cut
FLAGS = ["--model", "none", "--depth", "2", "--width", "32", "--heads", "2", "--patch-size", "2", "--data",
         "digits", "--image-size", "16", "--global-batch-size", "8", "--log-every", "4", "--val-every", "3",
         "--val-examples", "7", "--ckpt-every", "3", "--keep-last", "0",
         "--experiment", "test-train"]  # fmt: skip
OVERRIDES = {"log_every": 4, "eval.val_every": 3, "eval.val_examples": 7, "checkpoint.every": 3}


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO), **extra)


def _launch(*args: str, timeout: float = 200) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [*LAUNCH, *FLAGS, *args], env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _runs_of(client: MlflowClient, out: Path) -> list:
    exp = client.get_experiment_by_name("test-train")
    return (
        [] if exp is None else client.search_runs([exp.experiment_id], filter_string=f"params.out = '{out}'")
    )


def _each_step_once(client: MlflowClient, run_id: str) -> None:
    for key in client.get_run(run_id).data.metrics:
        twice = [
            s for s, n in Counter(m.step for m in client.get_metric_history(run_id, key)).items() if n > 1
        ]
        assert not twice, f"{key} logged twice at steps {twice}"


def _close_weights(a: dict, b: dict, what: str) -> None:
    for key in ("model", "ema"):
        for name, t in a[key].items():
            torch.testing.assert_close(b[key][name], t, atol=2e-6, rtol=0, msg=f"{what}: {key}.{name}")


@pytest.mark.timeout(300)
def test_a_run_moves_between_one_process_and_two_and_back_exactly(tmp_path):
    """A 9-step run on 1 process; its step-3 checkpoint continued on 2 processes (`accelerate launch`),
    whose step-6 checkpoint is continued on 1 process again (both checkpoints mid log interval). All
    three end with the same weights and EMA (up to the all-reduce order), data position and ledger, and
    log the same train/loss and val/loss (7 validation examples: 4 and 3 on two ranks) at the same
    steps; the 2-process launch is one MLflow run (rank 1 makes none), each metric once per step."""
    client = MlflowClient()
    with one_thread():
        one = train(tiny_config(tmp_path / "one", steps=9, **OVERRIDES))
    one_ckpt = tmp_path / "one" / "checkpoints" / "step_0000003.pt"
    _launch("--max-steps", "9", "--out", str(tmp_path / "one_two"), "--resume", str(one_ckpt))
    (run,) = _runs_of(client, tmp_path / "one_two")
    assert run.data.params["world_size"] == "2" and run.info.status == "FINISHED"
    with one_thread():
        two_one = train(
            tiny_config(tmp_path / "two_one", steps=9, **OVERRIDES),
            resume=str(tmp_path / "one_two" / "checkpoints" / "step_0000006.pt"),
        )

    ref = load_checkpoint(tmp_path / "one")
    for name in ("one_two", "two_one"):
        ck = load_checkpoint(tmp_path / name)
        assert (ck["step"], ck["ledger"], ck["data_position"]) == (9, ref["ledger"], ref["data_position"])
        _close_weights(ref, ck, name)
    want = {k: metric_history(client, one.run_id, k) for k in ("train/loss", "val/loss", "data/images_seen")}
    assert sorted(want["train/loss"]) == [4, 8, 9] and sorted(want["val/loss"]) == [0, 3, 6, 9]
    for run_id, forked_at in ((one.run_id, -1), (run.info.run_id, 3), (two_one.run_id, 6)):
        _each_step_once(client, run_id)
        for key, values in want.items():
            got = metric_history(client, run_id, key)
            expect = {s: v for s, v in values.items() if s > forked_at}
            assert got.keys() == expect.keys(), (forked_at, key, sorted(got))
            assert all(abs(got[s] - expect[s]) < 1e-5 for s in got), (forked_at, key, got, expect)


def _rank_pids(launcher: int) -> dict[int, int]:
    """{rank: pid} of the launcher's worker processes (from their RANK variable; Linux /proc)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        rank = [int(v[5:]) for v in env if v.startswith(b"RANK=")]
        if parent == launcher and rank:
            found[rank[0]] = int(pid)
    return found


@pytest.mark.timeout(300)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the ranks through /proc")
def test_a_rank_killed_mid_run_ends_the_run_failed_and_one_process_resumes_it(tmp_path):
    """SIGKILL to rank 1 of a 2-process run: rank 0 does not wait forever in the next all-reduce (gloo
    reports the lost peer), it marks the MLflow run FAILED with the error, and the launcher exits
    non-zero within seconds; the checkpoints written so far load, and the same command on 1 process
    resumes the run from the newest one into the same MLflow run, each metric step once."""
    out = tmp_path / "run"
    cmd = [
        *LAUNCH,
        *FLAGS,
        "--max-steps",
        "100000",
        "--ckpt-every",
        "10",
        "--val-every",
        "0",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(cmd, env=_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        read_until(proc, "step 28/100000 | loss")
        ranks = _rank_pids(proc.pid)
        assert sorted(ranks) == [0, 1], ranks
        killed = time.monotonic()
        os.kill(ranks[1], signal.SIGKILL)
        rest = proc.stderr.read()
        rc = proc.wait(timeout=120)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc != 0 and took < 60, (rc, took, rest[-2000:])
    steps = [int(p.stem.split("_")[1]) for p in list_checkpoints(out)]
    assert steps[:2] == [10, 20], steps
    ck = load_checkpoint(out)  # the newest: whole
    assert ck["step"] in (20, 30) and ck["ledger"]["images_seen"] == 8 * ck["step"]
    run_id = (out / "mlflow_run_id").read_text().strip()
    client = MlflowClient()
    run = client.get_run(run_id)
    assert (run.info.status, run.data.tags["status"]) == ("FAILED", "failed")
    assert run.data.tags["error"].startswith("RuntimeError: "), run.data.tags["error"]

    with one_thread():
        res = train(tiny_config(out, steps=ck["step"] + 4, **{**OVERRIDES, "eval.val_every": 0}))
    assert (res.status, res.run_id, res.step) == ("finished", run_id, ck["step"] + 4)
    assert client.get_run(run_id).info.status == "FINISHED"
    _each_step_once(client, run_id)
    seen = metric_history(client, run_id, "data/images_seen")  # the killed launch's and the resumed run's
    assert ck["step"] + 4 in seen and all(v == 8 * s for s, v in seen.items()), seen


@pytest.mark.timeout(120)
def test_gradient_accumulation_asked_of_accelerate_is_refused(tmp_path):
    """ACCELERATE_GRADIENT_ACCUMULATION_STEPS=2 (what `accelerate launch --gradient_accumulation_steps 2`
    sets for DeepSpeed, or a user by hand): the trainer takes one optimizer step per global batch and
    never accumulates, so the run trained the batch it was given, only with Accelerate dividing each
    loss by 2 before backward (and a 2x looser --grad-clip), logged as an ordinary run. It is refused
    before anything is written, naming the variable and what to do instead."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "dit_core.train", *FLAGS, "--max-steps", "2", "--out", str(out)]
    env = _env(ACCELERATE_GRADIENT_ACCUMULATION_STEPS="2")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error: ACCELERATE_GRADIENT_ACCUMULATION_STEPS: Accelerate is set up to accumulate gradients" in (
        proc.stderr
    )
    assert "raise --global-batch-size" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() and _runs_of(MlflowClient(), out) == []


_END_RUN = """
import sys
sys.path.insert(0, sys.argv[2])
from _train_helpers import tiny_config
from dit_core.train import Trainer

trainer = Trainer(tiny_config(sys.argv[1], steps=2))
trainer.start_tracking()
print(trainer.run_id, flush=True)
sys.stdin.readline()  # the test holds the store's lock now
print("ending", flush=True)
trainer.end_run_on_error(RuntimeError("rank 1 is gone"), local_job=False)
print("ended", flush=True)
"""


@pytest.mark.timeout(120)
def test_a_sigterm_while_a_failed_run_is_being_ended_waits_for_the_end(tmp_path):
    """When one rank dies, `torchrun` sends SIGTERM to the others at once, while rank 0 is marking the
    MLflow run FAILED: the default action killed it between the ``status=failed`` tag and the end of the
    run, leaving it RUNNING (seen once in 2 runs of the SIGKILL test above). Here the store is held locked
    while the run is ended and SIGTERM comes meanwhile: the run ends FAILED with its error, and then the
    signal acts (the process dies of it, as it would have)."""
    import sqlite3

    uri = os.environ["MLFLOW_TRACKING_URI"]
    assert uri.startswith("sqlite:///")
    script = tmp_path / "end_run.py"
    script.write_text(_END_RUN)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "run"), str(Path(__file__).parent)],
        env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        run_id = proc.stdout.readline().strip()
        assert run_id, proc.stderr.read()[-3000:]
        db = sqlite3.connect(uri[len("sqlite:///") :], isolation_level=None, timeout=30)
        db.execute("BEGIN EXCLUSIVE")  # the trainer's writes to the store wait for this
        try:
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "ending"
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
        finally:
            db.execute("ROLLBACK")
            db.close()
        rc = proc.wait(timeout=60)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    run = MlflowClient().get_run(run_id)
    assert (run.info.status, run.data.tags.get("status")) == ("FAILED", "failed"), err[-3000:]
    assert run.data.tags["error"] == "RuntimeError: rank 1 is gone"
    assert rc == -signal.SIGTERM, (rc, err[-3000:])
    assert "received SIGTERM while ending the run; acting on it now" in err
    # the signal ends the process before its caller (the CLI) could say the error: said first (CI: a rank
    # of test_lndc_s41 SIGTERMed by torchrun while it ended the run died without a word of why)
    said = err.find("rank 1 is gone\n")
    assert -1 < said < err.index("acting on it now"), err[-3000:]
