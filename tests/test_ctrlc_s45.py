"""Session 45 (ctrlc): the launcher's Ctrl-C to its local jobs (`sweeps.runner._ctrl_c`).

A. submitit's local controller, which must get no SIGINT (it SIGKILLs its tasks 1 s later), was known by
   its command line (``/proc/PID/cmdline`` holding the submitit-internal module name): a controller
   started otherwise got the Ctrl-C. It is now known by its place in the job's tree: the child of the
   job's shell, whose pid is the job's id.
B. A terminal's Ctrl-C reached the launcher and a warm worker's jobs at once (one process group); a
   launcher busy for longer than the trainer's echo window (a record the tracking server is slow to
   take) then passed its own Ctrl-C on late, which the trainer took for a second one: it stopped at
   once, without its checkpoint. The warm worker now runs in a session of its own: the launcher's Ctrl-C
   is the only one its jobs get, whenever it comes.

This module is also the stand-in trainer of test B (``trainer: test_ctrlc_s45``): it counts the SIGINTs
it gets, under the trainer's own rule (`PreemptionGuard`). Handshakes, no fixed sleeps but one: the echo
window has to pass before the launcher is released (a lower bound, not a race)."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from _sweep_specs import fake_trainer_spec, pid_alive, wait_for, write_sweep_config
from test_sweeps_fake_trainer import WARM_IMPORTS  # noqa: F401 - what a warm worker imports for it
from test_sweeps_fake_trainer import TrainConfig as _FakeConfig

from dit_core.trainer.signals import PreemptionGuard
from sweeps.executor import local_job_setup
from sweeps.grid import ExecutorSpec, load_spec
from sweeps.runner import _ctrl_c

ECHO_S = 0.3  # the stand-in trainer's echo window (the real one's, `SIGINT_ECHO_S`, is 2 s)
HOLD_ENV = "DITSCALE_TEST_HOLD_WARM"  # a file: the warm worker's import of this trainer waits for it


_HOLD = os.environ.get(HOLD_ENV, "")
if _HOLD and sys.argv[0].endswith(os.path.join("sweeps", "warm.py")):  # imported by the warm worker
    Path(f"{_HOLD}.pid").write_text(str(os.getpid()))
    while not os.path.exists(_HOLD):
        time.sleep(0.02)


# ------------------------------------------------------------------------ A: the controller's place
_NODE = """
import signal, subprocess, sys, time
from pathlib import Path
names, folder = sys.argv[1].split(","), Path(sys.argv[2])
signal.signal(signal.SIGINT, lambda *_: open(folder / names[0], "a").write("SIGINT\\n"))
if names[1:]:
    child = subprocess.Popen([sys.executable, __file__, ",".join(names[1:]), str(folder)])
else:
    (folder / "ready").touch()
while not (folder / "stop").exists():
    time.sleep(0.02)
"""


def _counts(folder: Path, names: list[str]) -> dict[str, int]:
    return {n: len((folder / n).read_text().split()) if (folder / n).exists() else 0 for n in names}


def test_a_local_jobs_controller_is_known_by_its_place_not_its_command_line(tmp_path):
    """A stand-in submitit job: its shell (the job's id), the controller the shell started, the
    controller's task (the trainer) and a process the trainer started, each a plain ``python node.py``
    counting its SIGINTs. One `_ctrl_c` gives each but the controller one SIGINT, a second call none.
    Before: the controller was known by ``submitit.local._local`` in its command line; this one, started
    otherwise, got the Ctrl-C too (and would have SIGKILLed its tasks 1 s later)."""
    node = tmp_path / "node.py"
    node.write_text(_NODE)
    names = ["shell", "controller", "trainer", "worker"]
    shell = subprocess.Popen([sys.executable, str(node), ",".join(names), str(tmp_path)])
    try:
        wait_for(
            lambda: (tmp_path / "ready").exists() or shell.poll() is not None, "the job's last process", 30
        )
        job = SimpleNamespace(job_id=str(shell.pid))  # submitit's LocalJob: its id is its shell's pid
        signalled: set[int] = set()
        _ctrl_c([job], signalled)
        wait_for(
            lambda: _counts(tmp_path, names)["worker"] and _counts(tmp_path, names)["shell"], "the SIGINTs"
        )
        _ctrl_c([job], signalled)  # once each: a later call (processes started since) repeats none
        (tmp_path / "stop").touch()
        shell.wait(timeout=30)
    finally:
        (tmp_path / "stop").touch()
        if shell.poll() is None:
            shell.kill()
    assert _counts(tmp_path, names) == {"shell": 1, "controller": 0, "trainer": 1, "worker": 1}


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_a_local_jobs_shell_stays_its_controllers_parent(tmp_path, shell):
    """submitit runs a local job as ``sh -c "SETUP && ... && CONTROLLER"``; the job's id is the shell's
    pid, and the controller names the job after its parent. bash (``/bin/sh`` on Fedora, RHEL, Arch)
    ran the last command in the shell's own process: the controller's parent was the launcher, its
    tasks' files went to a folder named after the launcher's pid, and every local job failed (and
    `_ctrl_c` would have taken the controller for the job's shell). The job's set-up lines keep the shell
    (`KEEP_JOB_SHELL`), as dash does anyway."""
    if not Path(shell).exists():
        pytest.skip(f"no {shell}")
    lines = local_job_setup(ExecutorSpec(setup=["true"]), str(tmp_path), 1)
    controller = f"{sys.executable} -c 'import os; print(os.getppid())'"
    job = subprocess.Popen(" && ".join([*lines, controller]), shell=True, executable=shell,
                           stdout=subprocess.PIPE, text=True)  # fmt: skip
    out, _ = job.communicate(timeout=30)
    assert job.returncode == 0 and int(out) == job.pid, (out, job.pid)


# ------------------------------------------------------------------------ B: the stand-in trainer
@dataclass
class TrainConfig(_FakeConfig):
    record: str = ""  # what happens, a line each: training, SIGINT, checkpoint, stopped at once
    release: str = ""  # the step in flight when the Ctrl-C comes ends once this file exists
    echo_s: float = ECHO_S


def append_note(rec: Path, what: str) -> None:
    """Append ``what`` as a line of the record file ``rec``."""
    with open(rec, "a") as f:
        f.write(what + "\n")


def noting_guard(rec: Path, echo_s: float) -> PreemptionGuard:
    """The trainer's Ctrl-C guard (SIGINT, echo window ``echo_s``), noting each signal's name in ``rec``
    before it acts on it."""

    class Noting(PreemptionGuard):
        def _handle(self, signum, frame):
            append_note(rec, signal.Signals(signum).name)
            super()._handle(signum, frame)

    return Noting((signal.SIGINT,), sigint_echo_s=echo_s)


def train(cfg: TrainConfig) -> dict:
    """Train until a Ctrl-C, finish the step in flight (held until ``cfg.release`` exists: a slow step
    and checkpoint), then "checkpoint" and stop; a second Ctrl-C past the echo window stops it at once
    (KeyboardInterrupt), as `dit_core.train` in a local job."""
    rec = Path(cfg.record)
    Path(f"{rec}.pid").write_text(str(os.getpid()))  # a test's clean-up kills its process group

    note = functools.partial(append_note, rec)
    with noting_guard(rec, cfg.echo_s) as guard:
        try:
            note("training")
            while guard.received is None:
                time.sleep(0.02)
            while not os.path.exists(cfg.release):
                time.sleep(0.02)
            note("checkpoint")
        except KeyboardInterrupt:
            note("stopped at once")
            raise
    return {"status": "finished", "step": 1}


_HELD_LAUNCHER = """
import sys, time
from pathlib import Path
import sweeps.runner as runner
from sweeps.launch import main
busy, release = Path(sys.argv[1]), Path(sys.argv[2])
record = runner.record_submissions
def held(*args, **kwargs):  # the tracking server slow to take the jobs' record: the launcher is busy
    busy.touch()
    while not release.exists():
        time.sleep(0.02)
    return record(*args, **kwargs)
runner.record_submissions = held
sys.argv = ["launch.py", *sys.argv[3:]]
sys.exit(main())
"""


def _signals_default() -> None:
    """As a terminal's command: SIGINT and SIGHUP by default (not the test runner's)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


class _Held:
    """``sweeps/launch.py`` (through `_HELD_LAUNCHER`: held in the jobs' record until ``go`` exists) of one
    warm cell of the stand-in trainer, in its own process group as a terminal's foreground job;
    ``env``: more of its environment."""

    def __init__(self, job_env: str, tmp_path: Path, env: dict[str, str] | None = None):
        self.rec, self.release = tmp_path / "record", tmp_path / "step-release"
        self.busy, self.go = tmp_path / "launcher-busy", tmp_path / "launcher-release"
        self.err = tmp_path / "launcher.err"
        train = {"step_s": 0.05, "record": str(self.rec), "release": str(self.release), "echo_s": ECHO_S}
        spec = fake_trainer_spec(tmp_path, job_env, name="cc", experiment="ctrlc", budgets=[3e10],
                                 train=train, executor=ExecutorSpec(name="local"))  # fmt: skip
        cfg = write_sweep_config(spec, tmp_path / "sweep.yaml", families=["S"], trainer="test_ctrlc_s45",
                                 local_warm=True)  # fmt: skip
        load_spec(cfg)
        script = tmp_path / "held_launcher.py"
        script.write_text(_HELD_LAUNCHER)
        cmd = [sys.executable, str(script), str(self.busy), str(self.go), "-c", str(cfg), "--poll", "0.2"]
        with open(self.err, "w") as errf:
            self.proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_signals_default,
                                         stdout=subprocess.DEVNULL, stderr=errf,
                                         env={**os.environ, **(env or {})})  # fmt: skip

    def lines(self) -> list[str]:
        """What the stand-in trainer noted so far."""
        return self.rec.read_text().split("\n")[:-1] if self.rec.exists() else []

    def said(self) -> str:
        return self.err.read_text()

    def end(self) -> None:
        """Release every hold; SIGKILL what is left of the launcher's process group and the trainer's."""
        for path in (self.go, self.release):
            path.touch()
        groups = [self.proc.pid]
        with contextlib.suppress(OSError, ValueError):
            groups.append(os.getpgid(int(Path(f"{self.rec}.pid").read_text())))
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)


def test_b_a_terminals_ctrl_c_is_not_doubled_by_a_busy_launcher_for_a_warm_job(job_env, tmp_path):
    """The launcher holds in the record of the job it submitted while the warm job trains; a terminal's
    Ctrl-C (SIGINT to the launcher's process group) comes; the launcher is released after the trainer's
    echo window, passes its Ctrl-C on, and the trainer ends the step in flight. The trainer gets one
    SIGINT and checkpoints; the launcher exits 130. Before: the terminal's SIGINT and, past the window,
    the launcher's: the trainer stopped at once, without its checkpoint."""
    run = _Held(job_env, tmp_path)
    try:
        wait_for(
            lambda: "training" in run.lines() or run.proc.poll() is not None, "the warm job to train", 60
        )
        assert run.busy.exists() and run.proc.poll() is None, run.said()
        os.killpg(run.proc.pid, signal.SIGINT)  # the terminal's Ctrl-C
        time.sleep(2 * ECHO_S)  # the trainer's echo window passes while the launcher is busy
        run.go.touch()
        wait_for(lambda: "WARNING sweeps.runner: interrupted:" in run.said() or run.proc.poll() is not None,
                 "the launcher's Ctrl-C to its jobs", 30)  # fmt: skip
        run.release.touch()  # the step in flight ends, after the launcher's Ctrl-C was sent
        run.proc.wait(timeout=60)
    finally:
        run.end()
    assert run.lines() == ["training", "SIGINT", "checkpoint"], (run.lines(), run.said())
    assert run.proc.returncode == 130, run.said()


def test_b_a_ctrl_c_while_the_warm_worker_imports_leaves_no_job_to_fork_later(job_env, tmp_path):
    """The warm worker, now in a session of its own, no longer gets the terminal's Ctrl-C, which used to
    end it: a job it had not forked yet when the launcher stopped would have been forked later and
    trained with nobody to stop it. The launcher's Ctrl-C now ends the worker (`WarmExecutor.stop`): a
    Ctrl-C while the worker still imports (held here, by a handshake) leaves no job to fork."""

    hold = tmp_path / "warm-hold"
    run, worker = _Held(job_env, tmp_path, env={HOLD_ENV: str(hold)}), None
    try:
        held = tmp_path / "warm-hold.pid"
        wait_for(lambda: (run.busy.exists() and held.exists()) or run.proc.poll() is not None,
                 "the launcher's record and the warm worker's imports to hold", 60)  # fmt: skip
        assert run.proc.poll() is None, run.said()
        worker = int(held.read_text())
        os.killpg(run.proc.pid, signal.SIGINT)  # the terminal's Ctrl-C
        run.go.touch()
        run.proc.wait(timeout=60)
        hold.touch()  # the worker's imports would end now: it would fork the job
        wait_for(
            lambda: not pid_alive(worker) or run.lines(), "the warm worker to end, or its job to start", 30
        )
    finally:
        hold.touch()
        run.end()
        if worker is not None and pid_alive(worker):
            os.killpg(worker, signal.SIGKILL)  # its group: the job it forked too
    assert run.lines() == [] and run.proc.returncode == 130, (run.lines(), run.said())
