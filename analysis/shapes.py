"""Nearest model shape for a recommended parameter count.

Candidates are the shapes of the runs themselves when the data has them (one per `model` name with
its logged N), else the DiT family table (Peebles & Xie, Table 1) x patch sizes {2, 4, 8} with the
parameter count below. Nearest means nearest in log N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

# name -> (depth, hidden size, heads)
DIT_FAMILY = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
DIT_PATCHES = (2, 4, 8)


def dit_param_count(
    depth: int,
    hidden: int,
    patch: int,
    *,
    input_size: int = 32,
    in_channels: int = 4,
    num_classes: int = 1000,
    learn_sigma: bool = True,
    mlp_ratio: float = 4.0,
    freq_dim: int = 256,
) -> int:
    """Trainable parameters of an official-style DiT (adaLN-Zero); the fixed sin-cos pos-embed is not counted.

    patch embed conv + timestep MLP (freq_dim -> h -> h) + label table (classes + 1 null) +
    depth x (qkv, proj, MLP, adaLN 6h) + final layer (adaLN 2h, linear to p*p*out_channels).
    input_size is unused by the count (kept so a call can pass a whole config).
    """
    h = hidden
    m = int(h * mlp_ratio)
    out_ch = in_channels * (2 if learn_sigma else 1)
    patch_embed = in_channels * patch * patch * h + h
    t_embed = freq_dim * h + h + h * h + h
    y_embed = (num_classes + 1) * h
    block = (3 * h * h + 3 * h) + (h * h + h) + (h * m + m) + (m * h + h) + (6 * h * h + 6 * h)
    final = (2 * h * h + 2 * h) + (h * patch * patch * out_ch + patch * patch * out_ch)
    return patch_embed + t_embed + y_embed + depth * block + final


@dataclass(frozen=True)
class Shape:
    name: str
    n_params: float


def family_shapes(**kwargs) -> list[Shape]:
    """DiT-S/2 ... DiT-XL/8 with parameter counts for the given data shape (kwargs of dit_param_count)."""
    return [
        Shape(f"DiT-{k}/{p}", float(dit_param_count(d, w, p, **kwargs)))
        for k, (d, w, _) in DIT_FAMILY.items()
        for p in DIT_PATCHES
    ]


def shapes_from_points(points: pd.DataFrame) -> list[Shape]:
    """One candidate per distinct model name in the data, with its logged N."""
    if "model" not in points.columns or points["model"].isna().all():
        return []
    g = points.dropna(subset=["model"]).groupby("model")["N"].median()
    return [Shape(str(k), float(v)) for k, v in g.items()]


def nearest_shape(n: float, candidates: list[Shape]) -> Shape:
    """The candidate nearest to n parameters in log N."""
    if not candidates:
        raise ValueError("no candidate shapes to choose from")
    i = int(np.argmin([abs(math.log(c.n_params / n)) for c in candidates]))
    return candidates[i]
