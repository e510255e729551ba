"""Session 41 (dupsrc): the refactors that removed repeated code keep the modules' state-dict keys
and their registration order, which sets the order `DiT.initialize_weights` draws the weights in."""

from __future__ import annotations

import pytest

from dit_core.blocks import BLOCK_CLASSES


def _keys(*modules: str) -> list[str]:
    return [f"{m}.{p}" for m in modules for p in ("weight", "bias")]


PRE_LN = _keys("norm1", "attn.qkv", "attn.proj")
CROSS = _keys("norm_cross", "cross_attn.q", "cross_attn.kv", "cross_attn.proj")
MLP = _keys("norm2", "mlp.fc1", "mlp.fc2")


@pytest.mark.parametrize(
    ("block_type", "keys"),
    [("in_context", PRE_LN + MLP), ("cross_attention", PRE_LN + CROSS + MLP)],
)
def test_pre_ln_blocks_keep_their_keys_in_forward_order(block_type, keys):
    """CrossAttentionBlock is InContextBlock with a cross-attention layer registered between the
    self-attention and the MLP, where it was before the two blocks shared one __init__."""
    assert list(BLOCK_CLASSES[block_type](32, 2).state_dict()) == keys
