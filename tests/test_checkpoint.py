"""Checkpoint files: atomic writes, the latest pointer, retention, weights_only loading, model loading."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _train_helpers import one_thread, tiny_config

from dit_core.checkpoint import (
    checkpoint_path,
    checkpoint_step,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model_from_checkpoint,
    model_from_checkpoint,
    remove_partial_writes,
    save_checkpoint,
)


def test_save_is_atomic_and_retains_the_newest(tmp_path, monkeypatch):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, {"step": step, "w": torch.full((2,), float(step))}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000002.pt", "step_0000003.pt"]
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text())["step"] == 3
    assert load_checkpoint(tmp_path)["w"].tolist() == [3.0, 3.0]

    def crash(obj, f):  # a write that dies half way
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, {"step": 4, "w": torch.zeros(2)})
    assert latest_checkpoint(tmp_path).name == "step_0000003.pt"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "latest.json",
        "step_0000002.pt",
        "step_0000003.pt",
    ]  # no temp file left behind


def test_checkpoint_names_round_trip_through_the_files_save_writes(tmp_path):
    written = save_checkpoint(tmp_path, {"step": 12_345_678})  # past seven digits: still one file per step
    assert written == checkpoint_path(tmp_path, 12_345_678) == checkpoint_path(written.parent, 12_345_678)
    assert [checkpoint_step(p) for p in list_checkpoints(tmp_path)] == [12_345_678]
    assert (
        checkpoint_step(checkpoint_path(tmp_path, 40)) == 40
        and checkpoint_path(tmp_path, 40).name == "step_0000040.pt"
    )
    with pytest.raises(ValueError, match="not a checkpoint file"):
        checkpoint_step(tmp_path / "checkpoints" / "latest.json")


def test_latest_falls_back_to_the_highest_step(tmp_path):
    save_checkpoint(tmp_path, {"step": 5})
    save_checkpoint(tmp_path, {"step": 12})
    (tmp_path / "checkpoints" / "latest.json").unlink()
    assert latest_checkpoint(tmp_path).name == "step_0000012.pt"
    assert latest_checkpoint(tmp_path / "nothing") is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no checkpoint in"):
        load_checkpoint(tmp_path / "empty")
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing")


def test_training_checkpoint_loads_weights_only_and_rebuilds_the_model(tmp_path):
    from dit_core.train import train

    with one_thread():
        res = train(tiny_config(tmp_path, steps=6, **{"tracking.enabled": False, "optim.ema_decay": 0.5}))
    path = latest_checkpoint(tmp_path)
    ck = torch.load(path, weights_only=True)  # plain containers only
    assert set(ck) >= {"model", "ema", "optimizer", "scheduler", "rng", "data_position", "ledger", "step",
                       "config", "mlflow_run_id"}  # fmt: skip
    assert ck["step"] == res.step == 6 and ck["data_position"] == {
        "epoch": 0, "index": 48, "dataset_size": ck["data_position"]["dataset_size"], "global_batch_size": 8
    }  # fmt: skip
    model, diffusion, cfg = load_model_from_checkpoint(tmp_path, use_ema=True)
    raw, _, _ = load_model_from_checkpoint(path, use_ema=False)
    assert cfg.model.depth == 2 and diffusion.learn_sigma == model.learn_sigma
    for name, t in model.state_dict().items():
        assert torch.equal(t, ck["ema"][name])
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), raw.parameters()))
    x, t, y = torch.randn(2, 1, 16, 16), torch.tensor([10, 500]), torch.tensor([1, 2])
    assert model(x, t, y).shape == (2, 2, 16, 16)


def test_a_checkpoint_without_the_trainer_keys_is_refused_by_name():
    with pytest.raises(
        ValueError, match=r"^x.pt is not a dit_core training checkpoint \(missing \['config', 'ema'\]\)$"
    ):
        model_from_checkpoint({"model": {}, "step": 1}, name="x.pt")
    with pytest.raises(ValueError, match=r"\(missing \['config'\]\)$"):
        model_from_checkpoint({"model": {}, "step": 1}, use_ema=False)


def test_a_write_killed_mid_file_leaves_a_temp_file_the_next_save_removes(tmp_path, caplog):
    """SIGKILL runs no cleanup: the half-written temp file stays beside the checkpoints until the next
    save (or resume) removes it, by the name `atomic_write` gives it; finished files are kept."""
    save_checkpoint(tmp_path, {"step": 1})
    killed = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from dit_core.checkpoint import atomic_write\n"
        "def die(f):\n"
        "    f.write(b'half a checkpoint'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "atomic_write(Path(sys.argv[1]) / 'checkpoints' / 'step_0000002.pt', die)\n"
    )
    import dit_core  # the child imports the same copy of the package as this process

    env = {**os.environ, "PYTHONPATH": str(Path(dit_core.__file__).parents[1])}
    cmd = [sys.executable, "-c", killed, str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    folder = tmp_path / "checkpoints"
    (left,) = [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert left.read_bytes() == b"half a checkpoint" and left.name.startswith(".step_0000002.pt.")
    assert latest_checkpoint(tmp_path).name == "step_0000001.pt"  # the pointer never moved
    with caplog.at_level(logging.WARNING, logger="dit_core.checkpoint"):
        assert remove_partial_writes(tmp_path) == [left]
    assert (
        f"removed 1 unfinished checkpoint write(s) of an earlier, killed job: {left.name}" in caplog.messages
    )
    assert sorted(p.name for p in folder.iterdir()) == ["latest.json", "step_0000001.pt"]
    assert remove_partial_writes(tmp_path) == [] and remove_partial_writes(tmp_path / "none") == []


def test_load_checkpoint_refuses_a_pickled_object_that_is_not_plain_data(tmp_path):
    """A checkpoint is read with weights_only=True: a file that would run code when unpickled is
    refused, by name, before anything is built."""
    path = tmp_path / "checkpoints" / "step_0000001.pt"
    path.parent.mkdir()
    torch.save({"step": 1, "hook": os.system}, path)  # unpickling it would import and call into os
    with pytest.raises(
        ValueError, match=r"is not a checkpoint written by dit_core.train \(UnpicklingError\)"
    ):
        load_checkpoint(path)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_checkpoints_get_the_mode_a_plain_open_gives(tmp_path, umask, mode):
    """0o666 & ~umask, as for any file the job writes (not the 0o600 of a `tempfile.mkstemp`), for
    the step file and its pointer; the write stays atomic (no temporary file left)."""
    old = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path, {"step": 1, "w": torch.zeros(2)})
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    assert (tmp_path / "plain").stat().st_mode & 0o777 == mode  # what open() gives here
    for p in (path, tmp_path / "checkpoints" / "latest.json"):
        assert p.stat().st_mode & 0o777 == mode, (p.name, oct(p.stat().st_mode))
    assert sorted(p.name for p in path.parent.iterdir()) == ["latest.json", "step_0000001.pt"]
