"""Session 38, second pass over a researcher's own image folder: the validation subset, the class
mapping of a run, extract_latents' Ctrl-C, and the hints and file types of folder data."""

from __future__ import annotations

import functools
import json
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _image_helpers import extract_tiny, image_folder
from _train_helpers import one_thread, tiny_config
from PIL import Image

from dit_core.configio import ConfigError
from dit_core.data import DataConfig, ImageFolderDataset, build_dataset
from dit_core.train import Trainer
from dit_core.trainer.validation import Validator


def _folder_run(tmp_path, root, name="run", **over):
    over = {"data.name": "imagefolder", "data.root": str(root), "data.image_size": 8, **over}
    return tiny_config(tmp_path / name, steps=2, batch=4, **over)


def _ranks(tr, world):
    """The validation images' labels each of ``world`` ranks scores, and the index of its first one."""
    out = []
    for rank in range(world):
        acc = SimpleNamespace(process_index=rank, num_processes=world, device=torch.device("cpu"))
        _, y, lo = Validator(tr.cfg, tr.diffusion, acc, tr.autocast).data()
        out.append((y.tolist(), lo))
    return out


def test_validation_of_folder_data_spreads_over_every_class(tmp_path, vae_dir):
    """The validation loss scored the first ``val_examples`` items; image folders and latents are
    sorted by class, so 3 examples of 3 classes x 4 images were all class 0 (ImageNet, 256: class 0)."""
    root = image_folder(tmp_path / "imgs", per_class=4, size=(8, 8))
    extract_tiny(root, tmp_path / "lat", vae_dir, size=8)
    folder = _folder_run(tmp_path, root, **{"eval.val_examples": 3})
    latents = folder.replace(
        **{"data.name": "latents", "data.root": str(tmp_path / "lat"), "data.image_size": 16}
    )
    for cfg in (folder, latents):
        with one_thread():
            tr = Trainer(cfg.replace(out=str(tmp_path / cfg.data.name)))
        assert _ranks(tr, 1) == [([0, 1, 2], 0)]
        assert _ranks(tr, 2) == [([0], 0), ([1, 2], 1)]  # the same images, split; noise keyed by position
    x, _, _ = tr.validator.data()  # items 0, 4 and 8 of the latents
    val = build_dataset(latents.data, "val")
    assert torch.equal(x, torch.stack([val[i][0] for i in (0, 4, 8)]))


def test_a_folder_run_records_its_classes_and_refuses_other_ones_on_resume(tmp_path):
    """An image folder run saved no class name -> label mapping anywhere (not in config.json, the
    checkpoint or MLflow), and resumed on a folder with a class renamed (same size) without a word."""
    from mlflow.tracking import MlflowClient

    from dit_core.checkpoint import load_checkpoint

    root = image_folder(tmp_path / "imgs", classes=("cat", "dog", "emu"), size=(8, 8))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = _folder_run(tmp_path, root, **{"tracking.uri": uri, "checkpoint.every": 1})
    with one_thread():
        result = Trainer(cfg).run(progress_bar=False)
    want = {"cat": 0, "dog": 1, "emu": 2}
    assert json.loads((tmp_path / "run" / "classes.json").read_text()) == want
    assert load_checkpoint(result.checkpoint)["classes"] == ["cat", "dog", "emu"]
    art = MlflowClient(uri).download_artifacts(result.run_id, "classes.json", str(tmp_path))
    assert json.loads(Path(art).read_text()) == want
    (root / "dog").rename(root / "cow")  # the same number of images: the data position still fits
    longer = cfg.replace(**{"budget.max_steps": 4})
    with pytest.raises(ConfigError) as e:
        Trainer(longer)
    assert "has 3 classes, checkpoint " in str(e.value)
    assert "was trained on 3, and label 1 is 'cow' here but 'dog' there, so the trained labels" in str(
        e.value
    )
    (root / "cow").rename(root / "dog")
    with one_thread():
        assert Trainer(longer).run(progress_bar=False).step == 4


_CTRL_C_IN_SHARD_1 = """
import multiprocessing, os, signal, sys
import dit_core.extract_latents as ex
encode, shards = ex._encode, []
def ctrl_c_in_shard_1(vae, x, cfg, gen):
    shards.append(gen.initial_seed())  # one seed per shard
    if len(set(shards)) == 2:  # a terminal's Ctrl-C: SIGINT to the whole process group, readers too
        readers = [p.pid for p in multiprocessing.active_children()]
        status = [open(f"/proc/{pid}/status").read() for pid in readers]
        masks = [int(s.split("SigBlk:")[1].split()[0], 16) for s in status]
        print("readers blocking SIGINT:", len(readers), all(m >> (signal.SIGINT - 1) & 1 for m in masks))
        sys.stdout.flush()
        os.killpg(0, signal.SIGINT)
    return encode(vae, x, cfg, gen)
ex._encode = ctrl_c_in_shard_1
sys.exit(ex.main(sys.argv[1:]))
"""


def test_ctrl_c_on_extract_latents_says_how_to_resume_without_a_traceback(tmp_path, vae_dir):
    """Ctrl-C printed a KeyboardInterrupt traceback and no word on the shards already written."""
    import subprocess
    import sys

    import dit_core
    from dit_core.extract_latents import main as extract_main

    images, out = image_folder(tmp_path / "imgs", size=(8, 8)), tmp_path / "lat"
    argv = ["--data-path", str(images), "--output", str(out), "--vae", str(vae_dir), "--device", "cpu"]
    argv += ["--image-size", "8", "--shard-size", "2", "--batch-size", "1", "--posterior", "mean"]
    env = {"PYTHONPATH": str(Path(dit_core.__file__).parents[1]), "OMP_NUM_THREADS": "1", "PATH": ""}
    script = [sys.executable, "-c", _CTRL_C_IN_SHARD_1, *argv, "--num-workers", "2"]
    # SIGINT as from a terminal: an xdist worker's children inherit it ignored, and Python keeps that
    as_terminal = functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL)
    done = subprocess.run(
        script, env=env, capture_output=True, text=True, start_new_session=True, preexec_fn=as_terminal
    )
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
    # the readers ignore the group's Ctrl-C: one that died of it first failed the run (exit 1, traceback)
    assert done.stdout == "readers blocking SIGINT: 2 True\n"
    assert done.stderr.strip().splitlines()[-1] == (
        f"interrupted (Ctrl-C): the finished shards in {out} are kept; run the same command to resume"
    )
    assert sorted(p.name for p in out.iterdir()) == ["latents_00000.safetensors"]  # no temporary file left
    assert extract_main([*argv, "--num-workers", "0"]) == 0
    assert [s["count"] for s in json.loads((out / "manifest.json").read_text())["shards"]] == [2, 2, 2]


def test_latents_from_an_image_folder_suggest_a_command_that_runs(tmp_path, vae_dir, capsys):
    """``--data latents --data-root IMAGES`` suggested ``extract_latents --output IMAGES``, which
    extract_latents refuses (its output would be read as one more class)."""
    from dit_core.extract_latents import main as extract_main

    images = image_folder(tmp_path / "imgs")
    with pytest.raises(ValueError) as err:
        build_dataset(DataConfig(name="latents", root=str(images)))
    assert str(err.value) == (
        f"no manifest.json in {str(images)!r}: it holds class folders (a, b, c), an image folder, not "
        "latents. Train on its images with --data imagefolder, or extract their latents into a new folder "
        "outside it: "
        f"python -m dit_core.extract_latents --data-path {images} --output <new folder> --vae <vae>, then "
        "give that folder as --data-root"
    )
    argv = ["--data-path", str(images), "--vae", str(vae_dir), "--device", "cpu", "--image-size", "16"]
    assert extract_main([*argv, "--output", str(tmp_path / "lat"), "--num-workers", "0"]) == 0  # as told
    capsys.readouterr()
    assert extract_main([*argv, "--output", str(images)]) == 2  # what it told before
    assert "is inside --data-path" in capsys.readouterr().err


def test_a_patch_size_not_dividing_the_input_is_told_in_the_words_of_the_data(tmp_path, vae_dir, capsys):
    """For pixel data the error said "use a patch size that divides the latent size" and did not name
    --image-size, the flag that sets the size."""
    from _train_helpers import train_cli

    images = image_folder(tmp_path / "imgs")
    argv = ["--data", "imagefolder", "--data-root", str(images), "--model", "none", "--depth", "1"]
    argv += ["--width", "16", "--heads", "1", "--patch-size", "8", "--max-steps", "1", "--no-mlflow"]
    code, err = train_cli(capsys, [*argv, "--image-size", "12", "--out", str(tmp_path / "run")])
    assert (code, err) == (2, (
        "error: model.patch_size: patch_size=8 does not divide input_size=12, the image size "
        "(data.image_size); give an --image-size that is a multiple of 8 (e.g. 16), or a --patch-size "
        "that divides 12\n"
    ))  # fmt: skip
    extract_tiny(images, tmp_path / "lat", vae_dir, size=8)  # 4 x 4 latents
    latents = {"data.name": "latents", "data.root": str(tmp_path / "lat"), "model.patch_size": 3}
    with pytest.raises(ConfigError) as e:
        Trainer(tiny_config(tmp_path / "lrun", **latents))
    assert str(e.value) == (
        "model.patch_size: patch_size=3 does not divide input_size=4, the latents' size in "
        f"{tmp_path / 'lat'} (from 8 px images); give a --patch-size that divides 4, or extract the "
        "images again with another "
        "--image-size into a new --output"
    )


def test_gif_and_jpeg_2000_files_are_read_as_rgb(tmp_path):
    """``.gif`` files were ignored (a class of GIFs was "empty") and JPEG 2000 was looked for under
    ``.jpeg2000``, a name no file has (``.jp2`` is the extension)."""
    rgb = np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    four = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 255], [250, 250, 250]], np.uint8)[rgb[..., 0] % 4]
    for name, image in (("gif", Image.fromarray(four).quantize(4)), ("jp2", Image.fromarray(rgb))):
        (tmp_path / name).mkdir()
        image.save(tmp_path / name / f"x.{name}")
    Image.fromarray(rgb).save(tmp_path / "jp2" / "y.jpeg2000", format="JPEG2000")  # no such extension
    ds = ImageFolderDataset(str(tmp_path), 12, random_flip=False)
    assert Image.open(tmp_path / "gif" / "x.gif").mode == "P"  # a palette image
    assert [(p.rsplit("/", 2)[1:], y) for p, y in ds.samples] == [
        (["gif", "x.gif"], 0),
        (["jp2", "x.jp2"], 1),
    ]
    for i, want in enumerate((four, rgb)):  # both lossless here: exactly the pixels written
        torch.testing.assert_close(ds.load(i), torch.from_numpy(want.transpose(2, 0, 1) / 127.5 - 1).float())


def test_a_ctrl_c_held_while_readers_fork_is_still_ignored_where_sigint_is_ignored():
    """`_sigint_held` raised KeyboardInterrupt for a SIGINT that arrived inside it even in a process
    that ignores SIGINT (started with `nohup` or from a background shell), which runs on otherwise."""
    import os

    from dit_core.extract_latents import _sigint_held

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        try:
            with _sigint_held():
                os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:  # not let through: it would end the pytest session
            pytest.fail("a SIGINT that the process ignores was raised as KeyboardInterrupt")
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with pytest.raises(KeyboardInterrupt), _sigint_held():  # as from a terminal: held, then raised
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, before)
