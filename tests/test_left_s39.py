"""Session 39: session 38's launcher leftovers (the cancel after a failed record, on the real cluster and
locally; a cancelled job counted as a try; Ctrl-C during that cancel; Ctrl-C around sbatch) and the
IsoFLOP JSON of withheld exponents. Each fix's test failed on the code before it (docs/testing.md,
session 39)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _sweep_specs import (
    ctrl_c_twice_once_cancelled,
    fake_final_weight,
    fake_sweep_yaml,
    fake_trainer_spec,
    runs_by_cell,
    states_of,
    wait_for,
)
from conftest import free_port, start_mlflow_server, stop_mlflow_server
from test_left_small_s38 import capture_jobs

from sweeps import launch as launch_cli
from sweeps import runner
from sweeps.grid import ExecutorSpec, expand, load_spec
from sweeps.runner import launch, sweep_dir


def two_cell_yaml(tmp_path: Path, name: str, executor: str, events: Path) -> Path:
    """Cells S-2-3e9 and B-2-3e9 of the fake trainer (no time per step), each start and end appended to
    ``events``; ``executor``: the YAML mapping of the executor."""
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        f"name: {name}\nexperiment: {name}-{tmp_path.name}\nfamilies: [S, B]\n"
        "scale: {width_div: 8, depth_div: 4}\nbudgets: [3e9]\nbatch_size: 8\n"
        "trainer: test_sweeps_fake_trainer\nfinal_eval: false\n"
        f"train: {{step_s: 0.0, events_file: '{events}'}}\n"
        f"executor: {executor}\n"
    )
    return cfg


def starts(events: Path) -> list[str]:
    """The cells whose fake trainer started, once per start."""
    lines = events.read_text().splitlines() if events.exists() else []
    return sorted(ln.split()[0] for ln in lines if ln.split()[1] == "start")


def sacct_states(array_id: str) -> list[str]:
    out = subprocess.run(
        ["sacct", "-j", array_id, "-X", "-n", "-P", "-o", "JobID,State"], capture_output=True, text=True
    )
    return [ln.split("|")[1] for ln in out.stdout.splitlines() if ln.strip()]


@pytest.mark.slurm
def test_slurm_a_failed_record_scancels_the_array_and_the_relaunch_trains_each_cell_once(
    job_env, tmp_path, monkeypatch, capsys
):
    """The tracking server dies after the job array went out, while the launcher writes the jobs into
    their cells' runs (the first cell's record gets through, the second's does not). The launcher
    scancels the array (sacct: CANCELLED, no job started), says so and exits 2. With the server back, a
    relaunch with --max-retries 0 trains each cell once, each into its one MLflow run: the cancelled job
    of the cell whose record was written is no try. Before the fix that cell had tried once (attempts 1)
    and --max-retries 0 left it out of retries."""
    store, port = tmp_path / "server", free_port()
    server = {"proc": start_mlflow_server(store, port=port)[0]}
    url = f"http://127.0.0.1:{port}"
    events = tmp_path / "events"
    # the jobs are held (a user hold, as `scontrol hold`): none can start before the launcher scancels
    # them, however loaded the machine (a begin time 5 s on raced the cancel), and a job left uncancelled
    # would stay in the queue, not CANCELLED in sacct
    cfg = two_cell_yaml(
        tmp_path, "scancel", "{name: slurm, timeout_min: 10, mem_gb: 1, sbatch: ['--hold']}", events
    )
    spec = load_spec(cfg).replace(tracking_uri=url)
    cells = sorted(c.cell_id for c in expand(spec))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the launcher gives up at once
    real = runner.record_submissions
    sent: list = []

    def server_dies_after_the_first_record(uri, subs):
        sent.extend(subs)
        real(uri, subs[:1])
        stop_mlflow_server(server["proc"])  # the server is gone: the next write fails for real
        real(uri, subs[1:])

    monkeypatch.setattr(runner, "record_submissions", server_dies_after_the_first_record)
    argv = ["-c", str(cfg), "--tracking-uri", url, "--max-retries", "0", "--poll", "0.5"]
    array = ""
    try:
        assert launch_cli.main(argv) == 2
        err = capsys.readouterr().err
        assert len(sent) == 2
        array = sent[0].job.job_id.split("_")[0]
        assert "error: recording the job(s) of 2 cell(s)" in err and "cancelled so that none trains" in err
        assert "Launch again once the tracking server answers" in err and array in err, err
        wait_for(lambda: sacct_states(array) and all(s.startswith("CANCELLED") for s in sacct_states(array)),
                 "sacct to show the array cancelled", 60)  # fmt: skip
        server["proc"] = start_mlflow_server(store, port=port)[0]  # the server is back
        assert starts(events) == [], starts(events)  # none trained
        assert all(s.startswith("CANCELLED") for s in sacct_states(array)), sacct_states(array)
        first = next(st for st in states_of(spec, url).values() if st.run_id == sent[0].run_id)
        assert (first.state, first.attempts, first.tries) == ("failed", 1, 0), first

        monkeypatch.setattr(runner, "record_submissions", real)
        monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
        cfg.write_text(cfg.read_text().replace(", sbatch: ['--hold']", ""))  # the relaunch's jobs run
        assert launch_cli.main(argv) == 0, capsys.readouterr().err
        assert starts(events) == cells  # each cell trained once
        by_cell = runs_by_cell(url, spec.experiment)
        for st in sent:  # into the run its first submission created
            (run,) = by_cell[next(c for c in cells if by_cell[c][0].info.run_id == st.run_id)]
            assert run.info.status == "FINISHED"
        states = states_of(spec, url)
        assert sorted(c for c, st in states.items() if st.state == "finished") == cells
        assert {c: (st.attempts, st.tries) for c, st in states.items()}[first.cell_id] == (2, 1)
    finally:
        subprocess.run(["scancel", *(s.job.job_id.split("_")[0] for s in sent)], check=False)
        stop_mlflow_server(server["proc"])


def _noisy_sweep(sd: float):
    """`_fit_helpers.sweep` (one patch size) with log-normal noise ``sd`` on the losses (seed 0)."""
    import numpy as np
    from _fit_helpers import sweep

    d = sweep().assign(patch_size=2)
    d["loss"] *= np.exp(np.random.default_rng(0).normal(0.0, sd, len(d)))
    return d


def test_isoflop_json_nulls_every_exponent_it_withholds(tmp_path, capsys):
    """results.json nulled approach 2's `a`, `b` where its status is not ok, but kept `minima_a`, the joint
    fit's `a` and `a_ci95`, and (laws through the minima) the bootstrap's `se` and `ci95` of the exponents
    as numbers. Now they are null too, the status and its reasons beside them; the coefficients' `se` and
    an ok fit's numbers stay. Failed before the fix: minima_a 0.34 (and the others numbers too)."""
    import json

    from analysis import fit_scaling
    from analysis.isoflop import fit_isoflop

    csv = tmp_path / "noisy.csv"
    _noisy_sweep(0.1).to_csv(csv, index=False)
    argv = ["--csv", str(csv), "--out", str(tmp_path / "rep"), "--bootstrap", "0"]
    fit_scaling.main(argv)
    capsys.readouterr()
    iso = json.loads((tmp_path / "rep" / "results.json").read_text())["approach2_isoflop"]
    assert iso["status"] == "not_identified" and iso["reasons"] and iso["method"] == "joint"
    assert iso["a"] is None and iso["b"] is None and iso["minima_a"] is None
    assert iso["joint"]["a"] is None and iso["joint"]["a_ci95"] is None and iso["joint"]["n_points"] > 0

    # laws through the per-budget minima, with the bootstrap's intervals
    fit = json.loads(json.dumps(fit_isoflop(_noisy_sweep(0.1), n_bootstrap=40, joint=False).to_dict()))
    assert fit["status"] == "not_identified" and fit["reasons"] and fit["method"] == "per-budget minima"
    assert fit["a"] is None and fit["minima_a"] is None
    for key in ("se", "ci95"):
        assert fit[key]["N_opt_exp"] is None and fit[key]["D_opt_exp"] is None, fit[key]
        assert fit[key]["N_opt_A"] is not None, fit[key]  # the coefficients are no exponents

    ok = fit_isoflop(_noisy_sweep(0.05), joint=True).to_dict()  # resolved: the numbers stay
    assert ok["status"] == "ok" and ok["joint"]["a"] == ok["a"] and ok["a"] > 0
    assert ok["minima_a"] > 0 and all(v is not None for v in ok["joint"]["a_ci95"])


def test_a_second_ctrl_c_during_the_cancel_of_unrecorded_jobs_kills_them_and_gets_out(
    job_env, tmp_path, monkeypatch
):
    """The tracking server dies while the launcher records two local jobs, so it cancels them (SIGINT to
    each of their processes), holding the user's Ctrl-C meanwhile so that none runs on unrecorded. Jobs
    that ignore SIGINT (here their shell's `trap '' INT`, as under nohup; or a trainer in a long step)
    held the launcher, and every Ctrl-C of its user, for the whole wait, 120 s. Now a second Ctrl-C
    kills the jobs (SIGKILL to each of their processes) and the launcher exits at once; a relaunch with
    the server back trains each cell in its one run, to the weights of an uninterrupted one. Before the
    fix the launch ended 118 s after the second Ctrl-C, the jobs still running."""
    assert threading.current_thread() is threading.main_thread()
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal
    store, port = tmp_path / "server", free_port()
    server = {"proc": start_mlflow_server(store, port=port)[0]}
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the launcher gives up at once ...
    setup = ["trap '' INT", "unset MLFLOW_HTTP_REQUEST_MAX_RETRIES"]  # ... the jobs retry for minutes
    spec = fake_trainer_spec(
        tmp_path, url, name="hurry", experiment="hurry", budgets=[2.6e9], train={"step_s": 0.2},
        executor=ExecutorSpec(name="local", setup=setup),
    )  # fmt: skip
    cells_of = {c.cell_id: c for c in expand(spec)}
    cells = sorted(cells_of)
    jobs = capture_jobs(monkeypatch)
    real = runner.record_submissions

    def server_dies(uri, subs):
        stop_mlflow_server(server["proc"])
        real(uri, subs)

    monkeypatch.setattr(runner, "record_submissions", server_dies)
    folders = [sweep_dir(spec) / "cells" / c for c in cells]
    try:
        t, second = ctrl_c_twice_once_cancelled(folders, 90, 0.5)
        with pytest.raises(KeyboardInterrupt):
            launch(spec, poll_s=0.2)
        took = time.monotonic() - second[0]
        t.join(5)
        # the kill and KILL_WAIT_S (10 s) at most, and room for a loaded CI machine; before: 118 s
        assert took < 60, f"the launch ended {took:.0f} s after the second Ctrl-C"
        assert len(jobs) == 2 and all(j.done() for j in jobs)
        for j in jobs:  # no process of theirs is left
            assert (
                not Path(f"/proc/{j.job_id}").exists()
                or "zombie" in Path(f"/proc/{j.job_id}/status").read_text()
            )

        monkeypatch.setattr(runner, "record_submissions", real)
        server["proc"] = start_mlflow_server(store, port=port)[0]
        signal.signal(signal.SIGINT, old_int)
        res = launch(spec, poll_s=0.2)
        assert sorted(res.submitted) == cells and res.errors == {}
        by_cell = runs_by_cell(url, spec.experiment)
        assert sorted(by_cell) == cells and all(len(by_cell[c]) == 1 for c in cells)
        for c, cell in cells_of.items():  # a killed job may have started, blocked on the dead server
            out = res.results[c]
            assert out["starts"] in (1, 2) and out["run_id"] == by_cell[c][0].info.run_id
            assert abs(out["weight"] - fake_final_weight(cell)) <= 1e-12 * fake_final_weight(cell)
        assert all(by_cell[c][0].info.status == "FINISHED" for c in cells)
    finally:
        signal.signal(signal.SIGINT, old_int)
        for j in jobs:
            if not j.done():
                runner._kill_jobs([j])
        stop_mlflow_server(server["proc"])


@pytest.mark.slurm
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["int", "term"])
def test_slurm_a_ctrl_c_while_sbatch_prints_the_array_id_leaves_no_job_unknown(job_env, tmp_path, sig, code):
    """A terminal's Ctrl-C goes to the launcher's whole process group, sbatch included: one landing after
    the controller accepted the array but before sbatch printed its id killed sbatch, and the launcher
    never learnt of the job, which trained unrecorded (a relaunch trained the cell again). Here an sbatch
    that waits between the two until the test has signalled holds that window open (a fixed 2 s let a slow
    test signal after it). sbatch now runs in a session of its own: it prints the id, the job is recorded
    in its cell's run, then the launcher takes the signal (exit 130, or 143 on SIGTERM: killed by it
    before session 44). Before the fix sbatch died, the cell stayed `missing`, and its held job was in the
    queue; with SIGINT ignored in sbatch (this session's first fix) the launcher could lose the Ctrl-C
    itself, on one of its other threads (CI: exit 0)."""
    real = shutil.which("sbatch")
    shims = tmp_path / "shims"
    shims.mkdir()
    said, release = tmp_path / "sbatch_said", tmp_path / "release"
    (shims / "sbatch").write_text(
        f'#!/bin/sh\nout=$({real} "$@") || exit $?\necho "$out" > {said}.tmp\nmv {said}.tmp {said}\n'
        f'while [ ! -e {release} ]; do sleep 0.1; done\necho "$out"\n'
    )
    (shims / "sbatch").chmod(0o755)
    cfg = tmp_path / "window.yaml"
    executor = "executor: {name: slurm, timeout_min: 10, mem_gb: 1, sbatch: ['--hold']}\n"
    cfg.write_text(fake_sweep_yaml("window", f"window-{tmp_path.name}") + executor)
    spec = load_spec(cfg).replace(tracking_uri=job_env)
    (cell,) = expand(spec)
    env = dict(os.environ, PATH=f"{shims}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "sweeps.launch", "-c", str(cfg), "--tracking-uri", job_env, "--no-wait"]
    proc = subprocess.Popen(  # its own process group, SIGINT as a terminal has it (CI may ignore it)
        cmd, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    job = ""
    try:
        wait_for(lambda: said.exists() or proc.poll() is not None, "sbatch to submit the array", 120)
        job = said.read_text().split()[-1]  # "Submitted batch job N"
        os.killpg(proc.pid, sig)  # the terminal's Ctrl-C (or a SIGTERM), to the whole group
        release.touch()  # sbatch (if the signal spared it) prints the id now
        err = proc.communicate(timeout=60)[1]
        assert proc.returncode == code, err
        st = states_of(spec, job_env)[cell.cell_id]
        assert (st.state, st.job_id, st.attempts) == ("held", job, 1), (st, err)
    finally:
        release.touch()
        if proc.poll() is None:
            proc.kill()
        if job:
            subprocess.run(["scancel", job], check=False)


def test_a_noted_cancel_makes_the_recorded_job_no_try_until_the_next_record_carries_it(tmp_path_factory):
    """`sweeps.state` on a real sqlite store, no launcher: a cell whose record names job 7 that its launcher
    noted as cancelled (`note_cancelled`, interrupts 1) has tries 0, in `read_states` (so `status` and
    `plan` agree); a note of another job (whose record never got through) changes nothing; the next
    submission's record writes the interrupts tag, after which the note may go. The fast half of the
    SLURM test above, which failed before the fix."""
    from _sweep_specs import migrated_store

    from sweeps.executor import JobRef
    from sweeps.state import (
        Submission,
        cancelled_jobs,
        create_cell_runs,
        forget_cancelled,
        note_cancelled,
        plan,
        read_states,
        record_submissions,
    )

    uri = migrated_store(tmp_path_factory, "noted")
    dirs = {c: tmp_path_factory.mktemp(c) for c in ("a", "b")}
    ids = create_cell_runs(uri, "noted", "s", {"a": "ha", "b": "hb"})
    record_submissions(uri, [Submission(ids[c], JobRef("local", f"7{c}", "", str(dirs[c])), 1, "h", False)
                             for c in ("a", "b")])  # fmt: skip
    note_cancelled(dirs["a"], "7a", 1)  # a's record got through before the failure
    note_cancelled(dirs["b"], "other", 1)  # b's note names a job its record does not
    cells = {c: str(d) for c, d in dirs.items()}
    states = read_states(uri, "noted", "s", cells)
    assert {c: (st.state, st.attempts, st.interrupts, st.tries) for c, st in states.items()} == {
        "a": ("failed", 1, 1, 0),
        "b": ("failed", 1, 0, 1),
    }
    assert plan(states, max_retries=0).submit == ["a"]
    note_cancelled(dirs["a"], "8a", 2)  # a's next job cancelled too: both notes kept
    assert cancelled_jobs(dirs["a"]) == {"7a": 1, "8a": 2}
    record_submissions(uri, [Submission(ids["a"], JobRef("local", "9a", "", cells["a"]), 2, "h", True, 1)])
    forget_cancelled(dirs["a"])
    st = read_states(uri, "noted", "s", cells)["a"]
    assert (st.attempts, st.interrupts, st.tries) == (2, 1, 1) and cancelled_jobs(dirs["a"]) == {}
    (dirs["b"] / ".cancelled_jobs.json").write_text("not json")  # a torn or foreign file counts nothing
    assert cancelled_jobs(dirs["b"]) == {} and read_states(uri, "noted", "s", cells)["b"].tries == 1
