"""Session 38: a researcher's own image folder (modes, empty classes, links, a separate validation
folder) through `dit_core.data`, `extract_latents` and the trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _image_helpers import extract_tiny, image_folder
from _train_helpers import one_thread, tiny_config, train_cli
from PIL import Image

from dit_core.data import DataConfig, ImageFolderDataset, build_dataset, scan_image_folder
from dit_core.extract_latents import main as extract_main
from dit_core.train import Trainer


def test_a_16_bit_grey_png_is_scaled_to_8_bits_not_clipped_white(tmp_path):
    """A 16-bit grey PNG (mode I;16) went through PIL's convert("RGB"), which clips at 255: every
    pixel above 255/65535 of full scale became white."""
    u8 = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    for name, arr in (("deep", u8.astype(np.uint16) * 257), ("plain", u8)):
        (tmp_path / name).mkdir()
        Image.fromarray(arr).save(tmp_path / name / "x.png")
    assert Image.open(tmp_path / "deep" / "x.png").mode == "I;16"
    deep, plain = (ImageFolderDataset(str(tmp_path), 16, random_flip=False).load(i) for i in (0, 1))
    torch.testing.assert_close(deep, plain, rtol=0, atol=0)  # v * 257 / 257 == v exactly
    torch.testing.assert_close(plain[0], torch.from_numpy(u8 / 127.5 - 1).float())


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    """An empty class folder (or one of .gif files only, or of unreadable files) still took a label:
    the model got a class it never trained on, and sampled it for FID."""
    root = image_folder(tmp_path / "imgs", classes=("cat",))
    (root / "dog").mkdir()
    (root / "dog" / "x.gif").write_bytes(b"GIF89a")
    with pytest.raises(ValueError, match=r"class folder\(s\) \['dog'\] hold no readable image files"):
        build_dataset(DataConfig(name="imagefolder", root=str(root)))
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")  # dropped by the verify pass
    with pytest.raises(ValueError, match=r"\['dog'\] hold no readable image files.*remove the folder"):
        scan_image_folder(str(root))


def test_extract_latents_refuses_an_empty_class_and_writes_nothing(tmp_path, vae_dir, capsys):
    root = image_folder(tmp_path / "imgs", classes=("cat",))
    (root / "dog").mkdir()
    out = tmp_path / "lat"
    argv = ["--data-path", str(root), "--output", str(out), "--vae", str(vae_dir), "--device", "cpu"]
    assert extract_main([*argv, "--image-size", "16", "--num-workers", "0"]) == 2
    assert "['dog'] hold no readable image files" in capsys.readouterr().err and not out.exists()


def test_a_link_to_a_parent_folder_lists_each_image_once(tmp_path):
    """A symlink inside a class folder pointing at the root (or at another class) was followed again
    and again: each image listed ~40 times, other classes' images under this class's label."""
    root = image_folder(tmp_path / "imgs", classes=("a", "b"))
    want = [(str(root / c / f"{i}.png"), y) for y, c in enumerate("ab") for i in range(2)]
    (root / "a" / ".thumbs").mkdir()  # a hidden folder's files are not training images either
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "a" / ".thumbs" / "t.png")
    (root / "a" / "up").symlink_to(root, target_is_directory=True)
    assert scan_image_folder(str(root)).samples == want
    (root / "a" / "up").unlink()
    (root / "b" / "sibling").symlink_to(root / "a", target_is_directory=True)
    assert scan_image_folder(str(root)).samples == want


def test_a_separate_val_folder_is_labelled_by_the_training_class_names(tmp_path):
    """val_root was labelled by its own sorted folders: a val folder lacking class "b" gave "c" the
    label 1 (the training data's "b"), so val/loss was computed with wrong labels."""
    train_root = image_folder(tmp_path / "train")
    val_root = image_folder(tmp_path / "val", classes=("a", "c"), per_class=1)
    cfg = DataConfig(name="imagefolder", root=str(train_root), val_root=str(val_root), image_size=8)
    val = build_dataset(cfg, "val")
    assert (val.classes, val.num_classes) == (["a", "b", "c"], 3)
    assert [int(val[i][1]) for i in range(len(val))] == [0, 2]
    (val_root / "zebra").mkdir()
    with pytest.raises(ValueError, match=r"class folders \['zebra'\] that the training data does not have"):
        build_dataset(cfg, "val")


def test_val_latents_map_labels_by_name_and_must_match_the_training_latents(tmp_path, vae_dir):
    train_lat, val_lat, small = tmp_path / "tl", tmp_path / "vl", tmp_path / "sl"
    extract_tiny(image_folder(tmp_path / "train"), train_lat, vae_dir)
    val_images = image_folder(tmp_path / "val", classes=("a", "c"), per_class=1)
    extract_tiny(val_images, val_lat, vae_dir)
    cfg = DataConfig(name="latents", root=str(train_lat), val_root=str(val_lat))
    val = build_dataset(cfg, "val")
    assert (val.classes, [int(val[i][1]) for i in range(len(val))]) == (["a", "b", "c"], [0, 2])
    extract_tiny(val_images, small, vae_dir, size=8)
    with pytest.raises(ValueError, match=r"does not match the training latents .*'image_size': \(16, 8\)"):
        build_dataset(DataConfig(name="latents", root=str(train_lat), val_root=str(small)), "val")


def test_a_bad_val_folder_fails_before_training_and_before_an_mlflow_run(tmp_path):
    """A missing or mismatched val_root failed only at the first validation, after val_every steps of
    training, inside a started MLflow run."""
    train_root = image_folder(tmp_path / "train", per_class=4)
    store = tmp_path / "mlruns"
    over = {
        "data.name": "imagefolder", "data.root": str(train_root), "data.image_size": 8,
        "data.val_root": str(tmp_path / "missing"), "eval.val_every": 1000, "tracking.uri": f"file:{store}",
    }  # fmt: skip
    with one_thread(), pytest.raises(ValueError, match="missing' does not exist"):
        Trainer(tiny_config(tmp_path / "run", steps=2, batch=4, **over))
    assert not store.exists() and not (tmp_path / "run").exists()


def test_latents_with_another_image_size_flag_is_refused(tmp_path, vae_dir, capsys):
    """``--data latents --image-size 32`` on 16 px latents trained at 16 px and logged
    data.image_size 32."""
    lat = tmp_path / "lat"
    extract_tiny(image_folder(tmp_path / "imgs"), lat, vae_dir)
    argv = ["--data", "latents", "--data-root", str(lat), "--model", "none", "--depth", "1", "--width", "16"]
    argv += [
        "--heads",
        "1",
        "--patch-size",
        "2",
        "--max-steps",
        "1",
        "--global-batch-size",
        "2",
        "--no-mlflow",
    ]
    code, err = train_cli(capsys, [*argv, "--image-size", "32", "--out", str(tmp_path / "run")])
    assert code == 2 and not (tmp_path / "run").exists()
    assert err == (
        f"error: data.image_size: 32 px, but the latents in {lat} were extracted at 16 px (latents take "
        "their size from the manifest); drop --image-size, or extract the images again with --image-size 32 "
        "into a new --output\n"
    )
    for size in ("16", None):  # the extracted size, or the default: trains
        flags = ["--image-size", size] if size else []
        assert (
            train_cli(capsys, [*argv, *flags, "--val-every", "0", "--out", str(tmp_path / f"r{size}")])[0]
            == 0
        )
