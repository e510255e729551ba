"""A training checkpoint's EMA weights -> metrics (what the CLI runs): `prepare_checkpoint_eval` checks
every input, then `score_prepared` samples and scores."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch

from ..configio import ConfigError
from ..data.latents import SD_VAE_SCALE as LATENT_SCALE
from ..data.latents import latent_scale, vae_factor
from ..device import resolve_device
from ..extract_latents import load_vae as load_autoencoder
from ..trainer.evaluation import check_guidance, check_steps, run_metrics, run_reference, sampling_settings
from ..trainer.resume import config_changes
from .features import known_without_logits, no_logits_message, resolve_inception_weights
from .metrics import METRICS, check_metrics, check_reference_size, default_metrics
from .reference import ReferenceSource, resolve_reference
from .sampling import SampleSettings, evaluate_model

log = logging.getLogger(__name__)


@dataclass
class CheckpointEvalConfig:
    """Settings of one checkpoint evaluation (the CLI's flags).

    A sampling setting left at None is the run's own (its ``eval.*`` and ``seed``), so by default
    the result is comparable with the run's logged ``eval/*`` metrics; give a value to depart from it.
    """

    checkpoint: str
    num_samples: int | None = None  # None: the run's eval.num_samples
    batch_size: int = 100
    sampler: str | None = None  # None: the run's eval.sampler
    steps: int | None = None  # None: the run's eval.steps
    cfg_scale: float | None = None  # None: the run's guidance (eval.cfg_scale; 1 without label dropout)
    seed: int | None = None  # None: the run's seed (what its in-training evaluation samples with)
    reference: str | None = None  # None: the data's own (digits; held-out crops for photos), else required
    metrics: Sequence[str] | None = None  # None: the run's metrics on its own reference, else default_metrics
    inception_weights: str | None = None
    vae: str | None = None  # local diffusers AutoencoderKL folder, for latent runs
    use_ema: bool = True
    clip_denoised: bool | None = None  # None: as the run's in-training evaluation (its eval.clip_denoised)
    save_samples: str | None = None  # .npz (arr_0 NHWC uint8, labels) written by rank 0
    log_to_run: bool = False  # the result goes into the run's eval/* metrics: sampling as the run's own
    run_id: str | None = None  # the MLflow run it goes into: must be the checkpoint's own, if it names one
    progress: bool = False  # a sampling progress bar on stderr (the CLI: when stderr is a terminal)
    device: str = "auto"  # one process: auto (cuda if available) | cpu | cuda[:N]; else the accelerator's


def protocol_departures(cfg: CheckpointEvalConfig, run_cfg) -> list[str]:
    """The settings of ``cfg`` that depart from how the run ``run_cfg`` (its TrainConfig) scored
    itself, as "name X (run: Y)"; the seed may differ (another draw of the same protocol)."""
    e = run_cfg.eval
    reference = run_reference(run_cfg)
    run = asdict(sampling_settings(run_cfg)) | {"num_samples": e.num_samples, "reference": reference}
    keys = ("num_samples", "sampler", "steps", "cfg_scale", "reference", "clip_denoised")
    off = [f"{k} {getattr(cfg, k)} (run: {run[k]})" for k in keys if getattr(cfg, k) not in (None, run[k])]
    off += [f"metrics {','.join(cfg.metrics)} (run: its own)"] if cfg.metrics else []
    return off + (["--raw-weights (run: the EMA weights)"] if not cfg.use_ema else [])


def chosen_metrics(cfg: CheckpointEvalConfig, run_cfg, reference: str) -> tuple[str, ...]:
    """``cfg.metrics``; else the run's own (``run_cfg``'s) on its own reference; else, for a reference
    given, that reference's default metrics."""
    if cfg.metrics:
        return tuple(cfg.metrics)
    return default_metrics(reference) if cfg.reference else run_metrics(run_cfg, reference)


def load_vae(path: str, device: torch.device, in_channels: int | None = None, checkpoint: str = ""):
    """diffusers ``AutoencoderKL`` from a local folder (no download): one written by its
    ``save_pretrained``, or a pipeline folder holding it in ``vae/``. ConfigError, before any sampling,
    when its latents have other channels than ``in_channels`` (the model of ``checkpoint`` was trained
    on): another VAE than the latents were extracted with, which would fail in the decoder."""
    if not os.path.isdir(path):
        raise ValueError(f"--vae {path} is not a folder; give a local diffusers AutoencoderKL directory")
    if os.path.isfile(os.path.join(path, "config.json")):
        subfolder = None
    elif os.path.isfile(os.path.join(path, "vae", "config.json")):  # a pipeline folder
        subfolder = "vae"
    else:  # there is no --vae-subfolder here, unlike extract_latents
        raise ValueError(
            f"--vae {path}: no config.json there nor in its vae/ subfolder; give the folder written by "
            "AutoencoderKL.save_pretrained (the one the latents were extracted with), or a pipeline folder "
            "holding it in vae/"
        )
    vae = load_autoencoder(path, subfolder).to(device).eval()
    have = getattr(vae.config, "latent_channels", None)
    if in_channels is not None and have is not None and int(have) != int(in_channels):
        raise ConfigError(
            f"vae: --vae {path} encodes {have} latent channels, but the model of checkpoint {checkpoint} "
            f"was trained on {in_channels} (model.in_channels); give the VAE its latents were extracted with "
            "(the 'vae' of the latents folder's manifest.json)"
        )
    return vae


def check_vae(cfg, ckpt: dict) -> None:
    """ConfigError, before the model is built, when ``cfg.vae`` is given for a checkpoint of a run
    trained on pixels (the VAE would be ignored: its samples are images already), or missing for a
    run trained on VAE latents (its samples are latents to decode). ``cfg``: any config with ``vae``
    and ``checkpoint`` (`CheckpointEvalConfig`, `dit_core.sample.SampleConfig`)."""
    flat = ckpt.get("config")
    data = flat.get("data.name") if isinstance(flat, dict) else None
    if not cfg.vae and data == "latents":
        raise ConfigError(
            f"vae: checkpoint {cfg.checkpoint} is of a run trained on VAE latents, whose samples are "
            "latents to decode: pass --vae PATH (a local AutoencoderKL folder, the one the latents "
            "were extracted with)"
        )
    if cfg.vae and data is not None and data != "latents":
        raise ConfigError(
            f"vae: --vae {cfg.vae} was given, but checkpoint {cfg.checkpoint} is of a run trained on "
            f"{data!r} pixel data, whose samples need no decoding; drop --vae (it is for runs trained on "
            "VAE latents, data.name 'latents')"
        )


def check_output_files(outputs: Mapping[str, str | None], inputs: Sequence[str | None] = ()) -> None:
    """ConfigError, before any sampling, for an output file (``{flag: path}``; None: not asked for) that
    would be written over something that must not be lost or that cannot take it: an empty name, a
    folder, a device or other non-regular file (``/dev/null``: the rename into place would replace it),
    a ``.pt`` name (a checkpoint's), one of ``inputs`` (the checkpoint, the reference), or the path of
    another output."""
    given = {os.path.realpath(p): p for p in inputs if p and os.path.isfile(p)}
    seen: dict[str, str] = {}
    for flag, path in outputs.items():
        if path is None:
            continue
        if not path.strip() or path.endswith(os.sep):
            raise ConfigError(f"{flag} {path!r}: give a file name")
        if os.path.isdir(path):
            raise ConfigError(f"{flag} {path} is a folder; give a file name")
        if os.path.exists(path) and not os.path.isfile(path):
            raise ConfigError(
                f"{flag} {path} exists and is not a regular file (a device, FIFO or socket), which writing "
                "the result would replace; give the path of a file"
            )
        real = os.path.realpath(path)
        if real in given:
            raise ConfigError(
                f"{flag} {path} is the input {given[real]}, which writing the result would destroy; give "
                "another path"
            )
        if real.endswith(".pt"):
            raise ConfigError(
                f"{flag} {path}: a .pt name is a checkpoint's (were --checkpoint and {flag} swapped?); give "
                "the result another name"
            )
        if real in seen:
            raise ConfigError(f"{flag} {path} is the {seen[real]} path too; give it another name")
        seen[real] = flag


def check_run_config(run_id: str, saved_flat: Mapping[str, object], checkpoint: str) -> None:
    """ValueError when MLflow run ``run_id`` was trained with other settings than the checkpoint's
    ``saved_flat`` config (the trainer's rule for a resume, `dit_core.trainer.resume.config_changes`):
    its scores would be logged as that run's. A run without training params is not compared."""
    from mlflow import MlflowClient

    params = MlflowClient().get_run(run_id).data.params
    shared = [k for k in saved_flat if k in params]
    diff = config_changes({k: params[k] for k in shared}, {k: saved_flat[k] for k in shared})
    if diff:
        raise ValueError(
            f"--mlflow-run-id {run_id}: checkpoint {checkpoint} names no MLflow run, and its config is not "
            f"that run's ({'; '.join(diff[:8])}), so its scores would be read as another model's; pass the "
            "checkpoint's own run, or drop --mlflow-run-id and keep the result with --output"
        )


@dataclass
class PreparedEval:
    """A checkpoint evaluation with every input checked (`prepare_checkpoint_eval`), ready to sample."""

    model: torch.nn.Module
    diffusion: object
    settings: SampleSettings
    num_samples: int
    reference: str | ReferenceSource
    metrics: tuple[str, ...]
    vae: object | None
    step: int  # the checkpoint's training step
    latent_scale: float = LATENT_SCALE  # what the run's latents were stored with (decoding divides by it)


def prepare_checkpoint_eval(cfg: CheckpointEvalConfig, accelerator=None) -> PreparedEval:
    """Load ``cfg.checkpoint`` (file or run folder) and check every input before any sampling (no
    collective: each process on its own); ValueError on bad input."""
    from dit_core.checkpoint import load_checkpoint, model_from_checkpoint

    device = accelerator.device if accelerator is not None else resolve_device(cfg.device)
    ckpt = load_checkpoint(cfg.checkpoint, map_location="cpu")
    check_vae(cfg, ckpt)
    own = ckpt.get("mlflow_run_id") or None
    if cfg.run_id and own and cfg.run_id != own:
        raise ValueError(
            f"--mlflow-run-id {cfg.run_id}: checkpoint {cfg.checkpoint} belongs to MLflow run {own}, and "
            "its scores would be read as that other run's. Pass --mlflow-run-id "
            f"{own}, or drop --mlflow-run-id and keep the result with --output"
        )
    if cfg.run_id and own is None:  # a checkpoint that names no run (trained without MLflow)
        check_run_config(cfg.run_id, ckpt.get("config") or {}, cfg.checkpoint)
    model, diffusion, tcfg = model_from_checkpoint(ckpt, cfg.use_ema, cfg.checkpoint)
    model = model.to(device)
    data = tcfg.data
    if cfg.log_to_run and run_reference(tcfg) is None:  # not "drop --reference": it cannot be dropped
        raise ValueError(
            f"--mlflow-run-id: the run trained on {data.name!r} data without eval.reference, so it scored "
            "no samples and has no protocol its eval/* metrics could follow; drop --mlflow-run-id and keep "
            "the result with --output (and --reference FOLDER_OR_NPZ), or train the run with --reference"
        )
    reference = cfg.reference or run_reference(tcfg)
    if reference is None:
        raise ValueError(
            f"the run trained on {data.name!r} data: pass --reference FOLDER_OR_NPZ of real images"
        )
    metrics = chosen_metrics(cfg, tcfg, reference)
    check_metrics(metrics, reference)
    if any(METRICS[m][0] == "inception" for m in metrics):  # weights that exist, with logits for `is`
        weights = resolve_inception_weights(cfg.inception_weights)
        if "is" in metrics and known_without_logits(weights):
            raise ValueError(no_logits_message(weights))
    vae, dit = None, model.config
    if data.name == "latents":  # check_vae made sure --vae was given
        vae = load_vae(cfg.vae, device, dit.in_channels, cfg.checkpoint)
    factor = vae_factor(vae)
    source: str | ReferenceSource = reference  # resolved here where it can be: a folder listed once
    if vae is None or factor:  # a reference it cannot score (pixels: the VAE's `factor` x latents)
        size = dit.input_size * (factor or 1)
        source = resolve_reference(reference, size, channels=3 if factor else dit.in_channels)  # VAE: RGB
        check_reference_size(metrics, source)
    settings = sampling_settings(tcfg).overridden(cfg)
    if cfg.log_to_run and (off := protocol_departures(cfg, tcfg)):
        raise ValueError(
            "--mlflow-run-id logs into the run's eval/* metrics, which the analysis compares across "
            "runs only under one protocol, and these settings depart from the run's own: "
            f"{'; '.join(off)}. Drop them (the seed may differ), or drop --mlflow-run-id and keep the "
            "result with --output"
        )
    check_guidance(settings.cfg_scale, dit)
    check_steps(settings.steps, diffusion.num_timesteps, given=cfg.steps is not None)
    num_samples = cfg.num_samples if cfg.num_samples is not None else tcfg.eval.num_samples
    return PreparedEval(
        model, diffusion, settings, num_samples, source, tuple(metrics), vae, int(ckpt["step"]),
        latent_scale(data, ckpt) if vae is not None else LATENT_SCALE,
    )  # fmt: skip


def score_prepared(
    p: PreparedEval, cfg: CheckpointEvalConfig, accelerator=None, feature_spaces: dict[str, str] | None = None
) -> dict[str, float]:
    """Sample ``p``'s model (on every process) and score it (`evaluate_model`)."""
    dit = p.model.config
    return evaluate_model(
        p.model, p.diffusion, p.settings, num_samples=p.num_samples, batch_size=cfg.batch_size,
        num_classes=dit.num_classes, image_size=dit.input_size, channels=dit.in_channels,
        reference=p.reference, metrics=p.metrics, accelerator=accelerator, vae=p.vae,
        latent_scale=p.latent_scale, inception_weights=cfg.inception_weights, save_samples=cfg.save_samples,
        feature_spaces=feature_spaces, progress=cfg.progress,
    )  # fmt: skip
