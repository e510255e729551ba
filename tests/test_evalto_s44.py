"""Session 44 (helper `evalto`): ``python -m dit_core.evaluate --dist-timeout-s``, the trainer's collective
timeout (`dit_core.trainer.ranklog.process_state`) and its one-line message (`timeout_explained`) for a
multi-process evaluation. A real 2-process run on CPU (gloo); the fault comes from a wrapper script."""

from __future__ import annotations

import pytest
from test_gloo_s42 import ACCELERATE, REPO, _launch, tiny_checkpoint  # noqa: F401 - a fixture

from dit_core.evaluate.__main__ import build_parser

#: the collective timeout of the hang test, and how long after it the launcher may take to exit
TIMEOUT_S, SLACK_S = 5, 10.0  # 6.3-7.9 s measured on 2 loaded cores

#: ``wrapper.py REPO <evaluate flags>``: ``python -m dit_core.evaluate`` in this process; rank 1 sleeps
#: for good in its first sampling call, once rank 0 is about to gather the samples (a key in the store),
#: so that rank 0 waits in that collective from the fault on.
_WRAPPER = """
import ctypes, datetime, os, signal, sys, time
ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: gone with the launcher the test kills
sys.path.insert(0, sys.argv.pop(1))
import torch.distributed as dist
from dit_core import diffusion
from dit_core.evaluate import sampling
from dit_core.evaluate.__main__ import main

rank, real_gather = int(os.environ["RANK"]), sampling.gather_samples

def hanging(*a, **k):
    dist.distributed_c10d._get_default_store().wait(["test/rank0-gathers"], datetime.timedelta(seconds=60))
    print("FAULT on rank 1", file=sys.stderr, flush=True)
    time.sleep(3600)

def gathering(*a, **k):
    dist.distributed_c10d._get_default_store().set("test/rank0-gathers", "1")
    return real_gather(*a, **k)

if rank == 1:
    diffusion.sample = hanging
else:
    sampling.gather_samples = gathering
sys.exit(main())
"""


@pytest.mark.timeout(90)
def test_a_rank_that_hangs_in_an_evaluation_is_waited_for_dist_timeout_s_only(tiny_checkpoint, tmp_path):  # noqa: F811
    """``accelerate launch``; rank 1 sleeps for good in its sampling, rank 0 waits for its samples in the
    gather. Before, rank 0 waited there for gloo's timeout (30 min: the CLI set none; it had no
    --dist-timeout-s), and then printed gloo's error with its traceback. Now, with ``--dist-timeout-s
    5``, rank 0 exits 1 about 5 s after the fault with the trainer's one line, and rank 1, stopped by
    the launcher's SIGTERM, names that line (left in the store), not gloo's error; the launcher exits 1."""
    script = tmp_path / "wrapper.py"
    script.write_text(_WRAPPER)
    flags = ["--checkpoint", str(tiny_checkpoint), "--num-samples", "4", "--batch-size", "2", "--steps", "2",
             "--metrics", "fid_digits", "--dist-timeout-s", str(TIMEOUT_S)]  # fmt: skip
    rc, took, err = _launch([*ACCELERATE, str(script), str(REPO), *flags], "FAULT on rank 1", TIMEOUT_S + 30)
    print(f"exit {took:.1f} s after the fault (timeout {TIMEOUT_S} s)")
    assert rc == 1 and TIMEOUT_S - 1 < took < TIMEOUT_S + SLACK_S, (rc, took, err[-3000:])
    said = (
        f"rank 0 stopped before the metrics were computed: it waited --dist-timeout-s {TIMEOUT_S} s for the "
        "other ranks in a collective; one is stuck (a deadlock, stuck I/O, an endless loop) or slower than "
        "that; if it is only slow, give a larger --dist-timeout-s"
    )
    assert err.count(f"error: {said}\n") == 1, err[-3000:]
    assert err.count(f"error: rank 0 failed: CollectiveTimeout: {said} (rank 1 stopped with it)\n") == 1, err
    assert err.count("exitcode  : 1 (pid") == 2 and "Timed out waiting" not in err, err[-3000:]


def test_the_evaluate_cli_takes_the_trainers_dist_timeout_s():
    """The default is the trainer's (1800 s); a timeout must be a finite number > 0 (argparse's usage
    error, exit 2)."""
    parser = build_parser()
    assert parser.parse_args(["--checkpoint", "x"]).dist_timeout_s == 1800.0
    assert parser.parse_args(["--checkpoint", "x", "--dist-timeout-s", "90"]).dist_timeout_s == 90.0
    for bad in ("0", "-1", "inf", "nan", "soon"):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["--checkpoint", "x", "--dist-timeout-s", bad])
        assert exc.value.code == 2
