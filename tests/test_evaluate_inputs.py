"""User mistakes the evaluation CLIs meet: an ``error: ...`` line and exit 2 before any sampling
(instead of a traceback after it, or scores logged into another run)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from dit_core.checkpoint import save_checkpoint
from dit_core.config import ModelConfig, TrainConfig
from dit_core.evaluate.__main__ import main as evaluate_main
from dit_core.extract_latents import main as extract_main
from dit_core.models import DiT


def _config() -> TrainConfig:
    shape = dict(depth=1, hidden_size=16, num_heads=2, patch_size=4, frequency_embedding_size=32)
    data = dict(input_size=16, in_channels=1, num_classes=10, learn_sigma=True)
    model = ModelConfig(name=None, **shape, **data)
    cfg = TrainConfig(model=model)
    return replace(cfg, eval=replace(cfg.eval, num_samples=4, steps=2, metrics=("fid_digits",)))


def _save(out, cfg: TrainConfig, **extra):
    sd = DiT.from_config(cfg.model.to_dit_config()).state_dict()
    save_checkpoint(out, {"model": sd, "ema": sd, "config": cfg.to_flat_dict(), "step": 3, **extra})
    return out


@pytest.fixture
def no_sampling(monkeypatch):
    """Fail the test if the evaluation gets as far as sampling."""

    def refuse(*args, **kwargs):
        raise AssertionError("sampled although the input was bad")

    monkeypatch.setattr("dit_core.evaluate.checkpoint_eval.evaluate_model", refuse)


def test_scores_go_only_into_the_checkpoints_own_run(tmp_path, capsys, no_sampling):
    import mlflow

    client = mlflow.MlflowClient()
    with mlflow.start_run() as own, mlflow.start_run(nested=True) as other:
        pass
    ckpt = _save(tmp_path / "run", _config(), mlflow_run_id=own.info.run_id)
    args = ["--checkpoint", str(ckpt), "--output", str(tmp_path / "m.json"), "--mlflow-run-id"]
    assert evaluate_main([*args, other.info.run_id]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after MLflow's own log lines
    assert err.startswith(f"error: --mlflow-run-id {other.info.run_id}: checkpoint ")
    assert (
        f"belongs to MLflow run {own.info.run_id}" in err and f"Pass --mlflow-run-id {own.info.run_id}" in err
    )
    assert evaluate_main([*args, "0123456789abcdef0123456789abcdef"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(
        "error: --mlflow-run-id 0123456789abcdef0123456789abcdef: no such run in the MLflow"
    )
    assert not (tmp_path / "m.json").exists()
    assert client.get_run(other.info.run_id).data.metrics == {}


@pytest.mark.parametrize("kind", ["truncated", "text", "tensor", "foreign", "pointer"])
def test_a_broken_or_foreign_checkpoint_is_named(tmp_path, capsys, no_sampling, kind):
    run = _save(tmp_path / "run", _config())
    path = next((run / "checkpoints").glob("step_*.pt"))
    said = f"checkpoint {path} is not a checkpoint written by dit_core.train"
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:-10])
    elif kind == "text":
        path.write_text("hello world\n")
    elif kind == "tensor":
        torch.save(torch.zeros(2), path)
        said += " (it holds a Tensor"
    elif kind == "foreign":
        torch.save({"a": torch.zeros(2)}, path)
        said = f"{path} is not a dit_core training checkpoint (missing ['config', 'ema', 'model', 'step'])"
    else:
        (run / "checkpoints" / "latest.json").write_text(json.dumps({"step": 3, "file": "../../x.pt"}))
        said = f"{run / 'checkpoints' / 'latest.json'} names '../../x.pt', not a step_*.pt file"
    assert evaluate_main(["--checkpoint", str(path if kind == "foreign" else run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {said}") and "Traceback" not in err, err


def test_missing_output_folders_and_a_vae_folder_without_config_fail_up_front(tmp_path, capsys, no_sampling):
    ckpt = _save(tmp_path / "run", _config())
    for flag, name in (("--output", "o.json"), ("--save-samples", "s.npz")):
        path = tmp_path / "nonexistent" / name
        assert evaluate_main(["--checkpoint", str(ckpt), flag, str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {flag} {path}: the folder {path.parent} does not exist"), err
    cfg = _config()
    latents = replace(cfg, model=replace(cfg.model, input_size=8, in_channels=4),
                      data=replace(cfg.data, name="latents", root=str(tmp_path / "latents")))  # fmt: skip
    ckpt = _save(tmp_path / "latent_run", latents)
    (tmp_path / "imgs").mkdir()
    args = ["--checkpoint", str(ckpt), "--reference", "digits", "--metrics", "fid_digits", "--vae"]
    assert evaluate_main([*args, str(tmp_path / "imgs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --vae {tmp_path / 'imgs'}: no config.json there nor in its vae/"), err
    assert "--vae-subfolder" not in err  # extract_latents' flag: evaluate has none


def test_extract_latents_names_a_bad_device(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    args = ["--data-path", str(tmp_path / "imgs"), "--output", str(tmp_path / "out"), "--vae", str(tmp_path)]
    assert extract_main([*args, "--device", "bogus"]) == 2
    assert capsys.readouterr().err.startswith("error: --device 'bogus' is not a device; use auto, cpu, cuda")
    if not torch.cuda.is_available():
        assert extract_main([*args, "--device", "cuda"]) == 2
        assert capsys.readouterr().err.startswith("error: --device cuda: this machine has 0 CUDA GPU(s)")


def test_evaluate_samples_on_the_device_asked_for(tmp_path, capsys, monkeypatch):
    """--device is resolved before the checkpoint is read and the model sampled there (``meta``
    stands in for a GPU, which this machine lacks); one this machine lacks exits 2."""
    ckpt = _save(tmp_path / "run", _config())
    seen = []

    def record(model, diffusion, settings, **kwargs):
        seen.append(next(model.parameters()).device.type)
        return {"fid_digits": 1.0}

    monkeypatch.setattr("dit_core.evaluate.checkpoint_eval.evaluate_model", record)
    monkeypatch.setattr("dit_core.device.DEVICE_TYPES", ("cpu", "cuda", "meta"))  # refused as a real device
    for device in ("cpu", "meta"):
        assert evaluate_main(["--checkpoint", str(ckpt), "--device", device]) == 0
    assert seen == ["cpu", "meta"]
    capsys.readouterr()
    assert evaluate_main(["--checkpoint", str(ckpt), "--device", "bogus"]) == 2
    assert capsys.readouterr().err.startswith("error: --device 'bogus' is not a device; use auto, cpu, cuda")
    if not torch.cuda.is_available():
        assert evaluate_main(["--checkpoint", str(ckpt), "--device", "cuda:1"]) == 2
        assert capsys.readouterr().err.startswith("error: --device cuda:1: this machine has 0 CUDA GPU(s)")
    assert seen == ["cpu", "meta"]
