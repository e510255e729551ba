"""Resume and run-folder cases a preempted cluster user meets: a read-only ``--out``, a fork given
other settings, a run killed before its first checkpoint relaunched with other settings, and reading
a run folder while its trainer replaces its newest checkpoint."""

from __future__ import annotations

import errno
import os
import shutil

import pytest
from _train_helpers import one_thread, train_cli
from mlflow import MlflowClient

from dit_core import checkpoint
from dit_core.checkpoint import load_checkpoint, save_checkpoint

TINY = ["--model", "none", "--depth", "1", "--width", "16", "--heads", "2", "--patch-size", "2",
        "--data", "digits", "--image-size", "8", "--global-batch-size", "8",
        "--model.frequency_embedding_size", "16", "--log-every", "1"]  # fmt: skip


def _train(capsys, *args: str) -> tuple[int, str]:
    return train_cli(capsys, [*TINY, *args])


def test_a_read_only_out_exits_2_naming_it(tmp_path, capsys, monkeypatch):
    """An --out the user cannot write to (a read-only mount, another user's folder) is an ``error: out:``
    line and exit 2, not a PermissionError traceback (exit 1). Faked: tests may run as root."""
    out, real_open = tmp_path / "ro", os.open

    def no_write(path, flags, *args, **kwargs):
        if str(path).startswith(str(out)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_write)
    code, err = _train(capsys, "--max-steps", "2", "--no-mlflow", "--out", str(out))
    assert code == 2 and "Traceback" not in err, err
    assert f"error: out: cannot write to {out} (Permission denied)" in err
    assert "give a folder you can write to with --out" in err


def test_a_fork_given_other_settings_is_told_to_drop_them_not_to_delete_checkpoints(tmp_path, capsys):
    """``--resume OTHER_FOLDER --lr X --out NEW`` is refused (a fork continues exactly); the advice fits a
    fork: not "use a new --out" (it is one) nor "delete its checkpoints/" (the other folder's), which a
    user could follow and lose the run they wanted to fork."""
    src, fork = tmp_path / "src", tmp_path / "fork"
    code, err = _train(capsys, "--max-steps", "2", "--no-mlflow", "--out", str(src))
    assert code == 0, err
    code, err = _train(capsys, "--max-steps", "4", "--no-mlflow", "--lr", "3e-4", "--resume", str(src),
                       "--out", str(fork))  # fmt: skip
    assert code == 2 and "was written by a different config (optim.lr: '0.0001' -> '0.0003')" in err, err
    assert "delete its checkpoints/" not in err
    assert "a fork continues that checkpoint's settings exactly: drop the changed settings" in err
    assert load_checkpoint(src)["step"] == 2 and not fork.exists()
    code, err = _train(capsys, "--max-steps", "4", "--no-mlflow", "--resume", str(src), "--out", str(fork))
    assert code == 0, err  # the advice, followed


def test_a_run_killed_before_its_first_checkpoint_refuses_other_settings(tmp_path, capsys):
    """A job killed before its first checkpoint leaves ``config.json`` and its MLflow run id in --out.
    Relaunching there with another lr used to restart from step 0 in that MLflow run: its params kept
    the old lr (a warning only) while its later losses came from the new one, and the first steps'
    points stayed the old run's. Now refused before the run is touched, like a checkpoint's config."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "run"
    code, err = _train(capsys, "--max-steps", "2", "--tracking-uri", uri, "--out", str(out))
    assert code == 0, err
    shutil.rmtree(out / "checkpoints")  # as if SIGKILLed before its first checkpoint
    run_id = (out / "mlflow_run_id").read_text().strip()
    client = MlflowClient(uri)
    before, losses = client.get_run(run_id), client.get_metric_history(run_id, "train/loss")

    code, err = _train(capsys, "--max-steps", "2", "--tracking-uri", uri, "--lr", "3e-4", "--out", str(out))
    assert code == 2 and "Traceback" not in err, err
    assert f"error: {out / 'config.json'}: was written by a different config (optim.lr: '0.0001' -> " in err
    assert "run with --resume never to start over in this folder in a new MLflow run" in err
    after = client.get_run(run_id)
    assert after.info.status == before.info.status and after.data.tags == before.data.tags
    assert client.get_metric_history(run_id, "train/loss") == losses

    code, err = _train(capsys, "--max-steps", "2", "--tracking-uri", uri, "--lr", "3e-4", "--resume", "never",
                       "--out", str(out))  # fmt: skip
    assert code == 0, err  # the advice, followed: a new MLflow run
    new_id = (out / "mlflow_run_id").read_text().strip()
    assert new_id != run_id and client.get_run(new_id).data.params["optim.lr"] == "0.0003"
    code, err = _train(capsys, "--max-steps", "2", "--tracking-uri", uri, "--out", str(tmp_path / "same"))
    assert code == 0, err
    shutil.rmtree(tmp_path / "same" / "checkpoints")
    code, err = _train(capsys, "--max-steps", "2", "--tracking-uri", uri, "--out", str(tmp_path / "same"))
    assert code == 0, err  # the same settings still restart in their MLflow run


def test_reading_a_run_folder_while_its_trainer_replaces_the_newest_checkpoint(tmp_path, monkeypatch):
    """``python -m dit_core.evaluate --checkpoint RUN`` on a running job: with ``checkpoint.keep_last``
    the trainer may delete the newest file right after it was looked up (a newer one is written). That
    used to fail ("does not exist", or "truncated, corrupt" when deleted as torch opened it); now the
    folder's newest checkpoint is looked up again."""
    save_checkpoint(tmp_path, {"step": 1}, keep_last=1)
    save_checkpoint(tmp_path, {"step": 2}, keep_last=1)
    real, looked_up = checkpoint.latest_checkpoint, []

    def trainer_writes_meanwhile(out):
        found = real(out)
        if not looked_up:
            looked_up.append(found)
            save_checkpoint(tmp_path, {"step": 3}, keep_last=1)  # deletes step 2
        return found

    monkeypatch.setattr(checkpoint, "latest_checkpoint", trainer_writes_meanwhile)
    assert load_checkpoint(tmp_path)["step"] == 3
    assert looked_up[0].name == "step_0000002.pt" and not looked_up[0].exists()
    with pytest.raises(ValueError, match=r"checkpoint .*step_0000002.pt does not exist; pass a run folder"):
        load_checkpoint(looked_up[0])  # a file given by name is not replaced by another


def test_only_rank_0_says_where_a_preempted_run_was_checkpointed(tmp_path, caplog):
    """Under ``accelerate launch`` every rank logs warnings; after a SIGTERM the other ranks, which
    write no checkpoint, used to add "checkpoint None; resume with the same --out" to the job's log
    beside rank 0's real path, which reads as a lost checkpoint. (world_size stays 1: no collectives.)"""
    from dit_core.train import TrainConfig, Trainer

    cfg = TrainConfig().replace(**{
        "model.name": None, "model.depth": 1, "model.hidden_size": 16, "model.num_heads": 2,
        "model.patch_size": 2, "model.frequency_embedding_size": 16, "data.image_size": 8,
        "budget.max_steps": 4, "budget.global_batch_size": 8, "tracking.enabled": False, "out": str(tmp_path),
    })  # fmt: skip
    caplog.set_level("WARNING", logger="dit_core.train")
    with one_thread():
        tr = Trainer(cfg)
        tr.main = False  # rank 1 of 2
        res = tr.run(stop_at_step=1, progress_bar=False)
    assert (res.status, res.checkpoint) == ("preempted", None)
    assert not [r.getMessage() for r in caplog.records if "checkpoint None" in r.getMessage()]
