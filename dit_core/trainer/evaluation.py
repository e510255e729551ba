"""Sample-based evaluation during training: metrics of the EMA model and a PNG grid of samples.

`evaluate_samples` calls `dit_core.evaluate.evaluate_model` with the run's settings (``eval.*``);
`sample_grid` draws a few labelled samples for a look at progress.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn

from ..config import TrainConfig
from ..data import default_reference
from ..evaluate.sampling import SampleSettings, evaluate_model
from ..models import DiTConfig

log = logging.getLogger(__name__)

__all__ = [
    "check_evaluation",
    "check_guidance",
    "check_steps",
    "evaluate_samples",
    "guidance_scale",
    "run_metrics",
    "sample_grid",
    "sampling_settings",
]


def guidance_scale(cfg: TrainConfig) -> float:
    """``eval.cfg_scale``, or 1 (no guidance) for a model trained without label dropout."""
    return cfg.eval.cfg_scale if cfg.model.class_dropout_prob > 0 else 1.0


def check_guidance(scale: float, dit: DiTConfig) -> None:
    """ValueError for guidance (``scale`` != 1) asked of a model trained without label dropout: it
    never learnt the null class, so it has no unconditional prediction to guide with."""
    if dit.class_dropout_prob <= 0 and scale != 1.0:
        raise ValueError(
            f"--cfg-scale {scale:g}: this model was trained without label dropout "
            "(model.class_dropout_prob 0), so it has no unconditional branch for classifier-free "
            "guidance; use --cfg-scale 1 (no guidance), or a model trained with class_dropout_prob > 0"
        )


def check_steps(steps: int, num_timesteps: int, given: bool) -> None:
    """ValueError for sampler ``steps`` above the run's trained timesteps, naming ``--steps`` and,
    when it was not ``given``, that the run's own ``eval.steps`` is the one too large (a run trained
    with a short diffusion.num_timesteps and evaluation off keeps the default 50)."""
    if steps > num_timesteps:
        what = f"--steps {steps}" if given else f"the run's own eval.steps {steps} (used without --steps)"
        raise ValueError(
            f"steps: {what} is more than the {num_timesteps} timesteps the model was trained with "
            f"(diffusion.num_timesteps); give --steps between 1 and {num_timesteps}"
        )


def clip_denoised(cfg: TrainConfig) -> bool:
    """``eval.clip_denoised``, or by default: clip for pixel-space data, not for latents, and never
    for flow matching (its samplers have no x0 estimate to clamp)."""
    c = cfg.eval.clip_denoised
    return c if c is not None else cfg.data.name != "latents" and cfg.diffusion.objective != "flow"


def sampling_settings(cfg: TrainConfig) -> SampleSettings:
    """How a run on ``cfg`` draws the samples of its metrics (``eval.*`` and its seed)."""
    e = cfg.eval
    return SampleSettings(
        sampler=e.sampler, steps=e.steps, cfg_scale=guidance_scale(cfg), seed=cfg.seed,
        clip_denoised=clip_denoised(cfg),
    )  # fmt: skip


def run_reference(cfg: TrainConfig) -> str | None:
    """The reference a run scores its samples against: its ``eval.reference``, else its data's own
    (`dit_core.data.default_reference`; None for data without one). The evaluate CLI rescores a
    checkpoint against the same (`dit_core.evaluate.checkpoint_eval`)."""
    return cfg.eval.reference or default_reference(cfg.data)


def run_metrics(cfg: TrainConfig, reference: str) -> tuple[str, ...]:
    """The metrics a run on ``cfg`` logs against ``reference``: ``eval.metrics``, else the domain
    metrics of a digits / photos reference (eval/fid_digits, eval/fid_photos, ...; no Inception),
    else Inception FID."""
    from ..evaluate.metrics import default_metrics, reference_domain

    if cfg.eval.metrics:
        return tuple(cfg.eval.metrics)
    return default_metrics(reference, inception=False) if reference_domain(reference) else ("fid",)


def check_evaluation(cfg: TrainConfig) -> None:
    """ConfigError, before training, for the sample-evaluation settings of a resolved ``cfg`` that
    `evaluate_samples` or `sample_grid` would fail on after training (sampler steps, guidance scale,
    batch, clipping, metrics, reference, Inception weights), told without loading a model. Nothing to
    check when evaluation is off or skipped (latents); the sampling settings also without a reference
    (the sample grid uses them)."""
    from ..configio import ConfigError
    from ..evaluate.features import (
        WEIGHTS_ENV,
        known_without_logits,
        no_logits_message,
        resolve_inception_weights,
    )
    from ..evaluate.metrics import METRICS, PR_K, check_metrics, check_reference_size
    from ..evaluate.reference import resolve_reference

    e, data = cfg.eval, cfg.data
    if not e.eval_every or data.name == "latents":
        return
    off = "; or set eval.eval_every=0 to train without sample metrics"
    if not (math.isfinite(guidance_scale(cfg)) and guidance_scale(cfg) >= 0):
        raise ConfigError(
            f"eval.cfg_scale: must be a finite number >= 0 (1 = no guidance), got {e.cfg_scale}{off}"
        )
    if e.clip_denoised and cfg.diffusion.objective == "flow":
        raise ConfigError(
            "eval.clip_denoised: flow sampling has no x0 estimate to clip; leave eval.clip_denoised unset "
            f"or false for diffusion.objective 'flow'{off}"
        )
    if e.steps < 1:
        raise ConfigError(
            f"eval.steps: must be >= 1 when eval.eval_every > 0 (sampler steps), got {e.steps}{off}"
        )
    if e.steps > cfg.diffusion.num_timesteps:  # flow too: its sampler refuses them as well
        raise ConfigError(
            f"eval.steps: {e.steps} sampler steps exceed the {cfg.diffusion.num_timesteps} trained timesteps "
            f"(diffusion.num_timesteps); use 1..{cfg.diffusion.num_timesteps}{off}"
        )
    if e.batch_size < 1:
        raise ConfigError(
            f"eval.batch_size: must be >= 1 when eval.eval_every > 0 (the sampling batch), got {e.batch_size}"
            f"{off}"
        )
    reference = run_reference(cfg)
    if reference is None:
        return
    names = run_metrics(cfg, reference)
    try:
        check_metrics(names, reference)
    except ValueError as err:
        raise ConfigError(f"eval.metrics: {err}{off}") from None
    if e.num_samples < PR_K + 1 and any(m.startswith(("precision", "recall")) for m in names):
        raise ConfigError(
            f"eval.num_samples: {e.num_samples} is too few for precision and recall ({PR_K} nearest "
            f"neighbours need {PR_K + 1} samples); raise eval.num_samples, or set eval.metrics without "
            f"them{off}"
        )
    try:
        source = resolve_reference(reference, cfg.model.input_size, channels=cfg.model.in_channels)
        check_reference_size(names, source)
    except ValueError as err:
        raise ConfigError(f"eval.reference: {err}{off}") from None
    if any(METRICS[m][0] == "inception" for m in names):
        try:
            weights = resolve_inception_weights()
        except ValueError as err:
            raise ConfigError(f"eval.metrics: {err}{off}") from None
        if "is" in names and known_without_logits(weights):
            how = f"set ${WEIGHTS_ENV} to NVIDIA's inception-2015-12-05.pt"
            raise ConfigError(f"eval.metrics: {no_logits_message(weights, how)}{off}")


def evaluate_samples(
    model: nn.Module, diffusion, cfg: TrainConfig, dit: DiTConfig, accelerator, feature_spaces=None, stop=None
) -> dict[str, float]:
    """Metrics of ``model``'s samples against ``eval.reference`` (None = the data's own,
    `dit_core.data.default_reference`); ``{}`` with a warning (from the main process) when there is no
    reference or the data are latents. ``feature_spaces``: a dict filled with ``{family: extractor
    name}`` on rank 0. ``stop``: asked before each sampling batch
    (`dit_core.evaluate.sampling.SamplingStopped` when it says so)."""
    e, data = cfg.eval, cfg.data
    reference = run_reference(cfg)
    say = log.warning if getattr(accelerator, "is_main_process", True) else log.debug  # alike on every rank
    if data.name == "latents":
        say("eval: latent runs are scored from checkpoints with a VAE (dit_core.evaluate); skipped")
        return {}
    if reference is None:
        say(
            "eval: no eval.reference set for %s data; sample metrics skipped: name the real images to score "
            "against (--reference FOLDER, e.g. the training folder; in a sweep --set eval.reference=FOLDER), "
            "or set --eval-every 0",
            data.name,
        )
        return {}
    names = run_metrics(cfg, reference)
    return evaluate_model(
        model, diffusion, sampling_settings(cfg), num_samples=e.num_samples, batch_size=e.batch_size,
        num_classes=dit.num_classes, image_size=dit.input_size, channels=dit.in_channels, reference=reference,
        metrics=names, accelerator=accelerator if accelerator.num_processes > 1 else None,
        feature_spaces=feature_spaces, stop=stop,
    )  # fmt: skip


@torch.no_grad()
def sample_grid(model: nn.Module, diffusion, cfg: TrainConfig, dit: DiTConfig, n: int, device) -> np.ndarray:
    """A uint8 ``(H, W, 3)`` grid of ``n`` samples, labels cycling through the classes."""
    from torchvision.utils import make_grid

    from ..diffusion import sample

    e = cfg.eval
    c, s = dit.in_channels, dit.input_size
    y = torch.arange(n, device=device) % dit.num_classes
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    imgs = sample(model, diffusion, (n, c, s, s), y, sampler=e.sampler, steps=e.steps,
                  cfg_scale=guidance_scale(cfg), generator=g, clip_denoised=clip_denoised(cfg))  # fmt: skip
    grid = make_grid(imgs.float().clamp(-1, 1).cpu(), nrow=int(math.ceil(math.sqrt(n))), padding=1)
    grid = ((grid + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return grid[..., :1].repeat(3, axis=2) if c == 1 else grid[..., :3]
