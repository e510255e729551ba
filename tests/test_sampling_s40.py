"""Session 40: sampling against closed forms: respacing starts at T-1 for every spec form, one YAML
error format, and the sampler options checked with the exact Gaussian oracle (docs/testing.md, session 40)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from test_diffusion_analytic import COV, MU, SHAPE, _one_thread, make_oracle  # noqa: F401 (autouse fixture)

from dit_core.diffusion import DiffusionConfig, create_diffusion, sample
from dit_core.diffusion.respace import space_timesteps

D = 4

# ---------------------------------------------------------------- respacing: every spec starts at T-1


def _specs(T: int) -> list[tuple[object, list[int]]]:
    """(spec, section counts) pairs for a process of T steps: every count form, one-step sections
    first, last and alone, and several sections of mixed counts."""
    ns = (
        range(1, T + 1)
        if T <= 64
        else sorted({1, 2, 3, 7, 10, 49, 50, 51, 99, 250, T // 3, T - 1, T} & set(range(1, T + 1)))
    )
    out: list[tuple[object, list[int]]] = []
    for n in ns:
        out += [(n, [n]), (str(n), [n]), ([n], [n]), (f"ddim{n}", [n])]
    for k in (2, 3, 7):
        size = T // k  # the smallest section
        if size < 1:
            continue
        for counts in ([1] * k, [size] * k, [size, *[1] * (k - 1)], [*[1] * (k - 1), size], [1, size, 2][:k]):
            if min(counts) >= 1 and all(c <= size for c in counts):
                out += [(",".join(map(str, counts)), counts), (counts, counts)]
    return out


@pytest.mark.parametrize("T", [1, 2, 3, 5, 7, 10, 64, 100, 999, 1000, 4000])
def test_every_respacing_starts_at_the_noisiest_step_and_strictly_decreases(T):
    """Sampling walks the kept steps from the last down to the first and reads its start noise as
    x_{T-1}: for every spec form, the last kept step is T-1, the steps are distinct and ascending
    (strictly decreasing in sampling order), there are as many as asked, and a one-step section keeps
    its noisiest step. `ddim1` kept 0 and `"10,1"` kept 500 at T=1000 as the first sampling step."""
    for spec, counts in _specs(T):
        kept = space_timesteps(T, spec)
        assert kept[-1] == T - 1, (T, spec, kept[-3:])
        assert all(a < b for a, b in zip(kept, kept[1:])), (T, spec)
        assert kept[0] >= 0 and len(kept) == sum(counts), (T, spec)
        if len(counts) > 1:
            for section, count in zip(np.array_split(np.arange(T), len(counts)), counts):
                inside = [k for k in kept if section[0] <= k <= section[-1]]
                assert len(inside) == count and inside[-1] == section[-1], (T, spec, inside)


def _adm_space_timesteps(T: int, counts: list[int], one_step_at: str = "first") -> list[Fraction]:
    """improved-diffusion's `space_timesteps` as its docstring and code define it (restated here, not
    copied), before rounding: sections of T // k steps, the first T % k one longer; a section of
    c >= 2 steps is at start + j (size - 1) / (c - 1) for j < c (exact fractions; ADM rounds a float
    sum of them), a section of one step at its first step (ADM) or, with one_step_at="last", its last."""
    k = len(counts)
    start, kept = 0, []
    for i, c in enumerate(counts):
        size = T // k + (1 if i < T % k else 0)
        one = start if one_step_at == "first" else start + size - 1
        kept += [Fraction(one)] if c == 1 else [start + Fraction(j * (size - 1), c - 1) for j in range(c)]
        start += size
    return kept


def _rounds_to(kept: list[int], exact: list[Fraction]) -> bool:
    """Each kept step is its exact position rounded: the nearest integer, either one at a tie (x.5,
    where float rounding picks a side: ADM's sum and numpy's linspace pick differently)."""
    return len(kept) == len(exact) and all(abs(k - x) <= Fraction(1, 2) for k, x in zip(kept, exact))


def _adm_ddim(T: int, n: int) -> list[int]:
    """improved-diffusion's "ddimN": range(0, T, i) for the smallest stride i giving exactly N steps."""
    return next(list(range(0, T, i)) for i in range(1, T + 1) if len(range(0, T, i)) == n)


@pytest.mark.parametrize("T", [10, 64, 100, 1000, 4000])
def test_respacing_equals_improved_diffusion_except_where_it_started_below_T_minus_1(T):
    """The deliberate differences from ADM (docs/diffusion.md): a section of one step keeps its last
    (noisiest) step, not its first, and "ddimN" counts its stride down from T-1 instead of up from 0.
    Sections of two or more steps are ADM's exactly."""
    for spec, counts in _specs(T):
        if isinstance(spec, str) and spec.startswith("ddim"):
            n = counts[0]
            if T % n == 0:  # the same stride T // n; ADM's steps moved up by stride - 1 to end at T-1
                assert space_timesteps(T, spec) == [k + T // n - 1 for k in _adm_ddim(T, n)], (T, spec)
        else:
            ours, adm = space_timesteps(T, spec), _adm_space_timesteps(T, counts)
            assert _rounds_to(ours, _adm_space_timesteps(T, counts, one_step_at="last")), (T, spec)
            assert _rounds_to(ours, adm) == (min(counts) >= 2 or T == 1), (T, spec)
    assert space_timesteps(1000, "10,1")[-2:] == [499, 999]  # ADM: [499, 500]
    assert space_timesteps(1000, "ddim1") == [999]  # ADM: [0]
    assert space_timesteps(1000, "ddim4") == [249, 499, 749, 999]  # ADM: [0, 250, 500, 750]


SPEC_FORMS = [1, 2, "1", "ddim1", "ddim2", "ddim10", "ddim50", "10,1", "5,5,1", "1,1", "1,3,2", [4, 1], "25"]


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_the_on_track_start_is_a_fixed_point_for_every_spec(schedule, sampler):
    """With the exact denoiser, the point x_{T-1} = sqrt(abar_{T-1}) mu_y is on the mean path: there
    x0_hat = mu_y and eps_hat = 0 at every step, so DDIM and DPM-Solver++(2M) carry it to x0 = mu_y
    exactly, whatever the steps, provided the sampler reads its start as x_{T-1}. A schedule that
    starts at a less noisy step t reads it as a mix of signal and noise and lands elsewhere (before the
    fix, DDIM on cosine: "10,1" 0.76 off, "ddim50" (t = 980) 0.03; on linear 0.26 and 1.3e-3; now 4e-7)."""
    base = create_diffusion(DiffusionConfig(schedule=schedule, learn_sigma=False))
    oracle = make_oracle(base)
    y = torch.tensor([0, 1, 2])
    mu = torch.as_tensor(MU[y.numpy()], dtype=torch.float32)
    start = (math.sqrt(float(base.alphas_cumprod[-1])) * mu).reshape(3, *SHAPE)
    for spec in SPEC_FORMS:
        d = base.respace(spec)
        out = sample(oracle, d, start.shape, y, sampler=sampler, steps=d.num_timesteps, noise=start)
        err = (out.reshape(3, D) - mu).abs().max().item()
        assert err < 2e-5, (spec, err)


@pytest.mark.parametrize("spec", ["ddim2", "10,1", "1,1", "ddim1"])
def test_ancestral_sampling_keeps_the_data_mean_for_specs_ending_in_one_step(spec):
    """DDPM (ancestral, fixed large variance) on the cosine schedule: the sample mean over 2000 draws
    equals mu_y within 4.5 standard errors; started at step 500 ("10,1", "1,1", "ddim2") it was 0.5 to
    0.76 off (25+ standard errors), and `ddim1` returned the start noise."""
    base = create_diffusion(DiffusionConfig(schedule="cosine", learn_sigma=False))
    oracle = make_oracle(base)
    d = base.respace(spec)
    n = 2000
    x = sample(oracle, d, (n, *SHAPE), torch.ones(n, dtype=torch.long), sampler="ddpm", steps=d.num_timesteps,
               generator=torch.Generator().manual_seed(3)).reshape(n, D).double()  # fmt: skip
    se = np.sqrt(np.diag(COV) / n)
    if spec == "ddim1":  # one step: the posterior mean of pure noise, the class mean up to abar_{T-1}
        np.testing.assert_allclose(x.mean(0).numpy(), MU[1], atol=1e-3)
    else:
        z = np.abs(x.mean(0).numpy() - MU[1]) / se
        assert z.max() < 4.5, (spec, z)


SECTION_ERRORS = [
    (100, "60,60", r"^timestep respacing '60,60' asks for 60 steps in section 1 \(steps 0\.\.49\) but "
     r"only 50 are available; use at most 50 there$"),
    (3, "1,1,1,1,1", r"^timestep respacing '1,1,1,1,1' has 5 sections but the diffusion has 3 steps; "
     r"use at most 3 sections$"),
    (100, "5,0", r"^timestep respacing '5,0' asks for 0 steps in section 2 \(steps 50\.\.99\); "
     r"need at least 1$"),
    (100, "ddim200", r"only 100 are available \(the diffusion was trained with that many\); use at most "
     r"100$"),
]  # fmt: skip


@pytest.mark.parametrize("T, spec, match", SECTION_ERRORS)
def test_a_section_that_cannot_hold_its_count_is_named(T, spec, match):
    """A section asked for more steps than it holds was reported as if the whole diffusion had that many
    ("only 50 are available (the diffusion was trained with that many)" for a 100-step one), and more
    sections than steps as "asks for 1 steps but only 0 are available"."""
    with pytest.raises(ValueError, match=match):
        space_timesteps(T, spec)


# ---------------------------------------------------------------- YAML errors: one format


def _trainer(capsys, *args: str) -> tuple[int, str]:
    from _train_helpers import train_cli

    return train_cli(capsys, ["--max-steps", "1", "--no-mlflow", *args])


def _launcher(capsys, tmp_path, *args: str) -> tuple[int, str]:
    from sweeps import launch

    code = launch.main(["run", "--dry-run", "--tracking-uri", f"sqlite:///{tmp_path}/m.db", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "text, where",
    [
        ("optim: [1\n", "line 2, column 1: expected ',' or ']', but got '<stream end>'"),
        ("optim:\n\tlr: 1\n", "line 2, column 1: found character '\\t' that cannot start any token"),
    ],
    ids=["unclosed", "tab"],
)
def test_the_trainer_and_the_launcher_name_a_yaml_error_alike(tmp_path, capsys, text, where):
    """The same broken file read by both CLIs: one "<file>: not valid YAML (line L, column C: what)".
    The trainer wrote "line 2, column 1: expected ..." and the launcher "expected ..., line 2, column 1"."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    code, err = _trainer(capsys, "--out", str(tmp_path / "r"), "--config", str(bad))
    assert code == 2 and err.startswith(f"error: --config: {bad}: not valid YAML ({where}); fix the file"), (
        err
    )
    code, err = _launcher(capsys, tmp_path, "-c", str(bad))
    assert code == 2 and err.startswith(f"error: {bad}: not valid YAML ({where}); fix the file: "), err
    assert not (tmp_path / "r").exists() and not (tmp_path / "m.db").exists()


def test_a_binary_trainer_config_is_named(tmp_path, capsys):
    """A binary --config said only "'utf-8' codec can't decode byte 0xec in position 16" (no file, no
    field, no fix); the launcher's sweep config already said "not a text file"."""
    bad = tmp_path / "runs.db"
    bad.write_bytes(b"SQLite format 3\x00\xec\xff")
    code, err = _trainer(capsys, "--out", str(tmp_path / "r"), "--config", str(bad))
    assert code == 2 and err.startswith(f"error: --config: {bad}: not a text file, so not a YAML file"), err


@pytest.mark.parametrize("value", ["[1", "{a", "a: b: c"])
def test_a_launcher_set_value_yaml_cannot_read_is_judged_by_its_field(tmp_path, capsys, value):
    """`launch.py run --set optim.lr=[1` was a yaml ScannerError traceback and exit 1: the value is now
    the text itself, and the field's type refuses it with exit 2 like any other bad value."""
    code, err = _launcher(capsys, tmp_path, "--set", f"optim.lr={value}")
    assert code == 2 and "Traceback" not in err, err
    assert f"optim.lr: cannot use {value!r} as float" in err, err


# ---------------------------------------------------------------- sampler identities (checked right)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [1, 2, 10, 1000])
def test_ddim_at_eta_one_is_ancestral_sampling_with_the_posterior_variance(schedule, steps):
    """DDIM's eta = 1 step is DDPM's ancestral step with the posterior ("small") variance, draw for
    draw: both take the start noise and one normal per step (none on the last) from the generator
    in the same order. Measured: equal to 1.3e-5 (float32, 1000 steps); the "large" variance (DDPM's
    default) is another process, checked against the data moments in test_diffusion_sampling.py."""
    d = create_diffusion(DiffusionConfig(learn_sigma=False, schedule=schedule, fixed_variance="small"))
    oracle = make_oracle(d)
    n = 64
    y = torch.arange(n) % 3
    run = lambda sampler, eta: sample(oracle, d, (n, *SHAPE), y, sampler=sampler, eta=eta, steps=steps,
                                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    ddim, ddpm = run("ddim", 1.0), run("ddpm", 0.0)
    torch.testing.assert_close(ddim, ddpm, atol=5e-5, rtol=0)
    assert (run("ddim", 0.0) - ddpm).abs().max() > 0.01 or steps == 1  # the noise is not a no-op


@pytest.mark.parametrize("steps", [2, 10, 100])
def test_learned_sigma_at_its_ends_is_the_fixed_variances_and_ddim_ignores_it(steps):
    """The learned variance channel v interpolates log beta~_t (v = -1) and log beta_t (v = +1): DDPM
    with v = -1 / +1 is, draw for draw, DDPM with fixed "small" / "large" variance (measured: bitwise
    equal), and DDIM does not read the channel at all."""
    learned = create_diffusion(DiffusionConfig(learn_sigma=True, schedule="cosine"))
    n = 64
    y = torch.arange(n) % 3
    for v, fixed in ((-1.0, "small"), (1.0, "large")):
        oracle = make_oracle(learned, learn_sigma=True, var_value=v)
        a = sample(oracle, learned, (n, *SHAPE), y, sampler="ddpm", steps=steps,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
        d = create_diffusion(DiffusionConfig(learn_sigma=False, schedule="cosine", fixed_variance=fixed))
        b = sample(make_oracle(d), d, (n, *SHAPE), y, sampler="ddpm", steps=steps,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    noise = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(1))
    ddim = [sample(make_oracle(learned, learn_sigma=True, var_value=v), learned, noise.shape, y, steps=steps,
                   noise=noise) for v in (-1.0, 0.3)]  # fmt: skip
    assert torch.equal(ddim[0], ddim[1])


def test_a_real_dit_is_guided_by_its_own_conditional_and_null_outputs():
    """A DiT with label dropout 0.5 left in training mode: `sample(cfg_scale=4)` equals DDIM on the
    hand-made denoiser uncond + 4 (cond - uncond) of the eval-mode model, where uncond is its output
    for the null label `num_classes` and the learned-variance channels are the conditional ones
    (label dropout off, the null index, guide channels = in_channels). cfg_scale = 1 is the
    conditional forward alone, bit for bit."""
    from dit_core.models import DiT

    torch.manual_seed(0)
    model = DiT(
        depth=1,
        hidden_size=32,
        num_heads=2,
        patch_size=2,
        input_size=4,
        in_channels=2,
        num_classes=3,
        class_dropout_prob=0.5,
        frequency_embedding_size=16,
        learn_sigma=True,
    )
    with torch.no_grad():  # adaLN-Zero starts at zero: give the class and time paths some weight
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    d = create_diffusion(DiffusionConfig(learn_sigma=True))
    n, C = 6, 2
    y = torch.tensor([0, 1, 2, 3, 0, 1])  # 3 is the null label
    noise = torch.randn(n, C, 4, 4, generator=torch.Generator().manual_seed(0))

    class HandGuided(torch.nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.scale, self.num_classes = scale, model.num_classes

        def forward(self, x, t, labels):
            cond, uncond = model(x, t, labels), model(x, t, torch.full_like(labels, model.num_classes))
            mixed = uncond[:, :C] + self.scale * (cond[:, :C] - uncond[:, :C])
            return torch.cat([mixed, cond[:, C:]], dim=1)

    class Conditional(torch.nn.Module):
        def forward(self, x, t, labels):
            return model(x, t, labels)

    model.train()
    guided = sample(model, d, noise.shape, y, steps=8, cfg_scale=4.0, noise=noise)
    assert model.training  # restored
    model.eval()
    by_hand = sample(HandGuided(4.0), d, noise.shape, y, steps=8, noise=noise)
    torch.testing.assert_close(guided, by_hand, atol=1e-4, rtol=0)
    assert (guided - sample(HandGuided(1.0), d, noise.shape, y, steps=8, noise=noise)).abs().max() > 0.1
    model.train()
    cond = sample(model, d, noise.shape, y, steps=8, noise=noise)
    model.eval()
    assert torch.equal(cond, sample(Conditional(), d, noise.shape, y, steps=8, noise=noise))
