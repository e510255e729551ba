"""Session 51 (CI flake of `test_rank1guard_s47`): a preemption signal that comes while a run stopped by
one is being ended (torchrun SIGTERMs every rank as soon as one has exited 143) finds the run stopped
as it asks. Before, the deferral re-raised it at SIGTERM's default action once the run was ended: the
process died of the signal (-15) instead of its CLI returning 143."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[1]
SCRIPT = """
import os, signal, sys
from dit_core import tracking
from dit_core.trainer import loop

real_finish, real_step = tracking.RunTracker.finish, loop.Trainer.train_step

def finish(self, status):
    os.kill(os.getpid(), signal.SIGTERM)  # another SIGTERM while the run is being ended
    return real_finish(self, status)

def step(self):
    real_step(self)
    if self.step == 2:
        os.kill(os.getpid(), signal.SIGTERM)

tracking.RunTracker.finish, loop.Trainer.train_step = finish, step
from dit_core.trainer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_second_sigterm_while_the_preempted_run_is_ended_still_exits_143(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    flags = ["--depth", "1", "--width", "16", "--heads", "2", "--data", "digits", "--image-size", "8",
             "--batch-size", "4", "--max-steps", "6", "--log-every", "1", "--tracking-uri", uri,
             "--experiment", "lateterm", "--out", str(tmp_path / "run")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, *flags], capture_output=True, text=True, env=env,
                          timeout=180)  # fmt: skip
    assert done.returncode == 143, (done.returncode, done.stderr[-3000:])
    assert "received SIGTERM while ending the run, stopped already" in done.stderr
    run_id = (tmp_path / "run" / "mlflow_run_id").read_text().strip()
    run = MlflowClient(uri).get_run(run_id)
    assert (run.info.status, run.data.tags["status"]) == ("KILLED", "preempted")
    assert (tmp_path / "run" / "checkpoints" / "step_0000002.pt").is_file()
