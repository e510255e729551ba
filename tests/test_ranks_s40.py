"""Session 40 (helper `ranks`): several training processes (`accelerate launch --multi_gpu`, gloo on
CPU): which rank says what, a preemption checkpoint against torchrun's shutdown timeout, SIGUSR1 under
torchrun, and what the ranks hold after a resume. Real processes and a real sqlite MLflow store
(conftest's); slow steps or slow checkpoint writes come from a wrapper script that the launcher runs,
which patches them in before it runs the trainer's CLI (no hook in the library)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _image_helpers import image_folder

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]  # fmt: skip
TINY = ["--model", "none", "--depth", "2", "--width", "32", "--heads", "2", "--patch-size", "2",
        "--image-size", "16", "--experiment", "test-train"]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO), **extra)


def _rank_logs(logs: Path) -> dict[int, str]:
    """{rank: its stderr} of an `accelerate launch --log_dir logs --tee 2` run."""
    return {int(p.parent.name): p.read_text() for p in logs.rglob("stderr.log")}


# ---------------------------------------------------------------- 1. warnings every rank would say alike
@pytest.mark.timeout(200)
def test_data_and_evaluation_warnings_come_once_from_rank_zero(tmp_path):
    """An image folder with an unreadable file, validation (which reads the same folder again: no
    data.val_root) and evaluation (no eval.reference for folder data: skipped) on 2 processes. Each rank
    scanned the folder for training and again for validation, and each evaluation was skipped on each
    rank: 4 lines naming the bad file, 4 counts, 2 "skipped" per evaluation. Now rank 0 says each once
    (evaluation: once per evaluation), rank 1 none; the run finishes and trains 6 steps."""
    root = image_folder(tmp_path / "imgs", per_class=4, size=(16, 16))
    (root / "a" / "broken.png").write_bytes(b"not a png")
    logs = tmp_path / "logs"
    cmd = [*ACCELERATE, "--num_processes", "2", "--log_dir", str(logs), "--tee", "2", "-m", "dit_core.train",
           *TINY, "--data", "imagefolder", "--data-root", str(root), "--global-batch-size", "4",
           "--max-steps", "6", "--val-every", "3", "--val-examples", "4", "--eval-every", "3",
           "--ckpt-every", "0", "--out", str(tmp_path / "run")]  # fmt: skip
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stderr = _rank_logs(logs)
    assert sorted(stderr) == [0, 1]
    lines = {
        "bad file": re.compile(
            r"WARNING dit_core\.data\.imagefolder: skipping unreadable image .*broken\.png"
        ),
        "count": re.compile(r"WARNING dit_core\.data\.imagefolder: skipped 1 unreadable image\(s\) of 13"),
        "eval skipped": re.compile(r"WARNING dit_core\.trainer\.evaluation: eval: no eval\.reference set"),
    }
    counts = {what: [len(rx.findall(stderr[r])) for r in (0, 1)] for what, rx in lines.items()}
    assert counts == {"bad file": [1, 0], "count": [1, 0], "eval skipped": [2, 0]}, counts
    assert "finished 6 steps" in stderr[0]


# ---------------------------------------------------------------- 2. a checkpoint write against torchrun
#: the launched script: `dit_core.checkpoint` writes each step file, then sleeps WRITE_S before the fsync
#: and rename (a big state on a slow disk), saying so on stderr; then the trainer's CLI
_SLOW_WRITE = """
import ctypes, signal, sys, time
ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: gone with the launcher the test kills
repo, write_s = sys.argv.pop(1), float(sys.argv.pop(1))
sys.path.insert(0, repo)
from dit_core import checkpoint
from dit_core.trainer.cli import main

real = checkpoint.atomic_write

def slow(path, write):
    def written_slowly(f):
        write(f)
        print(f"writing {path.name}", file=sys.stderr, flush=True)
        time.sleep(write_s)
    return real(path, written_slowly if path.name.startswith("step_") else write)

checkpoint.atomic_write = slow
sys.exit(main())
"""
#: seconds each checkpoint write takes in `_SLOW_WRITE`
WRITE_S = 3.0
RUN = [*TINY, "--data", "digits", "--global-batch-size", "8", "--log-every", "1", "--val-every", "0",
       "--eval-every", "0", "--ckpt-every", "4", "--keep-last", "0"]  # fmt: skip


def _signal_during_a_write(tmp_path: Path, env: dict[str, str], sig: int, out: Path) -> tuple[int, str]:
    """A 2-process launch of `_SLOW_WRITE` whose launcher gets ``sig`` while rank 0 writes the step-8
    checkpoint (the step-4 one is whole); (launcher's exit code, its stderr after the signal)."""
    script = tmp_path / "slow_write.py"
    script.write_text(_SLOW_WRITE)
    cmd = [*ACCELERATE, "--num_processes", "2", str(script), str(REPO), str(WRITE_S), *RUN,
           "--max-steps", "1000", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        _read_until(proc, "writing step_0000008.pt")
        proc.send_signal(sig)
        rest = proc.stderr.read()
        return proc.wait(timeout=60), rest
    finally:
        if proc.poll() is None:
            proc.kill()


def _read_until(proc, text: str) -> None:
    from _train_helpers import read_until

    read_until(proc, text)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("grace_s", [1, 20])
def test_a_sigterm_during_a_checkpoint_write_and_torchruns_shutdown_timeout(tmp_path, grace_s):
    """SIGTERM to the launcher (torchrun: on to both ranks, SIGKILL `TORCH_ELASTIC_SHUTDOWN_TIMEOUT` s
    later, default 30) while rank 0 writes the step-8 checkpoint, which takes WRITE_S = 3 s.

    - grace 1 s, shorter than the write: rank 0 dies in it. The step-4 checkpoint is whole and the
      newest (latest.json names it), the half-written step-8 file is only a temporary file, and the
      same command on 1 process resumes from step 4 (removing that file) into the same MLflow run.
    - grace 20 s, longer: the step-8 write ends, and it is the preemption checkpoint. Before, the ranks
      trained on to their next agreement (step 11) and wrote a second checkpoint in the grace period
      (2 writes, 6 s); now they agree right after a periodic checkpoint: the run stops at step 8,
      KILLED / preempted, and resumes from it."""
    from mlflow import MlflowClient

    from dit_core.checkpoint import list_checkpoints, load_checkpoint

    out = tmp_path / "run"
    env = _env(TORCH_ELASTIC_SHUTDOWN_TIMEOUT=str(grace_s))
    t0 = time.monotonic()
    rc, rest = _signal_during_a_write(tmp_path, env, signal.SIGTERM, out)
    assert rc == 128 + signal.SIGTERM, (rc, rest[-3000:])
    files = sorted(p.name for p in (out / "checkpoints").iterdir())
    run_id = (out / "mlflow_run_id").read_text().strip()
    if grace_s < WRITE_S:
        assert "forcefully exiting via 9" in rest
        assert [f for f in files if not f.endswith(".tmp")] == ["latest.json", "step_0000004.pt"], files
        assert len([f for f in files if f.startswith(".step_0000008.pt.")]) == 1, files
        want = 4
    else:
        assert [p.name for p in list_checkpoints(out)] == ["step_0000004.pt", "step_0000008.pt"], files
        assert rest.count("checkpoint step 8 ->") == 1 and "writing step_0000011" not in rest
        run = MlflowClient().get_run(run_id)
        assert (run.info.status, run.data.tags["status"]) == ("KILLED", "preempted")
        want = 8
    ck = load_checkpoint(out)
    assert (ck["step"], ck["ledger"]["images_seen"], ck["mlflow_run_id"]) == (want, 8 * want, run_id)
    took = time.monotonic() - t0

    cmd = [sys.executable, "-m", "dit_core.train", *RUN, "--max-steps", "10", "--out", str(out)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"at step {want} ({8 * want} images seen)" in proc.stderr
    assert ("removed 1 unfinished checkpoint write(s)" in proc.stderr) == (grace_s < WRITE_S)
    assert not [f for f in os.listdir(out / "checkpoints") if f.endswith(".tmp")]
    assert load_checkpoint(out)["step"] == 10 and MlflowClient().get_run(run_id).info.status == "FINISHED"
    assert took < 90, took


# ---------------------------------------------------------------- 3. SIGUSR1 under torchrun
#: torchrun's signals (its default) plus the two SLURM and submitit send: `PET_SIGNALS_TO_HANDLE`
#: (torchrun's --signals-to-handle, which `accelerate launch` has no flag for)
FORWARD_USR = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2"


@pytest.mark.timeout(300)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the ranks through /proc")
def test_sigusr1_to_the_launcher_is_lost_unless_torchrun_is_told_to_forward_it(tmp_path):
    """SIGUSR1 to the launcher only (SLURM's ``--signal=B:USR1@...`` to a batch script that runs
    `accelerate launch` itself; `scancel --batch --signal=USR1`). torchrun handles SIGTERM, SIGINT,
    SIGHUP and SIGQUIT only: USR1's default action kills it at once (exit -10) and the ranks, in
    sessions of their own, train on as orphans with no preemption checkpoint. With
    PET_SIGNALS_TO_HANDLE naming SIGUSR1 it is sent on to the ranks: they checkpoint, the run ends
    KILLED / preempted, the launcher exits 128 + 10."""
    from mlflow import MlflowClient
    from test_dist_s39 import _rank_pids

    from dit_core.checkpoint import load_checkpoint

    def launch(out: Path, env: dict[str, str]) -> tuple[int, dict[int, int]]:
        cmd = [*ACCELERATE, "--num_processes", "2", "-m", "dit_core.train", *RUN, "--max-steps", "100000",
               "--out", str(out)]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        try:
            _read_until(proc, "step 5/100000 | loss")
            ranks = _rank_pids(proc.pid)
            assert sorted(ranks) == [0, 1], ranks
            proc.send_signal(signal.SIGUSR1)
            return proc.wait(timeout=60), ranks
        finally:
            if proc.poll() is None:
                proc.kill()

    rc, ranks = launch(tmp_path / "lost", _env())
    try:
        time.sleep(2)
        alive = {r: Path(f"/proc/{p}").exists() for r, p in ranks.items()}
    finally:
        for pid in ranks.values():  # the orphans: ours to end
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert (rc, alive) == (-signal.SIGUSR1, {0: True, 1: True})
    run = MlflowClient().get_run((tmp_path / "lost" / "mlflow_run_id").read_text().strip())
    assert run.info.status == "RUNNING"  # nobody ended it: no preemption

    out = tmp_path / "forwarded"
    rc, ranks = launch(out, _env(PET_SIGNALS_TO_HANDLE=FORWARD_USR))
    assert rc == 128 + signal.SIGUSR1 and not any(Path(f"/proc/{p}").exists() for p in ranks.values())
    ck = load_checkpoint(out)
    run = MlflowClient().get_run((out / "mlflow_run_id").read_text().strip())
    assert (run.info.status, run.data.tags["status"]) == ("KILLED", "preempted")
    assert ck["step"] >= 5 and ck["ledger"]["images_seen"] == 8 * ck["step"]
