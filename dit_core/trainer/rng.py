"""Per-step randomness as a function of ``(seed, step)``, plus global RNG state capture.

Every random draw of a training step (timesteps, noise, label dropout) comes from a generator
re-seeded with ``mix_seed(seed, step)``, so a resumed run draws exactly what the uninterrupted
run drew, whatever happened before. The global RNGs (torch, numpy, python) are still saved in
checkpoints, as plain tensors/lists, for any code that uses them.
"""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["StepRandom", "get_rng_state", "mix_seed", "set_rng_state"]

_STEP_STREAM = 0x7D17


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from non-negative ints (NumPy's SeedSequence hash)."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class StepRandom:
    """The draws of one training step, for this rank's share of the global batch.

    ``draw(step, x)`` returns ``(u, noise, drop)`` for the local batch x ``(n, C, H, W)``: u ``(n,)``
    float64 uniforms for the timesteps, noise like x, drop ``(n,)`` int64 (1 = null label) or None.
    The draws are made for the whole global batch (``n * world_size`` examples) from a generator
    seeded by ``(seed, step)`` and rank ``r`` takes rows ``[r*n, (r+1)*n)``, so a run gives the same
    result whatever the number of processes (up to the order of the gradient all-reduce).
    """

    def __init__(
        self, seed: int, device: torch.device, dropout_prob: float, rank: int = 0, world_size: int = 1
    ):
        self.seed, self.dropout_prob = int(seed), float(dropout_prob)
        self.rank, self.world = int(rank), int(world_size)
        self.generator = torch.Generator(device=device)

    def draw(self, step: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        g = self.generator
        g.manual_seed(mix_seed(self.seed, _STEP_STREAM, step))
        n = x.shape[0]
        total, lo = n * self.world, n * self.rank
        u = torch.rand(total, generator=g, device=g.device, dtype=torch.float64)[lo : lo + n]
        noise = torch.randn((total, *x.shape[1:]), generator=g, device=g.device, dtype=x.dtype)[lo : lo + n]
        drop = None
        if self.dropout_prob > 0:
            drop = (torch.rand(total, generator=g, device=g.device) < self.dropout_prob).long()[lo : lo + n]
        return u, noise, drop


def get_rng_state() -> dict:
    """Global RNG states as tensors, lists and ints (loadable with ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
