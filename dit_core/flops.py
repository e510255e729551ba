"""Exact, analytic compute accounting for DiT (no weights allocated, no tracer).

Convention (the DiT paper's, arXiv:2212.09748 Table 4): **one multiply-add = 1 flop**, forward pass,
batch 1, VAE excluded. Counted, per forward pass with `T` image tokens of width `D`:

- every matrix multiply: patch embedding (`T p^2 C D`), timestep MLP (`256 D + D^2`), per block the
  q;k;v and output projections (`4 T D^2`), the MLP (`2 T D H_mlp`), the adaLN regressions
  (`D x 6D` for adaLN-Zero), the final adaLN (`D x 2D`) and output projection (`T D p^2 C_out`);
- attention's `T^2` terms: `Q K^T` and `softmax(.) V`, `2 T^2 D` per block;
- the adaLN modulation `x * (1 + scale) + shift`, one multiply-add per element (`T D` each; two per
  block plus the final layer's).

Not counted (the paper's counter does not either): biases, label-embedding lookups, position-embedding
adds, LayerNorm, softmax, GELU/SiLU, residual adds and gates, RoPE rotations. With this convention the
12 configs of Table 4 come out within 0.06% (DiT-XL/2 at 256 px: 118.638 vs 118.64; at 512 px 524.606
vs 524.60), except DiT-L/8: 5.012 here vs 5.44 printed. Without the `T^2` terms the /2 models
would be 3.6-10% low, with fvcore's LayerNorm rule (4-5 flops per element) 0.04-0.4% high.

Training compute per image = 3 x forward multiply-adds (forward + backward), reported as true FLOPs
= 2 x that (DESIGN.md): `train_flops_per_image = 6 x forward_macs`.
"""

from __future__ import annotations

from torch import nn

from .models import DiT, DiTConfig, model_config

FREQ_EMBED = 256  # sinusoidal timestep features
NUM_COND_TOKENS = 2  # t and y tokens (cross-attention context / in-context prefix)


def _as_config(model_or_config: DiT | DiTConfig | str | nn.Module) -> DiTConfig:
    if isinstance(model_or_config, DiTConfig):
        return model_or_config
    if isinstance(model_or_config, str):
        return model_config(model_or_config)
    cfg = getattr(model_or_config, "config", None)
    if isinstance(cfg, DiTConfig):
        return cfg
    raise ValueError(
        f"expected a DiT, DiTConfig or model name, got {type(model_or_config).__name__}; "
        "build a config with dit_core.models.model_config(...)"
    )


def flop_breakdown(
    model_or_config: DiT | DiTConfig | str, input_size: int | tuple[int, int] | None = None
) -> dict[str, int]:
    """Forward multiply-adds per component for one image (batch 1), as exact integers.

    `input_size` is the latent side (or `(H, W)`); default: the config's `input_size`.
    """
    cfg = _as_config(model_or_config)
    t = cfg.num_tokens(input_size)
    d, p, hm, depth = cfg.hidden_size, cfg.patch_size, cfg.mlp_hidden, cfg.depth
    s = NUM_COND_TOKENS

    def self_attention(n: int) -> tuple[int, int]:
        """(projections, T^2 terms) for n tokens."""
        return 4 * n * d * d, 2 * n * n * d

    out: dict[str, int] = {
        "patch_embed": t * p * p * cfg.in_channels * d,
        "t_embed": FREQ_EMBED * d + d * d,
        "final_adaLN": 2 * d * d,
        "final_modulate": t * d,
        "final_linear": t * d * p * p * cfg.out_channels,
    }
    if cfg.block_type in ("adaln_zero", "adaln"):
        k = 6 if cfg.block_type == "adaln_zero" else 4
        proj, quad = self_attention(t)
        block = {"attn_proj": proj, "attn_quadratic": quad, "mlp": 2 * t * d * hm}
        block |= {"adaLN": k * d * d, "modulate": 2 * t * d}
    elif cfg.block_type == "cross_attention":
        proj, quad = self_attention(t)
        block = {"attn_proj": proj, "attn_quadratic": quad, "mlp": 2 * t * d * hm}
        block |= {"cross_proj": 2 * t * d * d + s * 2 * d * d, "cross_quadratic": 2 * t * s * d}
    else:  # in_context: the sequence carries the two conditioning tokens
        n = t + s
        proj, quad = self_attention(n)
        block = {"attn_proj": proj, "attn_quadratic": quad, "mlp": 2 * n * d * hm}
    for name, value in block.items():
        out[f"blocks.{name}"] = depth * value
    return out


def forward_macs(
    model_or_config: DiT | DiTConfig | str, input_size: int | tuple[int, int] | None = None
) -> int:
    """Forward multiply-adds for one image (the paper's "flops"), exact integer."""
    return sum(flop_breakdown(model_or_config, input_size).values())


def forward_gflops(
    model_or_config: DiT | DiTConfig | str, input_size: int | tuple[int, int] | None = None
) -> float:
    """Forward Gflops in the paper's convention (multiply-adds / 1e9, batch 1).

    DiT-XL/2 on a 32x32x4 latent (256 px): 118.64."""
    return forward_macs(model_or_config, input_size) / 1e9


def train_flops_per_image(
    model_or_config: DiT | DiTConfig | str, input_size: int | tuple[int, int] | None = None
) -> float:
    """True training FLOPs per image: 2 (flops per multiply-add) x 3 (forward + backward) x forward MACs."""
    return 6.0 * forward_macs(model_or_config, input_size)


def param_count(model_or_config: DiT | DiTConfig | str, *, include_pos_embed: bool = True) -> int:
    """Number of parameters, analytically (no allocation). Includes the frozen sin-cos `pos_embed`
    table by default, as `sum(p.numel() for p in model.parameters())` does (DiT-XL/2: 675,129,632)."""
    cfg = _as_config(model_or_config)
    d, p, hm, c = cfg.hidden_size, cfg.patch_size, cfg.mlp_hidden, cfg.in_channels

    def linear(i: int, o: int) -> int:
        return i * o + o

    n = linear(c * p * p, d)  # patch-embedding conv
    n += linear(FREQ_EMBED, d) + linear(d, d)  # timestep MLP
    n += (cfg.num_classes + int(cfg.class_dropout_prob > 0)) * d  # label table (+ null row)
    if cfg.pos_embed == "sincos" and include_pos_embed:
        n += cfg.num_tokens() * d
    attn = linear(d, 3 * d) + linear(d, d)
    mlp = linear(d, hm) + linear(hm, d)
    if cfg.block_type in ("adaln_zero", "adaln"):
        block = attn + mlp + linear(d, (6 if cfg.block_type == "adaln_zero" else 4) * d)
    elif cfg.block_type == "cross_attention":
        block = attn + mlp + linear(d, d) + linear(d, 2 * d) + linear(d, d) + 3 * 2 * d
    else:
        block = attn + mlp + 2 * 2 * d
    n += cfg.depth * block
    n += linear(d, 2 * d) + linear(d, p * p * cfg.out_channels)  # final layer
    return n
