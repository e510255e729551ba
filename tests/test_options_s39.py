"""Session 39: the model and training options combined as a researcher would (docs/testing.md, session 39)."""

from __future__ import annotations

import pytest
import torch
from test_diffusion_analytic import SHAPE, _one_thread, make_oracle  # noqa: F401 (autouse fixture)

from dit_core.diffusion import DiffusionConfig, create_diffusion, sample
from dit_core.diffusion.respace import space_timesteps

# ---------------------------------------------------------------- one sampling step


def test_one_evenly_spaced_step_is_the_noisiest():
    """Both ends for 2+ steps; a single step keeps T-1 (was 0, the least noisy step)."""
    assert space_timesteps(1000, 1) == space_timesteps(1000, "1") == [999]
    assert space_timesteps(1000, 2) == [0, 999]
    assert space_timesteps(1, 1) == [0]


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp_2m"])
def test_one_step_sampling_returns_the_posterior_mean_at_the_noisiest_step(sampler):
    """A 1-step sampler (``--steps 1``) starts from pure noise x_T, so its one model evaluation must be
    at t = T-1, and it returns E[x0 | x_T] (~ the class mean: abar_T = 4e-5). It used to evaluate at
    t = 0 (abar 0.9999), reading the start noise as almost clean data and returning it nearly unchanged."""
    diffusion = create_diffusion(DiffusionConfig(learn_sigma=False))
    oracle = make_oracle(diffusion)
    n = 64
    noise = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(0))
    y = torch.arange(n) % 2
    out = sample(oracle, diffusion, (n, *SHAPE), y, sampler=sampler, steps=1, noise=noise,
                 generator=torch.Generator().manual_seed(1))  # fmt: skip
    want, _ = oracle.posterior(noise.double(), torch.full((n,), 999), y)
    torch.testing.assert_close(out.double().reshape(n, -1), want, rtol=0, atol=2e-4)
    means = oracle.means[y]  # and that is the class mean, up to the signal abar_T leaves
    assert (out.double().reshape(n, -1) - means).abs().max() < 0.05


# ---------------------------------------------------------------- class labels at sampling time


def _tiny_dit(**kw):
    from dit_core.models import DiT

    torch.manual_seed(0)
    return DiT(depth=1, hidden_size=16, num_heads=2, patch_size=2, input_size=4, in_channels=1, num_classes=3,
               frequency_embedding_size=8, **kw)  # fmt: skip


@pytest.mark.parametrize(
    "dropout, y, match",
    [
        (0.0, None, r"y=None means the null label, which this model does not have .*labels in 0\.\.2"),
        (0.0, [3, 0], r"label 3 is outside the model's labels 0\.\.2 \(no null label"),
        (0.1, [4, 0], r"label 4 is outside the model's labels 0\.\.2 \(and the null label 3\)"),
        (0.1, [0, -1], r"label -1 is outside"),
    ],
)
def test_sampling_refuses_labels_the_model_has_no_embedding_for(dropout, y, match):
    """Was an IndexError 'index out of range in self' from the embedding (on CUDA a device assert)."""
    model = _tiny_dit(class_dropout_prob=dropout)
    diffusion = create_diffusion(DiffusionConfig())
    y = None if y is None else torch.tensor(y)
    with pytest.raises(ValueError, match=match):
        sample(model, diffusion, (2, 1, 4, 4), y, steps=2)


def test_sampling_takes_every_label_the_model_has():
    """The edges: 0, num_classes - 1, and the null label (and y=None) only where it was trained."""
    diffusion = create_diffusion(DiffusionConfig())
    g = torch.Generator().manual_seed(0)
    with_null = _tiny_dit(class_dropout_prob=0.1)
    for y in (torch.tensor([0, 2, 3]), None):
        assert sample(with_null, diffusion, (3, 1, 4, 4), y, steps=2, generator=g).shape == (3, 1, 4, 4)
    without = _tiny_dit(class_dropout_prob=0.0)
    assert (
        sample(without, diffusion, (2, 1, 4, 4), torch.tensor([0, 2]), steps=2, generator=g).isfinite().all()
    )


# ---------------------------------------------------------------- flow: sampler steps checked before training


def test_flow_eval_steps_above_num_timesteps_are_refused_before_training(tmp_path):
    """The sampler refuses steps > num_timesteps for flow as for eps, but the up-front check let flow
    through ("continuous time"): the run trained, then failed at its first evaluation (exit 2)."""
    from _train_helpers import tiny_config

    from dit_core.configio import ConfigError
    from dit_core.trainer.evaluation import check_evaluation

    over = {
        "diffusion.objective": "flow",
        "eval.sampler": "euler",
        "eval.eval_every": 1,
        "eval.num_samples": 4,
    }
    cfg = tiny_config(tmp_path, steps=1, **over, **{"eval.steps": 11, "diffusion.num_timesteps": 10})
    with pytest.raises(ConfigError, match=r"^eval.steps: 11 sampler steps exceed the 10 trained timesteps"):
        check_evaluation(cfg)
    check_evaluation(cfg.replace(**{"eval.steps": 10}))
    diffusion = create_diffusion(cfg.diffusion)  # what the evaluation would have met after training
    with pytest.raises(ValueError, match="larger than the 10 trained timesteps"):
        sample(
            _tiny_dit(learn_sigma=False),
            diffusion,
            (1, 1, 4, 4),
            torch.tensor([0]),
            sampler="euler",
            steps=11,
        )


# ---------------------------------------------------------------- the run's own steps above its timesteps


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A 1-step run with 10 diffusion timesteps and evaluation off, so eval.steps keeps its default 50."""
    from _train_helpers import one_thread, tiny_config

    from dit_core.train import train

    out = tmp_path_factory.mktemp("t10") / "run"
    with one_thread():
        train(
            tiny_config(out, steps=1, batch=4, **{"diffusion.num_timesteps": 10, "tracking.enabled": False})
        )
    return out


def test_sample_and_evaluate_name_the_flag_for_a_run_whose_own_steps_exceed_its_timesteps(
    short_run, tmp_path, capsys
):
    """Was `error: steps=50 is larger than the 10 trained timesteps; use 1..10`, though no steps were
    given: now it says they are the run's own eval.steps and to give --steps."""
    from dit_core.evaluate.__main__ import main as evaluate_main
    from dit_core.sample import main as sample_main

    base = ["--checkpoint", str(short_run)]
    calls = [
        (sample_main, [*base, "--out", str(tmp_path / "g.png")]),
        (evaluate_main, [*base, "--num-samples", "4", "--metrics", "fid_digits"]),
    ]
    for main, argv in calls:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert (
            "error: steps: the run's own eval.steps 50 (used without --steps) is more than the 10 timesteps "
            "the model was trained with (diffusion.num_timesteps); give --steps between 1 and 10"
        ) in err, err
        assert main([*argv, "--steps", "11"]) == 2
        assert "error: steps: --steps 11 is more than the 10 timesteps" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()
    assert sample_main([*base, "--out", str(tmp_path / "g.png"), "--steps", "10", "--num-samples", "2"]) == 0


# ---------------------------------------------------------------- speed options across a resume


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_resume_with_activation_checkpointing_toggled_is_exact_and_precision_may_not_change(
    tmp_path, precision
):
    """grad_checkpointing is a speed setting that a resume may change (`RESUMABLE_CHANGES`): stopped at
    step 2 with it on, resumed with it off, the run ends bitwise where an uninterrupted run without it
    does (weights, EMA, optimizer). precision changes the losses, so a resume may not change it."""
    from _train_helpers import assert_same_tensors, one_thread, tiny_config

    from dit_core.checkpoint import load_checkpoint
    from dit_core.configio import ConfigError
    from dit_core.train import train

    def cfg(out, **kw):
        over = {"tracking.enabled": False, "checkpoint.every": 2, "optim.lr": 3e-3, "precision": precision}
        return tiny_config(out, steps=4, batch=4, **{**over, **kw})

    with one_thread():
        train(cfg(tmp_path / "ref"))
        train(cfg(tmp_path / "res", grad_checkpointing=True), stop_at_step=2)
        other = "bf16" if precision == "no" else "no"
        with pytest.raises(ConfigError, match=f"precision: '{precision}' -> '{other}'"):
            train(cfg(tmp_path / "res", precision=other))
        train(cfg(tmp_path / "res"))
    ref, res = load_checkpoint(tmp_path / "ref"), load_checkpoint(tmp_path / "res")
    assert ref["step"] == res["step"] == 4
    for key in ("model", "ema", "optimizer"):
        assert_same_tensors(ref[key], res[key], key)


# ---------------------------------------------------------------- flow and learn_sigma


def test_a_flow_run_asked_to_learn_sigma_is_told_to_drop_it():
    """Was "... set diffusion.learn_sigma to match", which a flow run ignores: no setting of it helps."""
    from dit_core.config import TrainConfig
    from dit_core.configio import ConfigError
    from dit_core.trainer.resolve import resolve_config

    class Data:  # what `resolve_config` reads of a dataset
        resolution, channels, num_classes = 16, 1, 10

    over = {"model.name": "DiT-S/4", "budget.max_steps": 4, "diffusion.objective": "flow"}
    cfg = TrainConfig().replace(**over)
    for sigma in (True, False):  # diffusion.learn_sigma: either way the flow model outputs no variance
        with pytest.raises(ConfigError) as e:
            resolve_config(cfg.replace(**{"model.learn_sigma": True, "diffusion.learn_sigma": sigma}), Data)
        assert str(e.value) == (
            f"model.learn_sigma: True but the diffusion (objective='flow', learn_sigma={sigma}) needs False; "
            "a flow model never outputs a variance (diffusion.learn_sigma is ignored for it): leave "
            "model.learn_sigma unset or false"
        )
    assert resolve_config(cfg.replace(**{"model.learn_sigma": False}), Data).model.learn_sigma is False
