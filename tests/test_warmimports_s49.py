"""Session 49: a trainer module names what a warm worker imports for it (`sweeps.warm.warm_imports`).

The warm worker imported torch, torch._dynamo, accelerate and torchvision for every trainer (~6 s of
CPU a worker on the 2-core machine), also for the numpy-only stand-in trainer of the sweep tests,
which starts a worker in most of its launches. A trainer module's own ``WARM_IMPORTS`` now replaces
the default list."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from sweeps import warm

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def trainer_module(monkeypatch):
    """A trainer module named ``warmimports_trainer`` in sys.modules; returns it to set attributes on."""
    module = types.ModuleType("warmimports_trainer")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


def test_a_trainer_without_its_own_list_gets_the_default(trainer_module):
    assert warm.warm_imports(trainer_module.__name__) == warm.WARM_IMPORTS
    assert {"torch", "torch._dynamo", "mlflow"} <= set(warm.WARM_IMPORTS)


def test_a_trainers_own_list_replaces_the_default(trainer_module):
    trainer_module.WARM_IMPORTS = ["json", "mlflow"]
    assert warm.warm_imports(trainer_module.__name__) == ("json", "mlflow")
    trainer_module.WARM_IMPORTS = ()
    assert warm.warm_imports(trainer_module.__name__) == ()  # nothing besides the trainer


@pytest.mark.parametrize("bad", ["torch", ("torch", 3)])
def test_a_list_that_is_not_module_names_is_refused_naming_the_trainer(trainer_module, bad):
    trainer_module.WARM_IMPORTS = bad
    with pytest.raises(TypeError, match=r"warmimports_trainer\.WARM_IMPORTS must be a tuple of module names"):
        warm.warm_imports(trainer_module.__name__)


def test_the_worker_warms_the_stand_in_trainer_without_torch_and_the_real_one_with_it(tmp_path):
    """`_warm_up` in a fresh process: the trainer is imported first, then its list (the stand-in's: no
    torch), else the default one (`dit_core.train`: torch and its optimizer's dynamo)."""
    code = (
        "import json, sys; from sweeps import warm; warm._warm_up(sys.argv[1]); "
        "print(json.dumps([m in sys.modules for m in (sys.argv[1], 'torch', 'torch._dynamo', 'mlflow')]))"
    )
    env = {"PYTHONPATH": str(REPO / "tests"), "PATH": "/usr/bin:/bin"}

    def warmed(trainer: str) -> list[bool]:
        out = subprocess.run(
            [sys.executable, "-c", code, trainer], cwd=REPO, env=env, capture_output=True, text=True,
            timeout=120, check=True,
        )  # fmt: skip
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert warmed("test_sweeps_fake_trainer") == [True, False, False, True]
    assert warmed("dit_core.train") == [True, True, True, True]
