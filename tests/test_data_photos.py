"""Tests of the ``photos`` dataset (crops of scikit-image's bundled photographs) and data accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dit_core.data import (
    PHOTOS,
    DataConfig,
    PhotoCropsDataset,
    build_dataset,
    data_accounting,
    default_reference,
    photos_images,
    unique_images,
)
from dit_core.data.photos import (
    PhotoCrops,
    PhotoOptions,
    load_photo,
    parse_photos_reference,
    photo_crops,
    photos_reference,
    uniforms,
)
from dit_core.trainer.data_stream import DataStream


def _strip_images(sizes=((40, 60), (50, 48), (33, 70))):
    """Images whose training region holds the class value 10*(k+1) and held-out strip 255."""
    out = []
    for k, (h, w) in enumerate(sizes):
        img = np.full((h, w, 1), 10.0 * (k + 1))
        img[:, w - math.ceil(0.25 * w) :] = 255.0
        out.append(img)
    return out


# ---------------------------------------------------------------- the bundled photographs


def test_bundled_photos_load_from_the_installed_wheel():
    import skimage

    names = [p.name for p in PHOTOS]
    assert len(names) == len(set(names)) == 13
    assert not {"checkerboard", "colorwheel", "logo", "horse", "shepp_logan_phantom"} & set(names)
    for p in PHOTOS:
        img = load_photo(p.name)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == (3 if p.colour else 1)
        assert min(img.shape[:2]) >= 172 and img.std() > 5  # a real picture, not a flat field
        assert p.licence
    # the same pixels scikit-image's own loader returns (its files ship in the wheel)
    assert np.array_equal(load_photo("camera")[:, :, 0], skimage.data.camera())
    assert np.array_equal(load_photo("astronaut"), skimage.data.astronaut())


# ---------------------------------------------------------------- determinism


def test_sample_is_a_pure_function_of_seed_and_index():
    a = PhotoCropsDataset("train", 16, seed=3)
    b = PhotoCropsDataset("train", 16, seed=3)
    idx = [5, 0, 77, 12_345, 5]
    xa, ya = a.get_batch(idx)
    xb, yb = b.get_batch(list(reversed(idx)))
    assert torch.equal(xa, xb.flip(0)) and torch.equal(ya, yb.flip(0))
    assert torch.equal(xa[0], xa[4])  # same index, same image, whatever the batch
    single = torch.stack([a[i][0] for i in idx])
    assert torch.equal(single, xa)
    # different indices give different images (no two of 200 equal)
    x, _ = a.get_batch(list(range(200)))
    flat = x.reshape(200, -1)
    assert (torch.cdist(flat, flat) + torch.eye(200) * 1e9).min() > 0
    # another seed draws other training crops; validation crops do not depend on the seed
    assert not torch.equal(PhotoCropsDataset("train", 16, seed=4).get_batch(idx)[0], xa)
    va, vb = PhotoCropsDataset("val", 16, seed=3), PhotoCropsDataset("val", 16, seed=4)
    assert torch.equal(va.get_batch(idx[:3])[0], vb.get_batch(idx[:3])[0])


def test_epochs_draw_new_crops_and_set_epoch_is_the_offset():
    ds = PhotoCropsDataset("train", 16, epoch_size=100)
    x0, _ = ds.get_batch(range(100))
    ds.set_epoch(1)
    x1, _ = ds.get_batch(range(100))
    ds.set_epoch(0)
    direct = PhotoCropsDataset("train", 16, epoch_size=200).get_batch(range(100, 200))[0]
    assert torch.equal(x1, direct)  # item i of epoch 1 = stream sample 100 + i
    assert not any(torch.equal(x0[i], x1[j]) for i in range(100) for j in range(100))
    assert unique_images(ds) is None


def test_uniforms_are_uniform_and_independent():
    u = uniforms(123, np.arange(20_000), 4)
    assert u.shape == (20_000, 4) and u.min() >= 0 and u.max() < 1
    assert np.allclose(u.mean(0), 0.5, atol=0.01) and np.allclose(u.var(0), 1 / 12, atol=0.003)
    assert np.abs(np.corrcoef(u.T) - np.eye(4)).max() < 0.03


# ---------------------------------------------------------------- regions, resampling, classes


@pytest.mark.parametrize("split", ["train", "val"])
def test_train_and_val_regions_are_disjoint_on_the_photos(split):
    ds = PhotoCropsDataset(split, 16, PhotoOptions(num_photos=13))
    c = ds.crops
    b = c.boxes(np.arange(20_000), split)
    w, h, cut = c.widths[b["label"]], c.heights[b["label"]], c.train_cols[b["label"]]
    assert np.all(b["y0"] >= 0) and np.all(b["y0"] + b["side"] <= h + 1e-9)
    if split == "train":
        assert np.all(b["x0"] >= 0) and np.all(b["x0"] + b["side"] <= cut + 1e-9)
    else:
        assert np.all(b["x0"] >= cut) and np.all(b["x0"] + b["side"] <= w + 1e-9)
    assert np.all(cut == w - np.ceil(0.25 * w))
    short = np.minimum(h, w)
    assert np.all(b["side"] >= 0.08 * short - 1e-9) and np.all(b["side"] <= 0.2 * short + 1e-9)


@pytest.mark.parametrize("resolution", [8, 16])
def test_pixels_never_cross_the_holdout_boundary(resolution, monkeypatch):
    """Training region = 10*(k+1), held-out strip = 255: every pixel of every crop says which it read."""
    crops = PhotoCrops(_strip_images(), channels=1, crop_scale=(0.05, 0.25), holdout=0.25)
    idx = np.arange(3_000)
    xt, yt = crops.sample(idx, "train", resolution)
    xv, yv = crops.sample(idx, "val", resolution)
    assert torch.equal(xt, (10 * (yt + 1)).to(torch.uint8).view(-1, 1, 1, 1).expand_as(xt))
    assert bool((xv == 255).all())
    assert torch.equal(yt, torch.from_numpy(idx % 3)) and torch.equal(yv, yt)
    # the last guard: a box that float rounding pushed over the boundary is clamped to its region
    # (the columns past it cover no area and read 0, never the held-out strip's 255)
    b = crops.boxes(idx[:2], "train")
    b["x0"] = b["x_hi"] - b["side"] / 2  # the right half of each box in the held-out strip
    monkeypatch.setattr(crops, "boxes", lambda index, split, seed=0: b)
    x, y = crops.sample(idx[:2], "train", resolution, flip=False)
    inside, half = (10 * (y + 1)).to(torch.uint8).view(-1, 1, 1, 1), resolution // 2
    assert torch.equal(x[..., :half], inside.expand_as(x[..., :half])) and not x[..., half:].any()


def _area_average_reference(img: np.ndarray, x0: float, y0: float, side: float, r: int) -> np.ndarray:
    """Exact mean of a piecewise-constant image over each of r x r sub-boxes (pixel coverage weights)."""

    def weights(lo, n):
        edges = lo + side * np.arange(r + 1) / r
        cells = np.arange(n)
        a, b = edges[:-1, None], edges[1:, None]
        return np.clip(np.minimum(b, cells + 1) - np.maximum(a, cells), 0, None)  # (r, n)

    wy, wx = weights(y0, img.shape[0]), weights(x0, img.shape[1])
    return wy @ img @ wx.T / (side / r) ** 2


def test_render_is_the_exact_area_average():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, size=(37, 53))
    crops = PhotoCrops([img[:, :, None]], channels=1, crop_scale=(0.1, 0.25), holdout=0.25)
    boxes = [(0.0, 0.0, 16.0), (3.25, 7.5, 13.7), (37.0, 20.9, 15.99), (10.0, 4.0, 4.0)]
    for x0, y0, side in boxes:
        got = crops.render(np.array([0]), np.array([x0]), np.array([y0]), np.array([side]), 8)[0, 0]
        want = np.round(np.clip(_area_average_reference(img, x0, y0, side, 8), 0, 255))
        assert np.abs(got.numpy().astype(float) - want).max() <= 1  # rounding at exact .5 ties only
    # integer boxes of k x k pixels per output pixel: average pooling
    got = crops.render(np.array([0]), np.array([5.0]), np.array([2.0]), np.array([32.0]), 8)[0, 0]
    pooled = F.avg_pool2d(torch.from_numpy(img[2:34, 5:37])[None, None], 4)[0, 0]
    assert torch.equal(got, pooled.clamp(0, 255).round().to(torch.uint8))


def test_classes_are_balanced_and_labels_name_the_photo():
    ds = PhotoCropsDataset("train", 16, PhotoOptions(num_photos=7), epoch_size=700)
    _, y = ds.get_batch(range(700))
    assert torch.equal(torch.bincount(y, minlength=7), torch.full((7,), 100))
    assert torch.equal(y, torch.arange(700) % 7)
    assert ds.classes == [p.name for p in PHOTOS[:7]] and ds.num_classes == 7
    stream = DataStream(ds, 70, seed=1)
    counts = torch.zeros(7, dtype=torch.int64)
    for _ in range(10):  # one epoch of the permuted order still holds 100 of each class
        counts += torch.bincount(stream.next_batch()[1], minlength=7)
    assert torch.equal(counts, torch.full((7,), 100))


@pytest.mark.parametrize("channels, resolution", [(1, 16), (3, 16), (1, 8), (3, 32)])
def test_values_shapes_and_levels(channels, resolution):
    ds = PhotoCropsDataset("train", resolution, PhotoOptions(channels=channels))
    x, y = ds[11]
    assert x.shape == (channels, resolution, resolution) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.ndim == 0
    xb, _ = ds.get_batch(range(256))
    assert xb.min() >= -1 and xb.max() <= 1 and xb.max() - xb.min() > 1  # real contrast
    levels = (xb + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # uint8 levels, like the FID reference
    val = PhotoCropsDataset("val", resolution, PhotoOptions(channels=channels))
    u8, _ = photos_images(16, resolution, PhotoOptions(channels=channels))
    assert torch.equal(((val.get_batch(range(16))[0] + 1) * 127.5).round().to(torch.uint8), u8)


def test_grey_and_colour_conversions():
    colour = np.empty((40, 40, 3))
    colour[:] = (100, 150, 200)
    grey = np.full((40, 40, 1), 77.0)
    grey_crops = PhotoCrops([colour, grey], channels=1, crop_scale=(0.2, 0.25), holdout=0.25)
    x, _ = grey_crops.sample(np.arange(2), "train", 8)
    assert bool((x[0] == round(0.2125 * 100 + 0.7154 * 150 + 0.0721 * 200)).all())
    assert bool((x[1] == 77).all())
    colour_crops = PhotoCrops([colour, grey], channels=3, crop_scale=(0.2, 0.25), holdout=0.25)
    x, _ = colour_crops.sample(np.arange(2), "train", 8)
    assert x[0, :, 0, 0].tolist() == [100, 150, 200] and bool((x[1] == 77).all())


def test_flips_are_half_of_training_and_none_of_validation():
    ds = PhotoCropsDataset("train", 16)
    idx = np.arange(2_000)
    b = ds.crops.boxes(idx, "train")
    unflipped = ds.crops.render(b["label"], b["x0"], b["y0"], b["side"], 16, b["x_lo"], b["x_hi"])
    x, _ = ds.crops.sample(idx, "train", 16)
    f = torch.from_numpy(b["flip"])
    assert torch.equal(x[f], unflipped[f].flip(-1)) and torch.equal(x[~f], unflipped[~f])
    assert 900 < int(f.sum()) < 1100
    assert not PhotoCropsDataset("train", 16, random_flip=False).random_flip
    v = PhotoCropsDataset("val", 16)
    bv = v.crops.boxes(idx[:64], "val")
    plain = v.crops.render(bv["label"], bv["x0"], bv["y0"], bv["side"], 16, bv["x_lo"], bv["x_hi"])
    assert torch.equal(v.crops.sample(idx[:64], "val", 16)[0], plain)


# ---------------------------------------------------------------- the stream and resume


def test_stream_resumes_exactly_across_epochs():
    cfg = DataConfig(name="photos", epoch_size=64, seed=5)
    a = DataStream(build_dataset(cfg, "train"), 16, seed=2)
    seen = [a.next_batch() for _ in range(6)]  # epoch 0 and half of epoch 1
    state = a.state_dict()
    rest = [a.next_batch() for _ in range(5)]
    b = DataStream(build_dataset(cfg, "train"), 16, seed=2)
    b.load_state_dict(state)
    for (xa, ya), (xb, yb) in zip(rest, [b.next_batch() for _ in range(5)]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # epoch 1 shows new crops, not epoch 0 reshuffled
    e0 = torch.cat([x for x, _ in seen[:4]]).reshape(64, -1)
    e1 = torch.cat([seen[4][0], seen[5][0], rest[0][0], rest[1][0]]).reshape(64, -1)
    assert torch.cdist(e0, e1).min() > 0


def test_stream_batches_do_not_depend_on_workers():
    ds = build_dataset(DataConfig(name="photos", epoch_size=64), "train")
    plain = DataStream(ds, 16, seed=0)
    workers = DataStream(
        build_dataset(DataConfig(name="photos", epoch_size=64), "train"), 16, seed=0, num_workers=1
    )
    for _ in range(3):
        (xa, ya), (xb, yb) = plain.next_batch(), workers.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# ---------------------------------------------------------------- config, reference, accounting


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "photos", "channels": 2}, "channels must be 1"),
        ({"name": "photos", "crop_scale": (0.1, 0.3)}, "max <= holdout"),
        ({"name": "photos", "num_photos": 14}, "data.num_photos: must be 1..13"),
        ({"name": "photos", "holdout": 0.6}, r"holdout must be in \(0, 0.5\]"),
        ({"name": "photos", "epoch_size": 0}, "epoch_size"),
        ({"name": "digits", "channels": 3}, "only an option of the photos dataset"),
    ],
)
def test_photos_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**kwargs)


def test_build_dataset_photos_attributes():
    cfg = DataConfig(name="photos", image_size=8, channels=3, num_photos=4, crop_scale=(0.1, 0.2))
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert (train.name, train.channels, train.resolution, train.num_classes) == ("photos", 3, 8, 4)
    assert len(train) == cfg.epoch_size and len(val) == 10_000
    assert train.random_flip and not val.random_flip
    assert unique_images(train) is None and unique_images(val) == 10_000


def test_reference_names_the_held_out_crops():
    from dit_core.evaluate import resolve_reference

    cfg = DataConfig(name="photos", channels=3, num_photos=5, crop_scale=(0.1, 0.2), holdout=0.3)
    spec = default_reference(cfg)
    assert spec == "photos:channels=3,num_photos=5,crop_scale=0.1-0.2,holdout=0.3,n=2000"
    assert parse_photos_reference(spec) == (PhotoOptions(3, 5, (0.1, 0.2), 0.3), 2000)
    assert parse_photos_reference("photos:num_photos=5,n=300") == (PhotoOptions(num_photos=5), 300)
    src = resolve_reference(spec.replace("n=2000", "n=300"), 16)
    chunks = np.concatenate(list(src.chunks(size=128)))
    assert chunks.shape == (300, 3, 16, 16) and chunks.dtype == np.uint8
    val = build_dataset(cfg, "val")
    assert np.array_equal(chunks, ((val.get_batch(range(300))[0] + 1) * 127.5).round().byte().numpy())
    assert src.key() != resolve_reference("photos:n=300", 16).key()
    assert default_reference(DataConfig()) == "digits"
    assert default_reference(DataConfig(name="imagefolder", root="x")) is None
    for bad, why in (
        ("photos:channels=2", "channels must be 1"),
        ("photos:size=3", "'size=3' is not one of"),
        ("photos:n=x", "cannot read n='x'"),
        ("photos:n=1", "need n >= 2"),
        ("photos:num_photos=14", "num_photos must be 1..13, got 14"),
    ):
        with pytest.raises(ValueError, match=rf"^reference '{bad}': .*{why}"):
            resolve_reference(bad, 16)


def test_the_stream_is_the_one_the_study_was_trained_on():
    """Pinned values of the demo's grey stream (seed 0): every loss in docs/study.md was trained
    and validated on exactly these crops. A change to the sampler (the uniforms' layout, which
    uniform sets the side, the boxes) must be deliberate: update these values and say so there."""
    crops = photo_crops(PhotoOptions(channels=1))
    want = {
        "train": {
            "x0": [225.48036875280727, 57.17108689621874, 93.65927812833812],
            "y0": [52.28857627442191, 245.6416499991501, 95.89900256758042],
            "side": [83.79120174818327, 37.98419678154259, 102.22183779343762],
            "flip": [True, False, True], "x_lo": [0, 0, 0], "x_hi": [384, 450, 384], "mean": 99.67328,
        },
        "val": {
            "x0": [390.94029577953063, 566.9665835190495, 425.9093977397827],
            "y0": [395.056338192526, 238.6377715211434, 401.2280604616127],
            "side": [68.64689598342589, 32.46798351545452, 78.69376933138503],
            "flip": [False, False, False], "x_lo": [384, 450, 384], "x_hi": [512, 600, 512], "mean": 97.50006,
        },
    }  # fmt: skip
    for split, w in want.items():
        b = crops.boxes(np.array([0, 1, 12345]), split, seed=0)
        assert b["label"].tolist() == [0, 1, 5]
        for key in ("x0", "y0", "side"):  # numpy's exp may differ in the last bit between CPUs
            np.testing.assert_allclose(b[key], w[key], rtol=1e-12, err_msg=f"{split} {key}")
        assert [b[k].tolist() for k in ("flip", "x_lo", "x_hi")] == [w["flip"], w["x_lo"], w["x_hi"]]
        x, y = crops.sample(np.arange(64), split, 16, seed=0, flip=split == "train")
        assert y.tolist() == [i % 10 for i in range(64)]
        # a pixel that rounds the other way moves the mean by 6e-5; another stream moves it by ~1
        assert x.float().mean().item() == pytest.approx(w["mean"], abs=2e-3)


def test_batched_items_are_the_single_items_and_the_defaults_agree():
    """``__getitems__`` (what DataLoader and DataStream call) returns the items one by one would;
    the dataset's defaults are 16 px colour, and the reference name's defaults are the parser's."""
    ds = PhotoCropsDataset(split="val", val_size=8)
    batch = ds.__getitems__([3, 5])
    assert len(batch) == 2
    for (x, y), i in zip(batch, (3, 5)):
        x1, y1 = ds[i]
        assert x.shape == (3, 16, 16) and y.shape == () and torch.equal(x, x1) and int(y) == int(y1)
    with pytest.raises(ValueError, match=r"^photos split must be 'train' or 'val', got 'test'$"):
        ds.crops.boxes(np.arange(2), "test")
    assert parse_photos_reference(photos_reference()) == parse_photos_reference("photos")


def test_data_accounting_finite_and_unbounded():
    digits = build_dataset(DataConfig(), "train")
    assert data_accounting(digits, 3236) == {"data/unique_images": 1618.0, "data/epochs": 2.0}
    photos = build_dataset(DataConfig(name="photos"), "train")
    assert data_accounting(photos, 10**9) == {"data/epochs": 0.0}
    assert unique_images(torch.utils.data.TensorDataset(torch.zeros(7, 1))) == 7  # plain datasets: len


def test_trainer_logs_data_accounting(tmp_path, mlflow_uri):
    import mlflow
    from _train_helpers import one_thread, tiny_config

    from analysis.runs import load_runs
    from dit_core.train import train

    with one_thread():
        for name in ("digits", "photos"):
            cfg = tiny_config(
                tmp_path / name,
                steps=10,
                **{"data.name": name, "tracking.uri": mlflow_uri, "eval.val_every": 10},
            )
            train(cfg)
    client = mlflow.MlflowClient(mlflow_uri)
    runs = {
        r.data.params["data.name"]: r
        for r in client.search_runs(client.get_experiment_by_name("test-train").experiment_id)
    }
    d, p = runs["digits"], runs["photos"]
    assert d.data.tags["data.unique_images"] == "1618" and p.data.tags["data.unique_images"] == "unbounded"
    assert d.data.metrics["data/unique_images"] == 1618 and "data/unique_images" not in p.data.metrics
    assert d.data.metrics["data/epochs"] == pytest.approx(80 / 1618) and p.data.metrics["data/epochs"] == 0.0
    # what the analysis reads from these runs (the `unique` behind --effective-data): 1618, and inf for
    # the stream, not NaN ("not recorded")
    pts = load_runs("test-train", tracking_uri=mlflow_uri).groupby("run_id")["unique"].last()
    assert pts[d.info.run_id] == 1618 and pts[p.info.run_id] == float("inf")
