"""Transformer block variants from the DiT paper's block-design ablation (Sec. 3.2, Fig. 5).

Every block maps image tokens `x (N, T, D)` plus conditioning to `(N, T, D)`:

- `adaln_zero` (default, the paper's DiT block): adaLN shift/scale before attention and MLP and a
  per-channel gate on each residual branch; regressed from `c = t_emb + y_emb (N, D)` and zero-initialised.
- `adaln`: the same without the gates (shift/scale only).
- `cross_attention`: `[t_emb, y_emb]` as a 2-token sequence `(N, 2, D)`, attended to by an extra
  cross-attention layer after self-attention; affine LayerNorms.
- `in_context`: `t_emb`, `y_emb` are two extra tokens in the sequence; plain pre-LN ViT block.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import Attention, CrossAttention, Mlp, modulate


def _ln(hidden_size: int, affine: bool) -> nn.LayerNorm:
    return nn.LayerNorm(hidden_size, elementwise_affine=affine, eps=1e-6)


class DiTBlock(nn.Module):
    """adaLN-Zero block (official DiT). `c (N, D)` -> 6 modulation vectors (shift, scale, gate) x 2."""

    num_modulations = 6

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = _ln(hidden_size, False)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = _ln(hidden_size, False)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, self.num_modulations * hidden_size, bias=True)
        )

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope=None) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = torch.addcmul(x, gate1.unsqueeze(1), self.attn(modulate(self.norm1(x), shift1, scale1), rope))
        return torch.addcmul(x, gate2.unsqueeze(1), self.mlp(modulate(self.norm2(x), shift2, scale2)))


class AdaLNBlock(DiTBlock):
    """adaLN block without gates: `c (N, D)` -> 4 modulation vectors (shift, scale) x 2."""

    num_modulations = 4

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope=None) -> torch.Tensor:
        shift1, scale1, shift2, scale2 = self.adaLN_modulation(c).chunk(4, dim=1)
        x = x + self.attn(modulate(self.norm1(x), shift1, scale1), rope)
        return x + self.mlp(modulate(self.norm2(x), shift2, scale2))


class InContextBlock(nn.Module):
    """Plain pre-LN ViT block; the conditioning already sits in the token sequence (`c` unused)."""

    cross_attention = False  # CrossAttentionBlock: a cross-attention layer between attention and MLP

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = _ln(hidden_size, True)
        self.attn = Attention(hidden_size, num_heads)
        if self.cross_attention:  # registered in forward's order: the order `DiT.initialize_weights` draws in
            self.norm_cross = _ln(hidden_size, True)
            self.cross_attn = CrossAttention(hidden_size, num_heads)
        self.norm2 = _ln(hidden_size, True)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None, rope=None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        if self.cross_attention:
            x = x + self.cross_attn(self.norm_cross(x), c)
        return x + self.mlp(self.norm2(x))


class CrossAttentionBlock(InContextBlock):
    """Self-attention, cross-attention to the conditioning sequence `c (N, S, D)`, MLP; pre-LN."""

    cross_attention = True


#: One class per `dit_core.spec.BLOCK_TYPES` entry.
BLOCK_CLASSES: dict[str, type[nn.Module]] = {
    "adaln_zero": DiTBlock,
    "adaln": AdaLNBlock,
    "cross_attention": CrossAttentionBlock,
    "in_context": InContextBlock,
}


class FinalLayer(nn.Module):
    """adaLN (shift, scale) + linear to patches: `(N, T, D)`, `c (N, D)` -> `(N, T, p*p*C_out)`."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = _ln(hidden_size, False)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))
