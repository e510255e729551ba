"""`dit_core.data`, `dit_core.diffusion` and `dit_core.train` export their names lazily
(`dit_core.lazy`), so that `dit_core.config` and with it the sweep launcher import without torch (~2 s
of CPU a launch, measured in session 50). These tests check the launcher's real path in a fresh
process, and that every name the modules exported before still resolves to the object its module
defines."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: what the two packages imported eagerly before session 50 (their old ``__all__``, plus names read
#: through the package)
OLD_NAMES = {
    "dit_core.data": frozenset(
        {
            "DataConfig",
            "photos_images",
            "PhotoCropsDataset",
            "build_dataset",
            "flip_decision",
            "DATASET_NAMES",
            "DigitsDataset",
            "LatentsDataset",
            "default_reference",
            "photos_reference",
            "digits_split_indices",
            "class_folders",
            "SPLITS",
            "scan_image_folder",
            "data_accounting",
            "ImageFolderDataset",
            "PhotoOptions",
            "read_manifest",
            "digits_images",
            "PHOTOS",
            "center_crop_arr",
            "unique_images",
        }
    ),
    "dit_core.diffusion": frozenset(
        {
            "space_timesteps",
            "SAMPLERS",
            "FlowMatching",
            "SCHEDULES",
            "validation_losses",
            "validation_loss",
            "TIMESTEP_SAMPLINGS",
            "make_betas",
            "create_diffusion",
            "DiffusionConfig",
            "OBJECTIVES",
            "GaussianDiffusion",
            "invert",
            "sample",
            "Diffusion",
        }
    ),
    "dit_core.train": frozenset(
        {
            "TrainConfig",
            "TrainResult",
            "Trainer",
            "build_parser",
            "config_from_args",
            "main",
            "resolve_config",
            "train",
        }
    ),
}


def _fresh_python(code: str) -> str:
    """``code``'s stdout in a fresh interpreter at the repository root (which must exit 0)."""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_launchers_dry_run_of_the_demo_imports_no_torch():
    """``python sweeps/launch.py --dry-run`` (the default demo grid, its evaluation FLOPs read from
    `TrainConfig`) run in a fresh interpreter: it succeeds and leaves torch unimported."""
    code = (
        "import runpy, sys\n"
        "sys.argv = ['sweeps/launch.py', '--dry-run']\n"
        "try:\n"
        "    runpy.run_path('sweeps/launch.py', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    out = _fresh_python(code)
    assert "eval FLOPs" in out  # the cost table, which `cell_eval_flops` fills
    assert out.strip().endswith("torch imported: False"), out[-2000:]


def test_a_cells_evaluation_flops_are_the_same_with_the_lazy_config():
    """`sweeps.cost.cell_eval_flops` computed in a torch-free process equals the closed form this
    process computes from the same `TrainConfig` defaults (validation and DDIM sampling passes)."""
    code = (
        "import sys\n"
        "from sweeps.cost import cell_eval_flops\n"
        "from sweeps.grid import expand, load_spec\n"
        "cell = expand(load_spec())[0]\n"
        "ov = {'eval.val_every': 5, 'eval.val_examples': 64, 'eval.eval_every': 7, 'eval.num_samples': 10}\n"
        "print(repr(cell_eval_flops(cell, ov)), cell.steps, cell.forward_gflops, 'torch' in sys.modules)\n"
    )
    flops, steps, gflops, torch_loaded = _fresh_python(code).split()
    from dit_core.config import TrainConfig

    e = TrainConfig().eval
    guided = 2 if e.cfg_scale != 1.0 and TrainConfig().model.class_dropout_prob > 0 else 1
    fwd = 2e9 * float(gflops)
    n = int(steps)
    want = (-(-n // 5) + 1) * 64 * fwd * (2 if e.val_ema else 1) + -(-n // 7) * 10 * e.steps * guided * fwd
    assert float(flops) == pytest.approx(want, rel=1e-12) and torch_loaded == "False"


@pytest.mark.parametrize("package", sorted(OLD_NAMES))
def test_every_name_the_package_exported_resolves_to_its_modules_object(package):
    pkg = importlib.import_module(package)
    exports = pkg._EXPORTS
    assert OLD_NAMES[package] <= set(pkg.__all__) <= set(dir(pkg))
    for name in pkg.__all__:
        value = getattr(pkg, name)
        if name in exports:  # the very object its module defines, not a copy
            defined_in = importlib.import_module(exports[name], pkg.__package__)
            assert value is getattr(defined_in, name), name
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'no_such_name'"):
        _ = pkg.no_such_name
