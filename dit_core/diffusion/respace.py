"""Timestep respacing: keep a subset of the trained steps and recompute betas that preserve abar."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def space_timesteps(num_timesteps: int, section_counts: str | int | Sequence[int]) -> list[int]:
    """Sorted original step indices to keep.

    section_counts:
      - int or "250": that many steps, evenly spaced over 0..T-1 (both ends kept; one step keeps
        T-1, the noisiest, where sampling from pure noise starts);
      - "ddim50": DDIM's uniform stride, range(0, T, T // 50) (keeps 0, not always T-1);
      - "10,15,20" or [10, 15, 20]: split 0..T-1 into that many equal sections, each evenly spaced
        with its own count (improved DDPM's convention).
    """
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec.startswith("ddim"):
            n = _parse_count(spec[4:], section_counts)
            _check_count(n, num_timesteps, section_counts)
            stride = num_timesteps // n
            return list(range(0, num_timesteps, stride))[:n]
        counts = [_parse_count(c, section_counts) for c in spec.split(",")]
    elif isinstance(section_counts, int):
        counts = [section_counts]
    else:
        counts = [int(c) for c in section_counts]
    if not counts:
        raise ValueError("section_counts is empty; give e.g. '250', 'ddim50' or '10,15,20'")
    if len(counts) == 1:
        _check_count(counts[0], num_timesteps, section_counts)
        if counts[0] == 1:  # not linspace's step 0: a sampler would read pure noise as almost clean data
            return [num_timesteps - 1]
        return sorted({int(round(x)) for x in np.linspace(0, num_timesteps - 1, counts[0])})
    sections = np.array_split(np.arange(num_timesteps), len(counts))
    kept: list[int] = []
    for steps, count in zip(sections, counts):
        _check_count(count, len(steps), section_counts)
        idx = np.round(np.linspace(0, len(steps) - 1, count)).astype(int)
        kept.extend(int(steps[i]) for i in idx)
    return sorted(set(kept))


def _parse_count(text: str, spec: object) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"cannot parse timestep respacing {spec!r}; use e.g. '250', 'ddim50' or '10,15,20'"
        ) from None


def _check_count(count: int, available: int, spec: object) -> None:
    if count < 1:
        raise ValueError(f"timestep respacing {spec!r} asks for {count} steps; need at least 1")
    if count > available:
        raise ValueError(
            f"timestep respacing {spec!r} asks for {count} steps but only {available} are available "
            f"(the diffusion was trained with that many); use at most {available}"
        )


def respaced_betas(alphas_cumprod: np.ndarray, kept: Sequence[int]) -> np.ndarray:
    """Betas (len(kept),) whose cumulative product of (1 - beta) equals alphas_cumprod[kept]."""
    abar = np.asarray(alphas_cumprod, dtype=np.float64)[np.asarray(kept)]
    prev = np.concatenate([[1.0], abar[:-1]])
    return 1.0 - abar / prev
