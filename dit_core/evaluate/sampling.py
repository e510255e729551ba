"""Class-conditional sample sets that are the same for any batch size and process count, and
``evaluate_model``: sample on every process, gather, score on rank 0 (the trainer calls it every E
steps, the CLI once on a checkpoint's EMA weights).

Sample ``i`` (global index 0..N-1) has label ``i % num_classes`` (balanced classes), starting noise
drawn from a generator seeded by ``(seed, i)`` and, with a stochastic sampler (DDPM, DDIM eta>0), its
per-step noise from another seeded by ``(seed, i, 1)``: the set does not depend on how indices are
batched or spread over processes, for every sampler (up to float round-off between batch shapes).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write
from ..data.latents import SD_VAE_SCALE as LATENT_SCALE
from ..diffusion.validation import example_noise, example_seed
from ..tracking import EVAL_PREFIX, logged_steps
from .features import FeatureExtractor, to_uint8
from .metrics import DIGITS_METRICS, PR_K, check_metrics, check_reference_size, evaluate_samples
from .reference import ReferenceSource

log = logging.getLogger(__name__)


def vae_decoder(vae, scale: float = LATENT_SCALE) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Latents -> pixels in [-1, 1], ``vae.decode(z / scale)`` ``(N, 3, f h, f w)`` for the VAE's
    `dit_core.data.latents.vae_factor` f (8 for Stable Diffusion's); ``scale``: the one the latents
    were stored with (`dit_core.data.latents.latent_scale`); None: no VAE."""
    return (lambda z: vae.decode(z / scale).sample) if vae is not None else None


class SamplingStopped(Exception):
    """Raised between sampling batches when the ``stop`` callable of `generate_images` or
    `evaluate_model` returns True (a preemption signal during a run's evaluation)."""


class NonFiniteSamples(FloatingPointError):
    """Raised by `generate_images` when a sampling batch holds NaN or inf: a failure of the model (its
    outputs overflow, e.g. at a huge guidance scale), not of the arguments, so the CLIs exit 1 as for a
    non-finite training loss (a `FloatingPointError` too), not 2."""


@dataclass(frozen=True)
class SampleSettings:
    """How a sample set is drawn (a run's own: `dit_core.trainer.evaluation.sampling_settings`): the
    sampler and its steps, the guidance scale (1 = none), the seed of the samples' noise (the module
    doc), DDIM's eta, and whether each step's x0 estimate is clamped to [-1, 1]."""

    sampler: str = "ddim"
    steps: int = 50
    cfg_scale: float = 1.0
    seed: int = 0
    eta: float = 0.0
    clip_denoised: bool = False

    def overridden(self, given) -> SampleSettings:
        """These settings, but each one that ``given`` (a CLI's config) holds as other than None."""
        chosen = {f.name: getattr(given, f.name, None) for f in fields(self)}
        return replace(self, **{k: v for k, v in chosen.items() if v is not None})


def shard(num_samples: int, rank: int, world: int) -> range:
    """Rank ``rank``'s contiguous share of ``range(num_samples)`` (sizes differ by at most 1)."""
    base, extra = divmod(num_samples, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


@torch.no_grad()
def generate_images(
    model: torch.nn.Module,
    diffusion,
    indices: range,
    settings: SampleSettings,
    *,
    batch_size: int,
    num_classes: int,
    image_size: int,
    channels: int,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    labels: torch.Tensor | None = None,
    stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """uint8 images (len(indices), C, H, W) for the given global sample indices, drawn as ``settings``
    says, in ``batch_size`` batches.

    Sample i has class ``labels[i]`` (``labels``: (num_samples,) int64), by default i % num_classes.
    ``decode`` maps model outputs (latents) to pixels in [-1, 1]; None = the model works in pixels.
    ``progress``: a bar of the images sampled so far on stderr, cleared when done.
    ``stop``: called before each batch; `SamplingStopped` when it returns True.
    `NonFiniteSamples` when a batch's samples are not all finite.
    """
    from tqdm.auto import tqdm

    from dit_core.diffusion import sample

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    out, shape = [], (channels, image_size, image_size)
    with tqdm(total=len(indices), desc="sampling", unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(indices), batch_size):
            if stop is not None and stop():
                raise SamplingStopped(f"stopped after {start} of {len(indices)} samples")
            idx = indices[start : start + batch_size]
            ids = torch.tensor(idx)
            noise = example_noise(settings.seed, ids, shape).to(device)
            y = (ids % num_classes if labels is None else labels[idx.start : idx.stop]).to(device)
            # each sample's step noise (DDPM, DDIM eta > 0) from its own (seed, i): alike in any batch
            g = [torch.Generator(device=device).manual_seed(example_seed(settings.seed, i, 1)) for i in idx]
            x = sample(
                model, diffusion, noise.shape, y, sampler=settings.sampler, steps=settings.steps,
                cfg_scale=settings.cfg_scale, eta=settings.eta, generator=g, noise=noise,
                clip_denoised=settings.clip_denoised,
            )  # fmt: skip
            if not torch.isfinite(x).all():  # to_uint8 would make them black images that look like results
                raise NonFiniteSamples(
                    f"sampling gave non-finite values (NaN or inf) in samples {idx[0]}..{idx[-1]} at "
                    f"guidance scale {settings.cfg_scale:g}: the model's outputs overflow; lower the "
                    "guidance scale (--cfg-scale, eval.cfg_scale; 1 to 4 is usual), or use another checkpoint"
                )
            if decode is not None:
                x = decode(x)
                if not torch.isfinite(x).all():  # finite latents, but the decoder overflowed
                    raise NonFiniteSamples(
                        f"the VAE decoder gave non-finite pixels (NaN or inf) for samples "
                        f"{idx[0]}..{idx[-1]} from finite latents: check that --vae is the autoencoder "
                        "the latents were extracted with and that its weights load as finite float32"
                    )
            out.append(to_uint8(x).cpu())
            bar.update(len(idx))
    return torch.cat(out) if out else torch.empty((0, *shape), dtype=torch.uint8)


def gather_samples(local: torch.Tensor, num_samples: int, accelerator) -> torch.Tensor | None:
    """Rank 0: all ranks' shards (from ``shard``) concatenated in index order, (N, ...); others: None.
    One process (``accelerator`` None or of one process): ``local``."""
    world = accelerator.num_processes if accelerator is not None else 1
    if world == 1:
        return local
    sizes = [len(shard(num_samples, r, world)) for r in range(world)]
    pad, shape = max(sizes), local.shape[1:]
    if min(sizes) == 0:  # a rank with no share holds (0, *latent shape) where a VAE decodes: rank 0's
        from accelerate.utils import broadcast  # decoded shape (it has the first share) for every rank

        shape = broadcast(torch.tensor(shape, device=accelerator.device), from_process=0).tolist()
    buf = torch.zeros((pad, *shape), dtype=local.dtype)
    if len(local):
        buf[: len(local)] = local
    gathered = accelerator.gather(buf.to(accelerator.device)).cpu()  # (world * pad, ...)
    if not accelerator.is_main_process:
        return None
    return torch.cat([gathered[r * pad : r * pad + sizes[r]] for r in range(world)])


def evaluate_model(
    model: torch.nn.Module,
    diffusion,
    settings: SampleSettings,
    *,
    num_samples: int,
    batch_size: int,
    num_classes: int,
    image_size: int,
    channels: int,
    reference: str | ReferenceSource = "digits",
    metrics: Sequence[str] = DIGITS_METRICS,
    accelerator=None,
    vae=None,
    latent_scale: float = LATENT_SCALE,
    inception_weights: str | None = None,
    extractors: Mapping[str, FeatureExtractor] | None = None,
    save_samples: str | None = None,
    feature_spaces: dict[str, str] | None = None,
    progress: bool = False,
    stop: Callable[[], bool] | None = None,
) -> dict[str, float]:
    """Sample ``num_samples`` images as ``settings`` says and score them against ``reference``:
    ``{metric: value}``.

    Each process samples its share (`shard`; the sample set: the module doc); rank 0 computes the
    metrics, and the dict is broadcast so every rank returns it. ``image_size`` and
    ``channels`` describe the model's input (latent size/channels when ``vae`` is given; the
    latents are then decoded with ``vae.decode(z / latent_scale)``, the scale they were stored
    with). ``save_samples``: rank 0 also writes the images to this file (at exactly this path; an
    ``.npz``) as ``arr_0`` (N, H, W, C) uint8 (ADM's format) and ``labels``.
    ``feature_spaces``: filled on rank 0 with ``{family: extractor name}`` (see `evaluate_samples`).
    ``progress``: rank 0 shows a bar of its share's sampling on stderr.
    ``stop``: called before each sampling batch, the same number of times on every rank (it may be a
    collective); `SamplingStopped` when it returns True.
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2 to fit a covariance, got {num_samples}")
    check_metrics(metrics, reference.spec if isinstance(reference, ReferenceSource) else reference)
    if isinstance(reference, ReferenceSource):  # a name is resolved once the samples' size is known
        check_reference_size(metrics, reference)
    if save_samples:  # not over a device, a checkpoint, ...: atomic_write's rename would replace it
        from .checkpoint_eval import check_output_files

        check_output_files({"save_samples": save_samples})
    if num_samples < PR_K + 1 and any(m.startswith(("precision", "recall")) for m in metrics):
        raise ValueError(
            f"num_samples {num_samples}: precision and recall need at least k+1 = {PR_K + 1} samples "
            f"(k = {PR_K} nearest neighbours); give --num-samples >= {PR_K + 1}, or other --metrics"
        )
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    indices = shard(num_samples, rank, world)
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    local = generate_images(
        model, diffusion, indices, settings, batch_size=batch_size, num_classes=num_classes,
        image_size=image_size, channels=channels, decode=vae_decoder(vae, latent_scale), device=device,
        progress=progress and rank == 0, stop=stop,
    )  # fmt: skip
    if stop is not None and world > 1:  # a smaller share has a batch fewer: its calls made up here
        most = math.ceil(len(shard(num_samples, 0, world)) / batch_size)
        for _ in range(most - math.ceil(len(indices) / batch_size)):
            if stop():
                raise SamplingStopped("stopped after the last batch of this rank's share")
    images = gather_samples(local, num_samples, accelerator)
    result: dict[str, float] = {}
    if images is not None:
        if len(images) != num_samples:
            raise RuntimeError(f"gathered {len(images)} samples, expected {num_samples}")
        if save_samples:  # at exactly this path (np.savez would append ".npz"); never half-written
            arr_0, labels = images.permute(0, 2, 3, 1).numpy(), np.arange(num_samples) % num_classes
            atomic_write(Path(save_samples), lambda f: np.savez(f, arr_0=arr_0, labels=labels))
        result = evaluate_samples(
            images, reference, metrics=metrics, extractors=extractors,
            inception_weights=inception_weights, device=device,
            feature_spaces=feature_spaces,
        )  # fmt: skip
        how = f"{settings.sampler}-{settings.steps}, cfg {settings.cfg_scale:.2f}"
        log.info("eval (%d samples, %s): %s", num_samples, how, result)
    if world > 1:
        from accelerate.utils import broadcast_object_list

        box = [result]
        broadcast_object_list(box, from_process=0)
        result = box[0]
    return result


def log_metrics(metrics: Mapping[str, float], step: int, run_id: str | None = None) -> list[str]:
    """Log ``metrics`` to MLflow as ``eval/<name>`` at ``step`` (the active run, or ``run_id``). A
    key the run already holds at ``step`` is not logged again (the first value is kept, as the
    trainer's `dit_core.tracking.RunTracker` does); returns those keys."""
    import mlflow

    if run_id is None and mlflow.active_run() is None:
        raise ValueError("no active MLflow run: start one or pass run_id")
    run_id = run_id or mlflow.active_run().info.run_id
    data = {EVAL_PREFIX + k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
    steps = logged_steps(mlflow.MlflowClient(), run_id, data)
    held = [k for k in data if step in steps.get(k, ())]
    mlflow.log_metrics({k: v for k, v in data.items() if k not in held}, step=step, run_id=run_id)
    return held
