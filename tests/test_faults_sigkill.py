"""Fault on purpose: SIGKILL the trainer 20 times at seeded random moments, resume each time, and
end bitwise equal to an uninterrupted run, in one MLflow run with every metric step exactly once.

The kills are aimed (see tests/_fault_zygote.py for the events they wait for):
- the first lands right after the MLflow run is created and before its id is saved;
- "ckpt": inside a checkpoint write (the child writes checkpoint bytes slowly, in 4 chunks);
- "step": a random moment of a random step after the checkpoint it resumed from;
- "sent": right after a metrics batch reached the store (so the resumed job replays logged steps);
- "startup": a random moment of the start-up (building the run, loading the checkpoint).
A kill counts as mid-write when the dead job left a checkpoint's temporary file behind.
Figures go to test-artifacts/faults_sigkill.json and docs/testing-faults.md.
"""

from __future__ import annotations

import json
import os
import random
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from dit_core.checkpoint import checkpoint_dir, latest_checkpoint, list_checkpoints, load_checkpoint
from dit_core.tracking import FIXED_COST_METRICS

TESTS = Path(__file__).resolve().parent
N_KILLS = 20
STEPS = 64
OVERRIDES = {
    "budget.max_steps": STEPS,
    "checkpoint.every": 2,
    "checkpoint.keep_last": 2,
    "log_every": 3,  # logs and checkpoints out of phase: kills between a log and its checkpoint
    "eval.val_every": 10,
}
#: Metrics whose values depend on timing, not on the training state.
TIMING_METRICS = {"perf/images_per_s", *FIXED_COST_METRICS}


class Zygote:
    """The fork server of tests/_fault_zygote.py, driven over JSON lines."""

    def __init__(self, log_path: Path):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]),
                   OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # fmt: skip
        self.log = open(log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, str(TESTS / "_fault_zygote.py")], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.log, env=env, cwd=log_path.parent,
        )  # fmt: skip
        self._buf = b""
        assert "ready" in self.read(timeout=300), "the zygote did not start"

    def read(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = max(0.0, deadline - time.monotonic())
            if not select.select([self.proc.stdout], [], [], left)[0]:
                raise TimeoutError(f"no message from the zygote in {timeout} s")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError("the zygote exited")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def poll_exit(self) -> int | None:
        """The exit status of the current child if it ended, else None (does not block)."""
        try:
            return self.read(timeout=0.0)["status"]
        except TimeoutError:
            return None

    def launch(self, **job) -> int:
        self.proc.stdin.write((json.dumps(job) + "\n").encode())
        self.proc.stdin.flush()
        return self.read(timeout=30)["pid"]

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class Events:
    """The child's event lines (``pid seconds event detail``) for one pid, read as they come."""

    def __init__(self, path: Path, pid: int):
        self.path, self.pid, self.offset, self.seen, self.checked = path, pid, 0, [], 0
        self.exit_status: int | None = None

    def update(self) -> list[tuple[float, str, str]]:
        if self.path.exists():
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
            complete = data[: data.rfind(b"\n") + 1]
            self.offset += len(complete)
            for line in complete.decode().splitlines():
                pid, t, event, *rest = line.split(" ")
                if int(pid) == self.pid:
                    self.seen.append((float(t), event, " ".join(rest).strip()))
        return self.seen

    def wait_for(self, pred, zygote: Zygote, timeout: float = 120.0):
        """Poll until an event not checked before satisfies ``pred``; None if the child ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.update()
            while self.checked < len(seen):
                ev = seen[self.checked]
                self.checked += 1
                if pred(ev):
                    return ev
            status = zygote.poll_exit()
            if status is not None:
                self.exit_status = status
                return None
            time.sleep(0.002)
        raise TimeoutError(f"child {self.pid}: no awaited event in {timeout} s; saw {self.seen[-10:]}")


def _partial_writes(out: Path) -> list[str]:
    folder = checkpoint_dir(out)
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp")) if folder.is_dir() else []


def _kill(pid: int, zygote: Zygote) -> int:
    import signal

    os.kill(pid, signal.SIGKILL)
    return zygote.read(timeout=60)["status"]


def _plan(rng: random.Random, i: int) -> str:
    if i == 0:
        return "run-created"
    return rng.choices(["ckpt", "step", "sent", "startup"], weights=[0.35, 0.35, 0.15, 0.15])[0]


def _assert_same_state(ref: dict, got: dict, path: str = "") -> None:
    """Every tensor bitwise equal (torch.equal), every other value ==, recursively."""
    assert type(ref) is type(got), f"{path}: {type(ref).__name__} vs {type(got).__name__}"
    if isinstance(ref, dict):
        assert ref.keys() == got.keys(), f"{path}: keys {sorted(ref)} vs {sorted(got)}"
        for k in ref:
            _assert_same_state(ref[k], got[k], f"{path}.{k}")
    elif isinstance(ref, (list, tuple)):
        assert len(ref) == len(got), f"{path}: length {len(ref)} vs {len(got)}"
        for k, (a, b) in enumerate(zip(ref, got)):
            _assert_same_state(a, b, f"{path}[{k}]")
    elif isinstance(ref, torch.Tensor):
        assert ref.dtype == got.dtype and torch.equal(ref, got), f"{path}: tensors differ"
    else:
        assert ref == got, f"{path}: {ref!r} vs {got!r}"


def _comparable(ck: dict) -> dict:
    """A final checkpoint without what names the run folder or depends on timing or history: the
    global Python and NumPy RNG states are saved for other code but neither seeded nor used by the
    training (its draws come from `StepRandom`), and MLflow's run-name generator draws from Python's
    `random` when a run is created, which a resumed job does not do."""
    ck = dict(ck)
    ck["rng"] = {k: v for k, v in ck["rng"].items() if k not in ("python", "numpy")}
    ck["config"] = {k: v for k, v in ck["config"].items() if k != "out" and not k.startswith("tracking.")}
    ck["loop"] = {k: v for k, v in ck["loop"].items() if k != "unsent_metrics"}
    ck.pop("mlflow_run_id")
    ck.pop("folder")  # the run folder, absolute
    return ck


def _histories(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    keys = client.get_run(run_id).data.metrics
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_at_20_random_moments_resumes_bitwise_into_one_run(tmp_path, artifacts_dir):
    t_start = time.monotonic()
    rng = random.Random(15)
    exp = f"faults-sigkill-{tmp_path.name}"
    client = MlflowClient()
    client.create_experiment(exp)  # the store's tables exist before any job can be killed
    overrides = {**OVERRIDES, "tracking.experiment": exp}
    events_path = tmp_path / "events.log"
    zygote = Zygote(tmp_path / "zygote.log")
    kills: list[dict] = []
    try:
        # the uninterrupted reference run
        ref_out = tmp_path / "reference"
        zygote.launch(out=str(ref_out), events=str(events_path), overrides=overrides)
        assert zygote.read(timeout=300)["status"] == 0, (tmp_path / "zygote.log").read_text()[-3000:]
        t_ref = time.monotonic() - t_start

        out = tmp_path / "killed"
        startup_s, step_s = 1.0, 0.1  # updated from what the children report
        while len(kills) < N_KILLS:
            i = len(kills)
            mode = _plan(rng, i)
            ck = latest_checkpoint(out)
            resumed_from = load_checkpoint(ck)["step"] if ck else 0
            target = resumed_from + rng.randint(1, 2 * OVERRIDES["checkpoint.every"])
            if mode == "step" and target > STEPS - 3:
                mode = "startup"  # never let a planned kill wait past the end of the run
            slow = 0.2 if mode == "ckpt" else 0.02
            partial_before = set(_partial_writes(out))  # left by earlier kills, removed at the next save
            pid = zygote.launch(out=str(out), events=str(events_path), overrides=overrides,
                                slow_write_s=slow, pause_after_create_s=0.5 if i == 0 else 0.0)  # fmt: skip
            ev = Events(events_path, pid)
            if mode == "run-created":
                hit = ev.wait_for(lambda e: e[1] == "run-created", zygote)
            elif mode == "ckpt":
                for _ in range(rng.randint(1, 2)):  # the first or second write of this job
                    hit = ev.wait_for(lambda e: e[1] == "ckpt-begin", zygote)
                    if hit is None:
                        break
                if hit:
                    time.sleep(rng.uniform(0.0, 0.8 * slow))
            elif mode == "step":
                hit = ev.wait_for(lambda e, s=target: e[1] == "step" and int(e[2]) >= s, zygote)
                if hit:
                    time.sleep(rng.uniform(0.0, step_s))
            elif mode == "sent":
                hit = ev.wait_for(lambda e: e[1] == "metrics-sent", zygote)
            else:  # startup
                hit = ev.wait_for(lambda e: e[1] == "start", zygote)
                if hit:
                    time.sleep(rng.uniform(0.0, startup_s))
            assert hit is not None, f"kill {i} ({mode}): the job ended first (status {ev.exit_status}); " \
                                    f"raise STEPS. Events: {ev.seen[-8:]}"  # fmt: skip
            status = _kill(pid, zygote)
            assert status == -9, f"kill {i}: job exited with {status} before the SIGKILL"
            seen = ev.update()
            partial = sorted(set(_partial_writes(out)) - partial_before)
            steps_done = [int(d) for _, e, d in seen if e == "step"]
            kills.append({
                "mode": mode, "resumed_from": resumed_from, "last_event": seen[-1][1] if seen else "none",
                "last_step": max(steps_done, default=resumed_from), "mid_write": bool(partial),
                "partial_files": partial,
            })  # fmt: skip
            t_step = [t for t, e, _ in seen if e == "step"]
            if t_step:
                startup_s = 0.5 * startup_s + 0.5 * t_step[0]
                if len(t_step) > 1:
                    step_s = 0.5 * step_s + 0.5 * (t_step[-1] - t_step[0]) / (len(t_step) - 1)

        pid = zygote.launch(out=str(out), events=str(events_path), overrides=overrides)
        status = zygote.read(timeout=300)["status"]
        assert status == 0, (tmp_path / "zygote.log").read_text()[-3000:]
    finally:
        zygote.close()
    wall = time.monotonic() - t_start

    # 1. the final state is bitwise the uninterrupted run's
    ref_ck, got_ck = load_checkpoint(ref_out), load_checkpoint(out)
    assert ref_ck["step"] == got_ck["step"] == STEPS
    _assert_same_state(_comparable(ref_ck), _comparable(got_ck))
    # no torn or stray checkpoint files; retention held through the kills
    assert _partial_writes(out) == []
    assert [p.name for p in list_checkpoints(out)] == [f"step_{STEPS - 2:07d}.pt", f"step_{STEPS:07d}.pt"]
    for p in list_checkpoints(out):
        load_checkpoint(p)  # every file left loads

    # 2. one MLflow run, finished, every metric step exactly once with the reference's values
    exp_id = client.get_experiment_by_name(exp).experiment_id
    runs = client.search_runs([exp_id])  # the reference's and the killed job's, nothing else
    assert len(runs) == 2, f"{len(runs)} runs for two training runs: {[r.info.run_id for r in runs]}"
    run = client.search_runs([exp_id], filter_string=f"params.out = '{out}'")[0]
    assert run.info.run_id == (out / "mlflow_run_id").read_text().strip() == got_ck["mlflow_run_id"]
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
    ref_run = client.search_runs([exp_id], filter_string=f"params.out = '{ref_out}'")[0]
    ref_hist, got_hist = _histories(client, ref_run.info.run_id), _histories(client, run.info.run_id)
    assert got_hist.keys() == ref_hist.keys()
    n_points = 0
    for key, ref_points in ref_hist.items():
        got_steps = [s for s, _ in got_hist[key]]
        assert len(got_steps) == len(set(got_steps)), f"{key}: duplicated steps {got_steps}"
        assert got_steps == [s for s, _ in ref_points], f"{key}: steps differ from the reference"
        if key not in TIMING_METRICS:
            assert got_hist[key] == ref_points, f"{key}: values differ from the reference"
        n_points += len(got_steps)
    assert sorted(s for s, _ in got_hist["train/loss"]) == [*range(3, STEPS, 3), STEPS]
    assert [s for s, _ in got_hist["val/loss"]] == [0, 10, 20, 30, 40, 50, 60, 64]

    mid_write = sum(k["mid_write"] for k in kills)
    figures = {
        "kills": len(kills), "resumes": len(kills), "mid_checkpoint_write": mid_write,
        "by_mode": {m: sum(k["mode"] == m for k in kills) for m in ("run-created", "ckpt", "step", "sent",
                                                                    "startup")},
        "steps": STEPS, "checkpoint_every": OVERRIDES["checkpoint.every"], "metric_points": n_points,
        "bitwise_equal": True, "mlflow_runs": len(runs) - 1, "wall_s": round(wall, 1),
        "reference_wall_s": round(t_ref, 1), "kill_log": kills,
    }  # fmt: skip
    (artifacts_dir / "faults_sigkill.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps({k: v for k, v in figures.items() if k != "kill_log"}))
    assert len(kills) == N_KILLS
    assert mid_write >= 3, f"only {mid_write} kills landed inside a checkpoint write: {kills}"
