"""End to end, through the user's commands: a small demo sweep, the scaling fit, and the MLflow UI.

The module fixture runs `python sweeps/launch.py --grid S,B,L,XL` (the README's first command, on
smaller budgets) on the local executor into a fresh sqlite store, then `python analysis/fit_scaling.py`
over it. The browser test serves that store with a real `mlflow server` and reads the runs table
and the run-comparison view in headless Chromium; screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import start_mlflow_server, stop_mlflow_server
from mlflow.tracking import MlflowClient

from analysis.status import EXIT_CODES

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "e2e-demo"
FAMILIES = ["S", "B", "L", "XL"]
BUDGETS = ["1.5e10", "3e10", "6e10"]  # one point per cell (cosine): 12 points, 8 after the holdout
# the README's first command on smaller budgets, the local executor and a named experiment
LAUNCH = [
    sys.executable, str(REPO / "sweeps/launch.py"), "--grid", ",".join(FAMILIES),
    "--budgets", ",".join(BUDGETS), "--batch-size", "16", "--executor", "local",
    "--experiment", EXPERIMENT, "--set", "eval.num_samples=50", "--set", "eval.batch_size=50",
    "--set", "eval.steps=25", "--set", "eval.val_examples=512",  # a quarter of the demo's val, half its DDIM
    "--min-steps", "10",  # XL makes 21 steps at 1.5e10 with batch 16; the demo's 50 would leave it out
]  # fmt: skip


def _run(
    cmd: list[str], cwd: Path, env: dict[str, str], timeout: int, ok: tuple[int, ...] = (0,)
) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode in ok, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A finished small demo sweep and its fit: dict(dir, uri, launch, fit, fit_json, experiment_id)."""
    work = tmp_path_factory.mktemp("e2e")
    uri = f"sqlite:///{work}/mlflow.db"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, PYTHONUNBUFFERED="1")
    env.pop("_MLFLOW_SERVER_ARTIFACT_ROOT", None)  # artifacts where a user's would go: ./mlruns of cwd
    launch = _run(
        LAUNCH,
        work, env, timeout=1800,  # 136 s alone on the AVX2 EPYC (session 49): a limit, not a bound
    )  # fmt: skip
    fit = _run(
        [
            sys.executable, str(REPO / "analysis/fit_scaling.py"), "--experiment", EXPERIMENT,
            "--holdout", "largest", "--bootstrap", "50", "--json", "fit.json", "--out", "report",
            "--min-steps", "10",  # XL makes 21 steps at 1.5e10 (the default, 50, would drop it)
        ],
        work, env, timeout=600, ok=tuple(EXIT_CODES.values()),
    )  # fmt: skip
    exp = MlflowClient(uri).get_experiment_by_name(EXPERIMENT)
    return {
        "dir": work,
        "uri": uri,
        "launch": launch,
        "fit": fit,
        "fit_json": json.loads((work / "fit.json").read_text()),
        "experiment_id": exp.experiment_id,
    }


def _cell_runs(client: MlflowClient, experiment_id: str):
    runs = client.search_runs([experiment_id], max_results=100)
    return [r for r in runs if r.data.tags.get("analysis") != "true"]


@pytest.mark.slow
def test_demo_sweep_lands_every_cell_once_in_mlflow(demo):
    client = MlflowClient(demo["uri"])
    runs = _cell_runs(client, demo["experiment_id"])
    finals = []
    names = sorted(r.info.run_name for r in runs)
    expected = sorted(f"{f}-2-{b}" for f in FAMILIES for b in BUDGETS)
    assert names == expected  # one run per cell, no duplicates
    for r in runs:
        assert r.info.status == "FINISHED"
        m = r.data.metrics
        assert m["eval/fid_photos"] > 0
        # an unbounded stream: no crop repeats, and the run says so
        assert m["data/epochs"] == 0.0 and r.data.tags["data.unique_images"] == "unbounded"
        # the compute ledger ends within one step under the cell's budget
        budget = float(r.data.params["budget.train_flops"])
        steps = int(r.data.params["budget.max_steps"])
        spent = m["compute/train_flops"]
        assert spent <= budget < spent + spent / steps
        # the demo's cosine runs validate at step 0 and at their final step, the point the fits use
        val = sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, "val/loss"))
        assert [s for s, _ in val] == [0, steps]
        # step 0 is the adaLN-Zero model, which predicts eps = 0: its eps-MSE is E[eps^2] = 1 (plus a
        # small variance term); training must have lowered it by the last step
        (s0, v0), (_, v_last) = val[0], val[-1]
        assert s0 == 0 and abs(v0 - 1.0) < 0.1, val
        assert 0 < v_last < v0, val
        finals.append(v_last)
    # the grid as a whole learns the photo crops far beyond the zero predictor
    assert min(finals) < 0.5, finals
    exp = client.get_experiment(demo["experiment_id"])
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    assert f"{len(FAMILIES) * len(BUDGETS)} finished" in demo["launch"].stdout


@pytest.mark.slow
def test_relaunching_the_finished_demo_submits_nothing(demo):
    env = dict(os.environ, MLFLOW_TRACKING_URI=demo["uri"])
    proc = _run(
        LAUNCH,
        demo["dir"], env, timeout=300,
    )  # fmt: skip
    assert "0 submitted" in proc.stdout, proc.stdout
    assert len(_cell_runs(MlflowClient(demo["uri"]), demo["experiment_id"])) == len(FAMILIES) * len(BUDGETS)


@pytest.mark.slow
def test_fit_reports_a_status_the_exit_code_and_the_holdout_error(demo):
    res = demo["fit_json"]
    # the exit code is the documented one for the status, and the status comes with its reasons
    assert demo["fit"].returncode == EXIT_CODES[res["status"]]
    assert res["status"] == "ok" or res["reasons"], res["status"]
    pure = res["loss_vs_compute_pure"]
    # loss falls with compute along the frontier (one point per budget: 3 points) and the law fits
    # them; its interval is the bootstrap over runs, each resample's frontier recomputed, and holds the
    # estimate
    lo, hi = pure["ci95"]["alpha"]
    assert pure["alpha"] > 0 and pure["rmse_log"] < 0.35 and lo <= pure["alpha"] <= hi
    assert pure["interval"] == "bootstrap" and pure["bootstrap"]["unit"] == "runs"
    # the prediction (default: at 10x the largest compute run) gives N_opt only when it is identified
    (pred,) = res["predictions"]
    client = MlflowClient(demo["uri"])
    max_c = max(r.data.metrics["compute/train_flops"] for r in _cell_runs(client, demo["experiment_id"]))
    assert pred["compute"] == pytest.approx(10 * max_c, rel=1e-6)
    if pred["status"] in ("ok", "extrapolating"):
        assert pred["n_opt"]["value"] > 0 and pred["loss"]["value"] > 0
    else:
        assert pred["n_opt"] is None and pred["reasons"]
    # the holdout error on the largest-compute runs is reported, in the JSON and on stdout; mape is a
    # fraction: every held-out loss predicted within 100% ("right order of magnitude", this grid is tiny)
    hold = res["holdout"]
    assert hold["n_held_out"] >= 1 and 0 < hold["mape_loss"] <= hold["max_ape_loss"] < 1.0
    out = demo["fit"].stdout
    assert "Holdout (largest compute)" in out and "mean abs error" in out
    assert "Compute budget" in out and res["status"] in out
    report = (demo["dir"] / "report" / "report.md").read_text()
    for png in ("loss_vs_compute.png", "isoflop.png", "fid.png"):
        assert (demo["dir"] / "report" / png).stat().st_size > 10_000
        assert png in report


def _sync_api():
    """playwright.sync_api; under DITSCALE_CI=1 a missing playwright fails instead of skipping."""
    try:
        from playwright import sync_api
    except ImportError as e:
        if os.environ.get("DITSCALE_CI") == "1":
            pytest.fail(f"playwright not importable ({e}); .ci/run installs it with the [test] extra")
        pytest.skip(f"playwright not installed ({e}); pip install -e '.[test]'")
    return sync_api


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("DITSCALE_CI") == "1":
            pytest.fail("chromium not found; .ci/run installs Debian's chromium")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return path


#: MLflow 3.17's UI opens its assistant panel on a first visit unless this localStorage flag is set.
ASSISTANT_SHOWN_KEY = "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1"
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.server
def test_mlflow_ui_shows_the_runs_and_compares_val_loss_and_compute(demo, artifacts_dir):
    sync_api = _sync_api()
    chromium = _chromium()
    client = MlflowClient(demo["uri"])
    runs = sorted(_cell_runs(client, demo["experiment_id"]), key=lambda r: r.info.run_name)
    # serve the finished sweep's own store, as `mlflow ui` in the sweep's folder would
    server_dir = demo["dir"] / "server"
    server_dir.mkdir(exist_ok=True)
    shutil.copy(demo["dir"] / "mlflow.db", server_dir / "mlflow.db")
    proc, url = start_mlflow_server(server_dir)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, timeout=120_000)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            # waits, not bounds: a loaded machine parses MLflow's UI bundle slowly (playwright's 30 s default)
            page.set_default_navigation_timeout(120_000)
            page.set_default_timeout(90_000)
            # the model-training workspace (MLflow 3 opens the GenAI one), and its assistant panel,
            # which opens by itself on a first visit, marked as already shown
            page.add_init_script(f"window.localStorage.setItem('{ASSISTANT_SHOWN_KEY}', 'true')")
            ml = "workflowType=machine_learning"
            page.goto(f"{url}/#/experiments/{demo['experiment_id']}/runs?{ml}", wait_until="domcontentloaded")
            for r in runs:
                page.get_by_text(r.info.run_name, exact=True).first.wait_for(timeout=90_000)
            page.screenshot(path=str(artifacts_dir / "mlflow_ui_runs.png"), full_page=True)

            ids = json.dumps([r.info.run_id for r in runs[:4]]).replace(" ", "")
            page.goto(
                f'{url}/#/compare-runs?runs={ids}&experiments=["{demo["experiment_id"]}"]&{ml}',
                wait_until="domcontentloaded",
            )
            for key in ("val/loss", "compute/train_flops"):
                page.get_by_text(key, exact=True).first.wait_for(timeout=90_000)
            page.locator("svg text", has_text="val/loss").first.wait_for(timeout=90_000)  # the plot drawn
            registry = page.get_by_text("Model registry", exact=True).first
            registry.wait_for(state="visible")  # the training workspace
            assert page.get_by_text("Playground", exact=True).count() == 0  # not the GenAI one
            assert page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]').count() == 0
            for r in runs[:4]:
                page.get_by_text(r.info.run_name).first.wait_for(timeout=30_000)
            # the compared runs' val/loss values are on the page as MLflow formats them
            body = page.inner_text("body")
            shown = [r.data.metrics["val/loss"] for r in runs[:4]]
            assert sum(f"{v:.3g}"[:5] in body for v in shown) >= 2, body[:2000]
            page.screenshot(path=str(artifacts_dir / "mlflow_ui_compare.png"), full_page=True)
            browser.close()
    finally:
        stop_mlflow_server(proc)
    assert (artifacts_dir / "mlflow_ui_runs.png").stat().st_size > 20_000
    assert (artifacts_dir / "mlflow_ui_compare.png").stat().st_size > 20_000
