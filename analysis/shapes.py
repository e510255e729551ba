"""Nearest model shape for a recommended parameter count.

Candidates are the shapes of the runs themselves when the data has them (one per `model` name with
its logged N), else the 12 official DiTs (`dit_core.spec`: the families of Peebles & Xie, Table 1, x
patch sizes 2, 4, 8) with `dit_core.spec.param_count`, as the trainer logs N. Nearest means nearest in
log N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from dit_core.spec import model_config, non_embedding_param_count, official_names, param_count


@dataclass(frozen=True)
class Shape:
    name: str
    n_params: float


def family_shapes(params: str = "total", **fields) -> list[Shape]:
    """DiT-XL/2 ... DiT-S/8 with parameter counts for the given `DiTConfig` fields (default: the
    paper's 32x32x4 latents and 1000 classes), e.g. ``family_shapes(input_size=16, in_channels=1)``;
    ``params``: "total" or "non_embedding", the N axis of the fit."""
    count = non_embedding_param_count if params == "non_embedding" else param_count
    return [Shape(name, float(count(model_config(name, **fields)))) for name in official_names()]


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
    return min(candidates, key=lambda c: abs(math.log(c.n_params / n)))  # the first of equals
