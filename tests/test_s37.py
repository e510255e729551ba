"""Session 37: the bugs session 36 found and left. Each test failed on the code before its fix."""

from __future__ import annotations

import json
import pathlib
from pathlib import Path

import numpy as np
import pytest
from _train_helpers import one_thread
from PIL import Image

from dit_core.config import BudgetConfig
from dit_core.spec import MAX_IMAGES, resolve_budget_steps
from sweeps import launch


def test_a_budget_past_64_bit_image_counts_is_refused_by_the_sweep(tmp_path, monkeypatch, capsys):
    """`launch.py --budgets 1e40 --dry-run` printed a bill of 7e21 GPU-hours and exit 0, and a real
    launch would have started cells whose sample indices overflow int64; now exit 2 naming the cell."""
    monkeypatch.chdir(tmp_path)
    code = launch.main(["--budgets", "1e40", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "budget 1e40 gives S-2-1e40 2.59e+33 images, more than the 9.22e+18" in err
    assert err.rstrip().endswith("lower --budgets") and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing made


def test_the_trainer_refuses_more_images_than_it_can_count():
    """`--max-steps 1e23` trained on, its ETA 1.7e17 hours, toward sample indices past int64."""
    most = MAX_IMAGES // 32
    assert MAX_IMAGES == 2**63 - 1 == np.iinfo(np.int64).max
    assert resolve_budget_steps(BudgetConfig(max_steps=most, global_batch_size=32), 1.0) == most
    with pytest.raises(ValueError, match=r"budget too large: 2\.882e\+17 steps of 32 images exceed"):
        resolve_budget_steps(BudgetConfig(max_steps=most + 1, global_batch_size=32), 1.0)
    with pytest.raises(ValueError, match="lower --train-flops or --max-steps"):
        resolve_budget_steps(BudgetConfig(train_flops=1e40, global_batch_size=32), 1.0)


@pytest.fixture(scope="module")
def three_shards(tiny_vae, tmp_path_factory) -> tuple[Path, Path]:
    """(image folder of 6 RGB images in 2 classes, VAE folder)."""
    vae = tmp_path_factory.mktemp("vae")
    tiny_vae.save_pretrained(vae)
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root, vae


def test_extract_latents_rank_without_shards_says_so(three_shards, tmp_path, capsys, caplog):
    """`--rank 9 --world-size 10` on 3 shards printed "0 latents [4, 8, 8] -> OUT (partial ...)" as if
    it had worked; now a warning says the rank has no shards and how to use every rank, and the line
    says how many shards are this rank's and how many are finished."""
    from dit_core.extract_latents import main

    images, vae = three_shards
    out = tmp_path / "lat"
    common = ["--data-path", str(images), "--output", str(out), "--vae", str(vae), "--image-size", "16"]
    common += ["--shard-size", "2", "--device", "cpu", "--num-workers", "0", "--no-progress"]
    with one_thread():
        assert main([*common, "--rank", "9", "--world-size", "10"]) == 0
    line = capsys.readouterr().out.strip()
    assert line == (
        f"rank 9/10: 0 of 3 shards are this rank's; 0 finished so far (0 latents [4, 8, 8]) -> {out} "
        "(partial: no manifest until every shard is done)"
    ), line
    assert "rank 9 of 10 has no shards: 6 images make 3 shard(s) of 2" in caplog.text
    assert "give --world-size 3 or a smaller --shard-size" in caplog.text
    with one_thread():
        assert main([*common, "--rank", "1", "--world-size", "2"]) == 0
    assert capsys.readouterr().out.strip().startswith("rank 1/2: 1 of 3 shards are this rank's; 1 finished")
    with one_thread():
        assert main([*common, "--rank", "0", "--world-size", "2"]) == 0
    assert capsys.readouterr().out.strip() == f"6 latents [4, 8, 8] -> {out}"
    assert json.loads((out / "manifest.json").read_text())["num_shards"] == 3


def test_evaluate_lists_a_reference_folder_once(tmp_path, monkeypatch, capsys):
    """`python -m dit_core.evaluate --reference FOLDER` walked the folder twice (once to check it before
    sampling, again to score): minutes on an ImageNet-sized tree. The checked source is passed on."""
    from dit_core.evaluate import __main__ as evaluate_cli
    from dit_core.trainer.cli import main as train

    run = tmp_path / "run"
    argv = "--data digits --image-size 8 --depth 1 --hidden-size 16 --num-heads 2 --patch-size 2"
    with one_thread():
        assert train([*argv.split(), "--max-steps", "1", "--no-mlflow", "--out", str(run)]) == 0
    ref = tmp_path / "ref"
    ref.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(ref / f"{i}.png")
    walks = []
    rglob = pathlib.Path.rglob

    def counted(self, pattern, *args, **kwargs):
        if Path(self).resolve() == ref.resolve():
            walks.append(pattern)
        return rglob(self, pattern, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "rglob", counted)
    out = tmp_path / "fid.json"
    with one_thread():
        code = evaluate_cli.main(
            ["--checkpoint", str(run), "--reference", str(ref), "--metrics", "fid", "--num-samples", "4"]
            + ["--steps", "1", "--output", str(out)]
        )
    assert code == 0, capsys.readouterr().err
    assert np.isfinite(json.loads(out.read_text())["eval/fid"])
    assert walks == ["*"]


def test_the_analysis_tells_apart_every_fid_protocol_the_trainer_guards():
    """The trainer refuses a resume that changes any `EVAL_PROTOCOL` key, because the analysis pools FIDs
    only under one protocol; the analysis's protocol string must then differ whenever one of them does
    (a key added to one list and not the other would pool FIDs of two protocols)."""
    from analysis.runs import fid_protocol
    from dit_core.trainer.loop import EVAL_PROTOCOL

    base = {"eval.num_samples": "1000", "eval.sampler": "ddim", "eval.steps": "50", "eval.cfg_scale": "1.0"}
    assert set(base) == set(EVAL_PROTOCOL)
    seen = {fid_protocol("eval/fid_photos", base)}
    for key in EVAL_PROTOCOL:
        seen.add(fid_protocol("eval/fid_photos", {**base, key: "7"}))
    assert len(seen) == 1 + len(EVAL_PROTOCOL)


def test_a_missing_frontier_loss_law_is_named_not_an_n_opt_law():
    """Without the parametric and IsoFLOP laws and with a frontier whose N_opt(C) law was fitted but whose
    loss law was not, the status said "no approach could fit an N_opt(C) law", sending the user after
    the wrong fit (found by session 37's analysis QA). It now names the law that is missing."""
    from _fit_helpers import sweep

    from analysis.pipeline import AnalysisConfig, analyze, predict

    an = analyze(sweep(), AnalysisConfig(n_bootstrap=0))
    an.parametric, an.isoflop.n_opt, an.frontier.y_law = None, None, None
    assert an.frontier.n_opt is not None
    pr = predict(an, 1e22)
    assert pr.n_opt is None and pr.status.status == "not_identified"
    assert pr.status.reasons[0].endswith("and the frontier (approach 1) has no loss L(C) law"), (
        pr.status.reasons
    )
    assert not any("N_opt(C) law" in r for r in pr.status.reasons)


def test_no_test_imports_the_tests_folder_as_a_package():
    """CI runs `pytest` (the entry point), which does not put the repository root on sys.path, so
    `from tests._fit_helpers import ...` passed under `python -m pytest` and failed to collect in CI;
    helpers are imported by their module name (`tests/` is on the path through its conftest)."""
    bad = [
        f"{p.name}:{i}"
        for p in sorted(Path(__file__).parent.glob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if line.lstrip().startswith(("from tests.", "import tests"))
    ]
    assert not bad, bad
