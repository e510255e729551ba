"""Session 52: cooldown ladders through the sweeps (`--ladder`, `sweeps.ladder`): the cells of one model
share a constant-lr trunk and each trains only its cooldown, forked from the trunk's checkpoint."""

from __future__ import annotations

import math
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from _sweep_specs import runs_by_cell, tiny_real_spec

from dit_core.checkpoint import checkpoint_path
from dit_core.config import TrainConfig
from dit_core.train import train
from sweeps.executor import run_task
from sweeps.grid import ExecutorSpec, expand, load_spec
from sweeps.ladder import Trunk, grow_trunk, ladder_flops, trained_cells, trunk_lock, trunk_progress
from sweeps.launch import _trunks, build_parser, spec_from_args
from sweeps.runner import launch, sweep_dir
from sweeps.state import CellState
from sweeps.table import status_table
from sweeps.task import make_tasks

DEMO_BUDGETS = [3e10, 1e11, 3e11, 1e12]


def demo_ladder(**overrides):
    spec = load_spec().replace(budgets=DEMO_BUDGETS, ladder=True, **overrides)
    cells = expand(spec)
    return spec, cells, make_tasks(spec, cells, Path("/tmp/ladder-sweep"), "sqlite:////tmp/x.db")


def test_the_cells_of_one_model_and_seed_share_a_trunk_at_the_lr_rule_of_its_largest_budget():
    """The demo's lr rule is 3e-2 x (C / 3e11)^-0.9 above 3e11 and its warmup max(10, 5 % of the steps):
    every cell of a model gets the peak of its largest cell's planned FLOPs and the warmup of its
    smallest, forks at T - ceil(0.2 T), and carries the fork steps of its trunk up to its own."""
    spec, cells, tasks = demo_ladder(seeds=[0, 1])
    assert len({t.trunk.run_dir for t in tasks.values()}) == 8  # 4 families x 2 seeds
    for c in cells:
        t = tasks[c.cell_id]
        mine = [d for d in cells if d.model.name == c.model.name and d.seed == c.seed]
        c_max = max(d.steps for d in mine) * c.batch_size * c.train_flops_per_image
        peak = 3e-2 * (c_max / 3e11) ** -0.9 if c_max > 3e11 else 3e-2
        assert t.overrides["optim.lr"] == pytest.approx(peak, rel=1e-12)
        assert t.overrides["optim.warmup_steps"] == max(10, round(0.05 * min(d.steps for d in mine)))
        assert t.overrides["optim.lr_flops_ref"] == 0 and t.overrides["optim.warmup_frac"] == 0
        assert t.overrides["optim.schedule"] == "constant_cooldown"
        assert t.trunk.fork_step == c.steps - math.ceil(0.2 * c.steps)
        forks = sorted(d.steps - math.ceil(0.2 * d.steps) for d in mine)
        assert list(t.trunk.fork_steps) == [s for s in forks if s <= t.trunk.fork_step]
        trunk = t.trunk.overrides_to(7)
        assert trunk["optim.schedule"] == "constant" and trunk["tracking.enabled"] is False
        assert trunk["optim.lr"] == t.overrides["optim.lr"] and trunk["budget.max_steps"] == 7
        assert trunk.get("seed", 0) == c.seed and "tracking.run_name" not in trunk
        assert trunk["out"] == t.trunk.run_dir != t.run_dir
    s0, s1 = ({tasks[c.cell_id].trunk.run_dir for c in cells if c.seed == s} for s in (0, 1))
    assert len(s0) == len(s1) == 4 and not s0 & s1


def test_the_ladder_trains_each_trunk_to_its_last_fork_and_every_cooldown():
    """Its FLOPs in closed form; `trained_cells` (the time estimates) gives each trunk to its largest
    cell, so its steps add up to the same FLOPs."""
    _, cells, tasks = demo_ladder()
    per = {c.cell_id: c.batch_size * c.train_flops_per_image for c in cells}
    fams = {c.model.name for c in cells}
    want = sum(math.ceil(0.2 * c.steps) * per[c.cell_id] for c in cells)
    for f in fams:
        top = max((c for c in cells if c.model.name == f), key=lambda c: c.steps)
        want += (top.steps - math.ceil(0.2 * top.steps)) * per[top.cell_id]
    ladder, scratch = ladder_flops(tasks)
    assert ladder == pytest.approx(want, rel=1e-12)
    assert scratch == pytest.approx(sum(c.steps * per[c.cell_id] for c in cells), rel=1e-12)
    trained = sum(c.steps * per[c.cell_id] for c in trained_cells(cells, tasks))
    assert trained == pytest.approx(want, rel=1e-12) and ladder < 0.8 * scratch


def test_a_configs_ladder_is_its_default_and_no_ladder_turns_it_off(tmp_path):
    parse = build_parser().parse_args
    cfg = tmp_path / "s.yaml"
    cfg.write_text("name: x\nladder: true\n")
    assert spec_from_args(parse(["-c", str(cfg)])).ladder is True
    assert spec_from_args(parse(["-c", str(cfg), "--no-ladder"])).ladder is False
    assert spec_from_args(parse(["--ladder"])).ladder is True and spec_from_args(parse([])).ladder is False


def test_a_ladder_is_refused_where_it_cannot_fork():
    with pytest.raises(ValueError, match=r"ladder: trainer 'my_trainer' cannot fork a cooldown"):
        load_spec().replace(ladder=True, trainer="my_trainer")
    with pytest.raises(ValueError, match=r"ladder: the adaptive design launches one budget at a time"):
        load_spec().replace(ladder=True, design="adaptive")
    with pytest.raises(ValueError, match=r"ladder: .* run one process each"):
        load_spec().replace(ladder=True, executor={"tasks_per_node": 2})
    with pytest.raises(ValueError, match=r"ladder: cell S-2-3e10 makes \d+ steps, all in its cooldown"):
        demo_ladder(train={**load_spec().train, "optim.cooldown_frac": 1.0})


def test_status_shows_how_far_the_trunk_of_a_live_ladder_cell_without_steps_has_grown(tmp_path):
    """Session 53: a cell whose job grows its trunk (or waits for it) has no step of its own; `status`
    shows its trunk's newest checkpoint, at most the cell's fork step, over that fork step."""
    spec = load_spec().replace(budgets=DEMO_BUDGETS, ladder=True, output_dir=str(tmp_path), name="lad")
    cells = {c.cell_id: c for c in expand(spec)}
    tasks = make_tasks(spec, list(cells.values()), sweep_dir(spec), "sqlite:////tmp/x.db")
    fork = {cid: c.steps - math.ceil(0.2 * c.steps) for cid, c in cells.items()}
    s_trunk = tasks["S-2-1e12"].trunk.run_dir
    for step in (fork["S-2-1e11"], 1000):  # a fork's checkpoint and a periodic one
        checkpoint_path(s_trunk, step).parent.mkdir(parents=True, exist_ok=True)
        checkpoint_path(s_trunk, step).write_bytes(b"x")
    assert fork["S-2-3e11"] > 1000 > fork["S-2-1e11"] > fork["S-2-3e10"]
    assert trunk_progress(tasks, ["S-2-3e10", "S-2-1e11", "S-2-3e11", "S-2-1e12", "B-2-1e12"]) == {
        "S-2-3e10": f"trunk {fork['S-2-3e10']}/{fork['S-2-3e10']}",  # made: its fork is kept
        "S-2-1e11": f"trunk {fork['S-2-1e11']}/{fork['S-2-1e11']}",
        "S-2-3e11": f"trunk 1000/{fork['S-2-3e11']}",
        "S-2-1e12": f"trunk 1000/{fork['S-2-1e12']}",
        "B-2-1e12": f"trunk 0/{fork['B-2-1e12']}",
    }
    states = {
        "S-2-1e12": CellState("S-2-1e12", "queued"),  # its job grows the trunk: the run has no step yet
        "S-2-3e11": CellState("S-2-3e11", "running", step=5),  # forked: its own step
        "B-2-1e12": CellState("B-2-1e12", "failed"),  # no job: no trunk shown
    }
    trunks = _trunks(spec, cells, states, "sqlite:////tmp/x.db")
    assert trunks == {"S-2-1e12": f"trunk 1000/{fork['S-2-1e12']}"}
    rows = {
        r.split()[0]: r.split()[3:5]
        for r in status_table(list(states.values()), cells, trunks).splitlines()[2:]
    }
    assert rows == {
        "S-2-1e12": ["trunk", f"1000/{fork['S-2-1e12']}"],
        "S-2-3e11": ["5/2423", "-"],
        "B-2-1e12": ["-/3600", "-"],
    }
    assert _trunks(spec.replace(ladder=False), cells, states, "sqlite:////tmp/x.db") == {}


def _fake_trunk(tmp_path: Path, steps: tuple[int, ...]) -> tuple[Trunk, list[int]]:
    """A trunk whose `train` writes a checkpoint file at its last step and records it."""
    trained: list[int] = []
    return Trunk(str(tmp_path / "trunk"), {"out": str(tmp_path / "trunk")}, 1.0, steps), trained


def _fake_train(trained: list[int], status: str = "finished", every: int = 3):
    """Writes a checkpoint file every ``every`` steps below its last step (``checkpoint.every``) and at it."""

    def train_(o):
        trained.append(o["budget.max_steps"])
        folder = Path(o["out"]) / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        for step in [*range(every, o["budget.max_steps"], every), o["budget.max_steps"]]:
            (folder / f"step_{step:07d}.pt").write_bytes(b"x")
        return type("R", (), {"status": status})()

    return train_


def test_grow_trunk_trains_only_the_missing_forks_waits_for_the_lock_and_stops_with_its_trainer(tmp_path):
    trunk, trained = _fake_trunk(tmp_path, (4, 8, 12))
    (Path(trunk.run_dir) / "checkpoints").mkdir(parents=True)
    trunk.checkpoint(4).write_bytes(b"x")
    got: list = []
    with trunk_lock(Path(trunk.run_dir)):  # another cell's job grows it: this one waits
        th = threading.Thread(target=lambda: got.append(grow_trunk(trunk, _fake_train(trained), lambda o: o)))
        th.start()
        time.sleep(0.5)
        assert th.is_alive() and trained == []
    th.join(10)
    assert trained == [8, 12] and got == [(trunk.checkpoint(12), None)]
    # the periodic checkpoints between forks are gone, the forks' kept
    assert sorted(p.name for p in (Path(trunk.run_dir) / "checkpoints").glob("step_*")) == [
        f"step_{s:07d}.pt" for s in (4, 8, 12)
    ]
    assert grow_trunk(trunk, _fake_train(trained), lambda o: o) == (trunk.checkpoint(12), None)
    assert trained == [8, 12]  # all there: nothing trained
    stopped, trained2 = _fake_trunk(tmp_path / "b", (4, 8))
    ckpt, result = grow_trunk(stopped, _fake_train(trained2, "preempted"), lambda o: o)
    assert ckpt is None and result.status == "preempted" and trained2 == [4]
    gone, _ = _fake_trunk(tmp_path / "c", (4, 8))
    (Path(gone.run_dir) / "checkpoints").mkdir(parents=True)
    gone.checkpoint(9).write_bytes(b"x")
    with pytest.raises(RuntimeError, match="trained to step 9 but has no checkpoint at step 4"):
        grow_trunk(gone, _fake_train([]), lambda o: o)


def test_a_ladder_sweep_on_the_local_executor_ends_each_cell_where_its_schedule_from_step_0_ends(
    job_env, tmp_path, monkeypatch
):
    """Two cells of one model, launched at once on two slots: the larger grows the trunk through both
    forks while the smaller waits for it, then each trains its cooldown in its own run. Each cell's
    final val/loss is the one of the same cell (its overrides: constant_cooldown, the ladder's peak and
    warmup) trained from step 0 in one piece; a relaunch submits nothing."""
    train_cfg = {"log_every": 10, "checkpoint.every": 10, "eval.eval_every": 0, "eval.val_examples": 64}
    executor = ExecutorSpec(name="local", local_parallelism=2, timeout_min=10)
    spec = tiny_real_spec(
        tmp_path, job_env, "lad", experiment="ladder", budget=1e9, train=train_cfg, executor=executor
    )
    (probe,) = expand(spec)
    per_step = probe.batch_size * probe.train_flops_per_image
    spec = spec.replace(budgets=[30 * per_step, 60 * per_step], ladder=True, final_eval=True)
    cells = expand(spec)
    assert sorted(c.steps for c in cells) == [30, 60]
    result = launch(spec)
    assert not result.errors
    tasks = make_tasks(spec, cells, sweep_dir(spec), job_env)
    runs = runs_by_cell(job_env, spec.experiment)
    trunk = tasks[cells[0].cell_id].trunk
    assert {tasks[c.cell_id].trunk.run_dir for c in cells} == {trunk.run_dir}
    kept = sorted(p.name for p in (Path(trunk.run_dir) / "checkpoints").glob("step_*"))
    assert kept == [trunk.checkpoint(s).name for s in (24, 48)]  # the forks', not those every 10 steps
    torch.set_num_threads(1)  # as the jobs (two slots on two cores)
    for c in cells:
        (run,) = runs[c.cell_id]
        assert run.info.status == "FINISHED"
        assert run.data.params["optim.schedule"] == "constant_cooldown"
        fork = tasks[c.cell_id].trunk.fork_step
        assert run.data.tags["resumed_from"].endswith(f"step_{fork:07d}.pt")
        ref = {k: v for k, v in tasks[c.cell_id].overrides.items() if not k.startswith("tracking.")}
        ref |= {"tracking.enabled": False, "out": str(tmp_path / "ref" / c.cell_id)}
        want = train(TrainConfig().replace(**ref), progress_bar=False).val_loss
        assert run.data.metrics["val/loss"] == pytest.approx(want, rel=1e-6, abs=0)
    assert launch(spec).plan.submit == []
    # a cell with a checkpoint of its own resumes it: its trunk is not grown again (here: gone)
    shutil.rmtree(trunk.run_dir)
    small = min(cells, key=lambda c: c.steps).cell_id
    # run_task sets the job id in os.environ (a job's own process); undone after, for the tests after it
    monkeypatch.setenv("DITSCALE_EXECUTOR_JOB_ID", "")
    assert run_task(tasks[small], "again")["status"] == "finished"
    assert not Path(trunk.run_dir).exists()
