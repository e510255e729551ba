"""Session 44: a rank that hangs on its own (not in a collective) while another times out waiting for it.
Before, its MLflow run stayed RUNNING for good: the peer's `CollectiveTimeout` reached the hung rank's
`PeerWatch`, which acted only while its own main thread waited in a collective. Real 2-process runs on
CPU (gloo), the ranks this test's own children (`test_pgto_s43._ranks`); the hang comes from a wrapper."""

from __future__ import annotations

import pytest
from test_pgto_s43 import exit_codes, hung_ranks, only_run

#: the seconds after the fault rank 0 may take to exit (measured 10-12 s: rank 1's collective timeout,
#: `TIMEOUT_S`, then the watch's `PEER_GRACE_S`; before the fix it never exited)
EXIT_WITHIN_S = 45


@pytest.mark.timeout(120)
def test_a_rank_stuck_on_its_own_ends_its_run_once_its_peer_timed_out_waiting_for_it(tmp_path):
    """Rank 0 (which owns the MLflow run) sleeps for good in its third step; rank 1 times out after
    ``--dist-timeout-s 5`` in the gradients' all-reduce, leaves its `CollectiveTimeout` and exits 1. Now
    rank 0's watch, seeing that error while rank 0's main thread is busy on its own, ends rank 0's run
    FAILED with a line naming where rank 0 was (the wrapper's ``hanging``) and exits 1. Before, rank 0
    slept on and its run stayed RUNNING (under torchrun: until its SIGKILL, 30 s after its SIGTERM, and
    RUNNING for good)."""
    out, exp = tmp_path / "run", f"hung0-{tmp_path.name}"
    (rc1, rc0), took = exit_codes(hung_ranks(tmp_path, "hang0", exp, out), [1, 0], EXIT_WITHIN_S)
    err = (tmp_path / "rank0.txt").read_text()
    print(f"rank 0 exit {took:.1f} s after its fault")
    assert rc1 == 1, (tmp_path / "rank1.txt").read_text()[-3000:]
    assert rc0 == 1, (rc0, took, err[-3000:])
    wrapper = tmp_path / "wrapper.py"
    said = (
        f"StuckHere: rank 1 stopped waiting for rank 0 after --dist-timeout-s; rank 0 was busy in {wrapper}:"
    )
    run = only_run(exp, out)
    assert (run.info.status, run.data.tags["status"]) == ("FAILED", "failed"), err[-3000:]
    error = run.data.tags["error"]
    assert error.startswith(
        "CollectiveTimeout: rank 1 stopped after step 2 of 50: it waited --dist-timeout"
    ), error
    assert f"rank 0 then stopped on {said}" in error and " in hanging all that time" in error, error
    assert "rank 0 was busy in" in err and " in hanging all that time" in err, err[-3000:]
