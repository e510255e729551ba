"""A new user's mistakes and edge cases on the trainer and evaluation CLIs (a review of both): bad
input is an ``error: ...`` and exit 2 before anything is trained or sampled, results land exactly
where asked, and a flow-matching run with sample metrics finishes instead of failing after training."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from _train_helpers import train_cli

from dit_core.checkpoint import save_checkpoint
from dit_core.config import EvalConfig, ModelConfig, TrainConfig
from dit_core.configio import field_help
from dit_core.evaluate.__main__ import main as evaluate_main
from dit_core.evaluate.metrics import METRICS
from dit_core.models import DiT
from dit_core.trainer.cli import main as train_main
from dit_core.trainer.evaluation import clip_denoised, run_metrics

TINY = ["--model", "none", "--depth", "1", "--width", "16", "--heads", "2", "--patch-size", "4",
        "--data", "digits", "--image-size", "16", "--global-batch-size", "4",
        "--model.frequency_embedding_size", "32", "--log-every", "1", "--no-mlflow"]  # fmt: skip


def _train(capsys, *args: str) -> tuple[int, str]:
    return train_cli(capsys, [*TINY, *args])


def _checkpoint(out) -> str:
    """A run folder with one untrained tiny checkpoint (no MLflow run)."""
    shape = dict(depth=1, hidden_size=16, num_heads=2, patch_size=4, frequency_embedding_size=32)
    model = ModelConfig(name=None, input_size=16, in_channels=1, num_classes=10, learn_sigma=True, **shape)
    cfg = TrainConfig(model=model)
    cfg = replace(cfg, eval=replace(cfg.eval, num_samples=4, steps=2, metrics=("fid_digits",)))
    sd = DiT.from_config(cfg.model.to_dit_config()).state_dict()
    save_checkpoint(out, {"model": sd, "ema": sd, "config": cfg.to_flat_dict(), "step": 3})
    return str(out)


@pytest.fixture
def no_sampling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("sampled although the input was bad")

    monkeypatch.setattr("dit_core.evaluate.checkpoint_eval.evaluate_model", refuse)


# ---------------------------------------------------------------------- trainer
def test_a_flow_run_with_sample_metrics_finishes(tmp_path, capsys):
    """eval.clip_denoised defaulted to on for every pixel run, flow included, whose samplers refuse to
    clip: each flow run with --eval-every trained, then failed at its first evaluation with no
    checkpoint written (its steps lost) and its MLflow run FAILED."""
    cfg = TrainConfig().replace(**{"diffusion.objective": "flow", "eval.sampler": "euler"})
    assert clip_denoised(cfg) is False
    assert clip_denoised(TrainConfig()) is True  # Gaussian pixel runs still clip
    out = tmp_path / "run"
    code, err = _train(capsys, "--objective", "flow", "--sampler", "euler", "--max-steps", "1",
                       "--eval-every", "1", "--num-samples", "4", "--sample-steps", "2", "--eval.batch_size",
                       "4", "--eval.metrics", "fid_digits", "--out", str(out))  # fmt: skip
    assert code == 0, err
    assert (out / "checkpoints" / "step_0000001.pt").is_file()


@pytest.mark.parametrize(
    "args, said, off",
    [
        (["--eval-every", "1", "--cfg-scale", "nan"], "eval.cfg_scale: must be a finite number >= 0", "eval"),
        (["--eval-every", "1", "--cfg-scale", "-1"], "eval.cfg_scale: must be a finite number >= 0", "eval"),
        (["--eval-every", "1", "--eval.batch_size", "0"], "eval.batch_size: must be >= 1", "eval"),
        (["--eval-every", "1", "--sample-steps", "5000"],
         "eval.steps: 5000 sampler steps exceed the 1000 trained timesteps", "eval"),
        (["--eval-every", "1", "--objective", "flow", "--sampler", "euler", "--eval.clip_denoised", "true"],
         "eval.clip_denoised: flow sampling has no x0 estimate to clip", "eval"),
        (["--val-every", "1", "--val-examples", "0"], "eval.val_examples: must be >= 1", "val"),
        (["--val-every", "1", "--eval.val_seed", "-1"], "eval.val_seed: must be >= 0", "val"),
    ],
)  # fmt: skip
def test_bad_eval_and_validation_settings_fail_before_training(tmp_path, capsys, args, said, off):
    """These passed the config checks, so the run trained to its first evaluation (or validation) and
    failed there (exit 2 after the training, no checkpoint), or logged val/loss NaN (0 examples)."""
    out = tmp_path / "run"
    code, err = _train(capsys, "--max-steps", "2", "--num-samples", "4", "--out", str(out), *args)
    assert code == 2 and err.startswith(f"error: {said}"), err
    hint = "eval.eval_every=0" if off == "eval" else "eval.val_every=0"
    assert hint in err and "Traceback" not in err
    assert not (out / "checkpoints").exists()  # refused before training


@pytest.mark.parametrize(
    "how, said",
    [
        ("yaml", "optim: is a section of fields, not a value (got 3)"),
        ("set", "optim: is a section of fields, not a value (got '3')"),
    ],
)
def test_a_section_given_a_value_is_refused(tmp_path, capsys, how, said):
    """``optim: 3`` in a YAML file (or ``--set optim=3``) replaced the whole section by 3: the config
    printed as ``optim = 3`` and training died with an AttributeError traceback."""
    if how == "yaml":
        f = tmp_path / "c.yaml"
        f.write_text("optim: 3\n")
        args = ["--config", str(f)]
    else:
        args = ["--set", "optim=3"]
    code, err = _train(capsys, *args, "--max-steps", "1", "--out", str(tmp_path / "run"))
    assert code == 2 and err.startswith(
        f"error: {'config file ' + str(f) + ': ' if how == 'yaml' else ''}{said}"
    )
    assert "optim.lr=" in err and "Traceback" not in err


def test_an_empty_yaml_section_keeps_its_defaults(tmp_path, capsys):
    """A section whose lines are all commented out is YAML null: it became ``optim = None``."""
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  # lr: 3e-4\nbudget:\n  max_steps: 7\n")
    assert train_main(["--config", str(f), "--print-config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "optim.lr = 0.0001" in lines and "budget.max_steps = 7" in lines and "optim = None" not in lines


def test_a_config_folder_is_named_as_a_folder(tmp_path, capsys):
    code, err = _train(capsys, "--config", str(tmp_path), "--max-steps", "1")
    assert code == 2 and err.startswith(f"error: --config: {tmp_path} is a folder; give a YAML file"), err


def test_the_eval_metrics_help_says_what_a_run_logs():
    """--help said None = "the reference's default metrics", which for digits are the four digits
    metrics plus Inception fid/sfid/precision/recall; a run logs the domain metrics only."""
    logged = run_metrics(TrainConfig(), "digits")
    assert not any(METRICS[m][0] == "inception" for m in logged)
    text = field_help(EvalConfig)["metrics"]
    assert "no Inception" in text and "fid_digits" in text


# ---------------------------------------------------------------------- evaluate
@pytest.mark.parametrize(
    "args, said",
    [
        (["--seed", "-1"], "argument --seed: must be >= 0, got -1"),
        (["--num-samples", "99999999999999999999999"], "argument --num-samples: must be <= "),
        (["--num-samples", "1"], "argument --num-samples: num_samples must be >= 2 to fit a covariance"),
        (["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
        (["--steps", "0"], "argument --steps: must be >= 1, got 0"),
    ],
)
def test_evaluate_numbers_out_of_range_name_their_flag(tmp_path, capsys, no_sampling, args, said):
    """--seed -1 failed in numpy with "expected non-negative integer" (no flag named) and a huge
    --num-samples with an OverflowError traceback (exit 1)."""
    with pytest.raises(SystemExit) as e:
        evaluate_main(["--checkpoint", _checkpoint(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and said in err and "Traceback" not in err, err


@pytest.mark.parametrize("flag, name", [("--output", "metrics.json"), ("--save-samples", "samples.npz")])
def test_evaluate_refuses_a_folder_as_its_output_file_before_sampling(
    tmp_path, capsys, no_sampling, flag, name
):
    """--output DIR sampled and scored, then died writing (IsADirectoryError traceback, exit 1);
    --save-samples DIR wrote DIR.npz beside it."""
    folder = tmp_path / "results"
    folder.mkdir()
    assert evaluate_main(["--checkpoint", _checkpoint(tmp_path / "run"), flag, str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag} {folder} is a folder; give a file name, e.g. {folder / name}"), err
    assert list(tmp_path.glob("*.npz")) == [] and list(folder.iterdir()) == []


def test_evaluate_writes_exactly_where_asked(tmp_path, capsys):
    """--save-samples s.bin wrote s.bin.npz (np.savez appends .npz); an --output that cannot be
    written was a traceback after the sampling: now an error, with the metrics still printed."""
    samples = tmp_path / "s.bin"
    code = evaluate_main(["--checkpoint", _checkpoint(tmp_path / "run"), "--save-samples", str(samples),
                          "--output", "/proc/no-such-file.json", "--batch-size", "4"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err
    assert "error: --output /proc/no-such-file.json: cannot write it" in captured.err
    assert "eval/fid_digits" in json.loads(captured.out)
    assert samples.is_file() and not (tmp_path / "s.bin.npz").exists()
    with np.load(samples) as z:
        assert z["arr_0"].shape == (4, 16, 16, 1) and list(z["labels"]) == [0, 1, 2, 3]


def test_evaluate_does_not_create_a_tracking_store_to_look_a_run_up(
    tmp_path, capsys, monkeypatch, no_sampling
):
    """--mlflow-run-id with MLFLOW_TRACKING_URI naming no database made MLflow create one (by default
    ./mlflow.db in the working folder) just to say the run is not in it."""
    store = tmp_path / "nothere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    code = evaluate_main(["--checkpoint", _checkpoint(tmp_path / "run"), "--mlflow-run-id", "abc"])
    err = capsys.readouterr().err
    assert code == 2 and not store.exists()
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(f"error: --mlflow-run-id abc: the MLflow tracking store sqlite:///{store} does not exist")
    ), err
