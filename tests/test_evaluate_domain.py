"""Domain classifiers behind fid_digits / fid_photos: determinism, cache, separation, FID, trainer."""

from __future__ import annotations

import logging
import math
import pickle
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _train_helpers import one_thread, tiny_config
from mlflow import MlflowClient

from dit_core.data import digits_images, photos_images
from dit_core.data.photos import PhotoOptions, photo_crops
from dit_core.evaluate import PHOTOS_METRICS, DomainExtractor, evaluate_samples, fid_from_features
from dit_core.evaluate import domain_classifier as dc
from dit_core.evaluate.domain_classifier import (
    DomainClassifierRecipe,
    digits_recipe,
    photos_recipe,
    train_domain_classifier,
)
from dit_core.evaluate.metrics import default_metrics

PHOTOS_ACC_FLOOR = 0.8  # measured 0.88 (10 photos, colour, 16 px): chance is 0.1


pytestmark = pytest.mark.usefixtures("eval_cache_env")


@pytest.fixture(scope="module")
def photos_extractor(eval_cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DITSCALE_CACHE", str(eval_cache))
        return DomainExtractor(photos_recipe(16, PhotoOptions(channels=3)))


def _small_photos_recipe(**changes) -> DomainClassifierRecipe:
    small = {"train_size": 256, "epochs": 1, "val_size": 64}
    return replace(photos_recipe(16, PhotoOptions(channels=3)), **(small | changes))


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k


def test_recipe_checks_and_presets():
    with pytest.raises(ValueError, match="domain must be one of"):
        DomainClassifierRecipe(domain="faces")
    with pytest.raises(ValueError, match="multiple of 4"):
        DomainClassifierRecipe(input_size=18)
    with pytest.raises(ValueError, match="val_size >= 1"):
        _small_photos_recipe(val_size=0)
    assert _small_photos_recipe(val_size=1).val_size == 1
    assert digits_recipe(32).num_classes == 10 and digits_recipe(32).input_size == 16
    r = photos_recipe(32, PhotoOptions(channels=1, num_photos=7))
    assert (r.domain, r.resolution, r.input_size, r.channels, r.num_classes) == ("photos", 32, 32, 1, 7)
    assert default_metrics("photos:n=500", inception=False) == PHOTOS_METRICS
    assert default_metrics("photos") == (*PHOTOS_METRICS, "fid", "sfid", "precision", "recall")


def test_recipe_for_a_reference_follows_its_domain_and_options():
    assert dc.recipe_for_reference("digits", 32) == digits_recipe(32)
    assert dc.recipe_for_reference("photos", 16) == photos_recipe(16)
    options = {"channels": 1, "num_photos": 7, "crop_scale": (0.1, 0.3), "holdout": 0.3, "n": 500}
    r = dc.recipe_for_reference("photos", 8, options)  # the reference's other keys are not the recipe's
    assert r == photos_recipe(8, PhotoOptions(channels=1, num_photos=7, crop_scale=(0.1, 0.3), holdout=0.3))
    assert (r.channels, r.num_classes, r.crop_scale, r.holdout) == (1, 7, (0.1, 0.3), 0.3)
    with pytest.raises(ValueError, match="no domain classifier for 'faces'"):
        dc.recipe_for_reference("faces", 16)


def test_net_input_maps_channels_sizes_and_range():
    """uint8 0..255 -> [-1, 1]; grey to colour repeats the channel, colour to grey is the mean."""
    g = torch.Generator().manual_seed(0)
    grey = torch.randint(0, 256, (2, 1, 8, 8), generator=g, dtype=torch.uint8)
    rgb = torch.randint(0, 256, (2, 3, 8, 8), generator=g, dtype=torch.uint8)
    assert torch.equal(dc.to_net_input(grey, 8, 1), grey.float() / 127.5 - 1)
    assert torch.equal(dc.to_net_input(grey, 8, 3), (grey.float() / 127.5 - 1).repeat(1, 3, 1, 1))
    torch.testing.assert_close(dc.to_net_input(rgb, 8, 1), rgb.float().mean(1, keepdim=True) / 127.5 - 1)
    ends = torch.tensor([0, 255], dtype=torch.uint8).repeat(16).reshape(1, 1, 4, 8)
    assert dc.to_net_input(ends, 8, 1).unique().tolist() == [-1.0, 1.0]
    flat = torch.full((1, 1, 8, 8), 51, dtype=torch.uint8)  # resampling keeps a flat image flat
    big = dc.to_net_input(flat, 16, 1)
    assert big.shape == (1, 1, 16, 16)
    torch.testing.assert_close(big, torch.full_like(big, 51 / 127.5 - 1))
    stripes = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    stripes[..., ::4] = 255  # one bright column in four: 32 -> 8 px reads as its mean (antialiased)
    inner = dc.to_net_input(stripes, 8, 1)[..., 1:-1]
    torch.testing.assert_close(inner, torch.full_like(inner, 63.75 / 127.5 - 1))
    with pytest.raises(ValueError, match="expects 1 or 3 channels, got images with 2"):
        dc.to_net_input(torch.zeros(1, 2, 8, 8), 8, 1)


def test_augmentations_shift_by_at_most_m_pixels_and_flip_left_right():
    x = torch.arange(64 * 36, dtype=torch.float32).reshape(64, 1, 6, 6)  # every pixel unique
    assert dc._shift(x, torch.Generator(), 0) is x
    shifted = dc._shift(x, torch.Generator().manual_seed(0), 1)
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    seen = set()
    for i in range(len(x)):  # each image is its own, moved by (dy, dx) in -1..1 with -1 filling in
        moves = [(a, b) for a in range(3) for b in range(3)
                 if torch.equal(shifted[i], padded[i, :, a : a + 6, b : b + 6])]  # fmt: skip
        assert len(moves) == 1, i
        seen.add(moves[0])
    assert len(seen) == 9  # 64 images use every move
    flipped = dc._random_hflip(x, torch.Generator().manual_seed(0))
    kept = [torch.equal(flipped[i], x[i]) for i in range(len(x))]
    assert all(k or torch.equal(flipped[i], x[i].flip(-1)) for i, k in enumerate(kept))
    assert 16 < sum(kept) < 48  # about half flipped
    assert torch.equal(dc._random_hflip(x, torch.Generator().manual_seed(0)), flipped)  # the generator's


def test_domain_data_is_the_domains_training_and_held_out_images():
    (xtr, ytr), (xva, yva) = dc.domain_data(digits_recipe(16))
    for (x, y), split in (((xtr, ytr), "train"), ((xva, yva), "val")):
        want_x, want_y = digits_images(split, 16)
        assert torch.equal(x, want_x) and torch.equal(y, want_y)
    r = _small_photos_recipe(train_size=128, val_size=16)
    (xtr, ytr), (xva, yva) = dc.domain_data(r)
    crops = photo_crops(PhotoOptions(channels=3))
    plain, labels = crops.sample(np.arange(128), "train", 16, seed=r.seed, flip=False)
    assert torch.equal(ytr, labels) and len(xva) == 16
    same = [torch.equal(a, b) for a, b in zip(xtr, plain)]
    assert all(s or torch.equal(a, b.flip(-1)) for s, a, b in zip(same, xtr, plain))
    assert 0 < sum(same) < 128  # the training crops are flipped at random, the held-out ones never
    assert torch.equal(xva, crops.sample(np.arange(16), "val", 16, flip=True)[0])
    wider = _small_photos_recipe(train_size=128, val_size=16, holdout=0.4)  # the recipe's own regions
    held_out = photo_crops(PhotoOptions(channels=3, holdout=0.4)).sample(np.arange(16), "val", 16)[0]
    assert torch.equal(dc.domain_data(wider)[1][0], held_out) and not torch.equal(held_out, xva)


class _NotWeights:
    """Not a tensor, number or string: `torch.load(weights_only=True)` refuses to unpickle it."""


def test_flips_train_another_net_and_files_are_read_as_weights_only(eval_cache, monkeypatch):
    r = _small_photos_recipe(train_size=128, seed=3)
    flipped, _ = train_domain_classifier(r)
    plain, _ = train_domain_classifier(replace(r, flip=False))
    assert any(
        not torch.equal(a, b) for a, b in zip(flipped.state_dict().values(), plain.state_dict().values())
    )
    # a cached file holding anything but weights is refused, not executed
    torch.save({"state_dict": flipped.state_dict(), "val_accuracy": 0.5, "recipe": _NotWeights()},
               dc.classifier_path(r))  # fmt: skip
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        dc.load_or_train(r)
    # the cache key covers torch's release, not its build (+cpu, +cu130)
    monkeypatch.setattr(torch, "__version__", "2.14.1+cpu")
    cpu = dc.classifier_path(r)
    monkeypatch.setattr(torch, "__version__", "2.14.1+cu130")
    assert dc.classifier_path(r) == cpu
    monkeypatch.setattr(torch, "__version__", "2.15.0+cpu")
    assert dc.classifier_path(r) != cpu


def test_a_shipped_classifier_is_the_one_every_machine_loads(eval_cache, monkeypatch, tmp_path):
    """`ship` (a maintainer's step) copies the cached classifier into the package's weights, which
    `load_or_train` then prefers to any cache."""
    monkeypatch.setattr(dc, "SHIPPED_DIR", tmp_path / "weights")
    r = _small_photos_recipe(train_size=128, seed=4)
    cached, acc, path = dc.load_or_train(r)
    assert path == dc.classifier_path(r)
    shipped = dc.ship(r)
    assert shipped == dc.shipped_path(r) and shipped.parent == tmp_path / "weights"
    assert torch.load(shipped, weights_only=True)["val_accuracy"] == acc
    path.unlink()  # the cache gone: the shipped file serves
    net, acc2, where = dc.load_or_train(r)
    assert where == shipped and acc2 == acc
    _assert_same_weights(net, cached)


def test_training_is_deterministic_and_cached(eval_cache, monkeypatch, caplog):
    recipe = _small_photos_recipe()
    with caplog.at_level(logging.INFO, logger=dc.__name__):
        first = DomainExtractor(recipe)
    said = f"trained photos classifier (16 px): held-out accuracy {first.val_accuracy:.4f} -> {first.path}"
    assert said in caplog.messages
    assert first.path.is_file() and first.path.parent.parent == eval_cache
    assert torch.load(first.path, weights_only=True)["recipe"] == asdict(recipe)  # what the file is of
    net, acc = train_domain_classifier(recipe)  # same recipe -> bit-identical weights and accuracy
    assert acc == first.val_accuracy
    _assert_same_weights(net, first.net)
    other, _ = train_domain_classifier(replace(recipe, seed=1))  # the seed matters
    assert any(not torch.equal(x, y) for x, y in zip(other.state_dict().values(), net.state_dict().values()))

    def no_training(_):
        raise AssertionError("the cached classifier was retrained")

    monkeypatch.setattr(dc, "train_domain_classifier", no_training)
    again = DomainExtractor(recipe)  # loads the cached file
    assert again.path == first.path and again.name == first.name and again.val_accuracy == first.val_accuracy
    _assert_same_weights(again.net, first.net)
    x, _ = photos_images(8)
    np.testing.assert_array_equal(again(x), first(x))
    assert dc.classifier_path(replace(recipe, train_size=512)) != first.path  # the key covers the recipe
    # another training of the same recipe (as on another CPU type) is another feature space
    dc._save(first.path, other, 0.5, recipe)
    elsewhere = DomainExtractor(recipe)
    assert elsewhere.path == first.path and elsewhere.name != first.name
    assert elsewhere.name.rsplit("-w", 1)[0] == first.name.rsplit("-w", 1)[0]


def test_grey_photos_and_resolution_follow_the_recipe():
    r = _small_photos_recipe(channels=1)
    ext = DomainExtractor(r)
    assert ext.net.conv[0].in_channels == 1
    x, _ = photos_images(4, 16, PhotoOptions(channels=1))
    assert ext.extract(x, ["pool", "probs"])["probs"].shape == (4, 10)
    rgb = x.expand(-1, 3, -1, -1)  # grey replicated to colour reads as the same grey image
    np.testing.assert_allclose(ext(rgb), ext(x), atol=1e-5)


@pytest.mark.slow
def test_photos_features_separate_the_photographs(photos_extractor):
    assert photos_extractor.val_accuracy > PHOTOS_ACC_FLOOR
    # held-out crops the recipe did not score (indices 2000..2999): accuracy from the softmax
    x, y = photo_crops(PhotoOptions()).sample(np.arange(2000, 3000), "val", 16, flip=False)
    probs = photos_extractor.extract(x, ["probs"])["probs"]
    assert probs.shape == (1000, 10) and np.mean(probs.argmax(1) == y.numpy()) > PHOTOS_ACC_FLOOR
    # penultimate features: nearest class mean (fit on the reference crops) also separates them
    xr, yr = photos_images(2000)
    fr, f = photos_extractor(xr), photos_extractor(x)
    means = np.stack([fr[yr.numpy() == k].mean(0) for k in range(10)])
    nearest = ((f[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert np.mean(nearest == y.numpy()) > 0.6


@pytest.mark.slow
def test_fid_photos_zero_on_itself_small_between_seeds_large_when_degraded(photos_extractor):
    ref, _ = photos_images(2000)
    m = evaluate_samples(ref, "photos", metrics=PHOTOS_METRICS)
    assert abs(m["fid_photos"]) < 1e-6 and m["precision_photos"] == m["recall_photos"] == 1.0
    assert 1.0 < m["is_photos"] <= 10.0 and m["photos_classifier_acc"] == photos_extractor.val_accuracy
    # other held-out crops (indices 2000..3999): the noise floor of two real sets
    other, _ = photo_crops(PhotoOptions()).sample(np.arange(2000, 4000), "val", 16, flip=False)
    floor = evaluate_samples(other, "photos", metrics=("fid_photos",))["fid_photos"]
    blurred = F.avg_pool2d(F.pad(ref.float(), (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    brighter = (ref.float() + 40).clamp(0, 255)
    fids = [evaluate_samples(v, "photos", metrics=("fid_photos",))["fid_photos"] for v in (blurred, brighter)]
    assert floor > 0 and all(f > 5 * floor for f in fids), (floor, fids)
    noise = torch.randint(0, 256, ref.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    assert fid_from_features(photos_extractor(ref), photos_extractor(noise)) > max(fids)


@pytest.mark.slow
def test_photos_training_run_logs_fid_photos(tmp_path, photos_extractor):
    """A photos run with eval on and no eval.metrics logs the domain metrics, not Inception's."""
    cfg = tiny_config(
        tmp_path, steps=4,
        **{"data.name": "photos", "data.channels": 3, "eval.eval_every": 4, "eval.num_samples": 16,
           "eval.steps": 4, "eval.batch_size": 16, "eval.grid_images": 0, "checkpoint.every": 0},
    )  # fmt: skip
    with one_thread():
        from dit_core.train import train

        res = train(cfg)
    assert set(res.eval) >= set(PHOTOS_METRICS) and "fid" not in res.eval
    assert math.isfinite(res.eval["fid_photos"]) and res.eval["fid_photos"] > 0
    hist = MlflowClient().get_metric_history(res.run_id, "eval/fid_photos")
    assert [(h.step, h.value) for h in hist] == [(4, pytest.approx(res.eval["fid_photos"]))]
    se = MlflowClient().get_metric_history(res.run_id, "eval/fid_photos_se")
    assert [(h.step, h.value) for h in se] == [(4, pytest.approx(res.eval["fid_photos_se"]))]
    assert 0 < res.eval["fid_photos_se"] < res.eval["fid_photos"]


def test_the_demo_scores_fid_with_the_shipped_classifier(tmp_path, monkeypatch):
    """The demo's cells resolve to the classifier that ships with the package (no training, on any
    machine), and the shipped weights are that recipe's: its stored held-out accuracy is what the net
    scores on the recipe's held-out crops."""
    from dit_core import train
    from dit_core.data import default_reference
    from dit_core.evaluate.reference import resolve_reference
    from sweeps.grid import expand, load_spec
    from sweeps.task import build_config, make_task

    spec = load_spec()  # sweeps/configs/demo.yaml
    cfg = build_config(train, make_task(spec, expand(spec)[0], tmp_path, "sqlite:///x.db").overrides)
    source = resolve_reference(default_reference(cfg.data), cfg.model.input_size)
    recipe = dc.recipe_for_reference("photos", source.resolution, source.options)

    def no_training(_):
        raise AssertionError("the demo's classifier was trained, not loaded from the package")

    monkeypatch.setattr(dc, "train_domain_classifier", no_training)
    ext = DomainExtractor(recipe)
    assert ext.path == dc.shipped_path(recipe) and ext.path.parent.name == "weights"
    # the feature space every demo FID is in, pinned: new weights under this recipe would make FIDs
    # logged before them incomparable, and the analysis would no longer pool the two (runs.fid_protocol)
    assert ext.name == "photoscnn-photos16-74460ee9fb5c-w4f68fd77361b"
    blob = torch.load(ext.path, map_location="cpu", weights_only=True)
    assert blob["recipe"] == dc.asdict(recipe)
    _, (x, y) = dc.domain_data(recipe)
    with torch.no_grad():
        acc = float(
            (ext.net(dc.to_net_input(x, recipe.input_size, recipe.channels)).argmax(1) == y).float().mean()
        )
    assert abs(acc - ext.val_accuracy) <= 2 / recipe.val_size  # one or two argmax ties may flip by CPU
    assert ext.val_accuracy >= dc.MIN_ACCURACY["photos"]
    assert dc.shipped_path(replace(recipe, seed=1)) != ext.path  # other recipes: trained and cached
