"""The run folder's lock (`dit_core.trainer.out_lock`): held for each `Trainer.run`, released at its
end however it ends, so runs can follow each other in one process (the sweeps' warm workers); under
several processes only rank 0 takes it and the others learn its outcome instead of hanging."""

from __future__ import annotations

import contextlib
import fcntl
import os

import pytest
from _train_helpers import one_thread, tiny_config, train_lock_free

from dit_core.configio import ConfigError
from dit_core.trainer.loop import Trainer
from dit_core.trainer.out_lock import TRAIN_LOCK, OutFolderBusy, out_folder_lock


def test_runs_one_after_another_in_one_process_each_hold_the_lock_until_they_end(tmp_path):
    out, seen = tmp_path / "run", []

    def run(steps: int, fail: bool = False):
        tr = Trainer(tiny_config(out, steps=steps, **{"tracking.enabled": False}))
        real = tr.train_step

        def step():
            seen.append(train_lock_free(out))
            if fail:
                raise RuntimeError("boom")
            real()

        tr.train_step = step
        return tr.run(progress_bar=False)

    with one_thread():
        assert run(2).status == "finished"
        assert train_lock_free(out)
        assert run(4).step == 4  # resumes into the same folder
        assert train_lock_free(out)
        with pytest.raises(RuntimeError, match="boom"):
            run(6, fail=True)
        assert train_lock_free(out)  # released by a run that raised
        assert run(6).step == 6
    assert len(seen) == 2 + 2 + 1 + 2 and not any(seen)  # held at every step
    assert TRAIN_LOCK == ".train.lock" and (out / TRAIN_LOCK).read_text() == ""


def test_a_trainer_built_before_another_ran_there_refuses_the_newer_checkpoints(tmp_path):
    """The lock is taken by `run`; a trainer that read the folder's checkpoints before another one
    trained there (and finished) would continue from a stale step, so it is refused."""
    cfg = tiny_config(tmp_path, steps=4, **{"tracking.enabled": False})
    with one_thread():
        late = Trainer(cfg)
        Trainer(cfg.replace(**{"budget.max_steps": 2})).run(progress_bar=False)
        with pytest.raises(
            OutFolderBusy, match=r"^out: another trainer wrote checkpoints to .* start this one"
        ):
            late.run(progress_bar=False)
        assert train_lock_free(tmp_path)
        assert Trainer(cfg).run(progress_bar=False).step == 4


def test_only_rank_0_locks_and_every_rank_raises_its_refusal(tmp_path, monkeypatch):
    """world 2 with a stand-in for Accelerate's broadcast: rank 0 sends whether it got the lock and
    the other rank raises the same error (instead of waiting for rank 0 in the next collective),
    without touching the lock file."""
    import accelerate.utils

    tr = Trainer(tiny_config(tmp_path / "run", steps=2, **{"tracking.enabled": False}))
    sent = []

    def broadcast(box, from_process):
        assert from_process == 0
        if tr.main:
            sent.append(box[0])
        else:
            box[0] = sent[-1]
        return box

    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", broadcast)
    tr.world = 2
    with contextlib.ExitStack() as held, out_folder_lock(tmp_path / "run"):  # another trainer
        with pytest.raises(OutFolderBusy, match=r"is in use by another trainer \(pid \d+ on "):
            tr.hold_out_folder(held)
        is_config, message = sent[-1]
        assert is_config and message.startswith(f"out: {tmp_path / 'run'} is in use by another trainer")
        tr.main = False
        with pytest.raises(ConfigError) as e:
            tr.hold_out_folder(held)
        assert str(e.value) == message
    tr.main = True
    with contextlib.ExitStack() as held:
        tr.hold_out_folder(held)  # free: rank 0 takes it and sends None
        assert sent[-1] is None and not train_lock_free(tmp_path / "run")
        tr.main = False
        tr.hold_out_folder(held)  # the other rank goes on
    assert train_lock_free(tmp_path / "run")
    (tmp_path / "run" / TRAIN_LOCK).unlink()
    tr.hold_out_folder(contextlib.ExitStack())  # not rank 0: no lock file is made
    assert not (tmp_path / "run" / TRAIN_LOCK).exists()


def test_a_file_system_without_flock_trains_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
    """flock failing with ENOLCK (no locks on this file system): a warning, and the run goes on;
    any other error of flock is raised."""
    import errno

    real, fails_with = fcntl.flock, []

    def flock(fd, op):
        if op & fcntl.LOCK_EX and fails_with:
            raise fails_with[0]
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    fails_with.append(OSError(errno.ENOLCK, "No locks available"))
    with caplog.at_level("WARNING", logger="dit_core.train"), out_folder_lock(tmp_path) as path:
        assert path == tmp_path / TRAIN_LOCK
    assert f"cannot lock {path} (No locks available): this file system has no flock" in caplog.text
    fails_with[0] = PermissionError(errno.EACCES, "Permission denied")
    with pytest.raises(PermissionError), out_folder_lock(tmp_path):
        pass


@pytest.mark.timeout(240)
def test_two_ranks_on_a_busy_out_both_exit_with_the_message(tmp_path):
    """`accelerate launch` with 2 CPU ranks onto a folder another trainer holds: rank 0 is refused
    the lock, rank 1 learns it from rank 0 (no hang), both print the error and exit 2; nothing is
    written."""
    import subprocess
    import sys

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           "0", "-m", "dit_core.train", "--model", "none", "--depth", "2", "--width", "16", "--heads", "2",
           "--patch-size", "2", "--data", "digits", "--image-size", "16", "--global-batch-size", "8",
           "--max-steps", "2", "--no-mlflow", "--out", str(out)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with out_folder_lock(out):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=200)
    assert proc.returncode != 0, proc.stderr[-3000:]
    said = f"error: out: {out} is in use by another trainer (pid {os.getpid()} on "
    assert proc.stderr.count(said) == 2, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [TRAIN_LOCK]


def test_a_trainer_refused_a_busy_out_does_not_say_it_resumed(tmp_path, caplog):
    """A second trainer on a busy --out logged "resumed from ... at step N" (its checkpoint is read when
    it is built) and then refused the folder; the resume is now said once the lock is held."""
    import logging

    out = tmp_path / "run"
    cfg = tiny_config(out, steps=2, **{"tracking.enabled": False})
    with one_thread(), caplog.at_level(logging.INFO, logger="dit_core.train"):
        Trainer(cfg).run(progress_bar=False)
        second = Trainer(cfg.replace(**{"budget.max_steps": 4}))
        with out_folder_lock(out), pytest.raises(OutFolderBusy, match="is in use by another trainer"):
            second.run(progress_bar=False)
        assert not [r for r in caplog.records if r.getMessage().startswith("resumed from")]
        assert second.run(progress_bar=False).step == 4  # the folder free again: now it resumes, and says so
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed from")]
    assert said == [f"resumed from {out / 'checkpoints' / 'step_0000002.pt'} at step 2 (16 images seen)"]
