"""``evaluate_model``: sample with a model on every process, gather, score on rank 0, log to MLflow.

The trainer calls this every E steps and the CLI calls it once on a checkpoint's EMA weights.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .features import FeatureExtractor
from .metrics import DIGITS_METRICS, check_metrics, evaluate_samples
from .sampling import gather_samples, generate_images, shard, vae_decoder

log = logging.getLogger(__name__)


def evaluate_model(
    model: torch.nn.Module,
    diffusion,
    *,
    num_samples: int,
    batch_size: int,
    sampler: str = "ddim",
    steps: int = 50,
    cfg_scale: float = 1.5,
    seed: int = 0,
    num_classes: int,
    image_size: int,
    channels: int,
    reference: str = "digits",
    metrics: Sequence[str] = DIGITS_METRICS,
    accelerator=None,
    vae=None,
    eta: float = 0.0,
    inception_weights: str | None = None,
    extractors: Mapping[str, FeatureExtractor] | None = None,
    metric_device: str | torch.device | None = None,
    save_samples: str | None = None,
    clip_denoised: bool = False,
) -> dict[str, float]:
    """Sample ``num_samples`` images and score them against ``reference``: ``{metric: value}``.

    Each process samples its contiguous share of the global indices (``sampling.shard``); sample i
    is seeded by ``(seed, i)``, so the set does not depend on batch size or process count. Rank 0
    computes the metrics; the dict is broadcast so every rank returns it. ``image_size`` and
    ``channels`` describe the model's input (latent size/channels when ``vae`` is given; the
    latents are then decoded with ``vae.decode(z / 0.18215)``). ``save_samples``: rank 0 also
    writes the images to this ``.npz`` as ``arr_0`` (N, H, W, C) uint8 (ADM's format) and ``labels``.
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2 to fit a covariance, got {num_samples}")
    check_metrics(metrics, reference)
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    indices = shard(num_samples, rank, world)
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    local = generate_images(
        model, diffusion, indices,
        batch_size=batch_size, sampler=sampler, steps=steps, cfg_scale=cfg_scale, seed=seed,
        num_classes=num_classes, image_size=image_size, channels=channels, eta=eta,
        decode=vae_decoder(vae) if vae is not None else None, device=device, clip_denoised=clip_denoised,
    )  # fmt: skip
    images = gather_samples(local, num_samples, accelerator) if accelerator is not None else local
    result: dict[str, float] = {}
    if images is not None:
        if len(images) != num_samples:
            raise RuntimeError(f"gathered {len(images)} samples, expected {num_samples}")
        if save_samples:
            labels = np.arange(num_samples) % num_classes
            np.savez(save_samples, arr_0=images.permute(0, 2, 3, 1).numpy(), labels=labels)
        result = evaluate_samples(
            images, reference, metrics=metrics, extractors=extractors,
            inception_weights=inception_weights, device=metric_device or device,
        )  # fmt: skip
        log.info("eval (%d samples, %s-%d, cfg %.2f): %s", num_samples, sampler, steps, cfg_scale, result)
    if accelerator is not None and world > 1:
        from accelerate.utils import broadcast_object_list

        box = [result]
        broadcast_object_list(box, from_process=0)
        result = box[0]
    return result


def log_metrics(metrics: Mapping[str, float], step: int, run_id: str | None = None) -> None:
    """Log ``metrics`` to MLflow as ``eval/<name>`` at ``step`` (the active run, or ``run_id``)."""
    import mlflow

    if run_id is None and mlflow.active_run() is None:
        raise ValueError("no active MLflow run: start one or pass run_id")
    data = {f"eval/{k}": float(v) for k, v in metrics.items() if math.isfinite(float(v))}
    mlflow.log_metrics(data, step=step, run_id=run_id)
