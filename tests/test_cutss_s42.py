"""Session 42 (helper cutss): the sweeps code issue 14 shortened, pinned where no test read it before."""

from __future__ import annotations

import pytest

from sweeps import launch as cli


@pytest.mark.parametrize(
    ("widths", "head_dim", "message"),
    [
        ("16,8", "16", "width 8 is not a multiple of --head-dim 16"),  # the first width that is not
        ("12,8,6", "4", "width 6 is not a multiple of --head-dim 4"),
        ("8", None, "width 8 is not a multiple of --head-dim 64"),  # 64 without --head-dim
    ],
)
def test_a_custom_width_not_a_multiple_of_the_head_dim_is_named(widths, head_dim, message):
    argv = ["--depths", "2,4", "--widths", widths] + (["--head-dim", head_dim] if head_dim else [])
    with pytest.raises(ValueError, match=f"^{message}$"):
        cli.spec_from_args(cli.build_parser().parse_args(argv))
