"""Effective data D' (`analysis.runs.effective_data`) against a high-precision closed form."""

from __future__ import annotations

from decimal import Decimal, getcontext

import numpy as np
import pytest

from analysis.runs import effective_data


def _reference(d: float, u: float, r_star: float) -> float:
    """D' = U + U R* (1 - exp(-R / R*)), R = D / U - 1, in 60-digit decimal arithmetic."""
    getcontext().prec = 60
    d_, u_, rs = Decimal(d), Decimal(u), Decimal(r_star)
    r = d_ / u_ - 1
    return float(u_ + u_ * rs * (1 - (-r / rs).exp()))


@pytest.mark.parametrize("r_star", [15.4, 1e6, 1e12, 1e17, 1e30])
@pytest.mark.parametrize("epochs", [1.0 + 2**-20, 2.0, 40.0])
def test_effective_data_keeps_full_precision_when_repeats_are_small_against_r_star(r_star, epochs):
    # R / R* tiny: 1 - exp(-x) cancels (x < 1e-16 gives 0, so D' = U), -expm1(-x) does not
    u = 1e6
    d = u * epochs
    assert effective_data(d, u, r_star) == pytest.approx(_reference(d, u, r_star), rel=1e-13)


def test_effective_data_tends_to_d_as_r_star_grows():
    d, u = np.array([2e6, 3e7]), np.array([1e6, 1e6])
    np.testing.assert_allclose(effective_data(d, u, 1e20), d, rtol=1e-12)
