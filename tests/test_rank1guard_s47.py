"""Session 47 (rank1guard): a SIGTERM to one rank of a 2-process run (`accelerate launch`, gloo on CPU)
after the out folder's broadcast (`Trainer.hold_out_folder`) and before that rank entered its
`PreemptionGuard` (then at the start of `Trainer._run`). Before, the signal's default action ended that
rank (-15): signalled on rank 1, rank 0 lost its peer at the step-0 agreement and the MLflow run ended
FAILED on gloo's lost connection, with no checkpoint; signalled on rank 0, no MLflow run was started
at all. Now `Trainer.run` enters the guard on every rank before the broadcast: the rank takes the signal,
the ranks agree on it at step 0, a checkpoint of step 0, the run KILLED ``preempted``, each rank's CLI
returns 143, and the same command resumes into the same run.

The signalled rank is held in `process_start_time` (the first call of `Trainer._run`, after the
broadcast), the other rank just before its first agreement (`Trainer.preempt_requested`), each until the
test has seen the signalled rank take its SIGTERM or end: handshakes, no fixed sleeps."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from test_rankstart_s46 import (
    TINY as RANKSTART_TINY,
)
from test_rankstart_s46 import (
    TOOK,
    _assert_stopped_at_step_0,
    _env,
    _release_once_taken,
    assert_one_process_finishes,
    held_launch,
)

REPO = Path(__file__).resolve().parents[1]
TINY = [("test-rank1guard" if a == "test-rankstart" else a) for a in RANKSTART_TINY]

#: ``held.py REPO HOLD SIGNALLED <trainer flags>``: rank SIGNALLED held at its `process_start_time` (in
#: `Trainer._run`, after the out folder's broadcast) and the other rank at its first
#: `Trainer.preempt_requested` (rank 0: its MLflow run exists); `test_rankstart_s46.held_script`
_PATCHES = """
signalled = int(sys.argv.pop(1))
if rank == signalled:
    loop.process_start_time = held_then(loop.process_start_time)
else:
    loop.Trainer.preempt_requested = held_then(loop.Trainer.preempt_requested)
"""


def _signal_one_rank(tmp_path: Path, signalled: int) -> tuple[int, str, dict[int, Path]]:
    """Launch the held 2-process run, SIGTERM rank ``signalled`` once both ranks are held, release them
    once it took the signal (or ended); (the launcher's exit code, its stderr, each rank's log)."""
    hold, out = tmp_path / "hold", tmp_path / "run"
    args = [str(signalled), *TINY, "--out", str(out)]
    with held_launch(tmp_path, _PATCHES, args, _env()) as (proc, pids, rank_logs):
        os.kill(pids[signalled], signal.SIGTERM)
        _release_once_taken(hold, {signalled: rank_logs[signalled]}, pids)
        rc = proc.wait(timeout=120)
    return rc, (tmp_path / "launcher.txt").read_text(), rank_logs


@pytest.mark.timeout(240)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the ranks through /proc")
def test_sigterm_to_rank1_after_the_out_folder_broadcast_stops_both_at_step_0(tmp_path, capsys):
    """SIGTERM to rank 1 alone between the out folder's broadcast and its run's start: rank 1 takes it,
    rank 0 (no signal) learns it at the step-0 agreement, rank 0 writes the step-0 checkpoint and ends the
    run KILLED ``preempted``, both CLIs return 143 (the launcher, signalled by nobody, reports its failed
    workers: 1); the same command resumes into the same run and finishes it. Before: rank 1 died of the
    signal (-15, no exit code of its CLI), rank 0 exited 1, the run FAILED with gloo's "Connection reset
    by peer" as its error, no checkpoint."""
    out, hold = tmp_path / "run", tmp_path / "hold"
    rc, said, rank_logs = _signal_one_rank(tmp_path, signalled=1)
    said += "".join(f"--- rank {r}\n" + rank_logs[r].read_text() for r in (0, 1))
    run_id = _assert_stopped_at_step_0(out, hold, said)
    assert rc == 1, said[-4000:]
    rank0 = rank_logs[0].read_text()
    assert TOOK in rank_logs[1].read_text() and TOOK not in rank0
    assert "stopped at step 0/3 (a signal to another rank)" in rank0, rank0[-3000:]

    assert_one_process_finishes(capsys, TINY, out, run_id)


@pytest.mark.timeout(240)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the ranks through /proc")
def test_sigterm_to_rank0_after_the_out_folder_broadcast_stops_both_at_step_0(tmp_path):
    """The same on rank 0, before its MLflow run exists: rank 0 takes it, starts the run, and both stop at
    the step-0 agreement, the run KILLED ``preempted`` with a step-0 checkpoint, both CLIs 143. Before:
    rank 0 died of the signal (-15), rank 1 exited 1 on the lost connection (or -15: the launcher's
    SIGTERM once its error had ended its guard), no MLflow run, no checkpoint."""
    out, hold = tmp_path / "run", tmp_path / "hold"
    rc, said, rank_logs = _signal_one_rank(tmp_path, signalled=0)
    said += "".join(f"--- rank {r}\n" + rank_logs[r].read_text() for r in (0, 1))
    _assert_stopped_at_step_0(out, hold, said)
    assert rc == 1, said[-4000:]
    rank0 = rank_logs[0].read_text()
    assert TOOK in rank0 and "stopped at step 0/3 (SIGTERM)" in rank0, rank0[-3000:]
