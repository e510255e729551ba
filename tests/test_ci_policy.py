"""The CI no-skip policy (tests/_ci_policy.py): under DITSCALE_CI=1 every skip is a failure."""

from __future__ import annotations

import pytest
from _ci_policy import allowed

SKIPPING = """
import pytest

def test_runs():
    assert True

def test_skips_in_body():
    pytest.skip("no cluster here")

@pytest.mark.skipif(True, reason="marker says no")
def test_skipif_marker():
    pass

def test_importorskip():
    pytest.importorskip("surely_not_an_installed_module_3f9a")
"""

MODULE_SKIP = """
import pytest
pytest.importorskip("surely_not_an_installed_module_3f9a")

def test_never_collected():
    pass
"""


@pytest.fixture
def policy(pytester):
    pytester.makeconftest("pytest_plugins = ['_ci_policy']")
    return pytester


def test_outside_ci_skips_stay_skips(policy, monkeypatch):
    monkeypatch.delenv("DITSCALE_CI", raising=False)
    policy.makepyfile(test_a=SKIPPING, test_b=MODULE_SKIP)
    policy.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1, skipped=4)


def test_in_ci_every_kind_of_skip_fails(policy, monkeypatch):
    monkeypatch.setenv("DITSCALE_CI", "1")
    policy.makepyfile(test_a=SKIPPING, test_b=MODULE_SKIP)
    result = policy.runpytest("-p", "no:cacheprovider", "test_a.py")
    # a skip in the test body fails; a skip at setup (skipif) is an error
    result.assert_outcomes(passed=1, failed=2, errors=1)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*skipped under DITSCALE_CI=1 (no cluster here)*"])
    # a module skipped at import (importorskip at top level) is a collection error: the run stops
    result = policy.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*ERROR*test_b.py*module skipped under DITSCALE_CI=1*"])


def test_in_ci_an_allow_listed_skip_stays_a_skip(policy, monkeypatch):
    monkeypatch.setenv("DITSCALE_CI", "1")
    policy.makepyfile(test_a=SKIPPING)
    monkeypatch.setattr("_ci_policy.ALLOWED_SKIPS", {"test_a.py::test_skips_in_body": "why"})
    policy.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1, failed=1, errors=1, skipped=1)


def test_allow_list_matches_exact_ids_and_explicit_prefixes():
    allow = {"tests/test_x.py::test_one": "r", "tests/test_y.py": "r", "tests/test_z.py::Cls::": "r"}
    assert allowed("tests/test_x.py::test_one", allow)
    assert not allowed("tests/test_x.py::test_one_more", allow)  # no accidental prefix match
    assert allowed("tests/test_y.py::test_any[param]", allow) and allowed("tests/test_y.py", allow)
    assert allowed("tests/test_z.py::Cls::test_m", allow) and not allowed("tests/test_z.py::Other", allow)


def test_the_allow_list_is_empty():
    """Every permitted skip must be argued for here and in docs/testing.md; today there is none."""
    from _ci_policy import ALLOWED_SKIPS

    assert ALLOWED_SKIPS == {}
