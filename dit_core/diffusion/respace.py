"""Timestep respacing: keep a subset of the trained steps and recompute betas that preserve abar."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def space_timesteps(num_timesteps: int, section_counts: str | int | Sequence[int]) -> list[int]:
    """Sorted original step indices to keep; the last is always T-1, the noisiest step, because a
    sampler reads its start noise as x_{T-1} (read at a less noisy step, pure noise counts as partly
    clean data and biases every sample).

    section_counts:
      - int or "250": that many steps, evenly spaced over 0..T-1 (both ends kept; one step keeps T-1);
      - "ddim50": DDIM's uniform stride T // 50, counted down from T-1: T-1, T-1-stride, ... (ADM
        counts up from 0, range(0, T, stride), and so never keeps T-1; see docs/diffusion.md);
      - "10,15,20" or [10, 15, 20]: split 0..T-1 into that many equal sections, each evenly spaced
        with its own count (improved DDPM's convention); a section of one step keeps its noisiest.
    """
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec.startswith("ddim"):
            n = _parse_count(spec[4:], section_counts)
            _check_count(n, num_timesteps, section_counts)
            stride = num_timesteps // n
            return list(range(num_timesteps - 1 - (n - 1) * stride, num_timesteps, stride))
        counts = [_parse_count(c, section_counts) for c in spec.split(",")]
    elif isinstance(section_counts, int):
        counts = [section_counts]
    else:
        counts = [int(c) for c in section_counts]
    if not counts:
        raise ValueError("section_counts is empty; give e.g. '250', 'ddim50' or '10,15,20'")
    if len(counts) > num_timesteps:
        raise ValueError(
            f"timestep respacing {section_counts!r} has {len(counts)} sections but the diffusion has "
            f"{num_timesteps} steps; use at most {num_timesteps} sections"
        )
    kept: list[int] = []
    for i, (steps, count) in enumerate(zip(np.array_split(np.arange(num_timesteps), len(counts)), counts)):
        where = "" if len(counts) == 1 else f" in section {i + 1} (steps {steps[0]}..{steps[-1]})"
        _check_count(count, len(steps), section_counts, where)
        kept.extend(int(steps[j]) for j in _evenly_spaced(len(steps), count))
    return kept


def _evenly_spaced(size: int, count: int) -> list[int]:
    """``count`` distinct indices into 0..size-1, evenly spaced with both ends kept; one index is
    size-1, the noisiest (ADM takes 0: linspace's start)."""
    if count == 1:
        return [size - 1]
    return [int(i) for i in np.round(np.linspace(0, size - 1, count))]


def _parse_count(text: str, spec: object) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"cannot parse timestep respacing {spec!r}; use e.g. '250', 'ddim50' or '10,15,20'"
        ) from None


def _check_count(count: int, available: int, spec: object, where: str = "") -> None:
    """ValueError unless 1 <= count <= available; ``where`` names a section (empty: the whole process)."""
    if count < 1:
        raise ValueError(f"timestep respacing {spec!r} asks for {count} steps{where}; need at least 1")
    if count > available:
        why = " (the diffusion was trained with that many)" if not where else ""
        raise ValueError(
            f"timestep respacing {spec!r} asks for {count} steps{where} but only {available} are "
            f"available{why}; use at most {available}{' there' if where else ''}"
        )


def respaced_betas(alphas_cumprod: np.ndarray, kept: Sequence[int]) -> np.ndarray:
    """Betas (len(kept),) whose cumulative product of (1 - beta) equals alphas_cumprod[kept]."""
    abar = np.asarray(alphas_cumprod, dtype=np.float64)[np.asarray(kept)]
    prev = np.concatenate([[1.0], abar[:-1]])
    return 1.0 - abar / prev
