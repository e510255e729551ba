"""Parameters and FLOPs of a grid cell's model, from `dit_core.flops` (analytic, paper convention).

Falls back to a local closed form when `dit_core.flops` / `dit_core.models` are not importable, so
the sweep's dry run works on its own. Both count one multiply-add as one flop in the forward pass
(DiT-XL/2 at 256 px = 118.6 GFLOPs); training compute per image is 2 x 3 x that (true FLOPs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sweeps.families import ModelShape

__all__ = ["ModelCompute", "model_compute"]


@dataclass(frozen=True)
class ModelCompute:
    """params: trainable parameters; forward_gflops: forward multiply-adds / 1e9, batch 1;
    train_flops_per_image: true FLOPs of one training image (forward + backward)."""

    params: int
    forward_gflops: float
    train_flops_per_image: float


def model_compute(
    shape: ModelShape,
    patch_size: int,
    input_size: int,
    in_channels: int,
    num_classes: int,
    learn_sigma: bool = True,
    extra: dict[str, Any] | None = None,
) -> ModelCompute:
    """Parameters and FLOPs of DiT ``shape`` with ``patch_size`` on ``(in_channels, input_size^2)`` inputs.

    extra: further `DiTConfig` fields (``mlp_ratio``, ``block_type``, ...) from the sweep's
    ``model.*`` train overrides; the local closed form supports only the defaults.
    """
    try:
        from dit_core.flops import forward_gflops, param_count, train_flops_per_image
        from dit_core.models import DiTConfig
    except ImportError:
        if extra:
            raise ValueError(
                f"model overrides {sorted(extra)} need dit_core.flops, which is not importable"
            ) from None
        return _closed_form(shape, patch_size, input_size, in_channels, num_classes, learn_sigma)
    valid = {f.name for f in dataclasses.fields(DiTConfig)}
    unknown = sorted(set(extra or {}) - valid)
    if unknown:
        raise ValueError(f"model override(s) {unknown} are not DiTConfig fields; valid: {sorted(valid)}")
    cfg = DiTConfig(
        depth=shape.depth,
        hidden_size=shape.hidden_size,
        num_heads=shape.num_heads,
        patch_size=patch_size,
        input_size=input_size,
        in_channels=in_channels,
        num_classes=num_classes,
        learn_sigma=learn_sigma,
        **(extra or {}),
    )
    return ModelCompute(
        params=int(param_count(cfg)),
        forward_gflops=float(forward_gflops(cfg)),
        train_flops_per_image=float(train_flops_per_image(cfg)),
    )


def _closed_form(
    shape: ModelShape, patch: int, input_size: int, in_ch: int, num_classes: int, learn_sigma: bool
) -> ModelCompute:
    """Official DiT layout (adaLN-Zero blocks, mlp_ratio 4, 256-dim frequency embedding)."""
    d, n = shape.hidden_size, shape.depth
    tokens = (input_size // patch) ** 2
    out_ch = 2 * in_ch if learn_sigma else in_ch
    pp = patch * patch
    block_params = 18 * d * d + 15 * d  # qkv, proj, 4x MLP, adaLN(6d)
    params = (
        in_ch * pp * d
        + d  # patch embedding conv
        + 256 * d
        + d
        + d * d
        + d  # timestep MLP
        + (num_classes + 1) * d  # label table incl. the null label
        + n * block_params
        + d * pp * out_ch
        + pp * out_ch
        + 2 * d * d
        + 2 * d  # final layer
    )
    block_macs = 12 * d * d * tokens + 2 * tokens * tokens * d + 6 * d * d
    macs = in_ch * pp * d * tokens + 256 * d + d * d + n * block_macs + 2 * d * d + d * pp * out_ch * tokens
    return ModelCompute(params=params, forward_gflops=macs / 1e9, train_flops_per_image=6.0 * macs)
