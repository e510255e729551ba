"""Weight conversion between `dit_core.models.DiT` (official layout) and diffusers' `DiTTransformer2DModel`.

Only the paper's model converts: `block_type="adaln_zero"`, `pos_embed="sincos"`, `mlp_ratio=4` and a
null class (`class_dropout_prob > 0`). Pure functions on state dicts; diffusers is not imported.

    from dit_core.convert import diffusers_kwargs, dit_to_diffusers, diffusers_to_dit
    hf = DiTTransformer2DModel(**diffusers_kwargs(model.config))
    hf.load_state_dict(dit_to_diffusers(model.state_dict()))
    use_official_timestep_frequencies(hf)  # see below
    model.load_state_dict(diffusers_to_dit(hf.state_dict(), model.config))

Layout differences handled here:
- diffusers keeps a copy of the timestep and label embedders in every block
  (`transformer_blocks.i.norm1.emb`) and conditions the final layer on block 0's; DiT has one of each.
  `dit_to_diffusers` copies them into every block; `diffusers_to_dit` requires the copies to be equal.
- DiT's fused `attn.qkv` is diffusers' separate `to_q`, `to_k`, `to_v`.
- DiT stores the fixed sin-cos table as the frozen parameter `pos_embed`; diffusers recomputes it as a
  non-persistent buffer, so it is dropped one way (after checking it is the sin-cos table) and
  recomputed the other.

Numerics: diffusers' DiT builds timestep features with frequencies `exp(-ln(1e4) k / 127)` (its
`downscale_freq_shift=1`), the official DiT with `exp(-ln(1e4) k / 128)`. With converted weights the
two models agree only after `use_official_timestep_frequencies(hf_model)`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from .pos_embed import sincos_2d

if TYPE_CHECKING:
    from .models import DiTConfig

Tensor = torch.Tensor

_EMB = "transformer_blocks.{i}.norm1.emb."
#: DiT name -> diffusers name for per-block tensors (`{i}` is the block index); qkv is split separately.
_BLOCK = {
    "blocks.{i}.adaLN_modulation.1": "transformer_blocks.{i}.norm1.linear",
    "blocks.{i}.attn.proj": "transformer_blocks.{i}.attn1.to_out.0",
    "blocks.{i}.mlp.fc1": "transformer_blocks.{i}.ff.net.0.proj",
    "blocks.{i}.mlp.fc2": "transformer_blocks.{i}.ff.net.2",
}
#: DiT name -> diffusers name for tensors outside the blocks (embedders are copied into every block).
_TOP = {
    "x_embedder.proj": "pos_embed.proj",
    "final_layer.adaLN_modulation.1": "proj_out_1",
    "final_layer.linear": "proj_out_2",
}
_EMBEDDERS = {
    "t_embedder.mlp.0": "timestep_embedder.linear_1",
    "t_embedder.mlp.2": "timestep_embedder.linear_2",
    "y_embedder.embedding_table": "class_embedder.embedding_table",
}


def _suffixed(names: Mapping[str, str]) -> dict[str, str]:
    """Module names ``{src: dst}`` -> their tensors': ``{src.weight: dst.weight, src.bias: ...}``."""
    return {f"{src}.{x}": f"{dst}.{x}" for src, dst in names.items() for x in ("weight", "bias")}


def check_convertible(cfg: DiTConfig) -> None:
    """Raise `ValueError` if diffusers' `DiTTransformer2DModel` cannot represent this DiT."""
    problems = []
    if cfg.block_type != "adaln_zero":
        problems.append(f"block_type={cfg.block_type!r} (diffusers has only 'adaln_zero')")
    if cfg.pos_embed != "sincos":
        problems.append(f"pos_embed={cfg.pos_embed!r} (diffusers' DiT uses fixed sin-cos positions)")
    if cfg.mlp_ratio != 4.0:
        problems.append(f"mlp_ratio={cfg.mlp_ratio} (diffusers' DiT MLP is 4x wide)")
    if cfg.class_dropout_prob <= 0:
        problems.append("class_dropout_prob=0 (diffusers' DiT always has the null class row)")
    if problems:
        raise ValueError("this DiT has no diffusers equivalent: " + "; ".join(problems))


def diffusers_kwargs(cfg: DiTConfig) -> dict:
    """Constructor arguments of the `DiTTransformer2DModel` equivalent to `cfg`."""
    check_convertible(cfg)
    return {
        "num_attention_heads": cfg.num_heads,
        "attention_head_dim": cfg.head_dim,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "num_layers": cfg.depth,
        "sample_size": cfg.input_size,
        "patch_size": cfg.patch_size,
        "num_embeds_ada_norm": cfg.num_classes,
        "activation_fn": "gelu-approximate",
        "attention_bias": True,
        "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,  # DiT's LayerNorms all use 1e-6 (diffusers' default is 1e-5)
    }


def _renames(depth: int) -> dict[str, str]:
    """DiT name -> diffusers name of every weight and bias that maps one to one, blocks 0..depth-1."""
    blocks = {src.format(i=i): dst.format(i=i) for i in range(depth) for src, dst in _BLOCK.items()}
    return _suffixed({**_TOP, **blocks})


def _depth(state: Mapping[str, Tensor], pattern: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    if idx != set(range(len(idx))):
        raise ValueError(f"block indices are not 0..n-1: {sorted(idx)}")
    return len(idx)


def dit_to_diffusers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A DiT `state_dict` (official layout) -> a `DiTTransformer2DModel` `state_dict`."""
    state = dict(state)
    depth = _depth(state, r"blocks\.(\d+)\.")
    pos = state.pop("pos_embed", None)
    if pos is None:
        raise ValueError("state has no 'pos_embed': only sin-cos DiTs convert (RoPE models do not)")
    grid = int(round(pos.shape[1] ** 0.5))
    table = sincos_2d(pos.shape[2], grid) if grid * grid == pos.shape[1] else None
    tol = 2 * torch.finfo(pos.dtype).eps  # the table rounded to the weights' dtype (fp16/bf16) is still it
    if table is None or not torch.allclose(pos[0].float(), table, rtol=tol, atol=tol):
        raise ValueError("'pos_embed' is not the fixed sin-cos table; diffusers cannot store another one")
    out = {dst: state.pop(src) for src, dst in _renames(depth).items()}
    for src, dst in _suffixed(_EMBEDDERS).items():
        if src in state:  # the label embedding has no bias
            t = state.pop(src)
            for i in range(depth):
                out[f"{_EMB.format(i=i)}{dst}"] = t.clone()
    for i in range(depth):
        w, b = state.pop(f"blocks.{i}.attn.qkv.weight"), state.pop(f"blocks.{i}.attn.qkv.bias")
        for name, wi, bi in zip(("to_q", "to_k", "to_v"), w.chunk(3, 0), b.chunk(3, 0)):
            out[f"transformer_blocks.{i}.attn1.{name}.weight"] = wi.clone()
            out[f"transformer_blocks.{i}.attn1.{name}.bias"] = bi.clone()
    if state:
        raise ValueError(f"unexpected DiT entries (not an adaLN-Zero DiT?): {sorted(state)[:8]}")
    return out


def diffusers_to_dit(state: Mapping[str, Tensor], cfg: DiTConfig) -> dict[str, Tensor]:
    """A `DiTTransformer2DModel` `state_dict` -> a DiT `state_dict` for `cfg` (which sets the grid size)."""
    check_convertible(cfg)
    state = dict(state)
    state.pop("pos_embed.pos_embed", None)  # non-persistent in diffusers; present only if saved by hand
    depth = _depth(state, r"transformer_blocks\.(\d+)\.")
    if depth != cfg.depth:
        raise ValueError(f"the diffusers state has {depth} blocks, cfg.depth={cfg.depth}")
    out = {src: state.pop(dst) for src, dst in _renames(depth).items()}
    for src, dst in _suffixed(_EMBEDDERS).items():
        copies = [state.pop(f"{_EMB.format(i=i)}{dst}", None) for i in range(depth)]
        if copies[0] is None:
            continue
        if any(c is None or not torch.equal(c, copies[0]) for c in copies[1:]):
            raise ValueError(
                f"the blocks' copies of {dst} differ; DiT has one shared timestep/label "
                "embedder (a model converted from DiT, or trained with tied copies, has them equal)"
            )
        out[src] = copies[0]
    for i in range(depth):
        for suffix in ("weight", "bias"):
            parts = [
                state.pop(f"transformer_blocks.{i}.attn1.{n}.{suffix}") for n in ("to_q", "to_k", "to_v")
            ]
            out[f"blocks.{i}.attn.qkv.{suffix}"] = torch.cat(parts, 0)
    if state:
        raise ValueError(f"unexpected diffusers entries: {sorted(state)[:8]}")
    grid = cfg.input_size // cfg.patch_size
    out["pos_embed"] = sincos_2d(cfg.hidden_size, grid).unsqueeze(0)
    return out


def use_official_timestep_frequencies(hf_model: torch.nn.Module) -> None:
    """Make a diffusers `DiTTransformer2DModel` use the official DiT timestep frequencies (in place)."""
    for block in hf_model.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0


if __name__ == "__main__":  # no command line: say so instead of exiting 0 having converted nothing
    import sys

    print(
        "error: dit_core.convert is a library, not a command (nothing was converted); from Python: "
        "diffusers_kwargs(cfg), dit_to_diffusers(state), diffusers_to_dit(state, cfg), "
        "use_official_timestep_frequencies(hf_model); read an official .pt with "
        "dit_core.models.load_official_checkpoint (docs/models.md)",
        file=sys.stderr,
    )
    sys.exit(2)
