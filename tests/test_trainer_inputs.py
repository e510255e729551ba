"""User mistakes the trainer CLI meets before training: an ``error: ...`` line and exit 2, nothing
trained and no MLflow run touched (instead of a traceback, or of a silent wrong run)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from _train_helpers import train_cli

from dit_core.checkpoint import list_checkpoints, load_checkpoint
from dit_core.evaluate.features import WEIGHTS_ENV, known_without_logits, resolve_inception_weights

TINY = ["--model", "none", "--depth", "2", "--width", "16", "--heads", "2", "--patch-size", "2",
        "--data", "digits", "--image-size", "16", "--global-batch-size", "8",
        "--model.frequency_embedding_size", "32", "--log-every", "1"]  # fmt: skip


def _train(capsys, *args: str) -> tuple[int, str]:
    return train_cli(capsys, [*TINY, *args])


@pytest.fixture
def uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


@pytest.fixture
def run2(tmp_path, uri, capsys):
    """A finished 4-step run with checkpoints at steps 2 and 4, logged to ``uri``."""
    out = tmp_path / "run"
    code, err = _train(capsys, "--max-steps", "4", "--ckpt-every", "2", "--keep-last", "0", "--out", str(out),
                       "--tracking-uri", uri)  # fmt: skip
    assert code == 0, err
    return out


def test_a_broken_newest_checkpoint_names_the_older_ones_to_resume_from(run2, uri, capsys):
    """Auto-resume does not fall back silently: it names the broken file and the older checkpoint,
    which --resume PATH then continues from."""
    first, newest = list_checkpoints(run2)
    newest.write_bytes(newest.read_bytes()[:-10])  # a copy cut short
    resume = ["--max-steps", "6", "--out", str(run2), "--tracking-uri", uri]
    code, err = _train(capsys, *resume)
    assert code == 2 and err.startswith("error: checkpoint ") and "Traceback" not in err, err
    assert str(newest) in err and "truncated, corrupt" in err
    assert f"its folder also holds step_0000002.pt: continue from one with --resume {first}" in err
    assert load_checkpoint(first)["step"] == 2  # nothing was written
    code, err = _train(capsys, *resume, "--resume", str(first))
    assert code == 0, err
    assert load_checkpoint(run2)["step"] == 6


def test_foreign_files_and_a_pointer_out_of_the_folder_are_refused(tmp_path, capsys):
    text, foreign, tensor = tmp_path / "notes.txt", tmp_path / "foreign.pt", tmp_path / "tensor.pt"
    text.write_text("hello world\n")
    torch.save({"a": torch.zeros(2)}, foreign)
    torch.save(torch.zeros(2), tensor)
    args = ["--max-steps", "2", "--no-mlflow", "--out", str(tmp_path / "new")]
    for path, said in [
        (text, "is not a checkpoint written by dit_core.train"),
        (foreign, "is not a dit_core training checkpoint (missing ['config', 'data_position', 'ema', "),
        (tensor, "(it holds a Tensor, not a dict of the run's state)"),
    ]:
        code, err = _train(capsys, *args, "--resume", str(path))
        assert code == 2 and err.startswith(f"error: checkpoint {path} ") and said in err, err
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "latest.json").write_text(json.dumps({"step": 9, "file": "../../foreign.pt"}))
    code, err = _train(capsys, "--max-steps", "2", "--no-mlflow", "--out", str(tmp_path / "run"))
    assert code == 2 and f"error: {folder / 'latest.json'} names '../../foreign.pt', not a step_*.pt" in err
    assert not list((tmp_path / "new").glob("**/*.pt")) and not list(folder.glob("*.pt"))


def test_a_run_id_other_than_the_checkpoints_is_refused_before_any_run_is_touched(run2, uri, capsys):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    own = (run2 / "mlflow_run_id").read_text().strip()
    new = client.create_run(client.get_experiment_by_name("ditscale-demo").experiment_id).info.run_id
    before = client.get_run(own).data
    code, err = _train(capsys, "--max-steps", "6", "--out", str(run2), "--tracking-uri", uri, "--run-id", new)
    assert code == 2 and err.startswith("error: tracking.run_id: "), err
    assert f"--run-id {new} was given" in err and f"belongs to MLflow run {own}" in err
    assert client.get_run(new).data.params == {} and client.get_run(new).data.metrics == {}
    assert client.get_run(own).data.metrics == before.metrics
    assert load_checkpoint(run2)["step"] == 4
    code, err = _train(capsys, "--max-steps", "6", "--out", str(run2), "--tracking-uri", uri, "--run-id", own)
    assert code == 0, err  # its own id continues it


def test_a_budget_below_the_checkpoints_step_is_refused(run2, uri, capsys):
    code, err = _train(capsys, "--max-steps", "2", "--out", str(run2), "--tracking-uri", uri)
    assert code == 2, err
    assert (
        "budget.max_steps: checkpoint " in err
        and "is already at step 4, above the requested total of 2" in err
    )
    assert len(list_checkpoints(run2)) == 2 and load_checkpoint(run2)["step"] == 4


def test_the_advice_for_changed_settings_works_when_followed(run2, uri, capsys):
    changed = ["--max-steps", "2", "--lr", "3e-4", "--out", str(run2), "--tracking-uri", uri]
    code, err = _train(capsys, *changed)
    assert code == 2 and "was written by a different config (optim.lr:" in err, err
    assert "to start over in this folder, delete its checkpoints/ and run with --resume never" in err
    shutil.rmtree(run2 / "checkpoints")
    code, err = _train(capsys, *changed, "--resume", "never")
    assert code == 0, err
    assert load_checkpoint(run2)["config"]["optim.lr"] == 3e-4


def test_resume_never_ends_the_run_its_folder_left_running(tmp_path, uri, capsys):
    """A job killed before its first checkpoint leaves its run RUNNING and its id in the folder;
    `--resume never` starts a new run there and ends the old one (KILLED, status=superseded)
    instead of leaving it orphaned. A finished run the folder held is left as it is."""
    from mlflow.tracking import MlflowClient

    client, out = MlflowClient(uri), tmp_path / "run"
    out.mkdir()
    exp = client.create_experiment("ditscale")
    for old_status in ("RUNNING", "FINISHED"):
        old = client.create_run(exp).info.run_id
        if old_status == "FINISHED":
            client.set_terminated(old, "FINISHED")
        (out / "mlflow_run_id").write_text(old + "\n")
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # --resume never refuses a folder with some
        code, err = _train(capsys, "--max-steps", "2", "--ckpt-every", "0", "--out", str(out),
                           "--tracking-uri", uri, "--resume", "never")  # fmt: skip
        assert code == 0, err
        new = (out / "mlflow_run_id").read_text().strip()
        assert new != old and client.get_run(new).info.status == "FINISHED"
        run = client.get_run(old)
        if old_status == "RUNNING":
            assert run.info.status == "KILLED" and run.data.tags["status"] == "superseded"
        else:
            assert run.info.status == "FINISHED" and "status" not in run.data.tags


@pytest.mark.parametrize(
    "args, said",
    [
        (["--eval.metrics", "fid_photos"], "eval.metrics: *_photos metrics need reference='photos'"),
        (["--eval.metrics", "bogus"], "eval.metrics: unknown metrics ['bogus']"),
        (["--reference", "/nonexistent"], "eval.reference: reference '/nonexistent' is neither"),
        (["--sample-steps", "0"], "eval.steps: must be >= 1 when eval.eval_every > 0"),
        (["--eval.metrics", "is"], "eval.metrics: metric 'is' needs class logits"),
    ],
)
def test_bad_evaluation_settings_fail_before_training(tmp_path, capsys, monkeypatch, args, said):
    if "is" in args:
        monkeypatch.delenv(WEIGHTS_ENV, raising=False)
        if not known_without_logits(resolve_inception_weights()):
            pytest.skip("the Inception weights found here have logits")
    out = tmp_path / "run"
    code, err = _train(capsys, "--max-steps", "4", "--ckpt-every", "1", "--eval-every", "2",
                       "--num-samples", "4", "--no-mlflow", "--out", str(out), *args)  # fmt: skip
    assert code == 2 and err.startswith(f"error: {said}"), err
    assert "set eval.eval_every=0 to train without sample metrics" in err
    assert not (out / "checkpoints").exists()  # nothing was trained


def test_user_mistakes_exit_2_with_a_message(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1,2\n")
    base = ["--max-steps", "2", "--no-mlflow"]
    for args, said in [
        ([*base, "--out", str(afile)], f"out: {afile} is a file, not a folder"),
        ([*base, "--out", str(afile / "sub")], f"out: {afile} is a file, not a folder"),
        ([*base, "--out", str(tmp_path / "r"), "--config", str(bad)],
         f"--config: {bad}: not valid YAML (line 2, column 1: expected ',' or ']'"),
        (["--max-steps", "2", "--out", str(tmp_path / "r"), "--tracking-uri", "foo://bar"],
         "tracking URI 'foo://bar': give a database or a server"),
        (["--max-steps", "2", "--out", str(tmp_path / "r"), "--tracking-uri", str(tmp_path / "store")],
         f"tracking URI '{tmp_path / 'store'}': give a database or a server"),
    ]:  # fmt: skip
        code, err = _train(capsys, *args)
        assert code == 2 and err.startswith(f"error: {said}") and "Traceback" not in err, (args, err)
    assert "e.g. sqlite:///path/to/mlflow.db or http://host:5000" in err
    assert not list(tmp_path.glob("**/*.pt"))


_HOLDER = """\
import fcntl, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()} {socket.gethostname()}\\n".encode())
print("locked", flush=True)
time.sleep(600)
"""


def _folder_and_runs(out, client) -> tuple[dict, list]:
    """Every file of the run folder but its lock (bytes and mtime), and every MLflow run."""
    files = {str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mtime_ns)
             for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".train.lock"}  # fmt: skip
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = [(r.info.run_id, r.info.status, r.info.end_time, r.data.metrics, r.data.params, r.data.tags)
            for r in client.search_runs(exps)]  # fmt: skip
    history = {r[0]: client.get_metric_history(r[0], "train/loss") for r in runs}
    return files, [*runs, history]


def test_a_second_trainer_on_a_busy_out_is_refused_before_touching_it(run2, uri, capsys):
    """Another process holds the run folder's lock (as a running trainer does): the CLI exits 2 with
    a message naming the folder, the holder's pid and what to do, and writes no checkpoint, config
    or MLflow data. Once the holder dies (SIGKILL: the kernel drops the lock) the same command runs."""
    from mlflow import MlflowClient

    client, lock = MlflowClient(uri), run2 / ".train.lock"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        before = _folder_and_runs(run2, client)
        code, err = _train(capsys, "--max-steps", "6", "--out", str(run2), "--tracking-uri", uri)
        assert code == 2 and "Traceback" not in err, err
        assert err.startswith(
            f"error: out: {run2} is in use by another trainer (pid {holder.pid} on {socket.gethostname()}, "
            f"lock {lock}); wait for it to finish, or use another --out\n"
        ), err
        assert _folder_and_runs(run2, client) == before
        assert load_checkpoint(run2)["step"] == 4
    finally:
        holder.kill()
        holder.wait()
    code, err = _train(capsys, "--max-steps", "6", "--out", str(run2), "--tracking-uri", uri)
    assert code == 0, err
    assert load_checkpoint(run2)["step"] == 6
    assert lock.read_text() == ""  # released: no holder named
