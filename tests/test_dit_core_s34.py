"""Session 34's dit_core defects (session 33's "found, not fixed" list), each checked against what the
user sees."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from _train_helpers import one_thread, run_main, tiny_config, train_cli
from PIL import Image

from dit_core.configio import ConfigError
from dit_core.data import DataConfig
from dit_core.extract_latents import _in_flags
from dit_core.train import Trainer, train
from dit_core.train import main as train_main


def _one_step_run(tmp_path, **overrides):
    """A 1-step run of the tiny config without MLflow, checkpointed: its folder ``tmp_path/run``."""
    out = tmp_path / "run"
    with one_thread():
        train(
            tiny_config(
                out, steps=1, batch=4, **{"tracking.enabled": False, "checkpoint.every": 1, **overrides}
            )
        )
    return out


@pytest.mark.parametrize("size", [257, 4096])
def test_photos_at_a_huge_image_size_exits_2_before_building_a_model(size, capsys):
    """``--data photos --image-size 4096`` built a model with a 4M-token position table and then
    trained at a snail's pace (or ran out of memory): a crop covers at most ~280 photograph pixels."""
    assert train_main(["--data", "photos", "--image-size", str(size), "--no-mlflow", "--print-config"]) == 2
    assert capsys.readouterr().err == (
        f"error: data.image_size: {size} px is above the photos' limit of 256 px (the default crops cover "
        "60-282 px of a photograph, so a larger size only upsamples them); give --image-size 256 or less "
        "(the demo uses 16)\n"
    )
    assert DataConfig(name="photos", image_size=256).image_size == 256


def test_out_naming_a_checkpoints_folder_is_refused_before_anything_is_written(tmp_path, capsys):
    """``--out run/checkpoints`` wrote ``run/checkpoints/checkpoints/`` and kept its lock and run id
    inside ``run/checkpoints``, out of sight of a trainer on ``--out run`` (two trainers, one run)."""
    out = tmp_path / "run" / "checkpoints"
    code, err = train_cli(capsys, ["--data", "digits", "--image-size", "8", "--no-mlflow", "--max-steps", "1",
                                   "--out", str(out)])  # fmt: skip
    assert code == 2
    assert err == (
        f"error: out: {out} is the name of a run folder's checkpoints/ subfolder; --out names the run "
        f"folder itself (checkpoints/, config.json, the MLflow run id): give --out {out.parent} to "
        "continue that run, or another name for a new one\n"
    )
    assert not (tmp_path / "run").exists()


def _image_folder(root, per_class: int) -> None:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_a_moved_dataset_resumes_and_one_of_another_size_is_refused(tmp_path):
    """Moving an image folder and resuming with the new ``data.root`` was refused as "a different
    config" although the data were the same; a folder with other images must still be refused."""
    old, out = tmp_path / "data", tmp_path / "run"
    _image_folder(old, per_class=8)
    overrides = {
        "data.name": "imagefolder", "data.root": str(old), "data.image_size": 8, "model.num_classes": 2,
        "tracking.enabled": False, "checkpoint.every": 2,
    }  # fmt: skip
    with one_thread():
        assert train(tiny_config(out, steps=2, batch=4, **overrides)).status == "finished"
        moved = tmp_path / "moved"
        shutil.move(old, moved)
        res = train(tiny_config(out, steps=4, batch=4, **{**overrides, "data.root": str(moved)}))
        assert (res.status, res.step) == ("finished", 4)

        other = tmp_path / "other"
        _image_folder(other, per_class=5)
        with pytest.raises(ValueError, match="written with 16 images and global batch 4, this run has 10"):
            train(tiny_config(out, steps=6, batch=4, **{**overrides, "data.root": str(other)}))


def test_a_model_change_is_still_refused_beside_a_moved_dataset(tmp_path):
    out = tmp_path / "run"
    overrides = {"tracking.enabled": False, "checkpoint.every": 1, "data.image_size": 8}
    with one_thread():
        train(tiny_config(out, steps=1, batch=4, **overrides))
        with pytest.raises(ConfigError, match=r"model\.depth: '2' -> '3'"):
            Trainer(tiny_config(out, steps=2, batch=4, **{**overrides, "model.depth": 3}))


def test_extract_latents_flags_leave_paths_and_file_names_alone():
    """``_in_flags`` turned every field word into a flag, inside paths too (``/data/--output``)."""
    assert _in_flags("output: /data/output exists; see output.npz") == (
        "--output: /data/output exists; see output.npz"
    )
    assert _in_flags("image_size: 15 is not a multiple; give e.g. image_size 14") == (
        "--image-size: 15 is not a multiple; give e.g. --image-size 14"
    )
    assert _in_flags("data_path: ~/output is missing") == "--data-path: ~/output is missing"
    assert _in_flags("/data/output: not found") == "/data/output: not found"  # not a field's message


def test_a_checkpoint_whose_weights_do_not_fit_its_config_is_a_clear_error(tmp_path, capsys, monkeypatch):
    """A checkpoint with weights of another shape than its config gave a load_state_dict traceback (exit 1)
    in ``python -m dit_core.sample`` and ``evaluate``; now exit 2 naming the file."""
    import torch

    from dit_core.sample import main as sample_main

    out = _one_step_run(tmp_path)
    ckpt_path = next((out / "checkpoints").glob("step_*.pt"))
    ckpt = torch.load(ckpt_path, weights_only=False)
    ckpt["ema"]["pos_embed"] = ckpt["ema"]["pos_embed"][:, :4]  # another token count
    edited = tmp_path / "edited.pt"
    torch.save(ckpt, edited)
    monkeypatch.chdir(tmp_path)
    argv = ["--checkpoint", str(edited), "--out", "grid.png", "--steps", "1", "--num-samples", "2"]
    code, err = run_main(capsys, sample_main, argv)
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith(
        f"error: {edited}: its 'ema' weights do not fit the model its config describes (Error(s) in loading "
        "state_dict for DiT: size mismatch for pos_embed"
    ), err
    assert err.endswith("it was edited or assembled from two runs: use another checkpoint of the run\n")


def test_evaluate_against_an_unreachable_tracking_server_says_so_at_once(monkeypatch):
    """``evaluate --mlflow-run-id R`` with MLFLOW_TRACKING_URI at a server that is down waited ~4 minutes
    on MLflow's retries, then said "no such run". Now a health probe refuses it before MLflow is asked."""
    import mlflow

    from dit_core.evaluate.__main__ import _check_run

    def get_run(self, run_id):
        raise AssertionError("asked MLflow (minutes of retries) before probing the server")

    monkeypatch.setattr(mlflow.MlflowClient, "get_run", get_run)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    fix = "start it, or set MLFLOW_TRACKING_URI to the store the run is in"
    with pytest.raises(ValueError) as e:
        _check_run("abc")
    msg = str(e.value)
    assert msg.startswith(
        "--mlflow-run-id abc: MLflow tracking server http://127.0.0.1:9 is unreachable ("
    ), msg
    assert msg.endswith(f"); {fix}"), msg


def test_samples_that_overflow_are_an_error_not_black_images(tmp_path, capsys, monkeypatch):
    """``sample --cfg-scale 1e308`` made NaN samples, written as all-black images with exit 0 (and
    ``evaluate`` scored them): now an error naming the guidance scale, and nothing is written (exit 1,
    a failure of the model, since session 40; it was 2, the bad-input code)."""
    from dit_core.sample import main as sample_main

    out = _one_step_run(tmp_path, **{"model.class_dropout_prob": 0.1})
    monkeypatch.chdir(tmp_path)
    code, err = run_main(capsys, sample_main, ["--checkpoint", str(out), "--out", "grid.png", "--steps", "2",
                                               "--num-samples", "2", "--cfg-scale", "1e308"])  # fmt: skip
    assert code == 1, err
    assert err == (
        "error: sampling gave non-finite values (NaN or inf) in samples 0..1 at guidance scale 1e+308: the "
        "model's outputs overflow; lower the guidance scale (--cfg-scale, eval.cfg_scale; 1 to 4 is usual), "
        "or use another checkpoint\n"
    )
    assert not (tmp_path / "grid.png").exists()


def test_too_few_samples_for_precision_and_recall_are_refused_before_training(tmp_path):
    """A digits run with ``eval.num_samples=3`` (its default metrics include precision/recall, k = 3)
    trained to its first evaluation and failed there; now refused with the config."""
    from dit_core.trainer.evaluation import check_evaluation

    cfg = tiny_config(tmp_path, steps=1, **{"eval.eval_every": 1, "eval.num_samples": 3})
    with pytest.raises(ConfigError) as e:
        check_evaluation(cfg)
    assert str(e.value) == (
        "eval.num_samples: 3 is too few for precision and recall (3 nearest neighbours need 4 samples); "
        "raise eval.num_samples, or set eval.metrics without them; or set eval.eval_every=0 to train "
        "without sample metrics"
    )
    check_evaluation(cfg.replace(**{"eval.num_samples": 4}))
    check_evaluation(cfg.replace(**{"eval.metrics": ["fid_digits"]}))


def test_scores_of_a_checkpoint_without_a_run_go_only_into_a_run_of_its_config(tmp_path, capsys, monkeypatch):
    """``evaluate --checkpoint <a --no-mlflow run> --mlflow-run-id <another model's run>`` logged that
    checkpoint's FID into the other run (the checkpoint names no run, so nothing compared them)."""
    import mlflow

    from dit_core.evaluate.__main__ import main as evaluate_main
    from dit_core.evaluate.checkpoint_eval import check_run_config
    from dit_core.tracking import format_param

    out = _one_step_run(tmp_path)
    ckpt = next((out / "checkpoints").glob("step_*.pt"))
    flat = __import__("torch").load(ckpt, weights_only=False)["config"]  # the resolved config it saved
    with mlflow.start_run() as other:
        mlflow.log_params({k: format_param(v) for k, v in {**flat, "model.depth": 3}.items()})
    with mlflow.start_run() as same:
        mlflow.log_params({k: format_param(v) for k, v in {**flat, "out": "elsewhere"}.items()})

    def refuse(*args, **kwargs):
        raise AssertionError("sampled although the run is another model's")

    monkeypatch.setattr("dit_core.evaluate.checkpoint_eval.evaluate_model", refuse)
    assert evaluate_main(["--checkpoint", str(ckpt), "--mlflow-run-id", other.info.run_id]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == (
        f"error: --mlflow-run-id {other.info.run_id}: checkpoint {ckpt} names no MLflow run, and its config "
        "is not that run's (model.depth: '3' -> '2'), so its scores would be read as another model's; pass "
        "the checkpoint's own run, or drop --mlflow-run-id and keep the result with --output"
    )
    assert mlflow.MlflowClient().get_run(other.info.run_id).data.metrics == {}
    check_run_config(same.info.run_id, flat, str(ckpt))  # its own config (another --out): allowed


def test_sample_writes_the_format_its_out_name_says(tmp_path, capsys, monkeypatch):
    """``sample --out grid.jpg`` wrote PNG bytes under a .jpg name; an unknown suffix is refused."""
    from PIL import Image

    from dit_core.sample import main as sample_main

    out = _one_step_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    argv = ["--checkpoint", str(out), "--steps", "1", "--num-samples", "2", "--out"]
    with one_thread():
        for name, fmt in (("g.jpg", "JPEG"), ("g.png", "PNG"), ("g", "PNG")):
            assert sample_main([*argv, name]) == 0
            with Image.open(tmp_path / name) as im:
                assert im.format == fmt
        assert sample_main([*argv, "g.xyz"]) == 2
    assert capsys.readouterr().err.endswith(
        "error: --out g.xyz: .xyz is not an image format this can write; end the name in .png (lossless, "
        "the default), .jpg or .webp\n"
    )
    assert not (tmp_path / "g.xyz").exists()


def test_the_last_steps_two_checkpoints_say_which_is_which(tmp_path, caplog):
    """The last step is checkpointed before its validation / evaluation and again after; the log said
    "checkpoint step 4" twice, which read as a duplicated write."""
    import logging

    caplog.set_level(logging.INFO, logger="dit_core.checkpoint")
    out = _one_step_run(tmp_path, **{"eval.val_every": 1, "budget.max_steps": 2, "checkpoint.every": 0})
    path = out / "checkpoints" / "step_0000002.pt"
    assert [r.getMessage() for r in caplog.records] == [
        f"checkpoint step 2 (validation to follow) -> {path}",
        f"checkpoint step 2 -> {path}",
    ]
