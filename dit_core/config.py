"""`TrainConfig`: the typed description of one training run, flattened with dots for MLflow.

A config is nested dataclasses (model, diffusion, data, optim, budget, eval, checkpoint, tracking)
plus a few top-level fields. ``cfg.to_flat_dict()`` gives ``{"model.depth": 12, "optim.lr": 1e-4,
"seed": 0, ...}``, logged whole as MLflow params; ``TrainConfig.from_flat_dict(params)`` rebuilds the
config from those params alone (string values are parsed by the field's type).

``resolve_config(cfg, data_info)`` fills what the user may leave open (the model shape from its name,
``input_size``/``in_channels``/``num_classes`` from the data, ``learn_sigma`` from the diffusion,
``max_steps`` from a FLOPs budget); a run logs and checkpoints the resolved config.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import DataConfig
from .diffusion import DiffusionConfig
from .spec import DiTConfig, model_config, official_name, resolve_budget_steps
from .tracking import DEFAULT_EXPERIMENT

__all__ = [
    "DERIVED_PARAMS",
    "PRECISIONS",
    "SCHEDULES",
    "BudgetConfig",
    "CheckpointConfig",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
    "TrackingConfig",
    "TrainConfig",
    "build_dataclass",
    "load_yaml_config",
    "resolve_budget_steps",
]

SCHEDULES = ("constant", "cosine", "constant_cooldown")
PRECISIONS = ("no", "bf16", "fp16")

#: Params a run logs besides the config fields; `from_flat_dict` skips them.
DERIVED_PARAMS = frozenset(
    {
        "model.params",
        "model.params_non_embedding",
        "model.forward_gflops",
        "model.train_flops_per_image",
        "git.commit",
        "world_size",
        "data.train_size",
    }
)


def _fail(where: str, msg: str) -> ValueError:
    return ValueError(f"{where}: {msg}")


@dataclass
class ModelConfig:
    """Which DiT to train: the fields of `dit_core.spec.DiTConfig`, some left open, plus ``name``.

    name: an official name (``"DiT-S/2"`` ... ``"DiT-XL/8"``) giving depth/width/heads/patch, or
        None for a custom shape. Explicit ``depth``/``hidden_size``/``num_heads``/``patch_size``
        override the name; after resolution ``name`` is the official name the shape matches, else None.
    input_size / in_channels / num_classes: None = taken from the data (latent side, channels, classes).
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
    class_dropout_prob: float = 0.1
    mlp_ratio: float = 4.0
    pos_embed: str = "sincos"
    block_type: str = "adaln_zero"
    frequency_embedding_size: int = 256

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.name is None and None in (self.depth, self.hidden_size, self.num_heads, self.patch_size):
            raise ValueError(
                "ModelConfig: a custom model (name=None) needs depth, hidden_size, num_heads and "
                "patch_size, e.g. model.depth=2 model.hidden_size=32 model.num_heads=2 model.patch_size=2"
            )

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
        out.to_dit_config()  # validates the shape (divisibility etc.)
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
    """AdamW and the learning-rate schedule (defaults: the DiT recipe, lr 1e-4 constant, wd 0, EMA 0.9999).

    schedule: "constant"; "cosine" (to ``min_lr_ratio * lr`` at the last step); "constant_cooldown"
        (constant, then linear decay to ``min_lr_ratio * lr`` over the last ``cooldown_frac`` of the
        steps). A linear warmup over ``warmup_steps`` comes first in every schedule.
    grad_clip: max global grad norm; 0 disables clipping.
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "constant"
    cooldown_frac: float = 0.2
    min_lr_ratio: float = 0.0
    grad_clip: float = 0.0
    ema_decay: float = 0.9999

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.schedule not in SCHEDULES:
            raise _fail("optim.schedule", f"{self.schedule!r} is unknown; choose one of {list(SCHEDULES)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise _fail("optim.lr", f"must be a finite number > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise _fail("optim.weight_decay", f"must be >= 0, got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise _fail(f"optim.{name}", f"must be in [0, 1), got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise _fail("optim.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.cooldown_frac <= 1:
            raise _fail("optim.cooldown_frac", f"must be in [0, 1], got {self.cooldown_frac}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise _fail("optim.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip < 0:
            raise _fail("optim.grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip}")
        if not 0 <= self.ema_decay < 1:
            raise _fail("optim.ema_decay", f"must be in [0, 1), got {self.ema_decay}")


@dataclass
class BudgetConfig:
    """When to stop: ``max_steps`` optimizer steps, or a training budget ``train_flops`` (true FLOPs,
    ``dit_core.spec.train_flops_per_image`` per image); with both, whichever comes first.

    global_batch_size: images per optimizer step over all processes (split evenly across them).
    """

    max_steps: int | None = None
    train_flops: float | None = None
    global_batch_size: int = 32

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.max_steps is not None and self.max_steps < 1:
            raise _fail("budget.max_steps", f"must be >= 1, got {self.max_steps}")
        if self.train_flops is not None and not (self.train_flops > 0 and math.isfinite(self.train_flops)):
            raise _fail("budget.train_flops", f"must be a finite number > 0, got {self.train_flops}")
        if self.global_batch_size < 1:
            raise _fail("budget.global_batch_size", f"must be >= 1, got {self.global_batch_size}")


@dataclass
class EvalConfig:
    """Validation loss and sample-based evaluation; an interval of 0 disables it. Either, when on,
    also runs at the last step, so every run ends with a validation loss and its metrics.

    val_every: steps between validation losses (common random numbers: fixed t and noise per
        validation example, ``dit_core.diffusion.validation_loss``), on ``val_examples`` images of
        the data's "val" split; ``val_ema`` also logs ``val/loss_ema``.
    eval_every: steps between ``dit_core.evaluate.evaluate_model`` calls on the EMA model
        (``num_samples`` samples, ``sampler`` with ``steps`` steps, ``cfg_scale``); metrics are logged
        as ``eval/<name>``. ``reference``/``metrics`` None = the digits reference and metrics for
        digits data (other data must name a reference). ``grid_images`` samples also go to a PNG grid
        artifact ``samples/step_XXXXXXX.png`` (0 = no grid).
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
    metrics: tuple[str, ...] | None = None
    grid_images: int = 16

    def __post_init__(self) -> None:
        coerce_fields(self)
        for name in ("val_every", "val_examples", "eval_every", "num_samples", "steps", "batch_size"):
            if getattr(self, name) < 0:
                raise _fail(f"eval.{name}", f"must be >= 0, got {getattr(self, name)}")
        if self.grid_images < 0:
            raise _fail("eval.grid_images", f"must be >= 0, got {self.grid_images}")


@dataclass
class CheckpointConfig:
    """Checkpoints under ``<out>/checkpoints``: every ``every`` steps (0 = only at the end and on
    preemption), keeping the newest ``keep_last`` (0 = keep all)."""

    every: int = 1000
    keep_last: int = 2

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.every < 0 or self.keep_last < 0:
            raise _fail("checkpoint", f"every and keep_last must be >= 0, got {self.every}, {self.keep_last}")


@dataclass
class TrackingConfig:
    """MLflow: ``uri`` None = ``MLFLOW_TRACKING_URI`` or MLflow's default (``sqlite:///./mlflow.db``).

    run_id: continue this existing run (a sweep may pre-create it); otherwise the run id saved in
        ``<out>/mlflow_run_id`` or in the checkpoint is continued, else a new run is created.
    sweep / grid_cell: logged as params and tags. tags: extra tags. parent_run_id: nest under a run.
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

    precision: "no" (fp32), "bf16" or "fp16" (fp16 needs CUDA). grad_checkpointing: recompute each
    block in the backward pass. compile: ``torch.compile`` the model. log_every: steps between
    ``train/loss`` (mean over the interval) and the other step metrics.
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
    compile: bool = False
    num_workers: int = 0
    log_every: int = 50

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.precision not in PRECISIONS:
            raise _fail("precision", f"{self.precision!r} is unknown; choose one of {list(PRECISIONS)}")
        if self.log_every < 1:
            raise _fail("log_every", f"must be >= 1, got {self.log_every}")
        if self.num_workers < 0:
            raise _fail("num_workers", f"must be >= 0, got {self.num_workers}")
        if self.seed < 0:
            raise _fail("seed", f"must be >= 0, got {self.seed}")

    # ------------------------------------------------------------------ flat dict (MLflow params)
    def to_flat_dict(self) -> dict[str, Any]:
        """``{"model.depth": 12, ..., "seed": 0}``: every field, dotted, with plain values
        (tuples become lists)."""
        out: dict[str, Any] = {}
        _flatten(self, "", out)
        return out

    @classmethod
    def from_flat_dict(cls, flat: dict[str, Any], *, strict: bool = True) -> TrainConfig:
        """Rebuild a config from ``to_flat_dict()`` output or from MLflow params (all strings).

        Derived params (`DERIVED_PARAMS`) are skipped; other unknown keys raise unless ``strict=False``.
        Missing keys keep their defaults.
        """
        return apply_flat(cls(), flat, strict=strict)

    def replace(self, **flat: Any) -> TrainConfig:
        """A copy with dotted fields replaced: ``cfg.replace(**{"optim.lr": 3e-4})``."""
        return apply_flat(self, flat)


# ---------------------------------------------------------------------- flattening helpers
def _flatten(obj: Any, prefix: str, out: dict[str, Any]) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(value):
            _flatten(value, key + ".", out)
        elif isinstance(value, tuple):
            out[key] = list(value)
        elif isinstance(value, dict):
            out[key] = dict(value)
        else:
            out[key] = value


def apply_flat(cfg: Any, flat: dict[str, Any], *, strict: bool = True, _prefix: str = "") -> Any:
    """Copy of nested dataclass ``cfg`` with dotted keys replaced (values parsed by field type)."""
    nested: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    names = {f.name: f for f in dataclasses.fields(cfg)}
    for key, value in flat.items():
        head, _, rest = key.partition(".")
        if head not in names:
            if key in DERIVED_PARAMS or not strict:
                continue
            raise ValueError(
                f"{type(cfg).__name__} has no field {head!r} (key {key!r}); valid: {sorted(names)}"
            )
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    kwargs = {}
    for head, sub in nested.items():
        child = getattr(cfg, head)
        if not dataclasses.is_dataclass(child):
            if all(f"{head}.{k}" in DERIVED_PARAMS for k in sub) or not strict:
                continue
            raise ValueError(f"{type(cfg).__name__}.{head} is not a nested config; cannot set {sorted(sub)}")
        prefix = head + "."
        sub = {k: v for k, v in sub.items() if prefix + k not in DERIVED_PARAMS}
        kwargs[head] = apply_flat(child, sub, strict=strict, _prefix=_prefix + prefix)
    hints = _hints(type(cfg))
    for head, value in direct.items():
        kwargs[head] = parse_value(value, hints[head], _prefix + head)
    if not kwargs:
        return cfg
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.init}
    values.update(kwargs)
    return build_dataclass(type(cfg), values, _prefix)


def build_dataclass(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """``cls(**values)`` with each value parsed by its annotated type first (works for any dataclass)."""
    hints = _hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; valid: {sorted(known)}")
    parsed = {
        k: parse_value(v, hints[k], f"{prefix}{k}" if prefix else f"{cls.__name__}.{k}")
        for k, v in values.items()
    }
    return cls(**parsed)


_HINT_CACHE: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINT_CACHE:
        _HINT_CACHE[cls] = typing.get_type_hints(cls)
    return _HINT_CACHE[cls]


def coerce_fields(obj: Any) -> None:
    """Parse string/number field values of dataclass ``obj`` in place by their annotated types
    (so YAML strings like ``"3e-4"`` and MLflow param strings become numbers)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            continue
        setattr(obj, f.name, parse_value(value, hints[f.name], f"{type(obj).__name__}.{f.name}"))


def parse_value(value: Any, hint: Any, where: str) -> Any:
    """Convert ``value`` (maybe a string from MLflow/CLI/YAML) to type ``hint``; ValueError if impossible."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        is_none = value is None or (isinstance(value, str) and value.strip() in ("None", "none", "null", ""))
        if is_none and type(None) in args:
            return None
        if len(options) == 1:
            return parse_value(value, options[0], where)
        return value
    if dataclasses.is_dataclass(hint) or hint is Any:
        return value
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
                return False
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if hint is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                v = float(value) if any(c in value for c in ".eE") else int(value)
                if isinstance(v, float) and not v.is_integer():
                    raise ValueError
                return int(v)
            raise ValueError
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str:
            return value if isinstance(value, str) else str(value)
        if origin in (tuple, list):
            if isinstance(value, str):
                value = json.loads(value) if value.strip().startswith("[") else value.split(",")
            inner = args[0] if args else Any
            items = [parse_value(v, inner, where) for v in value]
            return tuple(items) if origin is tuple else items
        if origin is dict:
            if isinstance(value, str):
                value = json.loads(value) if value.strip() else {}
            return {str(k): str(v) for k, v in dict(value).items()}
    except (ValueError, TypeError, json.JSONDecodeError):
        raise ValueError(f"{where}: cannot read {value!r} as {_type_name(hint)}") from None
    return value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint)


def load_yaml_config(path: str | Path, base: TrainConfig | None = None) -> TrainConfig:
    """A `TrainConfig` from a YAML file: nested mappings (``optim: {lr: 3e-4}``) or dotted keys."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {p} does not exist")
    raw = yaml.safe_load(p.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"config file {p} must hold a mapping of fields, got {type(raw).__name__}")
    flat: dict[str, Any] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and key not in ("tracking.tags",):
                walk(v, key + ".")
            else:
                flat[key] = v

    walk(raw, "")
    try:
        return apply_flat(base or TrainConfig(), flat)
    except ValueError as e:
        raise ValueError(f"config file {p}: {e}") from None
