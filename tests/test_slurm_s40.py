"""Session 40: the sweep launcher on the real SLURM cluster (docs/testing.md, session 40): waiting for
scancelled jobs to end, their liveness while they end, the SLURM executor built through submitit's
public API. Each fix's test failed on the code before it."""

from __future__ import annotations

import subprocess
import time

import pytest
import submitit
from _sweep_specs import states_of, wait_for
from conftest import free_port, start_mlflow_server, stop_mlflow_server
from test_left_s39 import sacct_states, two_cell_yaml

from sweeps import launch as launch_cli
from sweeps import runner
from sweeps.executor import SLURM_ALIVE, OwnSessionSlurmExecutor, make_executor, squeue_states
from sweeps.grid import ExecutorSpec, expand, load_spec
from sweeps.runner import launch

pytestmark = pytest.mark.slurm


def held_until(release) -> str:
    """A job's setup (YAML) that takes a while to end after scancel's SIGTERM, as a trainer that writes its
    checkpoint first: its shell ignores SIGTERM (so does `sleep`, which inherits that), says so in a file
    (`held`), and waits before submitit starts until the test creates the file ``release`` (or SLURM's
    KillWait, 30 s, SIGKILLs it). A fixed sleep raced sacct's and squeue's lag on a loaded CI machine: the
    job could be gone first; and squeue calls a job RUNNING before its shell has run a line, so a scancel
    right after RUNNING could kill the shell before its trap (CI, session 44)."""
    return (
        f"setup: [\"trap '' TERM\", 'touch {release}.held.$SLURM_JOB_ID', "
        f"'while [ ! -e {release} ]; do sleep 0.2; done']"
    )


def held(release) -> int:
    """How many jobs of `held_until` ``release`` ignore SIGTERM and wait."""
    return len(list(release.parent.glob(f"{release.name}.held.*")))


def alive(job_ids: list[str]) -> dict[str, str]:
    """The jobs of ``job_ids`` that squeue lists as not over, with their state."""
    return {j: s for j, s in squeue_states(job_ids).items() if s in SLURM_ALIVE}


def test_slurm_the_cancel_after_a_failed_record_waits_until_the_jobs_have_ended(
    job_env, tmp_path, monkeypatch, capsys, caplog
):
    """The tracking server dies while the launcher records two running jobs, so it scancels them. sacct
    calls them CANCELLED at once, but a job's processes get SIGTERM first and may run on (a trainer writes
    its checkpoint; here the job's shell sleeps on, ignoring it): squeue lists them COMPLETING. The
    launcher said "cancelled" and exited while they still ran, so a relaunch right after could start a
    second job of the cell beside the first. It now waits (bounded by CANCEL_WAIT_S, saying so) until
    squeue lists none. Before the fix: exit 2 after about 1 s, both jobs COMPLETING in squeue."""
    store, port = tmp_path / "server", free_port()
    server = {"proc": start_mlflow_server(store, port=port)[0]}
    url = f"http://127.0.0.1:{port}"
    release = tmp_path / "release"
    executor = "{name: slurm, timeout_min: 10, mem_gb: 1, " + held_until(release) + "}"
    cfg = two_cell_yaml(tmp_path, "slowend", executor, tmp_path / "events")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the launcher gives up at once
    real, real_squeue = runner.record_submissions, runner.squeue_states
    ids: list[str] = []
    failed: list[bool] = []

    def server_dies_once_the_jobs_run(uri, subs):
        ids.extend(s.job.job_id for s in subs)
        wait_for(
            lambda: len(alive(ids)) == 2 and set(alive(ids).values()) == {"RUNNING"}, "the jobs to run", 60
        )
        wait_for(lambda: held(release) == 2, "the jobs' shells to hold", 60)
        stop_mlflow_server(server["proc"])
        failed.append(True)  # the record fails next: the launcher scancels the jobs, then asks squeue
        real(uri, subs)

    def squeue_then_release(job_ids):
        """squeue's answer; once the record failed and it lists the jobs alive (the launcher has seen them
        ending), the jobs are released to end."""
        queue = real_squeue(job_ids)
        if failed and any(s in SLURM_ALIVE for s in queue.values()):
            release.touch()
        return queue

    monkeypatch.setattr(runner, "record_submissions", server_dies_once_the_jobs_run)
    monkeypatch.setattr(runner, "squeue_states", squeue_then_release)
    try:
        t0 = time.monotonic()
        assert launch_cli.main(["-c", str(cfg), "--tracking-uri", url, "--poll", "0.5"]) == 2
        took = time.monotonic() - t0
        left = alive(ids)  # at once, as a relaunch would look
        err = capsys.readouterr().err
        assert left == {}, (left, f"{took:.1f} s", err)
        cancelled = lambda: [s.startswith("CANCELLED") for s in sacct_states(ids[0].split("_")[0])]  # noqa: E731
        wait_for(lambda: cancelled() == [True, True], "sacct to call both jobs CANCELLED", 60)  # its lag
        said = caplog.text  # the CLI's WARNING lines (pytest's log capture takes them from stderr)
        assert "waiting up to 120 s for the cancelled SLURM job(s)" in said and ids[0] in said, said
        assert "cancelled so that none trains unrecorded" in err, err
    finally:
        release.touch()
        subprocess.run(["scancel", *{j.split("_")[0] for j in ids}], check=False)
        stop_mlflow_server(server["proc"])


def test_slurm_a_relaunch_while_a_cancelled_job_still_ends_does_not_submit_its_cell_again(job_env, tmp_path):
    """A cell's job is scancelled (by its user, say) while it runs; a relaunch at once read sacct's
    CANCELLED, took the job for over and submitted a second job of the cell while the first one's
    processes still ran (squeue: COMPLETING), two jobs in one cell folder. `job_liveness` now asks squeue
    about jobs that sacct calls over too: the cell is alive (`queued`: its trainer never started), nothing
    is submitted, and once the job has ended the cell is `failed`, for a relaunch to resubmit. Before the
    fix the relaunch submitted the cell (state `failed` while its job still ran)."""
    cfg, release = tmp_path / "relaunch.yaml", tmp_path / "release"
    # the job ends only once the test has looked (a fixed sleep raced sacct's lag on a loaded CI machine)
    executor = "{name: slurm, timeout_min: 10, mem_gb: 1, " + held_until(release) + "}"
    cfg.write_text(
        two_cell_yaml(tmp_path, "x", executor, tmp_path / "events").read_text().replace("[S, B]", "[S]")
    )
    spec = load_spec(cfg).replace(tracking_uri=job_env, name="relaunch")
    (cell,) = expand(spec)
    first = launch(spec, wait=False)
    (job,) = first.job_ids.values()
    jobs = [job]
    try:
        wait_for(lambda: alive([job]).get(job) == "RUNNING", "the job to run", 60)
        wait_for(lambda: held(release) == 1, "the job's shell to hold", 60)
        subprocess.run(["scancel", job], check=True)
        wait_for(lambda: (sacct_states(job.split("_")[0]) or ["?"])[0].startswith("CANCELLED"), "sacct", 30)
        assert alive([job]), "the job ended before the relaunch could look"
        again = launch(spec, wait=False)
        still = alive([job])
        jobs += again.job_ids.values()
        assert again.submitted == [] and again.plan.running == [cell.cell_id], (again.job_ids, still)
        assert still, "the job ended during the relaunch: the check proves nothing"
        assert states_of(spec, job_env)[cell.cell_id].state == "queued"  # alive, its trainer never started
        release.touch()
        wait_for(lambda: not alive([job]), "the cancelled job to end", 60)
        st = states_of(spec, job_env)[cell.cell_id]
        assert (st.state, st.attempts) == ("failed", 1), st
    finally:
        release.touch()
        subprocess.run(["scancel", *jobs], check=False)


def test_slurm_the_executor_is_submitit_s_slurm_executor_with_the_auto_executor_s_sbatch_script(tmp_path):
    """`make_executor` builds submitit's SLURM executor through its public constructor (our subclass,
    which starts sbatch in its own session), no longer by swapping the class of AutoExecutor's private
    `_executor`; its sbatch script is the one AutoExecutor writes for the same settings, line by line
    (whole and fractional GB of memory, GPUs, partition, setup lines, extra sbatch flags)."""
    for mem_gb, gpus, partition in ((1.5, 0, None), (2.0, 1, "debug")):
        spec = ExecutorSpec(
            name="slurm", nodes=1, tasks_per_node=2, cpus_per_task=1, timeout_min=7, mem_gb=mem_gb,
            gpus_per_node=gpus, partition=partition, array_parallelism=3, signal_delay_s=40,
            sbatch=["--qos=normal", "#SBATCH --exclusive"], setup=["echo hi"],
        )  # fmt: skip
        ex = make_executor(spec, "slurm", tmp_path, job_name="ditscale-x")
        assert type(ex) is OwnSessionSlurmExecutor and isinstance(ex, submitit.SlurmExecutor)
        assert ex.max_num_timeout == spec.max_num_timeout
        auto = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm", slurm_max_num_timeout=3)
        params = dict(
            name="ditscale-x", nodes=1, tasks_per_node=2, cpus_per_task=1, timeout_min=7, mem_gb=mem_gb,
            slurm_array_parallelism=3, slurm_signal_delay_s=40, slurm_setup=["echo hi"],
            slurm_additional_parameters={"requeue": True, "qos": "normal", "exclusive": True},
        )  # fmt: skip
        params |= {"gpus_per_node": gpus} if gpus else {}
        params |= {"slurm_partition": partition} if partition else {}
        auto.update_parameters(**params)
        mine = ex._make_submission_file_text("python -c pass", "uid").splitlines()
        theirs = auto._executor._make_submission_file_text("python -c pass", "uid").splitlines()
        assert mine == theirs
        assert ex._make_submission_command(tmp_path / "x.sh")[:2] == ["setsid", "--wait"]


def test_slurm_the_table_after_a_partly_failed_array_calls_the_failed_cell_failed(
    job_env, tmp_path, capsys, caplog
):
    """A two-cell array, one cell failing (the fake trainer raises on its first start). A job's result
    shows while SLURM still lists the job RUNNING or COMPLETING, so the table the launch prints at its end
    called the failed cell `running` ("1 finished, 1 running", on 2 of 2 tries before the fix): the
    launcher now waits (up to SLURM_SETTLE_S) until SLURM calls its jobs over. A relaunch right after,
    --max-retries 0, leaves the cell out of retries (tried once); one with --max-retries 1 trains it
    alone (tries 2), into its one run; the cell that finished is not trained again."""
    events = tmp_path / "events"
    cfg = two_cell_yaml(tmp_path, "partly", "{name: slurm, timeout_min: 10, mem_gb: 1}", events)
    text = cfg.read_text().replace("step_s: 0.0,", "step_s: 0.0, fail_cell: B-2-3e9, fail_times: 1,")
    cfg.write_text(text)
    spec = load_spec(cfg).replace(tracking_uri=job_env)
    argv = ["-c", str(cfg), "--tracking-uri", job_env, "--poll", "0.5"]
    assert launch_cli.main([*argv, "--max-retries", "0"]) == 1
    out = capsys.readouterr().out
    row = next(ln.split() for ln in out.splitlines() if ln.startswith("B-2-3e9 "))
    assert row[2] == "failed" and "1 failed, 1 finished" in out, out
    assert "still lists" not in caplog.text, caplog.text

    assert launch_cli.main([*argv, "--max-retries", "0"]) == 1  # at once: out of retries, nothing submitted
    out = capsys.readouterr().out
    assert "0 submitted, 1 already finished, 0 still running, 1 out of retries" in out, out
    assert launch_cli.main([*argv, "--max-retries", "1"]) == 0
    states = states_of(spec, job_env)
    assert {c: (st.state, st.tries) for c, st in states.items()} == {
        "S-2-3e9": ("finished", 1),
        "B-2-3e9": ("finished", 2),
    }
    starts = sorted(ln.split()[0] for ln in events.read_text().splitlines() if ln.split()[1] == "start")
    assert starts == ["B-2-3e9", "B-2-3e9", "S-2-3e9"]
