"""`TrainConfig`: the typed description of one training run, flattened with dots for MLflow: logged
whole as params (``to_flat_dict``), rebuilt from those params alone (``from_flat_dict``). Each class's
docstring documents its fields; ``python -m dit_core.train --help`` shows that text.

``dit_core.train.resolve_config(cfg, dataset)`` fills what the user may leave open (the model shape
from its name, ``input_size``/``in_channels``/``num_classes`` from the data, ``learn_sigma`` from the
diffusion, ``max_steps`` from a FLOPs budget); a run logs and checkpoints the resolved config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .configio import (
    ConfigError,
    apply_flat,
    check_fields,
    coerce_fields,
    flatten,
    require,
    yaml_problem,
    yaml_to_flat,
)
from .data import DataConfig
from .diffusion import DiffusionConfig
from .diffusion.config import SAMPLERS, samplers_for
from .spec import DiTConfig, model_config, official_name
from .tracking import DEFAULT_EXPERIMENT, DERIVED_PARAMS

SCHEDULES = ("constant", "cosine", "constant_cooldown")
LR_SCALINGS = ("none", "inverse_width")
PRECISIONS = ("no", "bf16", "fp16")


@dataclass
class ModelConfig:
    """Which DiT to train: the fields of `dit_core.spec.DiTConfig`, some left open, plus ``name``.

    name: an official name (``"DiT-S/2"`` ... ``"DiT-XL/8"``) giving depth/width/heads/patch, or
        None for a custom shape. Explicit ``depth``/``hidden_size``/``num_heads``/``patch_size``
        override the name; after resolution ``name`` is the official name the shape matches, else None.
    depth / hidden_size / num_heads / patch_size: the shape (DiT blocks, width, attention heads, patch
        side); None = from ``name``.
    input_size / in_channels / num_classes: None = taken from the data (latent side, channels, classes).
    class_dropout_prob: the share of labels replaced by the null class in training (classifier-free
        guidance; the paper's 0.1).
    mlp_ratio: each block's MLP hidden width over ``hidden_size`` (the paper's 4).
    pos_embed: "sincos" (the paper's fixed 2-D table) or "rope" (rotary, relative; samples at sizes
        not trained on).
    block_type: "adaln_zero" (the paper's), "adaln", "cross_attention" or "in_context" (its Fig. 3).
    learn_sigma: None = what the diffusion needs (``DiffusionConfig.model_learns_sigma``).
    frequency_embedding_size: sinusoidal timestep features (the paper's 256; smaller for tiny models).
    """

    name: str | None = "DiT-S/2"
    depth: int | None = None
    hidden_size: int | None = None
    num_heads: int | None = None
    patch_size: int | None = None
    input_size: int | None = None
    in_channels: int | None = None
    num_classes: int | None = None
    learn_sigma: bool | None = None
    class_dropout_prob: float = DiTConfig.class_dropout_prob
    mlp_ratio: float = DiTConfig.mlp_ratio
    pos_embed: str = DiTConfig.pos_embed
    block_type: str = DiTConfig.block_type
    frequency_embedding_size: int = DiTConfig.frequency_embedding_size

    def __post_init__(self) -> None:
        coerce_fields(self)
        missing = [k for k in self._SHAPE if getattr(self, k) is None]
        require(
            self.name is not None or not missing,
            f"model.{missing[0] if missing else 'name'}",
            f"a custom model (model.name none) needs depth, hidden_size, num_heads and patch_size; "
            f"{', '.join(missing)} unset: give e.g. model.depth=2 model.hidden_size=32 model.num_heads=2 "
            "model.patch_size=2",
        )
        if self.name is not None:
            try:
                model_config(self.name)
            except ValueError as e:
                raise ConfigError(f"model.name: {e}") from None

    _SHAPE = ("depth", "hidden_size", "num_heads", "patch_size")

    def resolve(
        self, *, input_size: int, in_channels: int, num_classes: int, learn_sigma: bool
    ) -> ModelConfig:
        """A copy with every field set: the shape from ``name`` (explicit fields win), the data fields
        where None, and ``name`` = the official name of the resulting shape (None if custom)."""
        base = model_config(self.name) if self.name else None
        fill = dict(input_size=input_size, in_channels=in_channels, num_classes=num_classes)
        fill |= {"learn_sigma": learn_sigma, **{k: getattr(base, k) for k in self._SHAPE if base is not None}}
        out = dataclasses.replace(self, **{k: v for k, v in fill.items() if getattr(self, k) is None})
        out.name = official_name(out.depth, out.hidden_size, out.num_heads, out.patch_size)
        try:
            out.to_dit_config()  # validates the shape (divisibility etc.)
        except ConfigError as e:  # named by this config's keys: model.num_heads, not DiTConfig.num_heads
            raise ConfigError(str(e).replace("DiTConfig.", "model.")) from None
        return out

    def to_dit_config(self, grad_checkpointing: bool = False) -> DiTConfig:
        """The `DiTConfig` of a resolved model config."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "name"}
        missing = [k for k, v in values.items() if v is None]
        if missing:
            raise ValueError(f"ModelConfig is not resolved: {missing} unset (call resolve() with the data)")
        return DiTConfig(**values, grad_checkpointing=grad_checkpointing)


@dataclass
class OptimConfig:
    """AdamW, the learning-rate schedule and the lr rule across model sizes (defaults: the DiT
    recipe, lr 1e-4 constant, wd 0, EMA 0.9999).

    lr: peak learning rate at ``lr_base_width`` (the lr the optimizer uses is logged as the param
        ``optim.lr_effective``).
    lr_scaling: "none" (every model uses ``lr``) or "inverse_width" (peak lr = ``lr * lr_base_width
        / model.hidden_size``: muP's 1/width rule for hidden matrices, applied here to every parameter).
    lr_base_width: the width at which ``lr`` was tuned (used by "inverse_width").
    lr_flops_ref / lr_flops_exponent: the lr rule across budgets. A run whose planned training FLOPs
        C (steps x global batch x FLOPs per image) exceed ``lr_flops_ref`` gets its peak lr times
        ``(C / lr_flops_ref) ** -lr_flops_exponent``; at or below it, and with ``lr_flops_ref`` 0
        (off), the peak is unchanged. Longer runs want lower peaks (docs/study.md, session 8).
    weight_decay: AdamW's decoupled weight decay.
    beta1 / beta2 / eps: AdamW's moment decays and epsilon.
    warmup_steps: linear warmup length in steps, and the floor of the scaled warmup.
    warmup_frac: warmup as a fraction of the run's steps: warmup = max(warmup_steps,
        round(warmup_frac * steps)), at most steps - 2 (so a short run still ends at its floor).
    schedule: after warmup, "constant"; "cosine" (to ``min_lr_ratio * lr`` at the run's last step);
        "constant_cooldown" (constant, then linear to ``min_lr_ratio * lr`` over the last
        ``cooldown_frac`` of the steps). Both end exactly at the run's last step.
    cooldown_frac: fraction of the steps in the cooldown of "constant_cooldown".
    min_lr_ratio: the lr at the last step, as a fraction of the peak (cosine, constant_cooldown).
    grad_clip: max global grad norm; 0 disables clipping.
    ema_decay: decay of the EMA weights used for sampling.
    """

    lr: float = 1e-4
    lr_scaling: str = "none"
    lr_base_width: int = 384
    lr_flops_ref: float = 0.0
    lr_flops_exponent: float = 0.0
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    warmup_steps: int = 0
    warmup_frac: float = 0.0
    schedule: str = "constant"
    cooldown_frac: float = 0.2
    min_lr_ratio: float = 0.0
    grad_clip: float = 0.0
    ema_decay: float = 0.9999

    def __post_init__(self) -> None:
        coerce_fields(self)
        bounds = {"lr": "a finite number > 0", "lr_base_width": ">= 1", "weight_decay": ">= 0"}
        bounds |= {"lr_flops_ref": ">= 0", "lr_flops_exponent": ">= 0"}
        bounds |= {"warmup_steps": ">= 0", **dict.fromkeys(("beta1", "beta2", "ema_decay"), "in [0, 1)")}
        bounds |= {k: "in [0, 1]" for k in ("warmup_frac", "cooldown_frac", "min_lr_ratio")}
        check_fields(self, "optim.", {"schedule": SCHEDULES, "lr_scaling": LR_SCALINGS, **bounds})
        require(self.grad_clip >= 0, "optim.grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip}")


@dataclass
class BudgetConfig:
    """When to stop; given both ``max_steps`` and ``train_flops``, whichever comes first.

    max_steps: stop after this many optimizer steps.
    train_flops: stop at this training budget in true FLOPs (``dit_core.spec.train_flops_per_image``
        per image).
    global_batch_size: images per optimizer step over all processes (split evenly across them).
    """

    max_steps: int | None = None
    train_flops: float | None = None
    global_batch_size: int = 32

    def __post_init__(self) -> None:
        coerce_fields(self)
        rules = {"max_steps": ">= 1", "train_flops": "a finite number > 0", "global_batch_size": ">= 1"}
        check_fields(self, "budget.", rules)


@dataclass
class EvalConfig:
    """Validation loss and sample-based evaluation; an interval of 0 disables it. Either, when on,
    also runs at the last step, so every run ends with a validation loss and its metrics.

    val_every: steps between validation losses (common random numbers: fixed t and noise per
        validation example, ``dit_core.diffusion.validation_loss``); 0 = off.
    val_examples: images of the data's "val" split used for the validation loss.
    val_seed: seed of the validation draws.
    val_ema: also log ``val/loss_ema`` of the EMA model.
    eval_every: steps between ``dit_core.evaluate.evaluate_model`` calls on the EMA model (metrics
        logged as ``eval/<name>``); 0 = off.
    num_samples: samples per evaluation.
    sampler: ddim | ddpm | dpmpp_2m | euler | heun (dpmpp_2m: DPM-Solver++(2M), second order).
    steps: sampler steps.
    cfg_scale: classifier-free guidance scale of the samples.
    batch_size: batch of validation and sampling.
    clip_denoised: clamp the sampler's x0 estimate to [-1, 1] at every step; None = on for pixel-space
        data, off for latents (whose range is not [-1, 1]) and for diffusion.objective "flow" (which
        does not clip).
    reference: the sample metrics' reference (see ``metrics``); None = the data's own (``digits``;
        held-out crops for ``photos``); other data must name one.
    metrics: metric names; None = the domain metrics of a digits / photos reference (fid_digits,
        is_digits, precision_digits, recall_digits or the *_photos ones; no Inception), else
        Inception fid alone.
    grid_images: samples also saved as a PNG grid artifact ``samples/step_XXXXXXX.png`` (0 = none).
    """

    val_every: int = 0
    val_examples: int = 256
    val_seed: int = 0
    val_ema: bool = False
    eval_every: int = 0
    num_samples: int = 500
    sampler: str = "ddim"
    steps: int = 50
    cfg_scale: float = 1.5
    batch_size: int = 100
    reference: str | None = None
    clip_denoised: bool | None = None
    metrics: tuple[str, ...] | None = None
    grid_images: int = 16

    def __post_init__(self) -> None:
        coerce_fields(self)
        names = ("val_every", "val_examples", "eval_every", "num_samples", "steps", "batch_size")
        check_fields(self, "eval.", dict.fromkeys((*names, "grid_images"), ">= 0") | {"sampler": SAMPLERS})
        require(
            self.eval_every == 0 or self.num_samples >= 2,
            "eval.num_samples",
            f"must be >= 2 when eval.eval_every > 0 (FID fits a covariance), got {self.num_samples}; "
            "set eval.eval_every=0 to turn sample metrics off",
        )


@dataclass
class CheckpointConfig:
    """Checkpoints under ``<out>/checkpoints``.

    every: steps between checkpoints (0 = only at the end and on preemption).
    keep_last: how many of the newest checkpoints to keep (0 = all).
    """

    every: int = 1000
    keep_last: int = 2

    def __post_init__(self) -> None:
        coerce_fields(self)
        require(self.every >= 0, "checkpoint.every", f"must be >= 0 (0 = end only), got {self.every}")
        require(self.keep_last >= 0, "checkpoint.keep_last", f"must be >= 0 (0 = all), got {self.keep_last}")


@dataclass
class TrackingConfig:
    """MLflow.

    enabled: log to MLflow.
    uri: tracking URI; None = ``MLFLOW_TRACKING_URI`` or MLflow's default (``sqlite:///./mlflow.db``).
    experiment: MLflow experiment name.
    run_name: MLflow run name.
    run_id: continue this existing run (a sweep may pre-create it); otherwise the run id saved in
        ``<out>/mlflow_run_id`` or in the checkpoint is continued, else a new run is created (also for
        a resume from another run folder's checkpoint, a fork: `dit_core.trainer.resume`).
    parent_run_id: nest the run under this one.
    sweep / grid_cell: sweep and cell ids, logged as params and tags.
    tags: extra MLflow tags (JSON mapping; or ``--tag KEY=VALUE``).
    """

    enabled: bool = True
    uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    run_name: str | None = None
    run_id: str | None = None
    parent_run_id: str | None = None
    sweep: str | None = None
    grid_cell: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        coerce_fields(self)


@dataclass
class TrainConfig:
    """One training run. ``out`` holds checkpoints and the MLflow run id, and identifies the run:
    ``resume="auto"`` continues whatever ``out`` holds.

    out: run folder: checkpoints, config.json, mlflow_run_id.
    seed: seed of the weights, the data order and the per-step noise.
    precision: "no" (fp32), "bf16" or "fp16" (fp16 needs CUDA).
    grad_checkpointing: recompute each block in the backward pass (activation checkpointing).
    compile: ``torch.compile`` the model: true, false, or unset (None) = auto: on CPU only when the
        run is long enough to pay for the compile (`dit_core.fast_path`), on CUDA for runs of at least
        5,000 steps.
    num_workers: DataLoader worker processes.
    log_every: steps between ``train/loss`` (mean over the interval) and the other step metrics.
    dist_timeout_s: with several processes, the seconds a rank waits for the others in one collective
        before it stops the run (a rank stuck in a deadlock or in I/O); 1800 = torch's default for
        gloo, long enough for what one rank does alone (rank 0's checkpoint write, a FID reference's
        statistics on first use). Set by the first trainer (or CLI) of a process.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    out: str = "runs/train"
    seed: int = 0
    precision: str = "no"
    grad_checkpointing: bool = False
    compile: bool | None = None
    num_workers: int = 0
    log_every: int = 50
    dist_timeout_s: float = 1800.0

    def __post_init__(self) -> None:
        coerce_fields(self)
        rules = {"precision": PRECISIONS, "log_every": ">= 1", "num_workers": ">= 0", "seed": ">= 0",
                 "dist_timeout_s": "a finite number > 0"}  # fmt: skip
        check_fields(self, "", rules)
        valid = samplers_for(self.diffusion.objective)
        require(
            self.eval.sampler in valid,
            "eval.sampler",
            f"{self.eval.sampler!r} does not apply to diffusion.objective {self.diffusion.objective!r}; "
            f"valid choices: {list(valid)}",
        )

    def to_flat_dict(self) -> dict[str, Any]:
        """``{"model.depth": 12, ..., "seed": 0}``: every field, dotted (tuples become lists)."""
        return flatten(self)

    @classmethod
    def from_flat_dict(cls, flat: dict[str, Any]) -> TrainConfig:
        """Rebuild a config from ``to_flat_dict()`` output or from MLflow params (all strings).

        Derived params (`DERIVED_PARAMS`) are skipped; other unknown keys raise. Missing keys keep
        their defaults.
        """
        return apply_flat(cls(), flat, skip=DERIVED_PARAMS)

    def replace(self, **flat: Any) -> TrainConfig:
        """A copy with dotted fields replaced: ``cfg.replace(**{"optim.lr": 3e-4})``."""
        return apply_flat(self, flat)


def read_yaml_config(path: str | Path) -> dict[str, Any]:
    """The dotted fields a YAML file sets (nested mappings ``optim: {lr: 3e-4}`` or dotted keys),
    not yet parsed or checked; ConfigError naming the file if it is missing or not a mapping."""
    import yaml

    p = Path(path)
    require(not p.is_dir(), "--config", f"{p} is a folder; give a YAML file of fields")
    require(p.is_file(), "--config", f"the file {p} does not exist; give a YAML file of fields")
    try:
        data = yaml.safe_load(p.read_text())
    except UnicodeDecodeError:
        raise ConfigError(f"--config: {p}: not a text file, so not a YAML file of fields; give one") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config: {p}: not valid YAML ({yaml_problem(e)}); fix the file") from None
    return yaml_to_flat(TrainConfig, data or {}, f"config file {p}")
