"""The fewest bootstrap refits for a percentile interval (session 37).

The rule: a percentile interval at level `level` needs at least one successful refit beyond each
end, ceil(2 / (1 - level)) refits (40 at 95 %, 20 at 90 %). With fewer, both percentiles are
interpolated between the extreme refits and the interval covers less than its level. The count is
of successful refits (`n_ok`), not of requested resamples: a failed refit is left out of the
interval. Below it, every approach whose status rests on a bootstrap interval (1: the frontier's
N_opt exponent; 2: the IsoFLOP laws through the minima; 3: the parametric law's exponents) is
`not_identified`, with a reason that names the fix (`--bootstrap 40 or more`, more when refits fail).

Found with `fit_scaling.py --bootstrap 4`: the frontier's status was `ok` although its t-interval on
the exponent was [-3.6, 3.7]. Every test here failed before the fix (4 resamples gave `ok`; the
names `min_resamples` and `too_few_refits` did not exist). Data: the exact synthetic law of
`tests/_fit_helpers.py`.
"""

from __future__ import annotations

import numpy as np
import pytest
from _fit_helpers import sweep

from analysis.bootstrap import BootstrapResult, fit_workers
from analysis.isoflop import fit_isoflop
from analysis.laws import fit_frontier
from analysis.parametric import fit_parametric
from analysis.pipeline import AnalysisConfig, analyze
from analysis.report import markdown
from analysis.runs import tidy
from analysis.status import NOT_IDENTIFIED, OK, Status, flag_bootstrapped_exponent

TOO_FEW = "fewer than the 40 that a 95% percentile interval needs (at least one refit beyond each end"


@pytest.fixture(autouse=True)
def _one_worker():
    with fit_workers(1):  # the tests' own cores are shared: no forks for a few refits
        yield


def test_the_minimum_is_one_refit_beyond_each_end():
    from analysis.bootstrap import min_resamples

    assert [min_resamples(lv) for lv in (0.8, 0.9, 0.95, 0.99)] == [10, 20, 40, 200]
    assert min_resamples() == 40  # 2 / (1 - 0.95) is 39.99999999999996 in floats: not 39, not 41
    assert AnalysisConfig().n_bootstrap >= min_resamples(AnalysisConfig().level)  # the default (200)


def test_approach_1_frontier_needs_40_refits():
    """4 resamples of runs: an interval [0.323, 0.507], status `ok` before; 40: `ok`."""
    few = fit_frontier(tidy(sweep()), n_bootstrap=4)
    assert few.n_opt.bootstrap.n_ok == 4 and few.status.status == NOT_IDENTIFIED
    (reason,) = few.status.reasons
    assert reason.startswith("the frontier's N_opt exponent a = 0.469 has an interval [")
    assert "from only 4 bootstrap refits, " + TOO_FEW in reason
    assert "whether approach 1 resolves how N_opt grows was not checked" in reason
    assert reason.endswith("rerun with --bootstrap 40 or more")
    enough = fit_frontier(tidy(sweep()), n_bootstrap=40)
    assert enough.n_opt.bootstrap.n_ok == 40 and enough.status.status == OK and not enough.status.reasons


def test_approach_2_isoflop_counts_successful_refits():
    """Laws through the per-budget minima (no joint fit, whose interval is a t-interval). 4
    resamples: `ok` before. 40 resamples leave 34 refits with 3 usable budgets: still too few, and the
    reason asks for enough resamples that 40 succeed; 48 give 40 refits: `ok`."""
    few = fit_isoflop(sweep(), n_bootstrap=4, joint=False)
    assert few.status.status == NOT_IDENTIFIED
    (reason,) = few.status.reasons
    assert reason.startswith("the IsoFLOP N_opt exponent a = 0.469 has an interval [")
    assert "from only 4 bootstrap refits, " + TOO_FEW in reason and reason.endswith("--bootstrap 40 or more")
    assert "4 refits, too few for a 95% interval (needs 40)" in few.summary()
    short = fit_isoflop(sweep(), n_bootstrap=40, joint=False)
    assert short.bootstrap.n_ok == 34 and short.status.status == NOT_IDENTIFIED
    (reason,) = short.status.reasons
    assert (
        "from only 34 bootstrap refits (6 of the 40 resamples lacked 3 usable budgets), " + TOO_FEW in reason
    )
    assert reason.endswith("rerun with --bootstrap 48 or more (at least 40 refits must succeed)")
    enough = fit_isoflop(sweep(), n_bootstrap=48, joint=False)
    assert enough.bootstrap.n_ok == 40 and enough.status.status == OK and not enough.status.reasons
    assert "too few" not in enough.summary()


def test_approach_3_parametric_needs_40_refits():
    """The parametric law's exponents: 4 refits (alpha [0.34, 0.34] on exact data) were `ok`."""
    s = sweep()
    few = fit_parametric(s["N"], s["D"], s["loss"], n_bootstrap=4)
    assert few.status.status == NOT_IDENTIFIED
    (reason,) = few.status.reasons
    assert reason.startswith("the exponents' intervals (alpha [0.34, 0.34], beta [0.3, 0.3]) come from ")
    assert "only 4 bootstrap refits, " + TOO_FEW in reason
    assert "whether the data identify the exponents was not checked" in reason
    assert reason.endswith("rerun with --bootstrap 40 or more")
    assert "95% percentile intervals (too few for 95%: 4 refits, a 95% interval needs 40)" in few.summary()
    assert few.allocation_identified  # as with --bootstrap 0: the estimates are kept, the status says
    enough = fit_parametric(s["N"], s["D"], s["loss"], n_bootstrap=40)
    assert enough.status.status == OK and "too few" not in enough.summary()


def test_failed_refits_count_against_the_minimum_at_any_level():
    """39 refits of 40 resamples are too few at 95 % (the reason asks for 42); 40 of 40 are enough.
    At 90 % the minimum is 20."""
    from analysis.status import too_few_refits

    def status(n_ok: int, n_requested: int, level: float) -> Status:
        st = Status()
        bs = BootstrapResult(
            {"alpha": np.linspace(-0.5, -0.3, n_ok)}, n_requested, n_failed=n_requested - n_ok
        )
        kw = dict(negate=True, approach=1, had="an N_opt(C) law", fix="add budgets", level=level)
        flag_bootstrapped_exponent(st, "a", bs, "alpha", **kw)
        return st

    st = status(39, 40, 0.95)
    assert st.status == NOT_IDENTIFIED
    assert "only 39 bootstrap refits (1 of the 40 resamples lacked an N_opt(C) law)" in st.reasons[0]
    assert st.reasons[0].endswith("rerun with --bootstrap 42 or more (at least 40 refits must succeed)")
    assert status(40, 40, 0.95).status == OK
    assert status(40, 200, 0.95).status == OK  # a share failed is the parametric law's check, not this one
    assert status(19, 19, 0.9).status == NOT_IDENTIFIED and status(20, 20, 0.9).status == OK
    assert "the 20 that a 90% percentile interval needs" in status(19, 19, 0.9).reasons[0]
    assert too_few_refits(BootstrapResult({"x": np.zeros(5)}, 5)).endswith("--bootstrap 40 or more")


def test_the_analysis_and_the_cli_help(capsys):
    """Through the analysis, `--bootstrap 4` on an exact law: `not_identified` (exit 3) with approach 1's
    and approach 3's reasons (approach 2 is the joint fit here: a t-interval, not a bootstrap); the
    report labels the frontier's interval as too few; the `--help` of `--bootstrap` states the minimum."""
    from analysis.fit_scaling import main

    an = analyze(sweep(), AnalysisConfig(n_bootstrap=4))
    assert an.status.status == NOT_IDENTIFIED
    few = [r for r in an.status.reasons if TOO_FEW in r]
    assert [r.split(":")[0] for r in few] == ["approach 3", "approach 1"]
    assert an.isoflop.status.status == OK
    md = markdown(an, {})  # the frontier's bootstrap line labels its interval as too few
    assert (
        "- bootstrap over runs: 4 resamples, 0 without an N_opt law; 4 refits, too few for a 95% interval"
        in md
    )
    with pytest.raises(SystemExit):
        main(["--help"])
    helptext = " ".join(capsys.readouterr().out.split())
    assert "a 95% percentile interval needs at least 40 successful refits (one beyond each end)" in helptext
