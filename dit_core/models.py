"""The DiT model family (Peebles & Xie, "Scalable Diffusion Models with Transformers", arXiv:2212.09748).

`DiT(config)` builds from a `dit_core.spec.DiTConfig` (as nanoGPT's `GPT(config)`). The official
keyword constructor `DiT(input_size=32, patch_size=2, ...)`, the factories `DiT_XL_2()` ... `DiT_S_8()`
(also `DiT_models["DiT-XL/2"]`), the defaults and the `state_dict` layout are kept, so the released
checkpoints (e.g. `DiT-XL-2-256x256.pt`) load with `load_state_dict(strict=True)`. On top of the
paper's model it offers 2-D RoPE (`pos_embed="rope"`, resolution-agnostic), the paper's block-design
ablation (`block_type`), a smaller timestep embedding (`frequency_embedding_size`) and per-block
activation checkpointing.

Shapes: latents `x (N, C, H, W)`, tokens `(N, T, D)` with `T = (H/p) * (W/p)`, conditioning `c (N, D)`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import BLOCK_CLASSES, FinalLayer
from .layers import LabelEmbedder, PatchEmbed, TimestepEmbedder
from .pos_embed import sincos_2d
from .rope import rope_angles
from .spec import FAMILIES, PATCH_SIZES, DiTConfig, model_config, official_names

__all__ = [
    "FAMILIES",
    "PATCH_SIZES",
    "DiT",
    "DiTConfig",
    "DiT_models",
    "load_official_checkpoint",
    "model_config",
    "official_names",
    "patchify",
    "unpatchify",
]


class DiT(nn.Module):
    """Diffusion Transformer: noisy latents, timesteps and labels -> noise (and variance) prediction."""

    def __init__(self, config: DiTConfig | None = None, /, **fields):
        """`DiT(config)`, or the official keywords `DiT(input_size=32, patch_size=2, depth=28, ...)`
        (any `DiTConfig` field; keywords override `config`). No arguments: DiT-XL/2 on 32x32x4."""
        super().__init__()
        if config is not None and not isinstance(config, DiTConfig):
            raise TypeError(
                f"DiT(config) takes a DiTConfig, got {type(config).__name__}; pass the official "
                "arguments by keyword (DiT(input_size=32, ...)) or use dit_core.spec.model_config"
            )
        self.config = (config if config is not None else DiTConfig()).replace(**fields)
        cfg = self.config
        d = cfg.hidden_size

        # Registration order follows the official model, so a seed gives the same initial weights.
        self.x_embedder = PatchEmbed(cfg.patch_size, cfg.in_channels, d)
        self.t_embedder = TimestepEmbedder(d, cfg.frequency_embedding_size)
        self.y_embedder = LabelEmbedder(cfg.num_classes, d, cfg.class_dropout_prob)
        if cfg.pos_embed == "sincos":
            # Fixed table, stored as a frozen Parameter (official checkpoints carry it).
            self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens(), d), requires_grad=False)
        else:
            self.pos_embed = None
        block_cls = BLOCK_CLASSES[cfg.block_type]
        self.blocks = nn.ModuleList([block_cls(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.final_layer = FinalLayer(d, cfg.patch_size, cfg.out_channels)
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.initialize_weights()

    @classmethod
    def from_config(cls, cfg: DiTConfig, **overrides) -> DiT:
        """Build from a `DiTConfig` (fields in `overrides` win); the same as `DiT(cfg, **overrides)`."""
        return cls(cfg, **overrides)

    # The official model's attributes, read from the config.
    in_channels = property(lambda self: self.config.in_channels)
    out_channels = property(lambda self: self.config.out_channels)
    learn_sigma = property(lambda self: self.config.learn_sigma)
    num_classes = property(lambda self: self.config.num_classes)
    patch_size = property(lambda self: self.config.patch_size)
    num_heads = property(lambda self: self.config.num_heads)
    input_size = property(lambda self: self.config.input_size)
    block_type = property(lambda self: self.config.block_type)

    @property
    def grad_checkpointing(self) -> bool:
        """Recompute each block in the backward pass (settable on a built model)."""
        return self.config.grad_checkpointing

    @grad_checkpointing.setter
    def grad_checkpointing(self, on: bool) -> None:
        self.config = self.config.replace(grad_checkpointing=bool(on))

    def initialize_weights(self) -> None:
        """Official initialisation; the modulation and output layers start at zero, so the output is 0."""

        def basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        self.apply(basic)
        if self.pos_embed is not None and not self.pos_embed.is_meta:
            grid = self.input_size // self.patch_size
            with torch.no_grad():
                self.pos_embed.copy_(sincos_2d(self.pos_embed.shape[-1], grid).unsqueeze(0))
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.data.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        modulations = [b.adaLN_modulation[-1] for b in self.blocks if hasattr(b, "adaLN_modulation")]
        for lin in (*modulations, self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """`(N, C, H, W)` -> `(N, T, p*p*C)`, per-patch layout `(p_row, p_col, C)` (inverse of unpatchify)."""
        return patchify(x, self.patch_size)

    def unpatchify(self, x: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        """`(N, T, p*p*C_out)` -> `(N, C_out, H, W)`; `hw` is the token grid (default: square)."""
        return unpatchify(x, self.patch_size, self.out_channels, hw)

    def _rope(self, grid_h: int, grid_w: int, num_prefix: int, device: torch.device):
        """The (cos, sin) tables of a ``grid_h`` x ``grid_w`` grid, kept per grid and device; tables made
        under ``torch.inference_mode`` are not kept (autograd could not save them for a later backward)."""
        key = (grid_h, grid_w, num_prefix, str(device))
        if key in self._rope_cache:
            return self._rope_cache[key]
        tables = rope_angles(self.config.head_dim, grid_h, grid_w, num_prefix=num_prefix, device=device)
        if not torch.is_inference_mode_enabled():
            self._rope_cache[key] = tables
        return tables

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *, force_drop_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predict noise (and variance).

        Args:
            x: `(N, C, H, W)` noisy latents. With sin-cos positions H = W = input_size; with RoPE any
                H, W divisible by the patch size.
            t: `(N,)` timesteps on the 0..num_timesteps scale (float or long; a scalar is broadcast).
            y: `(N,)` long labels; `num_classes` is the null label. In training mode labels are dropped
                to null with probability `class_dropout_prob` (global RNG); `force_drop_ids (N,)` == 1
                forces it.
        Returns:
            `(N, out_channels, H, W)`, `out_channels = 2C` if `learn_sigma` else `C`.
        """
        n, c_in, h, w = x.shape
        p = self.patch_size
        if c_in != self.in_channels:
            raise ValueError(f"x has {c_in} channels, the model expects in_channels={self.in_channels}")
        if h % p or w % p:
            raise ValueError(f"latent size {h}x{w} is not divisible by patch_size={p}")
        if self.pos_embed is not None and (h != self.input_size or w != self.input_size):
            raise ValueError(
                f"latent size {h}x{w} differs from input_size={self.input_size}; sin-cos positions are "
                "fixed to one size: build the model with that input_size, or use pos_embed='rope'"
            )
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(n)
        gh, gw = h // p, w // p

        tokens = self.x_embedder(x)  # (N, T, D)
        if self.pos_embed is not None:
            tokens = tokens + self.pos_embed
        t_emb = self.t_embedder(t)  # (N, D)
        y_emb = self.y_embedder(y, self.training, force_drop_ids)  # (N, D)
        c = t_emb + y_emb
        cond, num_prefix = c, 0
        if self.block_type == "cross_attention":
            cond = torch.stack([t_emb, y_emb], dim=1)  # (N, 2, D)
        elif self.block_type == "in_context":
            tokens = torch.cat([t_emb.unsqueeze(1), y_emb.unsqueeze(1), tokens], dim=1)  # (N, 2 + T, D)
            num_prefix = 2
        rope = self._rope(gh, gw, num_prefix, x.device) if self.pos_embed is None else None

        use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if use_ckpt:
                tokens = checkpoint(block, tokens, cond, rope, use_reentrant=False)
            else:
                tokens = block(tokens, cond, rope)
        if num_prefix:
            tokens = tokens[:, num_prefix:]
        out = self.final_layer(tokens, c)  # (N, T, p*p*C_out)
        return self.unpatchify(out, (gh, gw))

    def forward_with_cfg(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        cfg_scale: float,
        guide_channels: int | None = None,
    ) -> torch.Tensor:
        """Classifier-free guidance in one batched pass (official convention).

        The batch is `[cond; uncond]`: `x (2N, C, H, W)` whose first half is used for both halves,
        `y = [labels; null]`. The guided prediction `uncond + s * (cond - uncond)` is returned for both
        halves, `(2N, out_channels, H, W)`. Guidance acts on the first `guide_channels` output channels
        (default: all `in_channels` noise channels; `3` reproduces the released code and the paper's
        FID); the remaining channels (and the learned variance) are passed through unguided, i.e. each
        half keeps its own (conditional / unconditional) output there.
        """
        if x.shape[0] % 2:
            raise ValueError(f"forward_with_cfg needs an even batch [cond; uncond], got {x.shape[0]}")
        if self.y_embedder.embedding_table.num_embeddings <= self.num_classes:
            raise ValueError(
                "classifier-free guidance needs the null class: build with class_dropout_prob > 0"
            )
        g = self.in_channels if guide_channels is None else int(guide_channels)
        if not 0 < g <= self.out_channels:
            raise ValueError(f"guide_channels must be in 1..{self.out_channels}, got {guide_channels}")
        half = x[: x.shape[0] // 2]
        out = self.forward(torch.cat([half, half], dim=0), t, y)
        guided, rest = out[:, :g], out[:, g:]
        cond, uncond = guided.chunk(2, dim=0)
        mixed = uncond + cfg_scale * (cond - uncond)
        return torch.cat([torch.cat([mixed, mixed], dim=0), rest], dim=1)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """`(N, C, H, W)` -> `(N, (H/p)(W/p), p*p*C)` with per-patch layout `(p_row, p_col, C)`."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, channels: int, hw: tuple[int, int] | None = None) -> torch.Tensor:
    """Inverse of `patchify`: `(N, gh*gw, p*p*C)` -> `(N, C, gh*p, gw*p)`; square grid if `hw` is None."""
    n, t, _ = x.shape
    if hw is None:
        side = int(round(t**0.5))
        if side * side != t:
            raise ValueError(f"{t} tokens do not form a square grid; pass hw=(grid_h, grid_w)")
        hw = (side, side)
    gh, gw = hw
    x = x.reshape(n, gh, gw, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(n, channels, gh * p, gw * p)


def _factory(name: str) -> Callable[..., DiT]:
    def build(**kwargs) -> DiT:
        return DiT(model_config(name, **kwargs))

    build.__name__ = name.replace("-", "_").replace("/", "_")
    build.__doc__ = f"Build {name} (keyword arguments override DiTConfig fields)."
    return build


#: `"DiT-XL/2"` ... `"DiT-S/8"` -> factory `(**kwargs) -> DiT`.
DiT_models: dict[str, Callable[..., DiT]] = {name: _factory(name) for name in official_names()}
globals().update({build.__name__: build for build in DiT_models.values()})  # DiT_XL_2 ... DiT_S_8


def load_official_checkpoint(path: str | os.PathLike, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a DiT checkpoint (`.pt`) and return a model `state_dict`.

    Accepts the released files (a plain state dict) and official training checkpoints
    (`{"model", "ema", "opt", "args"}`; the EMA weights are returned unless `key="model"`). Loaded with
    `torch.load(weights_only=True)`; `module.` / `_orig_mod.` prefixes (DDP, torch.compile) are removed.
    """
    with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"{path}: expected a state dict or a dict with 'model'/'ema', got {type(obj).__name__}"
        )
    if key is None:  # a training checkpoint's EMA, else its raw weights, else a plain state dict
        key = next((k for k in ("ema", "model") if isinstance(obj.get(k), Mapping)), None)
    elif key not in obj:
        raise ValueError(f"{path}: no {key!r} entry; it has {sorted(obj)[:10]}")
    obj = obj if key is None else obj[key]
    state = {}
    for k, v in obj.items():
        while k.startswith(("module.", "_orig_mod.")):  # DDP's and torch.compile's, in either nesting
            k = k.split(".", 1)[1]
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        state[k] = v
    return state
