"""Session 46 (rankstart): a signal while a 2-process run's MLflow run is being started (rank 0 in
`Trainer.start_tracking`), with real processes on CPU (gloo). Every rank enters its `PreemptionGuard`
before `start_tracking` (tests/test_trackwin_s46.py: one process), and the ranks agree on a received signal
at the loop's first `SignalSync` all-reduce (step 0): they stop there together, a checkpoint of step 0,
the run KILLED ``preempted``, every rank exiting 143, and the same command resumes it into the same run.

Rank 0 is held in `RunTracker.log_params` and rank 1 just before its first agreement
(`Trainer.preempt_requested`) by a wrapper script (no hook in the library), each until the test has seen
every signalled rank take its signal (its guard's "received" line) or end: handshakes, no fixed sleeps."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _pg_server import free_port
from _sweep_specs import pid_alive
from _train_helpers import train_cli
from mlflow import MlflowClient

from dit_core.checkpoint import list_checkpoints, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
              "--num_processes", "2"]  # fmt: skip
TINY = ["--model", "none", "--depth", "2", "--width", "32", "--heads", "2", "--patch-size", "2", "--data",
        "digits", "--image-size", "16", "--global-batch-size", "8", "--log-every", "3", "--val-every", "0",
        "--eval-every", "0", "--experiment", "test-rankstart", "--max-steps", "3",
        "--ckpt-every", "0"]  # fmt: skip

#: ``held.py REPO HOLD <trainer flags>``: the trainer's CLI with each rank held where ``patches`` (Python run
#: before the CLI, `held_script`) wraps a function in ``held_then``: there it writes HOLD/held<rank> and
#: waits for HOLD/go. The code the CLI exits with (`exit_now`, with several processes) goes to
#: HOLD/exit<rank> (a rank a signal killed writes none).
_HELD = """
import ctypes, os, signal, sys, time
ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: gone with the launcher or the test
repo, hold = sys.argv.pop(1), sys.argv.pop(1)
sys.path.insert(0, repo)
from pathlib import Path
from dit_core import tracking
from dit_core.trainer import cli, loop

hold, rank = Path(hold), int(os.environ["RANK"])

def held_then(real):
    def held(*args, **kwargs):
        if not (hold / f"held{rank}").exists():
            (hold / f"held{rank}").touch()
            while not (hold / "go").exists():
                time.sleep(0.01)
        return real(*args, **kwargs)
    return held

{patches}
real_exit = cli.exit_now

def recorded_exit(code):
    (hold / f"exit{rank}").write_text(str(code))
    real_exit(code)

cli.exit_now = recorded_exit
sys.exit(cli.main())
"""

#: this file's holds: rank 0 in `RunTracker.log_params` (its MLflow run exists), rank 1 at its first
#: `Trainer.preempt_requested` (before it reads its guard's flag for the step-0 agreement)
_PATCHES = """
if rank == 0:
    tracking.RunTracker.log_params = held_then(tracking.RunTracker.log_params)
else:
    loop.Trainer.preempt_requested = held_then(loop.Trainer.preempt_requested)
"""


def held_script(patches: str) -> str:
    """The text of ``held.py`` (`_HELD`) with ``patches`` placing each rank's hold."""
    return _HELD.replace("{patches}", patches.strip())


TOOK = "received SIGTERM: checkpointing at the next step boundary"


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO), **extra)


def _wait_for(what: str, done, alive, within_s: float = 120) -> None:
    """Poll until ``done()``; fails with ``what`` if ``alive()`` turns false or ``within_s`` passes first."""
    deadline = time.monotonic() + within_s
    while not done():
        assert alive() and time.monotonic() < deadline, what
        time.sleep(0.02)


def _release_once_taken(hold: Path, logs: dict[int, Path], pids: dict[int, int]) -> None:
    """Touch HOLD/go once each rank of ``logs`` said it took its SIGTERM or has ended (a rank the signal
    killed: the test's assertions then say so), within 60 s."""

    def said_or_gone(rank: int) -> bool:
        path = logs[rank]
        return (path.exists() and TOOK in path.read_text()) or not pid_alive(pids[rank])

    deadline = time.monotonic() + 60
    while not all(said_or_gone(r) for r in logs) and time.monotonic() < deadline:
        time.sleep(0.02)
    (hold / "go").touch()


@contextlib.contextmanager
def held_launch(tmp_path: Path, patches: str, args: list[str], env: dict[str, str]):
    """``accelerate launch`` (2 processes) of `held_script` (``patches``) with ``args``, its stderr in
    ``tmp_path/launcher.txt``, the holds in ``tmp_path/hold``; yields (the launcher's process, {rank: pid},
    {rank: its log}) once both ranks are held; kills what is left of it on the way out."""
    from test_dist_s39 import _rank_pids

    hold, logs = tmp_path / "hold", tmp_path / "logs"
    hold.mkdir()
    script = tmp_path / "held.py"
    script.write_text(held_script(patches))
    cmd = [*ACCELERATE, "--log_dir", str(logs), "--tee", "2", str(script), str(REPO), str(hold), *args]
    with open(tmp_path / "launcher.txt", "w") as errf:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=errf, start_new_session=True)
    try:
        _wait_for(
            "the ranks never reached their holds",
            lambda: (hold / "held0").exists() and (hold / "held1").exists(),
            lambda: proc.poll() is None,
        )
        pids = _rank_pids(proc.pid)
        assert sorted(pids) == [0, 1], pids
        yield proc, pids, {r: next(logs.rglob(f"attempt_0/{r}/stderr.log")) for r in (0, 1)}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def assert_one_process_finishes(capsys, flags: list[str], out: Path, run_id: str) -> None:
    """The same command on one process (as a requeue with fewer) resumes ``out`` into MLflow run
    ``run_id`` and finishes it (step 3)."""
    code, err = train_cli(capsys, [*flags, "--out", str(out)])
    assert code == 0, err[-3000:]
    assert (out / "mlflow_run_id").read_text().strip() == run_id
    run = MlflowClient().get_run(run_id)
    assert (run.info.status, run.data.tags["status"]) == ("FINISHED", "finished")
    assert load_checkpoint(out)["step"] == 3


def _assert_stopped_at_step_0(out: Path, hold: Path, said: str) -> str:
    """Both ranks' CLIs returned 143, the run is KILLED ``preempted`` with one checkpoint, of step 0;
    the run's id."""
    codes = {r: (hold / f"exit{r}").read_text() if (hold / f"exit{r}").exists() else None for r in (0, 1)}
    assert codes == {0: "143", 1: "143"}, said[-4000:]
    run_id = (out / "mlflow_run_id").read_text().strip()
    run = MlflowClient().get_run(run_id)
    assert (run.info.status, run.data.tags.get("status")) == ("KILLED", "preempted"), said[-4000:]
    assert [p.name for p in list_checkpoints(out)] == ["step_0000000.pt"], said[-4000:]
    assert load_checkpoint(out)["mlflow_run_id"] == run_id
    return run_id


@pytest.mark.timeout(240)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the ranks through /proc")
def test_sigterm_to_torchrun_while_rank0_starts_the_run_stops_both_ranks_at_step_0(tmp_path, capsys):
    """SIGTERM to the launcher (torchrun sends it on to both ranks) while rank 0 logs its new MLflow run's
    params and rank 1 waits for it at the step-0 agreement: both ranks take it, agree at step 0, rank 0
    writes the step-0 checkpoint and ends the run KILLED ``preempted``, each rank's CLI returns 143, the
    launcher exits 143; the same command resumes into the same run and finishes it. Before (the guard
    entered after `start_tracking`): rank 0 died of the signal (no exit code of its CLI), the run
    RUNNING, no checkpoint."""
    hold, out = tmp_path / "hold", tmp_path / "run"
    # the ranks' own grace after torchrun's SIGTERM (default 30 s): room for a loaded machine
    env = _env(TORCH_ELASTIC_SHUTDOWN_TIMEOUT="90")
    with held_launch(tmp_path, _PATCHES, [*TINY, "--out", str(out)], env) as (proc, pids, rank_logs):
        proc.send_signal(signal.SIGTERM)
        _release_once_taken(hold, rank_logs, pids)
        rc = proc.wait(timeout=150)
    said = (tmp_path / "launcher.txt").read_text()
    run_id = _assert_stopped_at_step_0(out, hold, said)
    assert rc == 128 + signal.SIGTERM, said[-4000:]
    rank0 = rank_logs[0].read_text()
    assert TOOK in rank_logs[1].read_text() and TOOK in rank0
    assert "stopped at step 0/3 (SIGTERM)" in rank0, rank0[-3000:]

    assert_one_process_finishes(capsys, TINY, out, run_id)


@pytest.mark.timeout(180)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the ranks' /proc entries")
def test_sigterm_to_rank1_only_while_rank0_starts_the_run_stops_both_at_step_0(tmp_path):
    """SIGTERM to rank 1 alone (the test's own children, an env:// group: no launcher to end the other)
    while rank 0 logs its run's params: rank 0, which got none, learns it at the step-0 agreement, and
    both stop there together (no hang, no step trained), rank 0 writing the checkpoint and ending the
    run KILLED ``preempted``; both CLIs return 143."""
    hold, out = tmp_path / "hold", tmp_path / "run"
    hold.mkdir()
    script = tmp_path / "held.py"
    script.write_text(held_script(_PATCHES))
    cmd = [sys.executable, str(script), str(REPO), str(hold), *TINY, "--out", str(out)]
    port, procs = str(free_port()), []
    for rank in range(2):
        env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port)  # fmt: skip
        with open(tmp_path / f"rank{rank}.txt", "w") as err:
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err))
    try:
        _wait_for(
            "the ranks never reached their holds",
            lambda: (hold / "held0").exists() and (hold / "held1").exists(),
            lambda: all(p.poll() is None for p in procs),
        )
        procs[1].send_signal(signal.SIGTERM)
        _release_once_taken(hold, {1: tmp_path / "rank1.txt"}, {1: procs[1].pid})
        rcs = [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    said = "".join(f"--- rank {r}\n" + (tmp_path / f"rank{r}.txt").read_text() for r in (0, 1))
    assert rcs == [143, 143], said[-4000:]
    _assert_stopped_at_step_0(out, hold, said)
    rank0 = (tmp_path / "rank0.txt").read_text()
    assert TOOK not in rank0
    # rank 0 got no signal: its line names the peer's, not a stop_at_step nobody set (session 46)
    assert "stopped at step 0/3 (a signal to another rank)" in rank0, rank0[-3000:]
