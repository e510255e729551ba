"""Domain classifiers behind fid_digits / fid_photos: determinism, cache, separation, FID, trainer."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _train_helpers import one_thread, tiny_config
from mlflow import MlflowClient

from dit_core.data import photos_images
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
    return replace(
        photos_recipe(16, PhotoOptions(channels=3)), train_size=256, epochs=1, val_size=64, **changes
    )


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k


def test_recipe_checks_and_presets():
    with pytest.raises(ValueError, match="domain must be one of"):
        DomainClassifierRecipe(domain="faces")
    with pytest.raises(ValueError, match="multiple of 4"):
        DomainClassifierRecipe(input_size=18)
    assert digits_recipe(32).num_classes == 10 and digits_recipe(32).input_size == 16
    r = photos_recipe(32, PhotoOptions(channels=1, num_photos=7))
    assert (r.domain, r.input_size, r.channels, r.num_classes) == ("photos", 32, 1, 7)
    assert default_metrics("photos:n=500", inception=False) == PHOTOS_METRICS
    assert default_metrics("photos") == (*PHOTOS_METRICS, "fid", "sfid", "precision", "recall")


def test_training_is_deterministic_and_cached(eval_cache, monkeypatch):
    recipe = _small_photos_recipe()
    first = DomainExtractor(recipe)
    assert first.path.is_file() and first.path.parent.parent == eval_cache
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
