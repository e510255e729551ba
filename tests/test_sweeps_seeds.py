"""Seeds as a sweep axis (`SweepSpec.seeds`, `--seeds`): every cell once per seed, the seed-0 cells
unchanged, and runs the analysis sees as replicates of one cell."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.runs import replicate_key
from dit_core.config import TrainConfig
from sweeps.grid import expand, load_spec
from sweeps.state import config_hash
from sweeps.task import make_task

URI = "sqlite:///unused.db"


def logged_params(overrides: dict) -> dict[str, str]:
    """The MLflow params the trainer logs for a task: its whole flat config, as strings."""
    return {k: str(v) for k, v in TrainConfig().replace(**overrides).to_flat_dict().items()}


def test_seeds_repeat_every_cell_next_to_each_other_and_keep_seed_0_as_it_was():
    spec = load_spec("demo")
    three = spec.replace(seeds=[0, 1, 2])
    plain, cells = expand(spec), expand(three)
    assert [c.cell_id for c in cells] == [c.cell_id + s for c in plain for s in ("", "-s1", "-s2")]
    assert [c.seed for c in cells] == [0, 1, 2] * len(plain)
    # seed 0's task is the task of the sweep without seeds, to its config hash: a sweep that adds
    # seeds finds its finished cells finished, and does not refuse them as changed
    before = make_task(spec, plain[0], Path("s"), URI)
    s0, s1, s2 = (make_task(three, c, Path("s"), URI) for c in cells[:3])
    assert s0.overrides == before.overrides and config_hash(s0.overrides) == config_hash(before.overrides)
    assert "seed" not in s0.overrides and (s1.overrides["seed"], s2.overrides["seed"]) == (1, 2)
    assert len({s0.run_dir, s1.run_dir, s2.run_dir}) == 3
    # the analysis averages runs whose params differ only in the seed: the three are one cell,
    # and the next cell (another model) is not
    keys = [replicate_key(logged_params(t.overrides)) for t in (s0, s1, s2)]
    other = replicate_key(logged_params(make_task(three, cells[3], Path("s"), URI).overrides))
    assert len(set(keys)) == 1 and other != keys[0]
    assert logged_params(s1.overrides)["seed"] == "1"


def test_a_list_key_given_one_value_in_yaml_is_named(tmp_path):
    for key, value in (("seeds", "3"), ("budgets", "3e10")):
        path = tmp_path / "s.yaml"
        path.write_text(f"name: s\n{key}: {value}\n")
        with pytest.raises(ValueError, match=rf"{key} must be a list, e.g. `{key}: \[{value}\]`"):
            load_spec(path)
