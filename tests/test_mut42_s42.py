"""Session 42: tests that kill the surviving hand-placed mutants of the numeric code (FID, IS,
precision/recall, the beta schedules, the samplers, the validation draws, the lr schedule, the EMA),
each checked against a closed form or an independent reference (scipy, clean-fid). The mutants are in
`tests/hand_mutants.txt`; each test's name holds the keyword its module's row selects it by
(frechet, inception_score, precision_recall, schedule, sampler, validation, lr, ema)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.spatial
import scipy.stats
import torch
from _image_helpers import RandomConvExtractor
from cleanfid import fid as cleanfid_fid
from PIL import Image

from dit_core.config import OptimConfig
from dit_core.diffusion import DiffusionConfig, create_diffusion, sample, validation_loss, validation_losses
from dit_core.diffusion.validation import example_noise, example_seed, example_uniforms
from dit_core.evaluate import (
    evaluate_samples,
    frechet_distance,
    inception_score,
    precision_recall,
)
from dit_core.trainer.lr_schedule import lr_at

# ---------------------------------------------------------------- metrics: IS, precision/recall


def test_inception_score_of_splits_is_the_arithmetic_mean_of_their_scores():
    """Split 1 uniform (IS 1), split 2 confident one-hots spread over K classes (IS K): ADM reports the
    mean (1 + K) / 2 of the split scores, not their geometric mean sqrt(K)."""
    k = 5
    probs = np.concatenate([np.full((k, k), 1.0 / k), np.eye(k)])
    assert inception_score(probs[:k]) == pytest.approx(1.0, abs=1e-9)
    assert inception_score(probs[k:]) == pytest.approx(k, rel=1e-9)
    assert inception_score(probs, splits=2) == pytest.approx((1 + k) / 2, rel=1e-9)


def test_inception_score_of_one_hots_over_m_of_k_classes_is_m():
    """Confident predictions spread evenly over 3 of 5 classes: IS = exp(log 3) = 3; the two classes
    no sample predicts have p(y) = 0, and 0 log 0 counts as 0 (not NaN)."""
    probs = np.eye(5)[np.arange(36) % 3]  # each of 3 splits: 4 of each class
    assert inception_score(probs) == pytest.approx(3.0, rel=1e-9)
    assert inception_score(probs, splits=3) == pytest.approx(3.0, rel=1e-9)


def test_inception_score_of_unequal_splits_matches_scipy_entropy():
    """Each split's score is exp(mean KL(p(y|x) || p(y))) with its own marginal p(y) (scipy's
    relative entropy), and array_split gives the first N % splits chunks one row more."""
    rng = np.random.default_rng(42)
    probs = rng.dirichlet(np.full(6, 0.4), size=23)
    want = np.mean(
        [np.exp(np.mean(scipy.stats.entropy(c.T, c.mean(0)[:, None]))) for c in np.array_split(probs, 4)]
    )
    assert inception_score(probs, splits=4) == pytest.approx(want, rel=1e-9)


def _pr_reference(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkaanniemi et al.'s precision/recall with scipy's k-d tree: a ball around each point of a set
    reaching its k-th nearest other point; closed balls (a point on the boundary is inside)."""

    def cover(query, manifold):
        radius = scipy.spatial.cKDTree(manifold).query(manifold, k + 1)[0][:, k]
        dist = scipy.spatial.distance.cdist(query, manifold)
        return float(np.mean((dist <= radius[None, :]).any(axis=1)))

    return cover(fake, real), cover(real, fake)


def test_precision_recall_counts_a_point_on_a_balls_boundary_as_inside():
    """Integer points on a line (exact squared distances): real 0..3 with k = 1 has radius 1 around
    each point, so the fake point 4 lies on the boundary of 3's ball and counts; 4.5 does not."""
    real = np.arange(4.0)[:, None]
    assert precision_recall(real, np.array([[4.0], [1.5]]), k=1) == (1.0, 1.0)
    assert precision_recall(real, np.array([[4.5], [1.5]]), k=1)[0] == 0.5
    grid = np.stack(np.meshgrid(np.arange(5.0), np.arange(4.0)), -1).reshape(-1, 2)  # ties everywhere
    fake = grid[::3] + np.array([1.0, 0.0])
    for k in (1, 2, 3):
        assert precision_recall(grid, fake, k=k) == pytest.approx(_pr_reference(grid, fake, k), abs=1e-15)


def test_precision_recall_of_flipped_feature_views_matches_their_copies():
    """Features reversed along either axis (numpy views with negative strides, as `feats[::-1]`
    gives) score the same as their contiguous copies; torch cannot wrap such a view as it is."""
    rng = np.random.default_rng(42)
    real, fake = rng.normal(size=(40, 3)), rng.normal(size=(30, 3)) + 0.3
    want = precision_recall(real[::-1].copy(), fake[:, ::-1].copy())
    assert precision_recall(real[::-1], fake[:, ::-1]) == want == _pr_reference(real, fake[:, ::-1], 3)


def test_evaluate_samples_precision_recall_takes_the_reference_as_the_real_set(tmp_path, monkeypatch):
    """Samples that are 6 of a folder's 20 images: every sample lies on the reference manifold
    (precision 1), while 6 points cover only part of the 20 (recall < 1); swapping the two sets
    would swap the numbers. Both equal `precision_recall(reference features, sample features)`."""
    monkeypatch.setenv("DITSCALE_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(42)
    pixels = rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    (tmp_path / "real").mkdir()
    for i, img in enumerate(pixels):
        Image.fromarray(img).save(tmp_path / "real" / f"{i:02d}.png")
    ext = RandomConvExtractor(dim=8)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    out = evaluate_samples(
        images[:6], str(tmp_path / "real"), metrics=("precision", "recall"), extractors={"inception": ext}
    )
    feats = ext.extract(images.numpy(), ["pool"])["pool"]
    want = precision_recall(feats, feats[:6])
    assert want[0] == 1.0 and want[1] < 1.0
    assert (out["precision"], out["recall"]) == pytest.approx(want, abs=1e-12)


# ---------------------------------------------------------------- frechet


def test_frechet_reads_both_triangles_of_a_covariance_that_lost_its_symmetry():
    """A covariance stored with asymmetric round-off (here 1e-6, as from float32 accumulation in
    blocks) counts by its symmetric part: the distance is the same for sigma and sigma^T, and equals
    clean-fid's sqrtm-based distance of the symmetric parts."""
    rng = np.random.default_rng(42)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T / 6 + 0.1 * np.eye(6)
    s1_skewed = s1 + 1e-6 * np.triu(rng.normal(size=(6, 6)), 1)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    d = frechet_distance(mu1, s1_skewed, mu2, s2)
    assert d == pytest.approx(frechet_distance(mu1, s1_skewed.T, mu2, s2), rel=1e-13)
    sym = (s1_skewed + s1_skewed.T) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # clean-fid passes sqrtm(disp=False)
        assert d == pytest.approx(cleanfid_fid.frechet_distance(mu1, sym, mu2, s2), rel=1e-10)


# ---------------------------------------------------------------- diffusion validation draws


def test_validation_stratified_start_is_uniform_over_seeds_and_random_draws_are_iid_uniform():
    """The golden-ratio sequence starts at a seeded u_0 ~ U[0, 1): over 400 seeds the first example's u
    passes a Kolmogorov-Smirnov test against U[0, 1) (a fixed start, u_0 = 0, would give every seed
    the same timesteps). "random": 2,000 examples' u are distinct and pass the same test."""
    first = torch.cat([example_uniforms(s, torch.tensor([0])) for s in range(400)]).numpy()
    assert scipy.stats.kstest(first, "uniform").pvalue > 1e-3
    u = example_uniforms(5, torch.arange(2000), "random").numpy()
    assert len(np.unique(u)) == 2000 and scipy.stats.kstest(u, "uniform").pvalue > 1e-3


def test_validation_sampling_stream_seeds_differ_from_the_noise_seeds():
    """`example_seed(seed, i, stream)`: the sampling stream (1) of an example is seeded apart from its
    start noise (no stream) and from other streams, else the ancestral noise would repeat x_T."""
    seeds = {stream: {example_seed(7, i, *stream) for i in range(200)} for stream in ((), (1,), (2,))}
    assert all(len(s) == 200 for s in seeds.values())
    assert not (seeds[()] & seeds[(1,)]) and not (seeds[(1,)] & seeds[(2,)])


class _ZeroEps(torch.nn.Module):
    def forward(self, x, t, y=None):
        return torch.zeros_like(x)


def test_validation_loss_is_the_mean_of_the_closed_form_per_example_losses():
    """A zero eps-model's loss on example i is |eps_i|^2 / D, eps_i its `example_noise` row;
    `validation_loss` is the plain mean of those over the set (3 examples here)."""
    d = create_diffusion(DiffusionConfig(learn_sigma=False))
    x0 = torch.zeros(3, 1, 2, 2)
    noise = example_noise(11, torch.arange(3), (1, 2, 2)).double()
    want = noise.pow(2).mean(dim=(1, 2, 3))
    losses = validation_losses(d, _ZeroEps(), x0, None, seed=11)
    torch.testing.assert_close(losses, want, rtol=1e-6, atol=0)
    assert validation_loss(d, _ZeroEps(), x0, None, seed=11) == pytest.approx(float(losses.mean()), rel=1e-15)


# ---------------------------------------------------------------- samplers


def test_guided_ddpm_sampler_draws_with_the_conditional_learned_variance():
    """A DiT's `forward_with_cfg` returns the guided noise for both halves of [cond; null] but each half
    keeps its own learned-variance channels. Ancestral DDPM reads that channel, so `sample(cfg_scale=3)`
    must equal DDPM on the hand-made denoiser [uncond + 3 (cond - uncond), cond variance] draw for
    draw; with the null half's variance it would differ (checked: by more than the tolerance)."""
    from dit_core.models import DiT

    torch.manual_seed(42)
    dims = dict(depth=1, hidden_size=32, num_heads=2, patch_size=2, input_size=4, in_channels=2)
    model = DiT(**dims, num_classes=3, class_dropout_prob=0.5, frequency_embedding_size=16, learn_sigma=True)
    with torch.no_grad():  # adaLN-Zero starts at zero: give the class and time paths some weight
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.eval()
    d = create_diffusion(DiffusionConfig(learn_sigma=True))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    noise = torch.randn(6, 2, 4, 4, generator=torch.Generator().manual_seed(0))

    class HandGuided(torch.nn.Module):
        def __init__(self, variance_of: str):
            super().__init__()
            self.variance_of, self.num_classes = variance_of, model.num_classes

        def forward(self, x, t, labels):
            cond, uncond = model(x, t, labels), model(x, t, torch.full_like(labels, model.num_classes))
            var = cond if self.variance_of == "cond" else uncond
            return torch.cat([uncond[:, :2] + 3.0 * (cond[:, :2] - uncond[:, :2]), var[:, 2:]], dim=1)

    def ddpm(m, scale):
        g = torch.Generator().manual_seed(1)
        return sample(
            m, d, noise.shape, y, sampler="ddpm", steps=4, cfg_scale=scale, noise=noise, generator=g
        )

    guided = ddpm(model, 3.0)
    torch.testing.assert_close(guided, ddpm(HandGuided("cond"), 1.0), atol=1e-4, rtol=0)
    assert (guided - ddpm(HandGuided("null"), 1.0)).abs().max() > 1e-2


# ---------------------------------------------------------------- lr schedule


@pytest.mark.parametrize("schedule", ["cosine", "constant_cooldown"])
def test_lr_schedule_with_a_given_peak_decays_to_that_peaks_floor(schedule):
    """The trainer passes `peak_lr(...)` (here 4x cfg.lr, as inverse-width scaling gives a narrow
    model): warmup, decay and floor all follow that peak, the floor being min_lr_ratio x peak."""
    cfg = OptimConfig(lr=1e-3, warmup_steps=3, schedule=schedule, min_lr_ratio=0.1, cooldown_frac=0.5)
    peak, T = 4e-3, 11
    floor = 0.1 * peak
    assert [lr_at(s, T, cfg, peak) for s in range(3)] == pytest.approx(
        [peak / 3, 2 * peak / 3, peak], rel=1e-12
    )
    assert lr_at(T - 1, T, cfg, peak) == pytest.approx(floor, rel=1e-12)
    mid = 7  # cosine: (7 - 3) / (11 - 1 - 3) of the way; cooldown: ceil(5.5) = 6 steps from step 5
    want = (
        floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * 4 / 7))
        if schedule == "cosine"
        else peak + (floor - peak) * 3 / 6
    )
    assert lr_at(mid, T, cfg, peak) == pytest.approx(want, rel=1e-12)
