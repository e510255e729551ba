"""Each block of the paper's block-design ablation (dit_core.blocks) against its definition written
out by hand (arXiv:2212.09748, Sec. 3.2), on random weights in float64. The attention and MLP
sub-layers are used as given (diffusers parity checks them); the residuals, norms, modulation order
and gates are re-derived here. Every block gets 2-D RoPE tables, which must reach its self-attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dit_core.blocks import AdaLNBlock, CrossAttentionBlock, DiTBlock, FinalLayer, InContextBlock
from dit_core.rope import rope_angles

D, HEADS, N, GH, GW = 32, 4, 3, 3, 4
T = GH * GW
ROPE = tuple(a.double() for a in rope_angles(D // HEADS, GH, GW))


def rand_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)
    return module.double().eval()


def ln(x: torch.Tensor, norm: torch.nn.LayerNorm | None = None) -> torch.Tensor:
    w = None if norm is None else norm.weight
    b = None if norm is None else norm.bias
    return F.layer_norm(x, (x.shape[-1],), w, b, eps=1e-6)


def data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, T, D, generator=g, dtype=torch.float64)
    c = torch.randn(N, D, generator=g, dtype=torch.float64)
    return x, c


def mod(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


def test_adaln_zero_block_is_the_paper_definition():
    blk = rand_(DiTBlock(D, HEADS))
    x, c = data()
    s1, sc1, g1, s2, sc2, g2 = blk.adaLN_modulation[1](F.silu(c)).chunk(6, dim=1)
    h = x + g1[:, None] * blk.attn(mod(ln(x), s1, sc1), ROPE)
    expected = h + g2[:, None] * blk.mlp(mod(ln(h), s2, sc2))
    with torch.no_grad():
        torch.testing.assert_close(blk(x, c, ROPE), expected, rtol=1e-12, atol=1e-12)


def test_adaln_block_is_the_paper_definition_without_gates():
    blk = rand_(AdaLNBlock(D, HEADS))
    assert blk.adaLN_modulation[1].out_features == 4 * D
    x, c = data()
    s1, sc1, s2, sc2 = blk.adaLN_modulation[1](F.silu(c)).chunk(4, dim=1)
    h = x + blk.attn(mod(ln(x), s1, sc1), ROPE)
    expected = h + blk.mlp(mod(ln(h), s2, sc2))
    with torch.no_grad():
        torch.testing.assert_close(blk(x, c, ROPE), expected, rtol=1e-12, atol=1e-12)


def test_cross_attention_block_is_self_attention_cross_attention_mlp():
    blk = rand_(CrossAttentionBlock(D, HEADS))
    x, c = data()
    cond = torch.stack([c, -c.flip(1)], dim=1)  # (N, 2, D): two conditioning tokens
    h = x + blk.attn(ln(x, blk.norm1), ROPE)
    h = h + blk.cross_attn(ln(h, blk.norm_cross), cond)
    expected = h + blk.mlp(ln(h, blk.norm2))
    with torch.no_grad():
        torch.testing.assert_close(blk(x, cond, ROPE), expected, rtol=1e-12, atol=1e-12)


def test_in_context_block_is_a_plain_pre_ln_block():
    blk = rand_(InContextBlock(D, HEADS))
    x, _ = data()
    h = x + blk.attn(ln(x, blk.norm1), ROPE)
    expected = h + blk.mlp(ln(h, blk.norm2))
    with torch.no_grad():
        torch.testing.assert_close(blk(x, None, ROPE), expected, rtol=1e-12, atol=1e-12)


def test_final_layer_is_adaln_then_linear():
    layer = rand_(FinalLayer(D, 2, 3))
    x, c = data()
    shift, scale = layer.adaLN_modulation[1](F.silu(c)).chunk(2, dim=1)
    expected = layer.linear(mod(ln(x), shift, scale))
    with torch.no_grad():
        torch.testing.assert_close(layer(x, c), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [DiTBlock, AdaLNBlock, CrossAttentionBlock, InContextBlock])
def test_blocks_default_to_the_papers_4x_mlp(cls):
    assert cls(D, HEADS).mlp.fc1.out_features == 4 * D
