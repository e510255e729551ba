"""What a result can claim: a status with the reasons behind it, and the CLI's exit codes.

Statuses, from best to worst:
- ``ok``: the data identify the result; the interval is the answer.
- ``extrapolating``: identified, but asked for more than 10x beyond the largest compute measured
  (or below the smallest).
- ``censored``: the smallest (largest) model wins at every budget, so the grid does not bracket the
  optimum (only a bound is known).
- ``not_identified``: the data do not determine the result (a flat direction, an interval that
  includes 0, approaches that disagree); no number is given as an answer.

``not_applicable`` (one approach's status only, never the whole analysis's): the design lacks what the
approach needs (approach 2 with fewer than 3 budgets); it gives no number and withholds nothing from the
others, so `Status.merge` folds nothing in from it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

from analysis.bootstrap import BootstrapResult, min_resamples

OK, EXTRAPOLATING, CENSORED, NOT_IDENTIFIED = "ok", "extrapolating", "censored", "not_identified"
NOT_APPLICABLE = "not_applicable"  # an approach the design cannot feed (see the module docstring)
SEVERITY = {OK: 0, NOT_APPLICABLE: 0, EXTRAPOLATING: 1, CENSORED: 2, NOT_IDENTIFIED: 3}

# Exit codes of `python analysis/fit_scaling.py` (1 is left to crashes, 2 to bad input).
EXIT_OK = 0  # status ok or extrapolating (the report says which)
EXIT_BAD_INPUT = 2
EXIT_NOT_IDENTIFIED = 3
EXIT_CENSORED = 4
EXIT_CODES = dict.fromkeys((OK, NOT_APPLICABLE, EXTRAPOLATING), EXIT_OK)
EXIT_CODES |= {CENSORED: EXIT_CENSORED, NOT_IDENTIFIED: EXIT_NOT_IDENTIFIED}


@dataclass
class Status:
    """A status and the reasons for it (each reason one sentence that says what to do)."""

    status: str = OK
    reasons: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.status not in SEVERITY:
            raise ValueError(f"unknown status {self.status!r}; one of {list(SEVERITY)}")

    def add(self, status: str, reason: str) -> Status:
        """Raise the status to `status` if that is worse, and record the reason."""
        if SEVERITY[status] > SEVERITY[self.status]:
            self.status = status
        if reason not in self.reasons:
            self.reasons.append(reason)
        return self

    def merge(self, other: Status | None, prefix: str = "") -> Status:
        """Fold another status into this one (its reasons prefixed, e.g. with the approach's name); a
        `NOT_APPLICABLE` one adds nothing: that approach gives no number, so it withholds none."""
        if other is None or other.status == NOT_APPLICABLE:
            return self
        for r in other.reasons:
            self.add(other.status, prefix + r)
        if SEVERITY[other.status] > SEVERITY[self.status]:
            self.status = other.status
        return self

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_dict(self) -> dict:
        return {"status": self.status, "reasons": list(self.reasons)}

    def text(self) -> str:
        return f"status: {self.status}" + "".join(f"\n  - {r}" for r in self.reasons)


def worst(*statuses: Status | None) -> Status:
    """One status that is as bad as the worst of `statuses`, with all their reasons."""
    return functools.reduce(Status.merge, statuses, Status())


def flag_unresolved_exponent(st: Status, what: str, interval, approach: int, level: float = 0.95) -> None:
    """`not_identified` when the interval (lo, hi) of the N_opt exponent `what` includes 0."""
    lo, hi = interval
    if not (math.isfinite(lo) and math.isfinite(hi)):  # a fit on a bound, a singular Jacobian
        st.add(
            NOT_IDENTIFIED,
            f"{what} has no finite {100 * level:g}% interval (its fit ended on a bound of its search, e.g. "
            f"flat profiles, or the data do not constrain it): approach {approach} does not resolve how "
            "N_opt grows",
        )
    elif lo <= 0 <= hi:
        st.add(
            NOT_IDENTIFIED,
            f"{what} has a {100 * level:g}% interval [{lo:.3g}, {hi:.3g}] that includes 0: approach "
            f"{approach} does not resolve how N_opt grows",
        )


def too_few_refits(
    bs: BootstrapResult,
    level: float = 0.95,
    *,
    failed: str = "failed",
    unchecked: str = "whether it is resolved",
) -> str:
    """The end of a reason for an interval from fewer than `min_resamples(level)` refits: how many
    there were, why that is too few, what was not checked, and the --bootstrap that fixes it (more
    when refits fail). `failed`: what happened to a resample without a refit ("failed to converge")."""
    need, pct = min_resamples(level), f"{100 * level:g}%"
    fails = f" ({bs.n_failed} of the {bs.n_requested} resamples {failed})" if bs.n_failed else ""
    rerun = need if not bs.n_failed else math.ceil(need * bs.n_requested / max(bs.n_ok, 1))
    return (
        f"only {bs.n_ok} bootstrap refits{fails}, fewer than the {need} that a {pct} percentile interval "
        "needs (at least one refit beyond each end; with fewer both ends are interpolated between the "
        f"extreme refits), so the {pct} level does not hold: {unchecked} was not checked; rerun with "
        f"--bootstrap {rerun} or more" + (f" (at least {need} refits must succeed)" if bs.n_failed else "")
    )


def flag_bootstrapped_exponent(
    st: Status,
    what: str,
    bs,
    key: str,
    *,
    negate: bool,
    approach: int,
    had: str,
    fix: str,
    level: float = 0.95,
) -> None:
    """`flag_unresolved_exponent` on the N_opt exponent `what`'s bootstrap interval, that of
    ``bs.samples[key]`` (negated: of ``-samples[key]``); `not_identified` when fewer than 2 of the
    resamples of runs had what the exponent needs (``had``), since then nothing checked it, as with
    --bootstrap 0; likewise with fewer than `min_resamples(level)` refits (`too_few_refits`)."""
    if bs.n_ok <= 1:
        got = "no bootstrap refit" if bs.n_ok == 0 else "only 1 bootstrap refit"
        st.add(
            NOT_IDENTIFIED,
            f"{got} of the {bs.n_requested} resamples of runs had {had}, so {what} has no interval: "
            f"whether it is resolved was not checked; {fix}",
        )
        return
    lo, hi = bs.conf_int(level)[key]
    lo, hi = (-hi, -lo) if negate else (lo, hi)
    if bs.too_few(level):
        unchecked = f"whether approach {approach} resolves how N_opt grows"
        reason = too_few_refits(bs, level, failed=f"lacked {had}", unchecked=unchecked)
        st.add(NOT_IDENTIFIED, f"{what} has an interval [{lo:.3g}, {hi:.3g}] from {reason}")
    else:
        flag_unresolved_exponent(st, what, (lo, hi), approach, level)
