"""2-D axial rotary position embedding (RoPE) for the patch grid.

Each attention head of width `d` is split in two halves of `d/2` channels; channel `i` of the first
half is paired with channel `i` of the second half (the "rotate-half" layout) and the pair is rotated
by angle `pos * f_j`. The first `d/4` pairs use the row index, the last `d/4` the column index, with
`f_j = theta^(-j / (d/4))`. Only relative offsets survive in `q . k` between patch tokens, so the same
weights work on any grid size. The ``in_context`` block's t and y prefix tokens are not rotated (angle
0, the position of grid cell (0, 0), as a ViT's class token): a patch's attention to them sees its
absolute grid position.
"""

from __future__ import annotations

import torch


def rope_angles(
    head_dim: int,
    grid_h: int,
    grid_w: int,
    *,
    num_prefix: int = 0,
    theta: float = 10000.0,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables for a `grid_h x grid_w` grid in row-major token order.

    `num_prefix` extra tokens placed before the grid (e.g. in-context conditioning tokens) get angle 0,
    i.e. no rotation. Returns `(cos, sin)`, each `(num_prefix + grid_h * grid_w, head_dim)` float32.
    """
    if head_dim % 4:
        raise ValueError(
            f"2-D RoPE needs a head dim divisible by 4 (two axes x rotation pairs), got {head_dim}"
        )
    quarter = head_dim // 4
    freqs = theta ** (-torch.arange(quarter, dtype=torch.float64, device=device) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, device=device), torch.arange(grid_w, device=device), indexing="ij"
    )
    ang = torch.cat([rows.reshape(-1, 1) * freqs, cols.reshape(-1, 1) * freqs], dim=1)  # (T, d/2)
    if num_prefix:
        ang = torch.cat([ang.new_zeros(num_prefix, ang.shape[1]), ang], dim=0)
    ang = torch.cat([ang, ang], dim=1)  # (T, d): both channels of a pair share an angle
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` `(..., T, d)` by the tables `(T, d)` from `rope_angles` (computed in `x.dtype`)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    a, b = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-b, a], dim=-1) * sin
