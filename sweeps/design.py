"""Where an IsoFLOP study puts its model sizes, so that every budget brackets the optimum
(docs/sweeps.md, "Designs that bracket the optimum"): shapes on the families' depth/width curve
(`FamilyCurve`), a prior N_opt(C) (`RatioPrior`, `FitPrior`), the sizes of each budget
(`place_sizes`), and the adaptive loop that refits after each budget (`launch_adaptive`; its
centres are recorded in ``<sweep folder>/design.json``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dit_core.atomic import atomic_write_text
from dit_core.spec import (
    FAMILIES,
    budget_steps,
    non_embedding_param_count,
    param_count,
    train_flops_per_image,
)
from sweeps.families import ModelShape, Scale
from sweeps.grid import (
    MIN_SIZE_RATIO,
    Cell,
    SweepSpec,
    cell_model_config,
    expand,
    format_budget,
    make_cell,
    parse_budget,
)
from sweeps.task import cell_dir

log = logging.getLogger(__name__)

FAMILY_HEAD_DIM = 64  # the head width of Table 1's S, B and L (XL: 1152 / 16 = 72); designed shapes use it
USABLE = ("ok", "extrapolating")
RECORD = "design.json"
LAW_NAMES = {"parametric": "parametric law", "isoflop": "IsoFLOP N_opt law", "frontier": "frontier N_opt law"}
#: how a budget's best size sits among its sizes (`analysis.isoflop.slice_sides`), where it is no minimum
_CENSORED = {"below": "the smallest: censored", "above": "the largest: censored"}


# ---------------------------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class FamilyCurve:
    """depth = exp(log_c) x width^gamma through the (scaled) families; widths k x head_dim."""

    log_c: float
    gamma: float
    head_dim: int

    def depth(self, width: float) -> float:
        return math.exp(self.log_c + self.gamma * math.log(width))

    def shapes_at(self, width: int) -> list[ModelShape]:
        """The shapes ``d{depth}w{width}`` of one width, heads = width / head_dim: the curve's depth
        rounded down and up (at least 1)."""
        d = self.depth(width)
        depths = sorted({max(1, math.floor(d)), max(1, math.ceil(d))})
        return [ModelShape(f"d{x}w{width}", x, width, width // self.head_dim) for x in depths]


def family_curve(scale: Scale, head_dim: int | None = None) -> FamilyCurve:
    """Least squares of ln depth on ln width over S, B, L, XL, each scaled by ``scale``; head dim
    None = ``scale.head_dim``, else the families' 64 scaled like their widths (8 at width / 8)."""
    w = np.log([s[1] / scale.width_div for s in FAMILIES.values()])
    d = np.log([s[0] / scale.depth_div for s in FAMILIES.values()])
    gamma, log_c = np.polyfit(w, d, 1)
    hd = (scale.head_dim or max(4, FAMILY_HEAD_DIM // scale.width_div)) if head_dim is None else head_dim
    if hd < 4 or hd % 4:
        raise ValueError(
            f"head dim {hd} must be a positive multiple of 4 (sin-cos/RoPE embeddings need widths % 4 == 0); "
            "give --head-dim 8, 16, ..."
        )
    return FamilyCurve(float(log_c), float(gamma), hd)


class Candidate(NamedTuple):
    """A shape at one patch size: size measure n (total or non-embedding parameters), FLOPs/image."""

    model: ModelShape
    n: float
    fpi: float


def _candidate(spec: SweepSpec, shape: ModelShape, patch: int, n_axis: str) -> Candidate:
    cfg = cell_model_config(spec, shape, patch)
    n = non_embedding_param_count(cfg) if n_axis == "non_embedding" else param_count(cfg)
    return Candidate(shape, float(n), train_flops_per_image(cfg))


def ladder(spec: SweepSpec, patch: int, curve: FamilyCurve, n_axis: str, n_max: float) -> list[Candidate]:
    """Shapes along the curve, widths head_dim, 2 head_dim, ... up to size ``n_max``; sorted by n.
    Widths up to the values a token embeds (patch^2 x channels) are left out: they leave no room beyond
    the patch itself (d2 w4 at patch 2, grey, stayed at val loss 0.40 where d2 w8 reached 0.067;
    docs/study.md, session 17)."""
    out: list[Candidate] = []
    for m in range(1, 1 << 14):
        width = m * curve.head_dim
        if width <= patch * patch * spec.data.in_channels:
            continue
        row = [_candidate(spec, shape, patch, n_axis) for shape in curve.shapes_at(width)]
        out += row
        if min(c.n for c in row) > n_max:
            break
    return sorted(out, key=lambda c: (c.n, c.model.depth))


def continuous_curve(spec: SweepSpec, patch: int, curve: FamilyCurve, n_axis: str):
    """(n, flops per image) along the curve with a real-valued depth (both are linear in depth),
    on a geometric grid of widths from 4 to 2^17: arrays of shape (W,), increasing."""
    widths = np.unique(np.round(4 * 1.03 ** np.arange(0, 400) / 4).astype(int) * 4)
    widths = widths[widths <= 1 << 17]
    ns, fs = [], []
    for w in widths:
        one, two = (_candidate(spec, ModelShape("c", d, int(w), 1), patch, n_axis) for d in (1, 2))
        depth = max(1.0, curve.depth(float(w)))
        ns.append(one.n + (depth - 1) * (two.n - one.n))
        fs.append(one.fpi + (depth - 1) * (two.fpi - one.fpi))
    return np.array(ns), np.array(fs)


# ---------------------------------------------------------------------------------------------- priors


@dataclass
class RatioPrior:
    """N_opt(C) where tokens / N = R (``spec.tokens_per_param``; a token is one patch of one image):
    solves C = train_flops_per_image(N) x R N / tokens_per_image along the family curve (log-log
    interpolation; FLOPs per image is not exactly 6 N x tokens)."""

    spec: SweepSpec
    curve: FamilyCurve
    tokens_per_param: float
    n_axis: str = "total"
    _cache: dict = field(default_factory=dict, repr=False)

    def n_opt(self, compute: float, patch: int) -> float:
        if patch not in self._cache:
            self._cache[patch] = continuous_curve(self.spec, patch, self.curve, self.n_axis)
        n, fpi = self._cache[patch]
        tokens = (self.spec.data.input_size // patch) ** 2
        g = np.log(fpi * self.tokens_per_param * n / tokens)  # ln C at each point of the curve
        if not g[0] <= math.log(compute) <= g[-1]:
            raise ValueError(
                f"budget {format_budget(compute)}: at {self.tokens_per_param:g} tokens per parameter the "
                f"compute-optimal size lies off the family curve (C spans {math.exp(g[0]):.3g}.."
                f"{math.exp(g[-1]):.3g} FLOPs there); change the budget or --tokens-per-param"
            )
        return float(np.exp(np.interp(math.log(compute), g, np.log(n))))

    def describe(self) -> str:
        return f"prior: {self.tokens_per_param:g} tokens per parameter"


@dataclass
class FitPrior:
    """N_opt(C) of a previous analysis (``results.json`` of ``analysis/fit_scaling.py``)."""

    path: str
    kind: str  # a key of LAW_NAMES
    law: dict
    n_axis: str = "total"
    overall_status: str = "ok"
    patches: tuple[float, ...] = ()  # the patch sizes of the fit's IsoFLOP slices (none: unknown)

    def n_opt(self, compute: float, patch: int) -> float:
        from analysis.laws import power_law
        from analysis.parametric import optimal_allocation

        p = self.law
        if self.kind == "parametric":  # E does not move the optimum
            return float(optimal_allocation({**p, "E": 0.0}, compute, p["k"])[0])
        return float(power_law(p, compute))

    def describe(self) -> str:
        return f"prior: {LAW_NAMES[self.kind]} of {self.path} (overall status {self.overall_status})"


def _law_numbers(d: dict, keys: tuple[str, ...], positive: tuple[str, ...]) -> tuple[dict, str]:
    """({key: float}, "") when every key of ``d`` is a finite number (``A``, ``B``, ``positive`` and
    ``flops_per_param_datum`` > 0), else ({}, what is wrong): a results.json whose fit withheld
    (null) or lost (NaN) a value, or of an older or other format."""
    out = {}
    for k in keys:
        v = d.get(k)
        ok = _number(v)
        if not ok or (v <= 0 and (k in positive or k in ("A", "B", "flops_per_param_datum"))):
            return {}, f"has {k} = {json.dumps(v)}" + ("" if ok else " (not a finite number)")
        out[k] = float(v)
    return out, ""


def _fit_patches(data: dict) -> tuple[float, ...]:
    """The patch sizes a results.json's IsoFLOP slices name (empty where none is recorded)."""
    slices = (data.get("approach2_isoflop") or {}).get("slices") or []
    return tuple(
        sorted({float(x["patch"]) for x in slices if isinstance(x, dict) and _number(x.get("patch"))})
    )


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_fit_prior(path: str, spec: SweepSpec | None = None) -> FitPrior:
    """The first usable N_opt law of a ``results.json``: the parametric law (approach 3, when its
    allocation is identified), else the IsoFLOP law (approach 2), else the frontier's (approach 1).
    ValueError naming what is missing or not identified; with ``spec``, first a ValueError when the fit
    is of other data than the sweep's (`_check_space`): refitting it would not help."""
    hint = (
        "write one with `python analysis/fit_scaling.py --json FIT.json`, "
        "or drop --prior to use --tokens-per-param"
    )
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"--prior {path}: no such file; {hint}") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--prior {path}: not readable JSON ({e}); {hint}") from None
    if not isinstance(data, dict) or "status" not in data:
        raise ValueError(f"--prior {path}: not an analysis results.json (no 'status'); {hint}")
    try:
        return _prior_of_results(data, str(path), spec)
    except (AttributeError, TypeError, KeyError, IndexError) as e:  # a section of the wrong kind
        raise ValueError(
            f"--prior {path}: not an analysis results.json (a section of the wrong kind: {type(e).__name__}: "
            f"{e}); {hint}"
        ) from None


def _prior_of_results(data: dict, path: str, spec: SweepSpec | None) -> FitPrior:
    """`load_fit_prior`'s reading of a parsed results.json ``data``."""
    n_axis = (data.get("axes") or {}).get("params", "total")
    overall = str(data["status"])
    space = data.get("token_space") if isinstance(data.get("token_space"), dict) else None
    if spec is not None:
        _check_space(path, space, spec)
    p3 = data.get("approach3_parametric") or {}
    tried = []
    if p3.get("status") in USABLE and data.get("a") is not None:
        law, bad = _law_numbers(data, ("A", "B", "alpha", "beta", "flops_per_param_datum"), ("alpha", "beta"))
        if not bad:
            law["k"] = law.pop("flops_per_param_datum")
            return FitPrior(path, "parametric", law, n_axis, overall, _fit_patches(data))
        tried.append(f"parametric law {p3['status']} but {bad}")
    else:
        tried.append(
            f"parametric law {p3.get('status', 'absent')}"
            + ("" if data.get("a") is not None else ", allocation withheld")
        )
    for key, kind in (("approach2_isoflop", "isoflop"), ("approach1_frontier", "frontier")):
        part = data.get(key) or {}
        law = part.get("N_opt")
        if part.get("status") in USABLE and isinstance(law, dict):
            nums, bad = _law_numbers(law, ("A", "alpha"), ())
            if not bad and nums["alpha"] >= 0:
                bad = f"N_opt = A C^{-nums['alpha']:.3g} does not grow with compute"
            if not bad:
                return FitPrior(path, kind, nums, n_axis, overall, _fit_patches(data))
            tried.append(f"{kind} {part['status']} but its N_opt law {bad}")
            continue
        tried.append(f"{kind} {part.get('status', 'absent')}" + ("" if law else " without an N_opt law"))
    reasons = "; ".join(map(str, data.get("reasons", [])[:2]))
    raise ValueError(
        f"--prior {path}: no usable N_opt law (status {overall}: {', '.join(tried)})"
        + (f"; {reasons}" if reasons else "")
        + "; use --tokens-per-param, or refit with budgets that bracket the optimum"
    )


def _check_space(path: str, space: dict | None, spec: SweepSpec) -> None:
    """ValueError naming both when a prior's results.json ``token_space`` (data name, input size,
    channels) is not the sweep's: its N_opt law is in another unit (a token of 8x8 latents is not one of
    16x16 pixels). A results.json without the record (``space`` None: written before session 40, or from
    a CSV without those columns) is used with a logged warning. Patch sizes are noted in the plan
    (`plan_budgets`)."""
    ours = {"data": spec.data.name, "input_size": spec.data.input_size, "in_channels": spec.data.in_channels}
    if space is None:
        log.warning(
            "--prior %s does not record the data it was fitted on (written before session 40): it is used "
            "as if fitted on %s; refit it with `python analysis/fit_scaling.py --json` to have it checked",
            path,
            _space_text(ours),
        )
        return
    theirs = {k: space.get(k) or [] for k in ours}
    unknown = [k for k, v in theirs.items() if not v]
    differ = [k for k, v in theirs.items() if v and [ours[k]] != [type(ours[k])(x) for x in v]]
    if differ:
        fitted = ", ".join(f"{k} {'/'.join(map(str, v)) or '?'}" for k, v in theirs.items())
        raise ValueError(
            f"--prior {path} was fitted on {fitted}, this sweep trains on {_space_text(ours)} "
            f"(they differ in {', '.join(differ)}): its N_opt law counts parameters and tokens of other "
            "data; fit the runs of this data (`python analysis/fit_scaling.py --experiment NAME --json "
            "FIT.json`) and pass that, or drop --prior to use --tokens-per-param"
        )
    if unknown:
        log.warning("--prior %s does not record its %s: not checked", path, ", ".join(unknown))


def _space_text(space: dict) -> str:
    return f"data {space['data']}, input_size {space['input_size']}, in_channels {space['in_channels']}"


def make_prior(spec: SweepSpec) -> RatioPrior | FitPrior:
    """The sweep's prior: ``spec.prior`` (a results.json) if set, else the tokens-per-parameter ratio."""
    if spec.prior:
        return load_fit_prior(spec.prior, spec)
    return RatioPrior(spec, family_curve(spec.scale, spec.design_head_dim), spec.tokens_per_param)


# ---------------------------------------------------------------------------------------------- placement


def size_targets(centre: float, k: int, spread: float) -> np.ndarray:
    """k sizes log-spaced from centre / spread to centre x spread, shape (k,)."""
    return centre * spread ** np.linspace(-1.0, 1.0, k)


def place_sizes(
    cands: list[Candidate], centre: float, k: int, spread: float, min_ratio: float
) -> list[Candidate]:
    """k of ``cands`` (sorted by n) closest to the log-spaced targets (least squares in ln n), with
    neighbours at least ``min_ratio`` apart; fewer (down to 1) when k do not fit. Exact dynamic
    programme over the candidates in order."""
    n = np.log([c.n for c in cands])
    for kk in range(min(k, len(cands)), 0, -1):
        t = np.log(size_targets(centre, kk, spread)) if kk > 1 else np.array([math.log(centre)])
        # prev[i]: the last candidate index at least min_ratio below candidate i
        prev = np.searchsorted(n, n - math.log(min_ratio), side="right") - 1
        cost = np.full((kk, len(n)), np.inf)
        arg = np.zeros((kk, len(n)), int)
        cost[0] = (n - t[0]) ** 2
        for j in range(1, kk):
            best = np.minimum.accumulate(cost[j - 1])
            where = np.array([int(np.argmin(cost[j - 1][: p + 1])) if p >= 0 else -1 for p in prev])
            ok = prev >= 0
            cost[j, ok] = best[prev[ok]] + (n[ok] - t[j]) ** 2
            arg[j] = where
        if np.isfinite(cost[-1]).any():
            picks = [int(np.argmin(cost[-1]))]  # the last size, then back through each one's predecessor
            for j in range(kk - 1, 0, -1):
                picks.append(int(arg[j, picks[-1]]))
            return [cands[i] for i in reversed(picks)]
    return []


@dataclass
class BudgetPlan:
    """The sizes of one (budget, patch size) slice and where they came from."""

    budget: float
    patch: int
    centre: float
    source: str
    cells: list[Cell]
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        from sweeps.table import format_count

        sizes = ", ".join(format_count(c.params) for c in self.cells)
        head = (
            f"budget {format_budget(self.budget)} patch {self.patch}: centre N_opt {self.centre:.3g} "
            f"({self.source}); sizes {sizes}"
        )
        return "\n".join([head] + [f"  {n}" for n in self.notes])


def first_centre(spec: SweepSpec, prior, budget: float, patch: int) -> tuple[float, str]:
    """(N, source) a budget is centred on before any fit: ``spec.isoflop_centres``, else the prior."""
    given = spec.isoflop_centres.get(budget)
    if given:
        return float(given), "centre given for this budget"
    return prior.n_opt(budget, patch), prior.describe()


def plan_budgets(spec: SweepSpec, prior=None) -> list[BudgetPlan]:
    """The isoflop/adaptive design of ``spec``: per budget (ascending) and patch size, the cells."""
    prior = prior if prior is not None else make_prior(spec)
    curve = family_curve(spec.scale, spec.design_head_dim)
    n_axis = getattr(prior, "n_axis", "total")
    k, spread = spec.sizes_per_budget, spec.size_spread
    # neighbours differ by at least the square root of the targets' own ratio, and MIN_SIZE_RATIO
    ratio = max(MIN_SIZE_RATIO, math.sqrt(spread ** (2.0 / (k - 1))))
    lo_s, hi_s = spec.fewest_steps(), spec.isoflop_max_steps
    plans: list[BudgetPlan] = []
    for budget in sorted(set(spec.budgets)):
        for patch in spec.patch_sizes:
            centre, source = first_centre(spec, prior, budget, patch)
            # a slice cut by the step window may shift by one more spread factor, never further
            window = (centre / spread**2, centre * spread**2)
            near = [c for c in ladder(spec, patch, curve, n_axis, window[1]) if window[0] <= c.n <= window[1]]
            cands = [c for c in near if lo_s <= budget_steps(budget, c.fpi, spec.batch_size) <= hi_s]
            cut = [c.n for c in near if c not in cands]
            picked = place_sizes(cands, centre, k, spread, ratio)
            if len(picked) < 3:
                raise ValueError(
                    f"IsoFLOP budget {format_budget(budget)} spans {len(picked)} model size(s) with "
                    f"{lo_s}..{hi_s} steps within {spread**2:g}x of its N_opt {centre:.3g} ({source}, patch "
                    f"{patch}); need 3: "
                    + (
                        _ladder_fix(near, curve, window)
                        if _head_dim_too_coarse(spec, patch, curve, n_axis, near, window)
                        else _window_fix(spec, patch, curve, n_axis, budget, window)
                    )
                )
            notes = []
            fitted = getattr(prior, "patches", ())
            if fitted and float(patch) not in fitted and source == prior.describe():
                at = ", ".join(f"{x:g}" for x in fitted)
                notes.append(
                    f"the prior was fitted at patch {at}, this slice is patch {patch}: its N_opt law is "
                    "used as fitted (FLOPs per image differ by patch size)"
                )
            if len(picked) < k:
                notes.append(f"only {len(picked)} of {k} sizes fit the step window {lo_s}..{hi_s}")
            t = size_targets(centre, k, spread)
            # an end the step window cut: its size short of the target, and a cut size beyond it
            ends = ((0, "small", "smallest", "above", operator.gt, t[0] * math.sqrt(ratio)),
                    (-1, "large", "largest", "below", operator.lt, t[-1] / math.sqrt(ratio)))  # fmt: skip
            for i, end, most, side, past, bound in ends:
                if past(edge := picked[i].n, bound) and any(past(edge, n) for n in cut):
                    notes.append(
                        f"the step window {lo_s}..{hi_s} cuts the {end} end ({most} {edge:.3g} for a target "
                        f"{t[i]:.3g})" + (f"; every size is {side} the centre" if past(edge, centre) else "")
                    )
            cells = [make_cell(spec, c.model, patch, budget) for c in picked]
            plans.append(BudgetPlan(budget, patch, centre, source, cells, notes))
    return plans


def _head_dim_too_coarse(spec, patch: int, curve: FamilyCurve, n_axis: str, near: list, window) -> bool:
    """Whether the centre's ``window`` (N lo, N hi) holds fewer than 3 shapes at the head dim and 3 or
    more at head dim 4 (the finest): the widths' step, not the prior or the step window, is at fault."""
    if len(near) >= 3 or curve.head_dim <= 4:
        return False
    fine = dataclasses.replace(curve, head_dim=4)
    return sum(window[0] <= c.n <= window[1] for c in ladder(spec, patch, fine, n_axis, window[1])) >= 3


def _ladder_fix(near: list[Candidate], curve: FamilyCurve, window) -> str:
    """Why a centre's ``window`` (N lo, N hi) holds fewer than 3 shapes at any step count: the widths
    are multiples of the head dim, too coarse for models this small."""
    sizes = ", ".join(f"{c.model.name} ({c.n:.3g})" for c in near) or "none"
    return (
        f"the family curve's widths are multiples of the head dim {curve.head_dim} (--head-dim, "
        f"scale.head_dim), and N {window[0]:.3g}..{window[1]:.3g} holds {len(near)} such shape(s): {sizes}; "
        "lower --head-dim (the demo uses 4) for models this small"
    )


def _window_fix(spec, patch: int, curve, n_axis: str, budget: float, window) -> str:
    """What to change when a budget's ``window`` (N lo, N hi) around its centre holds too few sizes
    within the step window: which step bound excludes them, the sizes (on the family curve) that the
    budget can train within it, and, for a centre far from those, that the prior is off."""
    lo_s, hi_s = spec.fewest_steps(), spec.isoflop_max_steps
    n, fpi = continuous_curve(spec, patch, curve, n_axis)
    steps = budget / (spec.batch_size * fpi)  # falls as n grows
    fits = (steps >= lo_s) & (steps <= hi_s)
    if not fits.any():
        if steps[0] < lo_s:
            return (
                f"even the smallest shape on the family curve (N {n[0]:.3g}) makes {steps[0]:.3g} steps, "
                f"fewer than {lo_s}: raise the budget or lower --min-steps (min_steps)"
            )
        return (
            f"even the largest shape on the family curve (N {n[-1]:.3g}) makes {steps[-1]:.3g} steps, more "
            f"than {hi_s}: lower the budget, or raise --max-steps or --batch-size"
        )
    n_lo, n_hi = float(n[fits].min()), float(n[fits].max())
    can = f"with {lo_s}..{hi_s} steps this budget trains N {n_lo:.3g}..{n_hi:.3g} on the family curve"
    small = (
        "no shape on the family curve is smaller"
        if n_lo <= n[0]
        else f"smaller models make more than {hi_s} steps"
    )
    large = f"larger models make fewer than {lo_s} steps"
    fix_small = "raise --max-steps or --batch-size, or lower the budget"
    fix_large = "lower --min-steps (min_steps) or raise the budget"
    off = (
        " (a prior from another data set, resolution, patch size or parameter count? check --prior, or "
        "use --tokens-per-param or isoflop_centres)"
    )
    if window[1] < n_lo:
        fix = fix_small if n_lo > n[0] else "centre it on a larger N"
        return f"{can}, all above the centre's window ({small}): {fix}{off}"
    if window[0] > n_hi:
        return f"{can}, all below the centre's window ({large}): {fix_large}{off}"
    fixes = [
        f for f, cut in ((fix_small, window[0] < n_lo and n_lo > n[0]), (fix_large, window[1] > n_hi)) if cut
    ]
    return f"{can}; " + "; or ".join(fixes + ["widen --spread"])


def design_cells(spec: SweepSpec) -> list[Cell]:
    """All cells of an isoflop/adaptive design (what `sweeps.grid.expand` returns for it)."""
    return [c for p in plan_budgets(spec) for c in p.cells]


# ---------------------------------------------------------------------------------------------- adaptive


def read_record(sweep_dir: Path) -> dict[float, dict]:
    """{budget: {"centre", "source", "cells", ...}} of an adaptive sweep ({} before its first launch)."""
    path = Path(sweep_dir) / RECORD
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {parse_budget(k): v for k, v in data.get("budgets", {}).items()}


def _write_record(sweep_dir: Path, record: dict[float, dict]) -> None:
    body = {"design": "adaptive", "budgets": {format_budget(b): v for b, v in sorted(record.items())}}
    atomic_write_text(Path(sweep_dir) / RECORD, json.dumps(body, indent=2))


def placed(spec: SweepSpec, sweep_dir: Path) -> dict[float, dict]:
    """The entries of `read_record` of ``spec``'s budgets: those of its budgets placed so far."""
    return {b: v for b, v in read_record(sweep_dir).items() if b in spec.budgets}


def recorded_spec(spec: SweepSpec, sweep_dir: Path) -> SweepSpec | None:
    """The adaptive sweep restricted to its placed budgets, each at its recorded centre (what
    ``status`` shows); None when no budget has been placed yet."""
    rec = placed(spec, sweep_dir)
    if not rec:
        return None
    return spec.replace(budgets=sorted(rec), isoflop_centres={b: v["centre"] for b, v in rec.items()})


@dataclass
class Centre:
    """Where a budget's sizes are centred and why."""

    n: float
    source: str
    note: str = ""


@dataclass
class AdaptiveStep:
    budget: float
    centre: Centre
    cells: list[str]
    launch: object  # sweeps.runner.LaunchResult
    finished: bool


@dataclass
class AdaptiveResult:
    """Per budget: its centre, cells and launch; ``final`` is the refit after the last finished
    budget at the largest budget (its N_opt), ``stopped`` says why the loop ended early."""

    steps: list[AdaptiveStep] = field(default_factory=list)
    final: Centre | None = None
    stopped: str = ""

    @property
    def errors(self) -> dict[str, str]:
        return {k: v for s in self.steps for k, v in s.launch.errors.items()}

    @property
    def logs(self) -> dict[str, str]:
        return {k: v for s in self.steps for k, v in s.launch.logs.items()}


def sweep_points(spec: SweepSpec, tracking_uri: str, cell_ids: list[str]):
    """The analysis points (`analysis.runs.load_runs`) of this sweep's ``cell_ids``."""
    from analysis.runs import load_runs
    from sweeps.state import read_runs

    runs = read_runs(tracking_uri, spec.experiment, spec.name)
    ids = {r.info.run_id for c in cell_ids for r in runs.get(c, [])[:1]}
    pts = load_runs(spec.experiment, tracking_uri)
    return pts[pts["run_id"].isin(ids)].reset_index(drop=True)


def refit_centre(spec: SweepSpec, prior, points, done: list[float], target: float, patch: int) -> Centre:
    """N_opt at ``target`` FLOPs from the finished budgets ``done``.

    The analysis' prediction (`analysis.pipeline.analyze` + `predict`, no bootstrap) when it
    identifies N_opt and lies within ``size_spread`` of the anchor; the anchor is the latest
    budget's IsoFLOP minimum, or its best size when the minimum is not inside its sizes (censored),
    grown to ``target`` with the prior's exponent, and is used when the fit withholds N_opt or
    strays further; with neither, the prior (the note says why)."""
    from analysis.pipeline import AnalysisConfig, analyze, predict, prepare

    cfg = AnalysisConfig(
        n_bootstrap=0, min_steps=spec.fewest_steps(), params=getattr(prior, "n_axis", "total")
    )
    fit, why = None, ""
    try:
        pr = predict(analyze(points, cfg), target)
        if pr.n_opt is not None:
            budgets = ",".join(format_budget(b) for b in sorted(done))
            fit = Centre(pr.n_opt.value, f"fit of budgets {budgets}: {pr.source}", pr.status.text())
        else:
            why = f"the fit withholds N_opt ({'; '.join(pr.status.reasons)})"  # all: the first may not be why
    except ValueError as e:
        why = f"no fit yet ({e})"
    try:
        anchor = _anchor(prepare(points, cfg).points, max(done), prior, target, patch)
    except ValueError as e:
        anchor, why = None, f"{why}; no usable points ({e})"
    if fit is not None and (anchor is None or abs(math.log(fit.n / anchor.n)) <= math.log(spec.size_spread)):
        return fit
    if fit is not None:
        why = (
            f"the fit's N_opt {fit.n:.3g} ({fit.source}) is more than {spec.size_spread:g}x from this anchor"
        )
    if anchor is not None:
        return Centre(anchor.n, anchor.source, why)
    return Centre(prior.n_opt(target, patch), prior.describe() + " (fit not identified)", why)


def _anchor(pts, last: float, prior, target: float, patch: int) -> Centre | None:
    """The latest budget's IsoFLOP minimum (or best size) grown to ``target`` as the prior grows."""
    from analysis.isoflop import isoflop_profiles, slice_sides

    growth = prior.n_opt(target, patch) / prior.n_opt(last, patch)
    grown = " grown with the prior's exponent" if target != last else ""  # the final refit: at `last`
    at = format_budget(last)
    for p in isoflop_profiles(pts):
        if abs(math.log(p.compute / last)) < 0.25:
            return Centre(p.n_opt * growth, f"IsoFLOP minimum at {at} ({p.n_opt:.3g}){grown}")
    for s in slice_sides(pts):
        if abs(math.log(s.compute / last)) < 0.25 and s.side != "single":
            where = _CENSORED.get(s.side, "interior")
            return Centre(s.best_n * growth, f"best size at {at} ({s.best_n:.3g}, {where}){grown}")
    return None


def check_adaptive(spec: SweepSpec) -> None:
    """ValueError for an adaptive sweep that `launch_adaptive` cannot run."""
    if spec.design != "adaptive":
        raise ValueError(f"launch_adaptive needs design 'adaptive', got {spec.design!r}")
    if twice := spec.listed_twice():  # as `sweeps.grid.expand` refuses them: never deduplicated
        raise ValueError(f"{', '.join(twice)} listed more than once; list each once")
    if len(spec.patch_sizes) != 1:
        raise ValueError(
            "the adaptive design refits one N_opt(C) law: give one patch size (--patch 2), "
            f"got {spec.patch_sizes}"
        )


def check_placed(spec: SweepSpec, sdir: Path, budget: float, rec: dict) -> SweepSpec:
    """The sweep of ``budget`` alone at its recorded centre (``rec``, its entry in ``design.json``);
    ValueError where the settings now give other cells than it was placed as."""
    sub = spec.replace(budgets=[budget], isoflop_centres={budget: float(rec["centre"])})
    ids = [c.cell_id for c in design_cells(sub)]
    if ids != rec["cells"]:
        raise ValueError(
            f"budget {format_budget(budget)} of adaptive sweep {spec.name!r} was placed as {rec['cells']}; "
            f"the settings now give {ids} (sizes, spread, step window or model options changed). "
            f"Use --name for a new sweep, or delete {sdir / RECORD} with its runs"
        )
    return sub


def launch_adaptive(
    spec: SweepSpec,
    *,
    wait: bool = True,
    poll_s: float = 2.0,
    on_progress: Callable | None = None,
    on_step: Callable[[AdaptiveStep], None] | None = None,
    jobs_gone: bool = False,
) -> AdaptiveResult:
    """Run the budgets from the smallest up; place each on the refit of the ones before (the
    first on the prior). A budget placed once keeps its centre (``design.json``); a relaunch
    submits only what is missing. Stops at a budget whose cells are not all finished. ``jobs_gone``:
    `sweeps.runner.launch`'s."""
    from sweeps.lock import sweep_lock
    from sweeps.runner import launch, sweep_dir
    from sweeps.state import read_states, resolve_tracking_uri

    check_adaptive(spec)
    patch = spec.patch_sizes[0]
    prior = make_prior(spec)
    sdir, uri = sweep_dir(spec), resolve_tracking_uri(spec.tracking_uri)
    budgets = sorted(set(spec.budgets))
    result = AdaptiveResult()
    done: list[float] = []
    done_cells: list[str] = []
    for b in budgets:
        rec = read_record(sdir).get(b)
        if rec is None:
            if done:
                centre = refit_centre(spec, prior, sweep_points(spec, uri, done_cells), done, b, patch)
            else:
                centre = Centre(*first_centre(spec, prior, b, patch))
            ids = [c.cell_id for c in design_cells(spec.replace(budgets=[b], isoflop_centres={b: centre.n}))]
            with sweep_lock(sdir):
                record = read_record(sdir)
                if b not in record:  # another launcher may have placed it meanwhile: its choice stands
                    record[b] = dict(centre=centre.n, source=centre.source, note=centre.note, cells=ids)
                    _write_record(sdir, record)
                rec = record[b]
        centre = Centre(float(rec["centre"]), rec["source"], rec.get("note", ""))
        sub = check_placed(spec, sdir, b, rec)
        log.info("budget %s: centre %.3g (%s)", format_budget(b), centre.n, centre.source)
        res = launch(sub, wait=wait, poll_s=poll_s, on_progress=on_progress, record=spec, jobs_gone=jobs_gone)
        # every seed and lr of the placed sizes (the record keeps the sizes' plain ids): the budget is
        # done when all have finished, and the refit sees them all (seeds averaged, each cell's best lr)
        every = [c.cell_id for c in expand(sub)]
        cells = {cid: str(cell_dir(sdir, cid)) for cid in every}
        states = read_states(uri, spec.experiment, spec.name, cells)
        step = AdaptiveStep(b, centre, every, res, all(s.state == "finished" for s in states.values()))
        result.steps.append(step)
        if on_step is not None:
            on_step(step)
        if not step.finished:
            left = sorted(f"{c} {s.state}" for c, s in states.items() if s.state != "finished")
            result.stopped = (
                f"budget {format_budget(b)} has unfinished cells ({', '.join(left)}); the next budget is "
                "placed on its fit: relaunch the same command when they finish (a relaunch retries a "
                "failed or interrupted cell, up to --max-retries)"
            )
            return result
        done.append(b)
        done_cells += every
    result.final = refit_centre(spec, prior, sweep_points(spec, uri, done_cells), done, budgets[-1], patch)
    return result
