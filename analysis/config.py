"""`AnalysisConfig`: what the analysis needs besides the points, and the rule each setting must keep.

A module of its own, light to import (no pandas or scipy): the launcher reads its defaults to print
the fit command a sweep needs (`sweeps.launch.fit_command`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from analysis.bootstrap import min_resamples


@dataclass(frozen=True)
class AnalysisConfig:
    """Everything the analysis needs besides the points."""

    n_bootstrap: int = 200
    seed: int = 0
    drop_highest_loss: int = 0  # drop the k highest-loss points (Epoch's Chinchilla convention: 5)
    outlier_sigma: float | None = None  # drop points whose log-residual from a first fit is > s robust sigmas
    delta: float = 1e-3
    bootstrap_by_run: bool = True  # resample whole runs when there are several points per run
    isoflop_gap_dex: float = 0.1
    level: float = 0.95
    min_steps: int = 50  # runs that ended below this many optimizer steps are dropped
    all_points: bool = False  # True: every intermediate point, whatever the lr schedule
    average_seeds: bool = True  # runs that differ only in their seed: one point (their mean) per step
    train_seeds: tuple[int, ...] = ()  # only the runs trained with these seeds (empty: every run)
    best_lr: bool = True  # cells trained at several lrs: only the lr with the lowest final loss
    data_axis: str = "images"  # "images" | "tokens" (images x tokens per image)
    params: str = "total"  # "total" | "non_embedding" (Kaplan et al. 2020)
    effective_data: bool = False  # D -> Muennighoff et al. 2023's D' (needs unique images per run)
    r_star: float | None = None  # R* of D'; None with effective_data: fitted (profile over a grid)
    extrapolation_factor: float = 10.0  # `extrapolating` beyond this x the compute measured (either side)
    disagreement_factor: float = 3.0  # `not_identified` when N_opt differ by more (intervals apart)
    data_units: str | None = None  # the unit of D when not set by data_axis (a CSV's own D column)

    def __post_init__(self) -> None:
        for name, (ok, what) in CONFIG_RULES.items():
            if not ok(value := getattr(self, name)):
                flag = "--bootstrap" if name == "n_bootstrap" else "--" + name.replace("_", "-")
                raise ValueError(f"{name} ({flag}) must be {what}, got {value}")
            if name == "n_bootstrap" and value == 1:  # else "only 1 of the 1 refits succeeded ... add runs"
                raise ValueError(
                    "n_bootstrap (--bootstrap) is 1, but a percentile interval needs at least 2 resamples: "
                    "give 0 (no intervals) or 2 or more (default 200)"
                )
        min_resamples(self.level)  # ValueError unless 0 < level < 1


#: AnalysisConfig field -> (valid, what it must be); its flag is --field-name (n_bootstrap: --bootstrap)
CONFIG_RULES = {
    "n_bootstrap": (lambda v: v >= 0, ">= 0 (0 = no intervals)"),
    "delta": (lambda v: v > 0, "> 0 (the Huber loss's threshold)"),
    "drop_highest_loss": (lambda v: v >= 0, ">= 0"),
    "outlier_sigma": (lambda v: v is None or v > 0, "> 0"),
    "seed": (lambda v: v >= 0, ">= 0 (it seeds the bootstrap resamples)"),
    "min_steps": (lambda v: v >= 0, ">= 0"),
    "train_seeds": (lambda v: all(isinstance(s, int) and s >= 0 for s in v), "whole numbers >= 0, e.g. 0,1"),
    "r_star": (lambda v: v is None or 0 < v < math.inf, "a finite number > 0 (Muennighoff et al.: 15.4)"),
}  # r_star inf: D' = U + inf x 0 = NaN
