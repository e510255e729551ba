"""``evaluate_checkpoint``: the EMA weights of a training checkpoint -> metrics (what the CLI runs)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .metrics import check_metrics, default_metrics
from .pipeline import evaluate_model

log = logging.getLogger(__name__)


@dataclass
class CheckpointEvalConfig:
    """Settings of one checkpoint evaluation (the CLI's flags)."""

    checkpoint: str
    num_samples: int = 500
    batch_size: int = 100
    sampler: str = "ddim"
    steps: int = 50
    cfg_scale: float = 1.5
    seed: int = 0
    reference: str | None = None  # None: the data's own (digits; held-out crops for photos), else required
    metrics: Sequence[str] | None = None  # None: default_metrics(reference)
    inception_weights: str | None = None
    vae: str | None = None  # local diffusers AutoencoderKL folder, for latent runs
    use_ema: bool = True
    clip_denoised: bool | None = None  # None: as the run's in-training evaluation (its eval.clip_denoised)
    save_samples: str | None = None  # .npz (arr_0 NHWC uint8, labels) written by rank 0


def load_vae(path: str, device: torch.device):
    """diffusers ``AutoencoderKL`` from a local folder (no download)."""
    from diffusers import AutoencoderKL

    if not os.path.isdir(path):
        raise ValueError(f"--vae {path} is not a folder; give a local diffusers AutoencoderKL directory")
    return AutoencoderKL.from_pretrained(path, local_files_only=True).to(device).eval()


def evaluate_checkpoint(cfg: CheckpointEvalConfig, accelerator=None) -> tuple[dict[str, float], int, dict]:
    """(metrics, training step, checkpoint's flat config) for ``cfg.checkpoint`` (file or run folder)."""
    from dit_core.checkpoint import load_checkpoint, model_from_checkpoint
    from dit_core.data import default_reference
    from dit_core.trainer.evaluation import clip_denoised as run_clip_denoised

    device = accelerator.device if accelerator is not None else torch.device("cpu")
    ckpt = load_checkpoint(cfg.checkpoint, map_location="cpu")
    model, diffusion, tcfg = model_from_checkpoint(ckpt, cfg.use_ema, cfg.checkpoint)
    model = model.to(device)
    data = tcfg.data
    reference = cfg.reference or default_reference(data)
    if reference is None:
        raise ValueError(
            f"the run trained on {data.name!r} data: pass --reference FOLDER_OR_NPZ of real images"
        )
    metrics = tuple(cfg.metrics or default_metrics(reference))
    check_metrics(metrics, reference)
    vae = None
    if data.name == "latents":
        if not cfg.vae:
            raise ValueError("the run trained on VAE latents: pass --vae PATH (a local AutoencoderKL folder)")
        vae = load_vae(cfg.vae, device)
    dit = model.config
    cfg_scale = cfg.cfg_scale if dit.class_dropout_prob > 0 else 1.0
    if cfg_scale != cfg.cfg_scale:
        log.warning("model trained without label dropout: no unconditional branch, using cfg_scale 1")
    result = evaluate_model(
        model, diffusion, num_samples=cfg.num_samples, batch_size=cfg.batch_size, sampler=cfg.sampler,
        steps=cfg.steps, cfg_scale=cfg_scale, seed=cfg.seed, num_classes=dit.num_classes,
        image_size=dit.input_size, channels=dit.in_channels, reference=reference, metrics=metrics,
        accelerator=accelerator, vae=vae, inception_weights=cfg.inception_weights,
        save_samples=cfg.save_samples,
        clip_denoised=run_clip_denoised(tcfg) if cfg.clip_denoised is None else cfg.clip_denoised,
    )  # fmt: skip
    return result, int(ckpt["step"]), ckpt["config"]
