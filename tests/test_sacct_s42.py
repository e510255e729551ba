"""SLURM liveness from the controller (session 42): sacct, which the accounting daemon writes after
slurmctld, can lag it. Seen once in a run of the SLURM tests on a loaded machine: a relaunch right after
a failed 2-task job read sacct's RUNNING for the job that had just ended, took its failed cell for
running and submitted nothing (`test_srun41_s41`'s relaunch got no result). squeue now decides every
job it answers about. The lag itself cannot be produced on demand, so sacct's answer is replaced here
(`sweeps.executor.slurm_state`); the jobs, sbatch and squeue are the real cluster's."""

from __future__ import annotations

import subprocess

import pytest
from _sweep_specs import wait_for

from sweeps import executor
from sweeps.executor import JobRef, job_liveness, squeue_states

pytestmark = pytest.mark.slurm


def _sbatch(tmp_path, *flags: str) -> str:
    done = subprocess.run(
        ["sbatch", "--parsable", "-o", str(tmp_path / "%j.out"), *flags, "--wrap", "true"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    return done.stdout.strip().split(";")[0]


def _ref(tmp_path, job: str) -> JobRef:
    return JobRef("slurm", job, str(tmp_path), str(tmp_path))


@pytest.mark.timeout(120)
def test_a_job_over_for_squeue_is_over_whatever_a_lagging_sacct_says(tmp_path, monkeypatch):
    """A job squeue no longer lists is over although sacct still says RUNNING (before: "running", and a
    relaunch skipped its cell); one squeue lists held is alive although sacct says COMPLETED."""
    over = _sbatch(tmp_path)
    wait_for(lambda: over not in squeue_states([over]), "the job to end", 60)
    monkeypatch.setattr(executor, "slurm_state", lambda job, mode="standard": "RUNNING")
    assert job_liveness({"c": _ref(tmp_path, over)}) == {}

    held = _sbatch(tmp_path, "--hold")
    try:
        wait_for(lambda: squeue_states([held]).get(held) == "HELD", "the held job in squeue", 30)
        monkeypatch.setattr(executor, "slurm_state", lambda job, mode="standard": "COMPLETED")
        assert job_liveness({"h": _ref(tmp_path, held)}) == {"h": "held"}
    finally:
        subprocess.run(["scancel", held], check=False, timeout=30)


@pytest.mark.timeout(60)
def test_without_an_answer_from_squeue_sacct_s_word_stands(tmp_path, monkeypatch):
    """squeue gives no answer: a job sacct calls RUNNING is alive, one it has not seen is unknown (never
    taken for over), one it calls COMPLETED is over."""

    def silent(job_ids):
        raise executor.SlurmUnreachable("`squeue` gave no answer (test)")

    monkeypatch.setattr(executor, "squeue_states", silent)
    said = {"1": "RUNNING", "2": "UNKNOWN", "3": "COMPLETED"}
    monkeypatch.setattr(executor, "slurm_state", lambda job, mode="standard": said[str(job.job_id)])
    refs = {f"c{j}": _ref(tmp_path, j) for j in said}
    assert job_liveness(refs) == {"c1": "running", "c2": "unknown"}
