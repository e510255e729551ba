"""Session 40, a researcher's journey with their own image folder (docs/testing.md, "Session 40"):

1. an image folder with an unreadable file trains (the file is skipped with a warning), and the same
   folder is now its FID reference too: the reference skips the file the same way, where it used to
   stop the trainer's evaluation (after all its steps) and `dit_core.evaluate` (after sampling);
2. `--prior` of a fit of other data is refused for that reason even when its law is not usable: the
   data check comes first, since refitting the other data's runs would not help;
3. `fit_scaling.py` counts the runs behind seed-averaged points (`n_runs`, the holdout line, report.md);
4. the trainer's warning for an image folder without `eval.reference` names the flag that sets one;
5. an isoflop budget whose head dim leaves too few shapes near its centre names `--head-dim`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dit_core.evaluate.reference import resolve_reference

# ------------------------------------------------------------------ 1. a reference folder's unreadable file


def _folder(root: Path, n_good: int) -> list[np.ndarray]:
    """``n_good`` 8x8 RGB PNGs (pixel value 10 i) and one unreadable ``bad.png`` under ``root/cls``;
    returns the good images, (8, 8, 3) uint8 each, in file order."""
    (root / "cls").mkdir(parents=True)
    good = [np.full((8, 8, 3), 10 * i, np.uint8) for i in range(n_good)]
    for i, img in enumerate(good):
        Image.fromarray(img).save(root / "cls" / f"{i}.png")
    (root / "cls" / "bad.png").write_text("not a png")
    return good


def test_a_reference_folder_skips_an_unreadable_image_as_training_does(tmp_path, caplog):
    good = _folder(tmp_path, 3)
    with caplog.at_level(logging.WARNING, logger="dit_core.evaluate.reference"):
        chunks = list(resolve_reference(str(tmp_path), 8).chunks())
    got = np.concatenate(chunks)
    assert got.shape == (3, 3, 8, 8) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.stack(good).transpose(0, 3, 1, 2))  # the readable ones, exactly
    assert "bad.png" in caplog.text and "skipped 1 unreadable image(s) of 4" in caplog.text


def test_a_reference_folder_with_fewer_than_two_readable_images_is_refused(tmp_path):
    _folder(tmp_path, 1)
    with pytest.raises(ValueError, match=r"holds 1 readable image\(s\) \(1 cannot be read: .*bad\.png\)"):
        list(resolve_reference(str(tmp_path), 8).chunks())


def test_the_imagefolder_dataset_trains_on_the_images_the_reference_reads(tmp_path):
    """The two readers of one folder agree: the dataset's samples are the reference's files less the
    unreadable one."""
    from dit_core.data import DataConfig, build_dataset

    _folder(tmp_path, 3)
    ds = build_dataset(DataConfig(name="imagefolder", root=str(tmp_path), image_size=8, random_flip=False))
    ref = np.concatenate(list(resolve_reference(str(tmp_path), 8).chunks()))
    assert len(ds) == len(ref) == 3
    pixels = np.stack([np.asarray(ds[i][0]) for i in range(3)])  # [-1, 1] floats, (3, 3, 8, 8)
    np.testing.assert_allclose((pixels + 1) * 127.5, ref, atol=1e-3)


# ------------------------------------------------------------------ 2. a prior of other data, law unusable


def test_a_prior_of_other_data_is_refused_for_its_data_even_when_its_law_is_not_usable(tmp_path):
    from test_analysis_s40 import _fit_file
    from test_sweeps_design import demo_isoflop

    from sweeps.design import plan_budgets

    fit = _fit_file(tmp_path, "f.json", data_name="photos", input_size=32.0, in_channels=1.0)
    data = json.loads(Path(fit).read_text())
    data["status"] = "not_identified"  # as a fit whose grid did not bracket the optimum
    data["approach3_parametric"]["status"] = "not_identified"
    for key in ("approach2_isoflop", "approach1_frontier"):
        data[key] = {"status": "censored", "N_opt": None}
    path = tmp_path / "unusable.json"
    path.write_text(json.dumps(data))
    spec = demo_isoflop()  # photos, 16 px, grey
    with pytest.raises(ValueError) as e:
        plan_budgets(spec.replace(prior=str(path)))
    assert "they differ in input_size" in str(e.value) and "no usable N_opt law" not in str(e.value)
    data["token_space"]["input_size"] = [16.0]  # the sweep's own data: now the law is what is wrong
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="no usable N_opt law"):
        plan_budgets(spec.replace(prior=str(path)))


# ------------------------------------------------------------------ 3. the runs behind seed-averaged points


def test_the_fit_counts_the_runs_behind_seed_averaged_points(tmp_path, capsys):
    """Two seeds per cell: each point averages two runs ('a + b'), so 20 points rest on 40 runs, and the
    held-out largest budget's 5 points on 10 (the fit printed 20 and 5 runs)."""
    from _fit_helpers import sweep, sweep_cli

    one = sweep()
    two = one.assign(seed=1, loss=one["loss"] * 1.001, run_id=one["run_id"] + "-s1")
    csv = tmp_path / "seeds.csv"
    pd.concat([one.assign(seed=0), two]).to_csv(csv, index=False)
    out = tmp_path / "fit.json"
    sweep_cli(tmp_path, "--csv", str(csv), "--holdout", "largest", "--bootstrap", "0", "--json", str(out))
    text = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert (res["n_points"], res["n_runs"]) == (20, 40)
    assert "Holdout (largest compute): 5 points from 10 run(s)" in text
    assert "20 points from 40 runs" in (tmp_path / "rep" / "report.md").read_text()


# ------------------------------------------------------------------ 4. a folder's run with no reference


def test_a_folder_run_without_a_reference_says_how_to_name_one(tmp_path, caplog):
    """The trainer's evaluation of an imagefolder run without `eval.reference` is skipped, and the
    warning names the flag that scores it (it used to say only that it skipped)."""
    from _train_helpers import one_thread, tiny_config

    from dit_core.train import train

    _folder(tmp_path / "data", 4)
    folder = {"data.name": "imagefolder", "data.root": str(tmp_path / "data"), "data.image_size": 8}
    cfg = tiny_config(
        tmp_path / "run", steps=2, batch=4, **folder, **{"eval.eval_every": 2, "tracking.enabled": False}
    )
    with one_thread(), caplog.at_level(logging.WARNING, logger="dit_core.trainer.evaluation"):
        train(cfg)
    assert "sample metrics skipped" in caplog.text
    assert "--reference FOLDER" in caplog.text and "--set eval.reference=FOLDER" in caplog.text


# ------------------------------------------------------------------ 5. an isoflop ladder too coarse


def test_an_isoflop_budget_without_shapes_near_its_centre_names_the_head_dim(tmp_path):
    """A sweep YAML without `scale` (the paper's head dim 64) asks for models of ~1e4 parameters: the
    widths 64, 128, ... leave one shape in the centre's window. The error said the budget trains N from
    ~1e3 up "on the family curve" and to lower --min-steps, which could not help; it now names the head
    dim, and --head-dim 4 places the sizes."""
    from test_sweeps_design import demo_isoflop

    from sweeps.design import plan_budgets
    from sweeps.grid import Scale

    spec = demo_isoflop(scale=Scale(), budgets=[3e10])
    with pytest.raises(ValueError) as e:
        plan_budgets(spec)
    msg = str(e.value)
    assert "multiples of the head dim 64" in msg and "lower --head-dim" in msg and "d2w64" in msg, msg
    assert len(plan_budgets(spec.replace(design_head_dim=4))[0].cells) >= 3
