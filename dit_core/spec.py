"""The DiT specification without torch: shapes, `DiTConfig`, analytic counts, budget -> steps.

The one place for what the model (`dit_core.models`), the sweeps and the analysis all need to agree
on. Importing it does not import torch, so the sweep's dry run and the analysis stay light.

**Counts** (the paper's convention, docs/models.md "Convention"): one multiply-add = 1 flop, forward
pass, batch 1, VAE excluded; training compute is true FLOPs, `train_flops_per_image = 6 x forward_macs`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .configio import check_fields, check_keys, require

#: Table 1 of the DiT paper: family -> (depth, hidden_size, num_heads).
FAMILIES: dict[str, tuple[int, int, int]] = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}
PATCH_SIZES = (2, 4, 8)
POS_EMBEDS = ("sincos", "rope")
#: The paper's block-design ablation (Sec. 3.2, Fig. 5); `dit_core.blocks` implements each.
BLOCK_TYPES = ("adaln_zero", "adaln", "cross_attention", "in_context")
NUM_COND_TOKENS = 2  # t and y tokens (cross-attention context / in-context prefix)
#: The datasets the trainer reads (`dit_core.data`), defined here so that the sweeps check them without torch.
DATASET_NAMES = ("digits", "imagefolder", "latents", "photos")
FOLDER_DATASETS = ("imagefolder", "latents")  # read data.root; the others are bundled
# The most images one run may see: the data streams index samples (and the step draws their steps) in
# int64, so a run of more than 2^63 - 1 images, at any speed ~10^11 GPU-years, is a typo in a budget.
MAX_IMAGES = 2**63 - 1


@dataclass
class DiTConfig:
    """Everything that defines a DiT (defaults: DiT-XL/2 on 32x32x4 latents, i.e. 256 px images).

    frequency_embedding_size: sinusoidal timestep features fed to the timestep MLP (the paper's
    256); a smaller value shrinks the `F x D` first layer, which dominates models below ~50K
    parameters. `grad_checkpointing` changes memory/compute, not the model, so it is excluded from
    equality.
    """

    depth: int = 28
    hidden_size: int = 1152
    num_heads: int = 16
    patch_size: int = 2
    input_size: int = 32
    in_channels: int = 4
    num_classes: int = 1000
    learn_sigma: bool = True
    class_dropout_prob: float = 0.1
    mlp_ratio: float = 4.0
    pos_embed: str = "sincos"
    block_type: str = "adaln_zero"
    frequency_embedding_size: int = 256
    grad_checkpointing: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` (a `ValueError`) naming the offending field and a fix."""
        sizes = ("depth", "hidden_size", "num_heads", "patch_size", "input_size", "in_channels")
        sizes += ("num_classes",)
        rules = {"class_dropout_prob": "in [0, 1)", "mlp_ratio": "> 0", **dict.fromkeys(sizes, ">= 1")}
        for name in (*sizes, "frequency_embedding_size"):  # a float would count 2.5 blocks
            v = getattr(self, name)
            whole = isinstance(v, numbers.Integral) and not isinstance(v, bool)
            require(whole, f"DiTConfig.{name}", f"must be a whole number, got {v!r}")
        check_fields(self, "DiTConfig.", {**rules, "pos_embed": POS_EMBEDS, "block_type": BLOCK_TYPES})
        f, d, heads = self.frequency_embedding_size, self.hidden_size, self.num_heads
        require(f >= 2, "DiTConfig.frequency_embedding_size", f"must be >= 2 (one sin-cos pair), got {f}")
        require(
            self.mlp_hidden >= 1,
            "DiTConfig.mlp_ratio",
            f"hidden_size={d} x mlp_ratio={self.mlp_ratio} leaves the MLP no hidden unit; raise it (the "
            "paper's 4)",
        )
        require(
            d % heads == 0,
            "DiTConfig.num_heads",
            f"hidden_size={d} is not divisible by num_heads={heads}; pick a width (DiTConfig.hidden_size) "
            "that is a multiple of the head count",
        )
        require(
            self.input_size % self.patch_size == 0,
            "DiTConfig.patch_size",
            f"patch_size={self.patch_size} does not divide input_size={self.input_size}; "
            "use a patch size that divides the input size (input_size)",
        )
        if self.pos_embed == "sincos":
            require(
                d % 4 == 0,
                "DiTConfig.hidden_size",
                f"sin-cos position embedding needs hidden_size % 4 == 0, got {d}; use a multiple of 4",
            )
        else:
            require(
                self.head_dim % 4 == 0,
                "DiTConfig.pos_embed",
                f"pos_embed='rope' needs head_dim = hidden_size/num_heads divisible by 4 (even per axis), "
                f"got {d}/{heads} = {self.head_dim}; change DiTConfig.hidden_size or DiTConfig.num_heads",
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    def num_tokens(self, input_size: int | tuple[int, int] | None = None) -> int:
        """Image tokens for a latent of side `input_size` (default: the config's) or `(H, W)`."""
        size = self.input_size if input_size is None else input_size
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        for side in (h, w):
            if side % self.patch_size:
                raise ValueError(f"latent side {side} is not divisible by patch_size={self.patch_size}")
        return (h // self.patch_size) * (w // self.patch_size)

    def replace(self, **changes: Any) -> DiTConfig:
        """A validated copy with fields changed; unknown field names raise `ValueError`."""
        check_keys(DiTConfig, changes, "DiTConfig")
        return dataclasses.replace(self, **changes)


def official_names() -> list[str]:
    """`["DiT-XL/2", "DiT-XL/4", ..., "DiT-S/8"]`."""
    return [f"DiT-{s}/{p}" for s in reversed(FAMILIES) for p in PATCH_SIZES]


def official_name(depth: int, hidden_size: int, num_heads: int, patch_size: int) -> str | None:
    """`"DiT-B/4"` if the shape is one of the paper's 12 models, else None."""
    for size, shape in FAMILIES.items():
        if shape == (depth, hidden_size, num_heads) and patch_size in PATCH_SIZES:
            return f"DiT-{size}/{patch_size}"
    return None


def model_label(depth: int, hidden_size: int, num_heads: int | None, patch_size: int) -> str:
    """What the sweep's tables and the analysis's reports call a shape: the paper's name of one of its
    12 models (`"DiT-B/4"`), else `"DiT-d{depth}-w{hidden_size}/{patch_size}"` (a scaled family too)."""
    official = official_name(depth, hidden_size, num_heads, patch_size) if num_heads else None
    return official or f"DiT-d{depth}-w{hidden_size}/{patch_size}"


def model_label_of_params(params: Mapping[str, Any]) -> str | None:
    """`model_label` of a run's logged params (``model.depth``, ``model.hidden_size``,
    ``model.num_heads``, ``model.patch_size``; strings as MLflow keeps them); None without a shape."""

    def whole(key: str) -> int | None:
        try:
            return int(float(params[f"model.{key}"]))
        except (KeyError, TypeError, ValueError):  # absent, None or "None"
            return None

    depth, width, heads, patch = (whole(k) for k in ("depth", "hidden_size", "num_heads", "patch_size"))
    return None if None in (depth, width, patch) else model_label(depth, width, heads, patch)


def model_config(name: str | None = None, **overrides: Any) -> DiTConfig:
    """`DiTConfig` for an official name (`"DiT-B/4"`), optionally overridden, or a custom shape.

    Examples: `model_config("DiT-S/2", input_size=16)`,
    `model_config(depth=4, hidden_size=64, num_heads=2, patch_size=2, input_size=16, in_channels=1,
    num_classes=10)`.
    """
    check_keys(DiTConfig, overrides, "DiTConfig")
    base: dict[str, Any] = {}
    if name is not None:
        size, _, patch = name.removeprefix("DiT-").partition("/")
        if size not in FAMILIES or not patch.isdigit() or int(patch) not in PATCH_SIZES:
            raise ValueError(
                f"unknown model name {name!r}; valid names: {official_names()}"
                "; for a custom shape give no name but depth, hidden_size, num_heads and patch_size (the "
                "trainer's --model none --depth D --width W --heads H --patch-size P)"
            )
        depth, width, heads = FAMILIES[size]
        base = dict(depth=depth, hidden_size=width, num_heads=heads, patch_size=int(patch))
    return DiTConfig(**{**base, **overrides})


def _as_config(model_or_config: Any) -> DiTConfig:
    """A `DiTConfig` from itself, an official name, or anything with a `.config` (a built `DiT`)."""
    if isinstance(model_or_config, DiTConfig):
        return model_or_config
    if isinstance(model_or_config, str):
        return model_config(model_or_config)
    cfg = getattr(model_or_config, "config", None)
    if isinstance(cfg, DiTConfig):
        return cfg
    raise ValueError(
        f"expected a DiT, DiTConfig or model name, got {type(model_or_config).__name__}; "
        "build a config with dit_core.spec.model_config(...)"
    )


def flop_breakdown(model_or_config: Any, input_size: int | tuple[int, int] | None = None) -> dict[str, int]:
    """Forward multiply-adds per component for one image (batch 1), as exact integers.

    `model_or_config`: a `DiTConfig`, an official name or a built `DiT`. `input_size` is the latent
    side (or `(H, W)`); default: the config's `input_size`.
    """
    cfg = _as_config(model_or_config)
    t = cfg.num_tokens(input_size)
    d, p, hm, depth = cfg.hidden_size, cfg.patch_size, cfg.mlp_hidden, cfg.depth
    s = NUM_COND_TOKENS
    out: dict[str, int] = {
        "patch_embed": t * p * p * cfg.in_channels * d,
        "t_embed": cfg.frequency_embedding_size * d + d * d,
        "final_adaLN": 2 * d * d,
        "final_modulate": t * d,
        "final_linear": t * d * p * p * cfg.out_channels,
    }
    n = t + s if cfg.block_type == "in_context" else t  # in_context: the sequence carries t and y
    block = {"attn_proj": 4 * n * d * d, "attn_quadratic": 2 * n * n * d, "mlp": 2 * n * d * hm}
    if cfg.block_type in ("adaln_zero", "adaln"):
        block |= {"adaLN": (6 if cfg.block_type == "adaln_zero" else 4) * d * d, "modulate": 2 * t * d}
    elif cfg.block_type == "cross_attention":
        block |= {"cross_proj": 2 * t * d * d + s * 2 * d * d, "cross_quadratic": 2 * t * s * d}
    return out | {f"blocks.{name}": depth * value for name, value in block.items()}


def forward_macs(model_or_config: Any, input_size: int | tuple[int, int] | None = None) -> int:
    """Forward multiply-adds for one image (the paper's "flops"), exact integer."""
    return sum(flop_breakdown(model_or_config, input_size).values())


def forward_gflops(model_or_config: Any, input_size: int | tuple[int, int] | None = None) -> float:
    """Forward Gflops in the paper's convention (multiply-adds / 1e9, batch 1).

    DiT-XL/2 on a 32x32x4 latent (256 px): 118.64."""
    return forward_macs(model_or_config, input_size) / 1e9


def train_flops_per_image(model_or_config: Any, input_size: int | tuple[int, int] | None = None) -> float:
    """True training FLOPs per image: 2 (flops per multiply-add) x 3 (forward + backward) x forward MACs."""
    return 6.0 * forward_macs(model_or_config, input_size)


def _linear(i: int, o: int) -> int:
    return i * o + o


def _embedding_params(cfg: DiTConfig) -> dict[str, int]:
    """Parameters of the embeddings `non_embedding_param_count` leaves out, by module name."""
    d = cfg.hidden_size
    return {
        "pos_embed": cfg.num_tokens() * d if cfg.pos_embed == "sincos" else 0,
        "t_embedder": _linear(cfg.frequency_embedding_size, d) + _linear(d, d),
        "y_embedder": (cfg.num_classes + int(cfg.class_dropout_prob > 0)) * d,  # + null row
    }


def param_count(model_or_config: Any, *, include_pos_embed: bool = True) -> int:
    """Number of parameters, analytically (no allocation). Includes the frozen sin-cos `pos_embed`
    table by default, as `sum(p.numel() for p in model.parameters())` does (DiT-XL/2: 675,129,632)."""
    cfg = _as_config(model_or_config)
    d, p, hm, c = cfg.hidden_size, cfg.patch_size, cfg.mlp_hidden, cfg.in_channels
    embeddings = _embedding_params(cfg)
    if not include_pos_embed:
        embeddings["pos_embed"] = 0
    attn = _linear(d, 3 * d) + _linear(d, d)
    mlp = _linear(d, hm) + _linear(hm, d)
    if cfg.block_type in ("adaln_zero", "adaln"):
        block = attn + mlp + _linear(d, (6 if cfg.block_type == "adaln_zero" else 4) * d)
    elif cfg.block_type == "cross_attention":
        block = attn + mlp + _linear(d, d) + _linear(d, 2 * d) + _linear(d, d) + 3 * 2 * d
    else:
        block = attn + mlp + 2 * 2 * d
    patch_embed = _linear(c * p * p, d)
    final = _linear(d, 2 * d) + _linear(d, p * p * cfg.out_channels)
    return sum(embeddings.values()) + patch_embed + cfg.depth * block + final


def non_embedding_param_count(model_or_config: Any) -> int:
    """Parameters without the embeddings, as N in Kaplan et al. (2020, arXiv:2001.08361): all but the
    three modules of `_embedding_params`; the patch embedding and the final layer, which act on every
    token like the blocks, are kept (docs/models.md, "Non-embedding parameters")."""
    cfg = _as_config(model_or_config)
    return param_count(cfg) - sum(_embedding_params(cfg).values())


def budget_steps(train_flops: float, flops_per_image: float, batch_size: int) -> int:
    """Whole optimizer steps of `batch_size` images that fit in `train_flops` (true FLOPs):
    `floor(train_flops / (batch_size * flops_per_image))`, 0 if not even one.

    A slack of 4 float epsilons (relative) absorbs the roundings of the product and the quotient, so
    a budget of exactly k steps gives k, and a step more than fits only where the budget is within a
    few ulps of it (1e-12, until session 60, gave one where the budget was up to 1e-12 short of it).
    """
    return math.floor(train_flops / (flops_per_image * batch_size) * (1 + 4 * sys.float_info.epsilon))


class Budget(Protocol):
    """What `resolve_budget_steps` reads (`dit_core.config.BudgetConfig` has these fields)."""

    max_steps: int | None
    train_flops: float | None
    global_batch_size: int


def resolve_budget_steps(budget: Budget, flops_per_image: float) -> int:
    """Optimizer steps of a run: `budget_steps` of `budget.train_flops` and/or `budget.max_steps`
    (the smaller when both are set); `ValueError` if neither is set or one step does not fit."""
    if budget.max_steps is None and budget.train_flops is None:
        raise ValueError(
            "no stop condition: set budget.max_steps (--max-steps) or budget.train_flops (--train-flops)"
        )
    steps = budget.max_steps if budget.max_steps is not None else math.inf
    if budget.train_flops is not None:
        by_flops = budget_steps(budget.train_flops, flops_per_image, budget.global_batch_size)
        if by_flops < 1:
            raise ValueError(
                f"budget smaller than one step: train_flops={budget.train_flops:.4g} but one step of "
                f"{budget.global_batch_size} images costs {flops_per_image * budget.global_batch_size:.4g}"
                " FLOPs; raise --train-flops or lower the batch (--global-batch-size)"
            )
        steps = min(steps, by_flops)
    if steps * budget.global_batch_size > MAX_IMAGES:
        raise ValueError(
            f"budget too large: {steps:.4g} steps of {budget.global_batch_size} images exceed the "
            f"{MAX_IMAGES:.4g} images a run can count (64-bit sample indices); lower --train-flops or "
            "--max-steps"
        )
    return int(steps)
