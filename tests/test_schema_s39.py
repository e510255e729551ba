"""The MLflow run schema is defined once (`dit_core.tracking`): a tiny training run, written by the trainer
into a sqlite store, holds every key its readers (`analysis.runs.load_runs`, `sweeps.state.read_states`)
look for, named by the same constants; and the shared keys are written as literals nowhere else."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from _train_helpers import one_thread, tiny_config

from dit_core import tracking as schema

ROOT = Path(__file__).resolve().parents[1]
CODE = ("dit_core", "sweeps", "analysis", "benchmarks")

#: Keys one part writes and another reads, that no other code spells as a string of its own.
SHARED_LITERALS = (
    schema.TRAIN_LOSS,
    schema.VAL_LOSS,
    schema.VAL_LOSS_EMA,
    schema.TRAIN_FLOPS,
    schema.IMAGES_SEEN,
    schema.IMAGES_PER_S,
    schema.UNIQUE_IMAGES,
    schema.EPOCHS,
    *schema.FIXED_COST_METRICS,
    *schema.FID_METRICS,
    *sorted(schema.DERIVED_PARAMS - {schema.WORLD_SIZE}),  # world_size: also a field of extract_latents
    schema.GRID_CELL_TAG,
    schema.PREVIOUS_ERROR_TAG,
    schema.UNIQUE_IMAGES_TAG,
    schema.FEATURE_SPACE_TAG,
)
#: Prefixes of metric names built from a name: ``f"eval/{name}"`` spelled out instead of `EVAL_PREFIX`.
SHARED_PREFIXES = (schema.EVAL_PREFIX, schema.PERF_PREFIX)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 4-step run of a sweep cell, validated every 2 steps, in its own sqlite store."""
    from dit_core.train import train

    tmp = tmp_path_factory.mktemp("schema")
    uri = f"sqlite:///{tmp}/mlflow.db"
    track = {"tracking.enabled": True, "tracking.uri": uri, "tracking.experiment": "schema-s39"}
    track |= {"tracking.sweep": "sw", "tracking.grid_cell": "c1", "eval.val_every": 2}
    with one_thread():
        res = train(tiny_config(tmp / "c1", steps=4, batch=4, log_every=2, **track))
    assert res.status == schema.STATUS_FINISHED
    return uri, res, tmp / "c1"


def test_the_run_holds_every_key_its_readers_look_for(run):
    from mlflow import MlflowClient

    uri, res, _ = run
    data = MlflowClient(tracking_uri=uri).get_run(res.run_id).data
    metrics = {schema.TRAIN_LOSS, schema.LR, schema.TRAIN_FLOPS, schema.IMAGES_SEEN, schema.IMAGES_PER_S}
    metrics |= {schema.VAL_LOSS, schema.UNIQUE_IMAGES, schema.EPOCHS, *schema.FIXED_COST_METRICS}
    assert metrics <= set(data.metrics), metrics - set(data.metrics)
    derived = schema.DERIVED_PARAMS - ({schema.GIT_COMMIT} if schema.git_commit() is None else set())
    assert derived <= set(data.params), derived - set(data.params)
    tags = data.tags
    assert tags[schema.STATUS_TAG] == schema.STATUS_FINISHED and schema.ERROR_TAG not in tags
    assert (tags[schema.SWEEP_TAG], tags[schema.GRID_CELL_TAG]) == ("sw", "c1")
    assert tags[schema.UNIQUE_IMAGES_TAG] == data.params[schema.DATA_TRAIN_SIZE]


def test_the_analysis_reads_the_run_by_the_same_names(run):
    from mlflow import MlflowClient

    from analysis.runs import load_runs

    uri, res, _ = run
    data = MlflowClient(tracking_uri=uri).get_run(res.run_id).data
    pts = load_runs("schema-s39", tracking_uri=uri)
    assert list(pts["step"]) == [2, 4] and set(pts["status"]) == {schema.STATUS_FINISHED}
    assert (pts["N"] == float(data.params[schema.MODEL_PARAMS])).all()
    assert (pts["N_non_embedding"] == float(data.params[schema.MODEL_PARAMS_NON_EMBEDDING])).all()
    last = pts.iloc[-1]
    assert last["loss"] == pytest.approx(data.metrics[schema.VAL_LOSS])
    assert last["C"] == pytest.approx(data.metrics[schema.TRAIN_FLOPS])
    assert last["D"] == pytest.approx(data.metrics[schema.IMAGES_SEEN])
    assert last["unique"] == pytest.approx(data.metrics[schema.UNIQUE_IMAGES])
    # the config fields it reads by name are params of the run
    read = re.findall(r"""params\.get\(["']([\w.]+)["']""", (ROOT / "analysis" / "runs.py").read_text())
    read += re.findall(r"""g\(["']([\w.]+)["'], ["']\?["']\)""", (ROOT / "analysis" / "runs.py").read_text())
    assert len(read) >= 10 and set(read) <= set(data.params), set(read) - set(data.params)


def test_the_sweep_reads_the_run_by_the_same_names(run):
    from sweeps.state import read_runs, read_states

    uri, res, run_dir = run
    assert [r.info.run_id for r in read_runs(uri, "schema-s39", "sw")["c1"]] == [res.run_id]
    st = read_states(uri, "schema-s39", "sw", {"c1": str(run_dir)})["c1"]
    assert (st.state, st.run_id, st.step) == ("finished", res.run_id, 4)
    assert st.loss == pytest.approx(res.train_loss) and st.val_loss == pytest.approx(res.val_loss)


def _code_files():
    return [f for pkg in CODE for f in sorted((ROOT / pkg).rglob("*.py"))]


def test_the_shared_keys_are_spelled_only_in_the_schema_module():
    where = []
    for f in _code_files():
        if f == ROOT / "dit_core" / "tracking.py":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            # a string that is the key (a message or docstring that names it is not), or an f-string
            # that starts with a prefix: f"eval/{name}"
            if isinstance(node, ast.Constant) and node.value in SHARED_LITERALS:
                where.append(f"{f.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
            first = node.values[0] if isinstance(node, ast.JoinedStr) and node.values else None
            if isinstance(first, ast.Constant) and str(first.value).startswith(SHARED_PREFIXES):
                where.append(f"{f.relative_to(ROOT)}:{node.lineno}: f'{first.value}{{...}}'")
    assert not where, "use the names of dit_core.tracking:\n" + "\n".join(where)


def test_the_is_without_logits_message_is_written_once():
    from dit_core.evaluate.features import no_logits_message

    hits = [str(f.relative_to(ROOT)) for f in _code_files() if "needs class logits" in f.read_text()]
    assert hits == ["dit_core/evaluate/features.py"]
    assert no_logits_message("W").startswith("metric 'is' needs class logits, but W has none")
