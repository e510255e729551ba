"""Tests of dit_core.data: digits, imagefolder, flips, config validation."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader

from dit_core.data import (
    DataConfig,
    ImageFolderDataset,
    build_dataset,
    center_crop_arr,
    digits_images,
    digits_split_indices,
    flip_decision,
    scan_image_folder,
)
from dit_core.data.flip import splitmix64

# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"name": "cifar"},
            r"data.name: 'cifar' is unknown; choose one of \['digits', 'imagefolder', 'latents', 'photos'\]",
        ),
        ({"digits_split": "test"}, r"choose one of \['train', 'val', 'all'\]"),
        ({"image_size": 0}, "data.image_size: must be >= 1, got 0"),
        ({"image_size": 4}, "8 px"),
        ({"name": "imagefolder"}, r"^data.root: 'imagefolder' needs root=<folder> \(a folder of class "
                                  r"subfolders of images\)$"),
        ({"name": "latents"}, "extract_latents"),
        ({"name": "photos", "num_photos": 0}, r"^data.num_photos: must be 1..13, got 0$"),
        ({"name": "photos", "num_photos": 14}, r"^data.num_photos: must be 1..13, got 14$"),
        ({"channels": 1}, r"^data.channels: only an option of the photos dataset; unset it for 'digits'$"),
    ],
)  # fmt: skip
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**kwargs)


def test_the_photos_take_one_to_all_thirteen_photographs():
    for n in (1, 13):
        assert DataConfig(name="photos", num_photos=n, crop_scale=(0.1, 0.2)).photo_options().num_photos == n


def test_build_dataset_rejects_bad_split():
    with pytest.raises(ValueError, match="split='test'"):
        build_dataset(DataConfig(), split="test")


# ---------------------------------------------------------------- flip hash


def test_splitmix64_matches_reference_vector():
    # SplitMix64 reference outputs for state 1234567 (Vigna's splitmix64.c test stream).
    gamma, s = 0x9E3779B97F4A7C15, 1234567
    outs = [splitmix64((s + i * gamma) % 2**64) for i in range(3)]
    assert outs == [6457827717110365317, 3203168211198807973, 9817491932198370423]
    states = np.array([(s + i * gamma) % 2**64 for i in range(3)], dtype=np.uint64)
    with np.errstate(over="ignore"):
        assert splitmix64(states).tolist() == outs  # the photo stream's vectorised use


def test_item_hash_does_not_collide_over_seeds_epochs_or_indices():
    """A chained hash mixes each input in with XOR; AND (or a dropped input) would map many items to
    one hash, e.g. indices 0-999 onto the 2^k subsets of the chain's low set bits."""
    from dit_core.data.flip import item_hash

    for vary in range(3):
        keys = [tuple(i if k == vary else 7 for k in range(3)) for i in range(1000)]
        assert len({item_hash(*key) for key in keys}) == 1000
    assert item_hash(-1, 0, 0) == item_hash(2**64 - 1, 0, 0)  # inputs taken modulo 2^64


def test_flip_decision_is_a_fair_deterministic_coin():
    flips = np.array([flip_decision(0, 0, i) for i in range(20_000)])
    assert abs(flips.mean() - 0.5) < 0.015  # 4 sigma for n=20000
    assert all(flip_decision(0, 0, i) == f for i, f in zip(range(100), flips))
    # epoch and seed change the pattern (about half the coins differ)
    other_epoch = np.array([flip_decision(0, 1, i) for i in range(20_000)])
    other_seed = np.array([flip_decision(1, 0, i) for i in range(20_000)])
    assert 0.45 < (flips != other_epoch).mean() < 0.55
    assert 0.45 < (flips != other_seed).mean() < 0.55


# ---------------------------------------------------------------- digits


def test_digits_splits_are_stratified_disjoint_and_complete():
    target = load_digits().target
    train, val, all_ = (digits_split_indices(s) for s in ("train", "val", "all"))
    assert len(all_) == 1797
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(1797))
    expected_val = [round(0.1 * n) for n in np.bincount(target)]
    np.testing.assert_array_equal(np.bincount(target[val], minlength=10), expected_val)
    assert len(val) == sum(expected_val) == 179 and len(train) == 1618
    for split in (train, val):
        assert set(target[split]) == set(range(10))
    np.testing.assert_array_equal(digits_split_indices("val"), val)  # fixed across calls


def test_digits_dataset_attributes_and_lengths():
    ds = build_dataset(DataConfig())
    assert (ds.name, ds.num_classes, ds.channels, ds.resolution) == ("digits", 10, 1, 16)
    assert len(ds) == 1618
    assert len(build_dataset(DataConfig(), "val")) == 179
    assert len(build_dataset(DataConfig(), "all")) == 1797
    assert len(build_dataset(DataConfig(digits_split="all"))) == 1797
    x, y = ds[0]
    assert x.dtype == torch.float32 and x.shape == (1, 16, 16)
    assert y.dtype == torch.int64 and y.ndim == 0


def test_digits_defaults_are_the_training_split_at_16_px_seed_0():
    from dit_core.data.digits import DigitsDataset

    x, y = digits_images()
    assert x.shape == (1797, 1, 16, 16) and len(y) == 1797  # every image, 16 px
    ds = DigitsDataset()
    assert (ds.split, ds.resolution, ds.seed, ds.random_flip) == ("train", 16, 0, True)
    assert torch.equal(ds.labels, torch.from_numpy(load_digits().target[digits_split_indices("train")]))
    same = DigitsDataset("train", 16, True, 0)
    assert all(torch.equal(ds[i][0], same[i][0]) for i in range(64))  # seed 0's flips


def test_digits_native_size_matches_sklearn_values():
    d = load_digits()
    u8, labels = digits_images("all", 8)
    np.testing.assert_array_equal(u8[:, 0].numpy(), np.round(d.images / 16 * 255).astype(np.uint8))
    np.testing.assert_array_equal(labels.numpy(), d.target)


def test_digits_raw_equal_sklearn_and_read_without_importing_it():
    from dit_core.data.digits import _load_raw

    images, labels = _load_raw()
    d = load_digits()
    np.testing.assert_array_equal(images, d.images)
    np.testing.assert_array_equal(labels, d.target)
    code = (
        "import sys; from dit_core.data import DataConfig, build_dataset; "
        "build_dataset(DataConfig(name='digits', image_size=16), 'train')[0]; "
        "print('sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("size", [16, 32])
def test_digits_resize(size):
    u8, labels = digits_images("val", size)
    assert u8.shape == (179, 1, size, size) and u8.dtype == torch.uint8
    assert labels.dtype == torch.int64
    # reference: PIL's BICUBIC on float images (a=-0.5, support renormalised at the border), which
    # is what torch's antialiased bicubic computes
    orig = load_digits().images[digits_split_indices("val")].astype(np.float32) / 16
    ref = np.stack(
        [
            np.asarray(Image.fromarray(a, mode="F").resize((size, size), Image.Resampling.BICUBIC))
            for a in orig
        ]
    )
    ref_u8 = np.round(np.clip(ref, 0, 1) * 255)
    diff = np.abs(u8[:, 0].numpy().astype(np.float64) - ref_u8)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    ds = build_dataset(DataConfig(image_size=size, random_flip=False), "val")
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    assert x.min() == -1.0 and x.max() == 1.0
    torch.testing.assert_close(x, u8.float() / 127.5 - 1)


def test_digits_flips_follow_hash_and_are_worker_independent():
    cfg = DataConfig(seed=3)
    ds = build_dataset(cfg)
    plain = build_dataset(DataConfig(random_flip=False))
    ds.set_epoch(5)
    flipped = [i for i in range(len(ds)) if flip_decision(3, 5, i)]
    assert 0.45 < len(flipped) / len(ds) < 0.55
    for i in range(50):
        want = plain[i][0].flip(-1) if flip_decision(3, 5, i) else plain[i][0]
        torch.testing.assert_close(ds[i][0], want, rtol=0, atol=0)
    # at least some asymmetric items differ between epochs
    ds.set_epoch(6)
    assert any(
        not torch.equal(ds[i][0], plain[i][0].flip(-1) if i in flipped else plain[i][0]) for i in range(50)
    )

    def batches(workers):
        d = build_dataset(cfg)
        d.set_epoch(2)
        loader = DataLoader(d, batch_size=64, shuffle=False, num_workers=workers)
        return torch.cat([x for x, _ in loader])

    torch.testing.assert_close(batches(0), batches(2), rtol=0, atol=0)


def test_val_split_never_flips():
    val = build_dataset(DataConfig(), "val")
    ref, _ = digits_images("val", 16)
    val.set_epoch(7)
    torch.testing.assert_close(torch.stack([val[i][0] for i in range(len(val))]), ref.float() / 127.5 - 1)


# ---------------------------------------------------------------- center crop


def test_center_crop_two_color_wide_image():
    # 64x32 (w x h): left half red, right half blue. BOX halves to 32x16, no bicubic change,
    # center crop keeps columns 8..24 -> 8 red then 8 blue columns.
    arr = np.zeros((32, 64, 3), np.uint8)
    arr[:, :32] = (255, 0, 0)
    arr[:, 32:] = (0, 0, 255)
    out = center_crop_arr(Image.fromarray(arr), 16)
    assert out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out[:, :8], np.broadcast_to([255, 0, 0], (16, 8, 3)))
    np.testing.assert_array_equal(out[:, 8:], np.broadcast_to([0, 0, 255], (16, 8, 3)))


@pytest.mark.parametrize("w, h", [(37, 23), (23, 37), (100, 61), (16, 16), (9, 30)])
def test_center_crop_shapes_non_square(w, h):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    assert center_crop_arr(img, 16).shape == (16, 16, 3)


def test_center_crop_equals_bicubic_resize_then_crop_when_no_box_step():
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    ref = np.asarray(img.resize((24, 16), Image.Resampling.BICUBIC))[:, 4:20]
    np.testing.assert_array_equal(center_crop_arr(img, 16), ref)


# ---------------------------------------------------------------- imagefolder


def _make_folder(root, n_per_class=3, corrupt=True):
    rng = np.random.default_rng(0)
    for c in ("zebra", "ant"):  # sorted -> ant=0, zebra=1
        d = root / c
        d.mkdir(parents=True)
        for i in range(n_per_class):
            w, h = (40, 24) if i % 2 else (24, 40)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8), mode="L").save(root / "ant" / "gray.png")
    (root / "ant" / "notes.txt").write_text("not an image")
    if corrupt:
        (root / "zebra" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return root


def test_imagefolder_items_labels_and_corrupt_file_skipped(tmp_path, caplog):
    root = _make_folder(tmp_path / "imgs")
    with caplog.at_level(logging.WARNING, logger="dit_core.data"):
        ds = build_dataset(DataConfig(name="imagefolder", root=str(root), image_size=16))
    broken = str(root / "zebra" / "broken.png")
    assert any(broken in r.getMessage() for r in caplog.records)
    assert any("skipped 1 unreadable image" in r.getMessage() for r in caplog.records)
    assert ds.skipped == [broken]
    assert (ds.name, ds.num_classes, ds.channels, ds.resolution) == ("imagefolder", 2, 3, 16)
    assert ds.classes == ["ant", "zebra"]
    assert len(ds) == 7  # 3 + gray in ant, 3 in zebra; txt ignored
    labels = [int(ds[i][1]) for i in range(len(ds))]
    assert labels == [0, 0, 0, 0, 1, 1, 1]
    x, _ = ds[3]  # the grayscale image becomes RGB with equal channels
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], x[1])
    img = Image.open(root / "zebra" / "1.png").convert("RGB")  # 40x24 -> bicubic to 27x16, crop
    want = torch.from_numpy(center_crop_arr(img, 16).astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
    torch.testing.assert_close(ds.load(5), want)


def test_imagefolder_flip_is_hash_decided(tmp_path):
    root = _make_folder(tmp_path / "imgs", corrupt=False)
    ds = ImageFolderDataset(str(root), 16, random_flip=True, seed=11)
    ds.set_epoch(4)
    for i in range(len(ds)):
        plain = ds.load(i)
        want = plain.flip(-1) if flip_decision(11, 4, i) else plain
        torch.testing.assert_close(ds[i][0], want, rtol=0, atol=0)


def test_imagefolder_runtime_failure_returns_next_item(tmp_path, caplog):
    root = _make_folder(tmp_path / "imgs", corrupt=False)
    ds = ImageFolderDataset(str(root), 16, random_flip=False)
    victim = ds.samples[1][0]
    expected_next = ds[2]
    with open(victim, "wb") as f:
        f.write(b"garbage")
    with caplog.at_level(logging.WARNING, logger="dit_core.data"):
        x, y = ds[1]
    assert any(victim in r.getMessage() for r in caplog.records)
    assert ds.skipped == [victim] and ds.load_failures == 1
    torch.testing.assert_close(x, expected_next[0])
    assert int(y) == int(expected_next[1])


def test_imagefolder_defaults_validate_and_flip_with_seed_0(tmp_path):
    root = _make_folder(tmp_path / "imgs")
    ds = ImageFolderDataset(str(root))
    assert ds.skipped == [str(root / "zebra" / "broken.png")] and (ds.resolution, ds.seed) == (256, 0)
    small = ImageFolderDataset(str(root), 16)
    for i in range(len(small)):
        plain = small.load(i)
        torch.testing.assert_close(small[i][0], plain.flip(-1) if flip_decision(0, 0, i) else plain)


def test_imagefolder_follows_linked_folders_and_lists_at_most_five_classes(tmp_path):
    root = _make_folder(tmp_path / "imgs", corrupt=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(elsewhere / "linked.png")
    (root / "ant" / "more").symlink_to(elsewhere, target_is_directory=True)
    scan = scan_image_folder(str(root))
    assert (str(root / "ant" / "more" / "linked.png"), 0) in scan.samples and len(scan.samples) == 8
    empty = tmp_path / "empty"
    for n in (2, 6):
        for c in range(n):
            (empty / str(n) / f"c{c}").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"has class subfolders \['c0', 'c1'\] but no image files"):
        scan_image_folder(str(empty / "2"))
    with pytest.raises(ValueError, match=r"subfolders \['c0', 'c1', 'c2', 'c3', 'c4'\]\.\.\. but no image"):
        scan_image_folder(str(empty / "6"))
    with pytest.raises(ValueError, match="^crop size must be positive, got 0$"):
        center_crop_arr(Image.fromarray(np.zeros((20, 20, 3), np.uint8)), 0)


def test_imagefolder_missing_and_empty_folders(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match="does not exist"):
        build_dataset(DataConfig(name="imagefolder", root=str(missing)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no class subfolders.*root/<class_name>"):
        build_dataset(DataConfig(name="imagefolder", root=str(empty)))
    (empty / "cat").mkdir()
    (empty / "cat" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files") as err:
        build_dataset(DataConfig(name="imagefolder", root=str(empty)))
    assert str(empty) in str(err.value)
    (empty / "cat" / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(ValueError, match="none of its 1 image files could be read"):
        build_dataset(DataConfig(name="imagefolder", root=str(empty)))


def test_imagefolder_without_validation_keeps_corrupt_file_until_load(tmp_path, caplog):
    root = _make_folder(tmp_path / "imgs")
    ds = build_dataset(DataConfig(name="imagefolder", root=str(root), image_size=16, validate_images=False))
    assert len(ds) == 8 and ds.skipped == []
    with caplog.at_level(logging.WARNING, logger="dit_core.data"):
        xs = [ds[i][0] for i in range(len(ds))]
    assert all(x.shape == (3, 16, 16) for x in xs)
    assert ds.skipped == [str(root / "zebra" / "broken.png")]
