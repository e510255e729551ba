"""Session 36's QA pass over dit_core's command-line tools: each test is a bug a new user met."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from dit_core.checkpoint import save_checkpoint
from dit_core.config import ModelConfig, TrainConfig
from dit_core.evaluate.__main__ import main as evaluate_main
from dit_core.models import DiT


def _tiny_config() -> TrainConfig:
    model = ModelConfig(
        name=None, depth=1, hidden_size=32, num_heads=2, patch_size=4, input_size=16, in_channels=1,
        num_classes=10, learn_sigma=True, frequency_embedding_size=32,
    )  # fmt: skip
    cfg = TrainConfig(model=model)
    return replace(cfg, eval=replace(cfg.eval, num_samples=8, steps=2, metrics=("fid_digits",)))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny digits model's run folder, checkpointed at step 5."""
    cfg = _tiny_config()
    out = tmp_path_factory.mktemp("run")
    sd = DiT.from_config(cfg.model.to_dit_config()).state_dict()
    save_checkpoint(out, {"model": sd, "ema": sd, "config": cfg.to_flat_dict(), "step": 5})
    return out


def test_evaluate_into_a_run_twice_keeps_one_point_per_step(tiny_run, tmp_path, capsys):
    """``evaluate --mlflow-run-id R`` run again (a retried job, or another --seed, which is allowed)
    logged every eval/* metric a second time at the checkpoint's step: MLflow then holds two values
    at one step (the analysis reads the last, the trainer keeps the first). The first is kept, as the
    trainer's `RunTracker` does, and the note names what was not logged."""
    import mlflow

    with mlflow.start_run() as run:
        pass
    args = ["--checkpoint", str(tiny_run), "--batch-size", "4", "--mlflow-run-id", run.info.run_id]
    assert evaluate_main([*args, "--output", str(tmp_path / "a.json")]) == 0
    first = json.loads((tmp_path / "a.json").read_text())["eval/fid_digits"]
    capsys.readouterr()
    assert evaluate_main([*args, "--seed", "3", "--output", str(tmp_path / "b.json")]) == 0
    err = capsys.readouterr().err
    assert f"run {run.info.run_id} already holds eval/fid_digits, " in err and "at step 5: " in err
    assert "kept" in err and str(tmp_path / "b.json") in err
    hist = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "eval/fid_digits")
    assert [(h.step, h.value) for h in hist] == [(5, pytest.approx(first))]


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory):
    """A tiny run folder of a model trained on 4 x 8 x 8 VAE latents (the `tiny_vae`'s), at step 3."""
    cfg = _tiny_config()
    cfg = replace(cfg, model=replace(cfg.model, input_size=8, in_channels=4, patch_size=2),
                  data=replace(cfg.data, name="latents", root="/nowhere/latents"))  # fmt: skip
    out = tmp_path_factory.mktemp("latent_run")
    sd = DiT.from_config(cfg.model.to_dit_config()).state_dict()
    save_checkpoint(out, {"model": sd, "ema": sd, "config": cfg.to_flat_dict(), "step": 3})
    return out


def test_sample_and_evaluate_take_a_pipeline_folder_as_vae(latent_run, tiny_vae, tmp_path, capsys):
    """``--vae`` of a whole pipeline folder (its VAE in ``vae/``, as extract_latents --vae-subfolder vae
    reads it) was refused by sample and evaluate with advice to pass ``--vae-subfolder vae``, a flag
    neither has. They take the pipeline's ``vae/``; a folder with no VAE at all is named without it."""
    from dit_core.sample import main as sample_main

    tiny_vae.save_pretrained(tmp_path / "pipeline" / "vae")
    args = ["--checkpoint", str(latent_run), "--num-samples", "2", "--steps", "2", "--device", "cpu"]
    assert sample_main([*args, "--out", str(tmp_path / "s.png"), "--vae", str(tmp_path / "pipeline")]) == 0
    assert (tmp_path / "s.png").is_file()
    (tmp_path / "empty").mkdir()
    for main in (sample_main, evaluate_main):
        out = ["--out", str(tmp_path / "e.png")] if main is sample_main else ["--reference", "digits"]
        assert main([*args, *out, "--vae", str(tmp_path / "empty")]) == 2
        err = capsys.readouterr().err
        assert "--vae-subfolder" not in err, err
        assert f"--vae {tmp_path / 'empty'}: no config.json there nor in its vae/ subfolder" in err, err


def test_ctrl_c_while_the_run_is_being_set_up_ends_the_mlflow_run(tmp_path, monkeypatch, capsys):
    """A Ctrl-C (or any error) after the trainer had created its MLflow run but before training began
    (while it logged the params) left the run RUNNING with ``status=running``, though the CLI said
    "the MLflow run is marked failed". It is ended FAILED, as one a step later is."""
    from mlflow import MlflowClient

    from dit_core.tracking import RunTracker
    from dit_core.trainer.cli import main as train_main

    def interrupted(self, params):
        raise KeyboardInterrupt

    monkeypatch.setattr(RunTracker, "log_params", interrupted)
    out = tmp_path / "run"
    args = ["--model", "none", "--depth", "1", "--width", "32", "--heads", "2", "--patch-size", "2",
            "--image-size", "8", "--max-steps", "2", "--batch-size", "8", "--out", str(out)]  # fmt: skip
    assert train_main(args) == 130
    assert "the MLflow run is marked failed" in capsys.readouterr().err
    run = MlflowClient().get_run((out / "mlflow_run_id").read_text().strip())
    assert (run.info.status, run.data.tags["status"]) == ("FAILED", "failed")


def test_sample_image_size_of_a_latent_run_uses_its_vaes_own_downsampling(tiny_vae, tmp_path, capsys):
    """``sample --image-size`` of a latent run divided the pixels by 8 (the Stable Diffusion VAE's
    factor) whatever VAE was given: with a VAE of another factor (the tests' 2x `tiny_vae`) a rope
    model asked for 32 px silently wrote 8 px images, and a sin-cos model refused its own training size
    (16 px), saying it was trained at 64 px. The factor is the given VAE's."""
    from dit_core.sample import main as sample_main

    tiny_vae.save_pretrained(tmp_path / "vae")
    cfg = _tiny_config()

    npz = tmp_path / "s.npz"

    def sample(pos: str, size: int) -> int:
        args = ["--checkpoint", str(tmp_path / pos), "--out", str(tmp_path / "s.png"), "--npz", str(npz),
                "--num-samples", "2", "--steps", "2", "--device", "cpu"]  # fmt: skip
        return sample_main([*args, "--vae", str(tmp_path / "vae"), "--image-size", str(size)])

    for pos in ("sincos", "rope"):
        model = replace(cfg.model, input_size=8, in_channels=4, patch_size=2, pos_embed=pos)
        latent = replace(cfg, model=model, data=replace(cfg.data, name="latents", root="/nowhere/latents"))
        sd = DiT.from_config(latent.model.to_dit_config()).state_dict()
        save_checkpoint(tmp_path / pos, {"model": sd, "ema": sd, "config": latent.to_flat_dict(), "step": 3})
        assert sample(pos, 16) == 0
        assert np.load(npz)["arr_0"].shape == (2, 16, 16, 3)  # its training size: 8 x 8 latents, 2x
    assert sample("rope", 32) == 0
    assert np.load(npz)["arr_0"].shape == (2, 32, 32, 3)
    assert sample("sincos", 32) == 2
    assert "the model was trained at 16 px with a fixed sin-cos" in capsys.readouterr().err
    assert sample("rope", 6) == 2
    assert "not a positive multiple of the VAE's 2 x the model's patch 2 (4 px)" in capsys.readouterr().err


def test_a_vae_of_other_latent_channels_is_refused_before_sampling(latent_run, tiny_vae, tmp_path, capsys):
    """A ``--vae`` whose latents have other channels than the model was trained on (another VAE than
    the latents were extracted with) sampled everything, then crashed in the decoder with a torch
    traceback (exit 1). sample and evaluate refuse it once it is loaded, before sampling, naming both
    counts."""
    import diffusers

    from dit_core.sample import main as sample_main

    cfg = dict(tiny_vae.config)
    other = diffusers.AutoencoderKL(**{k: cfg[k] for k in (
        "in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
        "norm_num_groups", "sample_size")}, latent_channels=8)  # fmt: skip
    other.save_pretrained(tmp_path / "vae8")
    args = ["--checkpoint", str(latent_run), "--num-samples", "4", "--steps", "2", "--device", "cpu"]
    for main, out in (
        (sample_main, ["--out", str(tmp_path / "s.png")]),
        (evaluate_main, ["--reference", "digits"]),
    ):
        assert main([*args, *out, "--vae", str(tmp_path / "vae8")]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert f"--vae {tmp_path / 'vae8'} encodes 8 latent channels, but the model of checkpoint" in err, err
        assert "was trained on 4 (model.in_channels)" in err


def test_extract_latents_refuses_an_output_inside_its_image_folder(tiny_vae, tmp_path, capsys):
    """``extract_latents --output`` inside ``--data-path`` (e.g. ``--output imgs/latents``) wrote there;
    the rerun that resumes it then read that folder as one more (empty) class, and the manifest's
    classes, so the model's number of classes, changed silently. Refused before anything is written."""
    from PIL import Image

    from dit_core.extract_latents import main as extract_main

    tiny_vae.save_pretrained(tmp_path / "vae")
    imgs = tmp_path / "imgs"
    for c in ("cat", "dog"):
        (imgs / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (16, 16), (i * 90, 0, 0)).save(imgs / c / f"{i}.png")
    args = ["--data-path", str(imgs), "--vae", str(tmp_path / "vae"), "--image-size", "16",
            "--num-workers", "0", "--device", "cpu", "--no-progress"]  # fmt: skip
    for out in (imgs / "latents", imgs, imgs / "cat"):
        assert extract_main([*args, "--output", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"error: --output {str(out)!r} is inside --data-path {str(imgs)!r}" in err, err
        assert not (out / "manifest.json").exists()
    assert sorted(p.name for p in imgs.iterdir()) == ["cat", "dog"]
    assert extract_main([*args, "--output", str(tmp_path / "latents")]) == 0


def test_a_resume_that_changes_the_fid_protocol_of_its_run_is_refused(tmp_path, capsys):
    """A run resumed with other ``--num-samples`` / ``--sampler`` / ``--sample-steps`` / ``--cfg-scale``
    (``eval.*`` may change on resume) logged FIDs under those into its MLflow run, whose params keep
    the first values (MLflow params are write-once): the analysis then labelled them with the wrong
    protocol. Refused, naming the change, while evaluations are on; a fork (new run) may change them."""
    from mlflow import MlflowClient

    from dit_core.trainer.cli import main as train_main

    model = ["--model", "none", "--depth", "1", "--width", "32", "--heads", "2", "--patch-size", "2",
             "--image-size", "8", "--batch-size", "8", "--model.frequency_embedding_size", "32"]  # fmt: skip
    evals = ["--eval-every", "2", "--sample-steps", "2"]
    args = [*model, *evals, "--out", str(tmp_path / "a"), "--num-samples", "10"]
    assert train_main([*args, "--max-steps", "2"]) == 0
    run_id = (tmp_path / "a" / "mlflow_run_id").read_text().strip()
    assert train_main([*args, "--max-steps", "4", "--num-samples", "12"]) == 2
    err = capsys.readouterr().err
    assert "eval.num_samples: '10' -> '12'" in err and "MLflow keeps a run's first params" in err, err
    assert [m.step for m in MlflowClient().get_metric_history(run_id, "eval/fid_digits")] == [2]
    assert train_main([*args, "--max-steps", "4", "--num-samples", "12", "--eval-every", "0"]) == 0
    fork = [
        *model,
        *evals,
        "--out",
        str(tmp_path / "b"),
        "--num-samples",
        "12",
        "--resume",
        str(tmp_path / "a"),
    ]
    assert train_main([*fork, "--max-steps", "6"]) == 0


def test_a_reference_of_other_channels_than_the_samples_is_refused():
    """Grey samples scored against the colour photos (or colour ones against the grey digits) gave a FID
    of the colour alone, without a word; the reference's channels are now checked where known."""
    from dit_core.evaluate.metrics import evaluate_samples
    from dit_core.evaluate.reference import resolve_reference

    with pytest.raises(ValueError, match=r"holds colour images \(3 channel\(s\)\), but the samples have 1 "
                       r"channel\(s\).*'photos:channels=1'"):  # fmt: skip
        evaluate_samples(np.zeros((4, 1, 16, 16), np.uint8), "photos", metrics=("fid_photos",))
    with pytest.raises(ValueError, match=r"reference 'digits' holds grey images .* samples have 3 channel"):
        resolve_reference("digits", 16, channels=3)
    assert resolve_reference("photos:channels=1", 16, channels=1).options["channels"] == 1
    assert resolve_reference("digits", 16).kind == "digits"  # channels unknown: not checked


def test_a_copied_run_folder_does_not_continue_the_originals_mlflow_run(tmp_path, capsys):
    """`cp -r runs/a runs/b` then training `runs/b` continued run a's MLflow run from a second folder
    (only a warning: "param out was ... now ..."). While the original is there it is refused, naming the
    three ways on; a moved folder (the original gone) continues its run as before."""
    import shutil

    from mlflow import MlflowClient

    from dit_core.trainer.cli import main as train_main

    args = ["--model", "none", "--depth", "1", "--width", "32", "--heads", "2", "--patch-size", "2",
            "--image-size", "8", "--batch-size", "8", "--model.frequency_embedding_size", "32",
            "--eval-every", "0", "--val-every", "0"]  # fmt: skip
    a, b, c = (tmp_path / n for n in "abc")
    assert train_main([*args, "--out", str(a), "--max-steps", "2"]) == 0
    run_id = (a / "mlflow_run_id").read_text().strip()
    shutil.copytree(a, b)
    assert train_main([*args, "--out", str(b), "--max-steps", "4"]) == 2
    err = capsys.readouterr().err
    assert f"out: {b} is a copy of {a}" in err and f"MLflow run {run_id}" in err and "--resume" in err, err
    assert int(MlflowClient().get_run(run_id).data.metrics["data/images_seen"]) == 16  # untouched
    shutil.rmtree(b)
    shutil.move(a, c)  # a move: the run goes on in its new folder
    assert train_main([*args, "--out", str(c), "--max-steps", "4"]) == 0
    assert int(MlflowClient().get_run(run_id).data.metrics["data/images_seen"]) == 32
