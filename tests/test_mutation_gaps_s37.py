"""Session 37: tests that kill mutants that survived in `dit_core/spec.py`, `dit_core/evaluate/frechet.py`,
`dit_core/evaluate/metrics.py`, `dit_core/rope.py`, `dit_core/pos_embed.py`, `dit_core/ema.py` and
`analysis/laws.py` (fresh samples, seed 37). Each test names the mutant it kills.

The expected values come from elsewhere than the code under test: torch's own FLOP counter read per
module, closed forms written out here, or scipy.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch
from torch.utils.flop_counter import FlopCounterMode

from analysis.laws import compute_frontier, fit_power_law
from dit_core.configio import ConfigError
from dit_core.ema import STALE_EMA_SHARE, stale_ema_warning
from dit_core.evaluate import evaluate_samples, inception_score
from dit_core.evaluate.frechet import GaussianStats, fid_from_features
from dit_core.models import DiT
from dit_core.pos_embed import sincos_1d, sincos_2d
from dit_core.rope import apply_rope, rope_angles
from dit_core.spec import BLOCK_TYPES, DiTConfig, flop_breakdown, model_config

# ------------------------------------------------------------------ dit_core/spec.py


def _module_macs(counts: dict, prefix: str, ops: tuple[str, ...]) -> int:
    """Multiply-adds (torch's flops / 2) that FlopCounterMode put on the modules named `prefix` (a
    regex-free match: the module itself, or `prefix` with any block index in place of `*`)."""
    total = 0
    for name, by_op in counts.items():
        parts, want = name.split("."), prefix.split(".")
        if len(parts) == len(want) and all(w in ("*", p) for w, p in zip(want, parts, strict=True)):
            total += sum(n for op, n in by_op.items() if str(op).split(".")[1] in ops)
    assert total % 2 == 0
    return total // 2


@pytest.mark.parametrize("block_type", BLOCK_TYPES)
def test_flop_breakdown_names_each_component_as_torch_counts_it_per_module(block_type):
    """Kills `x_flop_breakdown__mutmut_15` ("t_embed" renamed) and `x_flop_breakdown__mutmut_90`
    ("cross_proj" renamed): the breakdown's per-component figures were only ever summed, so a key
    could be renamed (or two swapped) without changing any total. Here each named entry equals what
    torch's FlopCounterMode counts inside the module of that name, on a meta-device model."""
    cfg = model_config(
        depth=2, hidden_size=64, num_heads=4, patch_size=2, input_size=8, num_classes=10,
        block_type=block_type, mlp_ratio=3.0, frequency_embedding_size=40,
    )  # fmt: skip
    with torch.device("meta"):
        model = DiT.from_config(cfg)
        x, t, y = torch.randn(1, 4, 8, 8), torch.ones(1), torch.zeros(1, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            model(x, t, y)
    counts = counter.get_flop_counts()
    lin, attn = ("addmm", "mm"), ("bmm", "_scaled_dot_product_flash_attention_for_cpu")
    torch_side = {
        "patch_embed": _module_macs(counts, "DiT.x_embedder", ("convolution",)),
        "t_embed": _module_macs(counts, "DiT.t_embedder", lin),
        "final_adaLN": _module_macs(counts, "DiT.final_layer.adaLN_modulation", lin),
        "final_linear": _module_macs(counts, "DiT.final_layer.linear", lin),
        "blocks.attn_proj": _module_macs(counts, "DiT.blocks.*.attn", lin),
        "blocks.attn_quadratic": _module_macs(counts, "DiT.blocks.*.attn", attn),
        "blocks.mlp": _module_macs(counts, "DiT.blocks.*.mlp", lin),
    }
    if block_type in ("adaln_zero", "adaln"):
        torch_side["blocks.adaLN"] = _module_macs(counts, "DiT.blocks.*.adaLN_modulation", lin)
    if block_type == "cross_attention":
        torch_side["blocks.cross_proj"] = _module_macs(counts, "DiT.blocks.*.cross_attn", lin)
        torch_side["blocks.cross_quadratic"] = _module_macs(counts, "DiT.blocks.*.cross_attn", attn)
    assert all(v > 0 for v in torch_side.values()), torch_side
    ours = flop_breakdown(cfg)
    # the modulations x (1 + scale) + shift are elementwise: torch counts no flops for them
    t_tok, d = 16, 64
    per_block = 2 if block_type in ("adaln_zero", "adaln") else 0
    elementwise = {"final_modulate": t_tok * d} | (
        {"blocks.modulate": 2 * per_block * t_tok * d} if per_block else {}
    )
    assert ours == torch_side | elementwise


_TINY = dict(depth=1, hidden_size=16, num_heads=2, patch_size=2, input_size=8)


@pytest.mark.parametrize(
    ("fields", "start"),
    [
        ({"hidden_size": 4, "num_heads": 1, "mlp_ratio": 0.2},
         "DiTConfig.mlp_ratio: hidden_size=4 x mlp_ratio=0.2 leaves the MLP no hidden unit"),
        ({"num_heads": 3}, "DiTConfig.num_heads: hidden_size=16 is not divisible by num_heads=3"),
        ({"patch_size": 3}, "DiTConfig.patch_size: patch_size=3 does not divide input_size=8"),
        ({"hidden_size": 18, "num_heads": 3},
         "DiTConfig.hidden_size: sin-cos position embedding needs hidden_size % 4 == 0, got 18"),
        ({"num_heads": 8, "pos_embed": "rope"},
         "DiTConfig.pos_embed: pos_embed='rope' needs head_dim = hidden_size/num_heads divisible by 4"),
        ({"frequency_embedding_size": 1},
         "DiTConfig.frequency_embedding_size: must be >= 2 (one sin-cos pair), got 1"),
    ],
)  # fmt: skip
def test_each_shape_error_names_its_field_in_the_librarys_own_words(fields, start):
    """Kills `xǁDiTConfigǁvalidate__mutmut_57` and `_66` (the "no hidden unit" check's field set to None
    or upper-cased), `_78` (num_heads's field) and `_92` (patch_size's). Only the trainer's test
    (`test_dit_cli_review_1.py`, outside the spec's mutation selection) read these messages before,
    through the trainer's `model.` names."""
    with pytest.raises(ConfigError) as e:
        DiTConfig(**{**_TINY, **fields})
    assert str(e.value).startswith(start), str(e.value)


# ------------------------------------------------------------------ dit_core/evaluate/frechet.py


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # sqrtm of a singular product
def test_two_feature_rows_are_enough_for_gaussian_stats():
    """Kills `xǁGaussianStatsǁfrom_features__mutmut_11` (`N < 2` -> `N < 3`: two samples refused). Two
    rows a, b are the least an unbiased covariance needs: mean (a + b) / 2, covariance
    (a - b)(a - b)^T / 2 (a rank-1 matrix). Their FID against two other rows is checked against
    scipy's sqrtm on those closed forms."""
    a, b = np.array([1.0, -2.0, 0.5]), np.array([3.0, 0.0, -1.5])
    stats = GaussianStats.from_features(np.stack([a, b]))
    assert stats.n == 2
    assert np.allclose(stats.mu, (a + b) / 2, rtol=0, atol=1e-15)
    assert np.allclose(stats.sigma, np.outer(a - b, a - b) / 2, rtol=0, atol=1e-15)
    c, d = np.array([0.0, 1.0, 1.0]), np.array([1.0, 1.0, 2.0])
    s1, s2 = np.outer(a - b, a - b) / 2, np.outer(c - d, c - d) / 2
    mean_sq = np.sum(((a + b) / 2 - (c + d) / 2) ** 2)
    expected = mean_sq + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    # two rank-1 covariances: tr sqrt(s1 s2) = |u . v| for s1 = u u^T, s2 = v v^T
    u, v = (a - b) / np.sqrt(2), (c - d) / np.sqrt(2)
    assert expected == pytest.approx(mean_sq + u @ u + v @ v - 2 * abs(u @ v), rel=1e-6)
    # the zero eigenvalues come back as round-off (~1e-16), whose square roots add ~1e-8
    assert fid_from_features(np.stack([a, b]), np.stack([c, d])) == pytest.approx(
        mean_sq + u @ u + v @ v - 2 * abs(u @ v), abs=1e-7
    )


# ------------------------------------------------------------------ dit_core/evaluate/metrics.py


def test_inception_score_of_half_precision_probabilities_with_zeros():
    """Kills `x_inception_score__mutmut_7` (the probabilities no longer cast to float64). A classifier run
    in half precision gives float16 rows with exact zeros; in float16 the `eps` of 1e-12 underflows to 0,
    so `0 * log(0)` made the score NaN. One-hot rows spread evenly over K classes score exactly K
    (Salimans et al.: IS = exp(H(p(y)) - E H(p(y|x))) = exp(ln K - 0)); a float32 softmax scores what its
    values promoted to float64 score, to the last digits."""
    k = 7
    one_hot = np.eye(k)[np.arange(70) % k]
    for dtype in (np.float16, np.float32):
        assert inception_score(one_hot.astype(dtype)) == pytest.approx(k, rel=1e-9)  # eps: ~1e-11
    p = np.random.default_rng(0).dirichlet(np.full(10, 0.3), size=200).astype(np.float32)
    h = lambda q: -np.sum(q * np.log(q), axis=-1)  # noqa: E731
    p64 = p.astype(np.float64)
    assert inception_score(p) == pytest.approx(np.exp(h(p64.mean(0)) - h(p64).mean()), rel=1e-11)


def test_inception_score_refuses_rows_that_do_not_sum_to_one_and_bad_splits():
    """Kills `x_inception_score__mutmut_30` (the row-sum tolerance 1e-4 -> 1.0001, which let unnormalised
    non-negative rows through: only negative "probabilities" were ever refused) and
    `x_inception_score__mutmut_39` (the splits message replaced by None). A float32 softmax sums to 1
    within ~1e-6 and stays accepted."""
    p = np.random.default_rng(1).dirichlet(np.ones(5), size=40)
    assert inception_score(p * (1 + 1e-5)) == pytest.approx(inception_score(p), rel=1e-4)
    for scale in (0.5, 1.5, 1.9):
        with pytest.raises(ValueError, match="^probs rows must be probability vectors"):
            inception_score(p * scale)
    for splits in (0, 41):
        with pytest.raises(ValueError, match=rf"^splits must be in 1\.\.N=40, got {splits}$"):
            inception_score(p, splits=splits)


def test_evaluate_samples_uses_the_inception_weights_it_is_given(tmp_path, monkeypatch):
    """Kills `x_evaluate_samples__mutmut_43` (`inception_weights` dropped when evaluate_samples builds
    the Inception extractor itself): every other test passes its own extractors. A path that does not
    exist must be the error, not silently replaced by other weights: here the environment names
    other (missing) weights too, so the mutant fails at once instead of loading the default file."""
    monkeypatch.setenv("DITSCALE_INCEPTION_WEIGHTS", str(tmp_path / "env-weights.pt"))
    missing = tmp_path / "no-such-inception.pt"
    images = np.zeros((4, 1, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match=rf"^--inception-weights={missing} does not exist"):
        evaluate_samples(images, "digits", metrics=("fid",), inception_weights=str(missing))


# ------------------------------------------------------------------ dit_core/ema.py


def test_stale_ema_warning_speaks_only_above_half_the_initial_weights():
    """Kills `x_stale_ema_warning__mutmut_7` (`share <= STALE_EMA_SHARE` -> `<`): the warning is for an
    EMA that holds *more* than half the initial weights. Decay 0.5 after one step holds exactly
    0.5 ** 1 = 1/2 (exact in binary), the boundary, and is not stale."""
    assert STALE_EMA_SHARE == 0.5
    assert stale_ema_warning(0.5, 1) is None
    msg = stale_ema_warning(0.75, 2)  # 0.75 ** 2 = 0.5625, just above one half
    assert msg is not None and "after 2 steps are still 56% the random initial weights" in msg


@pytest.mark.parametrize("steps", [1, 2, 3, 50])
def test_stale_ema_warning_offers_a_decay_that_halves_the_initial_share_in_short_runs(steps):
    """Kills `x_stale_ema_warning__mutmut_21` (`max(1, steps)` -> `max(2, steps)`): a 1-step run was
    told to use a decay below 0.5 ** (1/2) = 0.7071, which after its one step still holds 70% of the
    initial weights. The decay offered is the largest 4-decimal d with d ** steps <= 1/2 (written out
    here), and the sample-the-raw-weights hint ends the message (`_26`, its wording)."""
    msg = stale_ema_warning(0.99, steps, raw_weights=True)
    expected = max(k / 1e4 for k in range(10**4) if (k / 1e4) ** steps <= 0.5)
    assert msg.endswith(f"needs --ema-decay below {expected:g}; or sample the raw weights (--raw-weights)")
    if steps == 1:
        assert expected == 0.5


# ------------------------------------------------------------------ dit_core/rope.py


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rope_rotates_half_precision_tokens_in_their_own_dtype(dtype):
    """Kills `x_apply_rope__mutmut_2` (the cosine table left in float32): a bf16 q and k came back as
    float32 while v stayed bf16, and scaled_dot_product_attention refuses mixed dtypes. The rotation
    is checked against its definition written out in float64: channel i of the first half and channel
    i of the second half turn by pos * theta ** (-j / (d / 4)), rows for the first d / 4 pairs and
    columns for the last d / 4."""
    d, gh, gw, theta = 8, 2, 3, 10000.0
    cos, sin = rope_angles(d, gh, gw)
    x = torch.randn(2, gh * gw, d, generator=torch.Generator().manual_seed(0)).to(dtype)
    out = apply_rope(x, cos, sin)
    assert out.dtype == dtype
    xd = x.double()
    ref = torch.empty_like(xd)
    for tok in range(gh * gw):
        row, col = divmod(tok, gw)
        for i in range(d // 2):
            j, pos = (i, row) if i < d // 4 else (i - d // 4, col)
            ang = torch.tensor(pos * theta ** (-j / (d // 4)), dtype=torch.float64)
            a, b = xd[:, tok, i], xd[:, tok, i + d // 2]
            ref[:, tok, i] = a * ang.cos() - b * ang.sin()
            ref[:, tok, i + d // 2] = b * ang.cos() + a * ang.sin()
    tol = {torch.bfloat16: 3e-2, torch.float16: 4e-3}[dtype]
    assert torch.allclose(out.double(), ref, rtol=tol, atol=tol)
    q = k = v = out[None]  # (1, 2, T, d): one batch, two heads
    assert torch.nn.functional.scaled_dot_product_attention(q, k, v).dtype == dtype


# ------------------------------------------------------------------ dit_core/pos_embed.py


def test_sincos_tables_refuse_widths_they_cannot_split_in_their_own_words():
    """Kills `x_sincos_2d__mutmut_7` (its message replaced by None; wording). `DiTConfig` refuses such
    widths first, so only a direct call reaches these checks."""
    with pytest.raises(ValueError, match=r"^2-D sin-cos embedding width must be a multiple of 4, got 6$"):
        sincos_2d(6, 2)
    with pytest.raises(ValueError, match=r"^sin-cos embedding width must be even, got 5$"):
        sincos_1d(5, torch.arange(3))


# ------------------------------------------------------------------ analysis/laws.py


def test_a_recorded_budget_separates_two_budgets_closer_than_a_cluster():
    """Kills `x_compute_frontier__mutmut_30` (the `budget` column ignored, so budgets were always
    guessed by clustering C): two budgets 0.08 dex apart (1e12 and 1.2e12) are one cluster of C, yet
    they were recorded as two. One run per budget and size, so the frontier is the best run of each
    budget that beats every cheaper one, written out by hand: 1e11 -> m1 (1.0), 1e12 -> m1 (0.8),
    1.2e12 -> m2 (0.7). Without the column the last two budgets merge and m1's 0.8 drops out."""
    rows = [  # (budget, C, model, N, loss)
        (1e11, 1.00e11, "m1", 1e6, 1.0), (1e11, 1.01e11, "m2", 2e6, 1.1),
        (1e12, 1.00e12, "m1", 1e6, 0.8), (1e12, 1.01e12, "m2", 2e6, 0.9),
        (1.2e12, 1.19e12, "m1", 1e6, 0.85), (1.2e12, 1.20e12, "m2", 2e6, 0.7),
    ]  # fmt: skip
    pts = pd.DataFrame(
        [
            {"run_id": f"{m}-{b:g}", "model": m, "N": n, "C": c, "D": c / (6 * n), "loss": y, "budget": b}
            for b, c, m, n, y in rows
        ]
    )
    assert compute_frontier(pts)["run_id"].tolist() == ["m1-1e+11", "m1-1e+12", "m2-1.2e+12"]
    guessed = compute_frontier(pts.assign(budget=np.nan))
    assert guessed["run_id"].tolist() == ["m1-1e+11", "m2-1.2e+12"]


def test_a_power_law_without_names_is_written_in_x_and_y():
    """Kills `x_fit_power_law__mutmut_6` (the default `y_name` changed; wording): an exact pure law
    y = 2 x^-0.5 is recovered and written with the default names."""
    x = np.array([1.0, 4.0, 16.0, 64.0])
    fit = fit_power_law(x, 2.0 * x**-0.5, saturating=False)
    assert fit.params == pytest.approx({"A": 2.0, "alpha": 0.5}, rel=1e-12)
    assert fit.formula() == "y = 2 * x^(-0.5)"


def test_a_bootstrap_resample_needs_more_distinct_points_than_parameters():
    """Kills `x_fit_power_law__mutmut_116` (`len(unique(idx)) <= n_params` -> `<`): a resample of 4
    points that holds only 2 distinct ones fits a pure law (2 parameters) exactly and says nothing
    about its spread, so it is skipped (counted as failed). Drawing 4 of 4 with replacement leaves at
    most 2 distinct points with probability (4 + C(4,2) (2^4 - 2)) / 4^4 = 88/256; the mutant skips
    only the 4/256 with one point."""
    x = np.array([1.0, 3.0, 10.0, 30.0])
    y = 5.0 * x**-0.3 * np.array([1.02, 0.97, 1.01, 0.99])
    boot = fit_power_law(x, y, saturating=False, n_bootstrap=400, seed=0).bootstrap
    share, p = boot.n_failed / 400, 88 / 256
    assert abs(share - p) < 4 * np.sqrt(p * (1 - p) / 400), share  # 4 sd: 0.25 .. 0.44
    assert boot.n_ok + boot.n_failed == 400
