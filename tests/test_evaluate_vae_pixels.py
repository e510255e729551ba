"""``python -m dit_core.evaluate --vae X`` on a checkpoint of a pixel-space run is refused (it would be
silently ignored): ``error: vae: ...``, exit 2, before the model is built or anything sampled."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from _train_helpers import evaluate_checkpoint, one_thread, tiny_config

from dit_core.configio import ConfigError
from dit_core.evaluate.checkpoint_eval import CheckpointEvalConfig
from dit_core.train import train

REPO = Path(__file__).resolve().parents[1]
TINY = {"model.depth": 1, "model.hidden_size": 16, "model.num_heads": 2, "data.image_size": 8,
        "tracking.enabled": False, "checkpoint.every": 0, "log_every": 2}  # fmt: skip


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory) -> Path:
    """A run folder of 2 steps on 8 px digits (pixel space)."""
    out = tmp_path_factory.mktemp("pixel") / "run"
    with one_thread():
        train(tiny_config(out, steps=2, batch=4, **TINY))
    return out


def test_the_cli_refuses_vae_for_a_pixel_checkpoint(pixel_run, tmp_path):
    vae = tmp_path / "vae"
    vae.mkdir()  # a folder that exists: refused for what the run is, not for the folder
    cmd = [sys.executable, "-m", "dit_core.evaluate", "--checkpoint", str(pixel_run), "--vae", str(vae),
           "--num-samples", "4", "--steps", "2", "--batch-size", "4", "--metrics", "fid_digits",
           "--output", str(tmp_path / "m.json")]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith(f"error: vae: --vae {vae} was given, but checkpoint {pixel_run} is of a run "), err
    assert "'digits' pixel data" in err and "drop --vae" in err and "Traceback" not in r.stderr
    assert r.stdout == "" and not (tmp_path / "m.json").exists()


def test_evaluate_checkpoint_refuses_before_building_the_model(pixel_run, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was built although --vae is refused")

    monkeypatch.setattr("dit_core.checkpoint.model_from_checkpoint", refuse)
    cfg = CheckpointEvalConfig(checkpoint=str(pixel_run), vae=str(tmp_path), num_samples=4, steps=2)
    with pytest.raises(ConfigError, match=r"^vae: .*; drop --vae"):
        evaluate_checkpoint(cfg)
