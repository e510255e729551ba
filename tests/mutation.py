"""Mutation testing, one module at a time, each with its own narrow test selection.

    python tests/mutation.py dit_core/diffusion/gaussian.py [--max-children 2]
    python tests/mutation.py --list

mutmut reads its settings only from `[tool.mutmut]` in the working directory's pyproject.toml.
So this script copies the sources and tests into a scratch folder (default
/tmp/ditscale-mutation/<module>), rewrites the section there for the one module and its tests,
and runs `mutmut run` in it. The committed section (blocks.py and models.py) is left as it is.
A rerun reuses the scratch folder's results. `mutmut results` / `mutmut show NAME` work in that
folder. docs/testing.md ("Mutation testing") has the scores.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_LATENTS_TESTS = ["tests/test_extract_latents.py", "-k", "not workers and not ranks"]

# the model's tests: blocks written out by hand, input checks, properties, parity with diffusers,
# label dropout's rate
_MODEL_TESTS = [
    "tests/test_blocks_reference.py",
    "tests/test_model_input_checks.py",
    "tests/test_model_properties.py",
    "tests/test_models.py",
    "tests/test_dit_parity.py",
    "tests/test_training_truth.py",
]

# module -> the tests that exercise it (fast ones only; slow trainer runs are left out).
SELECTIONS: dict[str, list[str]] = {
    "dit_core/blocks.py": _MODEL_TESTS,
    "dit_core/models.py": [*_MODEL_TESTS, "tests/test_model_init_and_checkpoint.py"],
    # one run for the whole package (one stats collection); scores are split per file afterwards
    "dit_core/diffusion/*.py": [
        "tests/test_diffusion.py",
        "tests/test_diffusion_analytic.py",
        "tests/test_diffusion_sampling.py",
        "tests/test_diffusion_validation.py",
        "tests/test_clip_denoised.py",
        "tests/test_diffusion_dit.py",
    ],
    # the fast tests: the Chinchilla refit (27 s), the CLI subprocesses and the pipeline runs are left out
    # (-k matches substrings: no other test name may contain "cli")
    "analysis/parametric.py": [
        "tests/test_parametric_closed_forms.py",
        "tests/test_analysis.py",
        "-k",
        "not cli and not chinchilla_refit and not bootstrap_se and not averaged_huber"
        " and not analyze_predict",
    ],
    # the pure parts of the trainer
    "dit_core/trainer/lr_schedule.py": ["tests/test_trainer_units.py"],
    "dit_core/trainer/rng.py": ["tests/test_trainer_units.py"],
    # the trainer's lifecycle: a depth-1, width-16 DiT on 8 px digits, a few steps per run
    # (each file 15-25 s)
    "dit_core/train.py": ["tests/test_trainer_lifecycle_fast.py"],
    "dit_core/trainer/loop.py": [
        "tests/test_trainer_lifecycle_fast.py",
        "tests/test_trainer_tracking_fast.py",
    ],
    "dit_core/trainer/resume.py": ["tests/test_trainer_lifecycle_fast.py"],
    "dit_core/trainer/signals.py": ["tests/test_trainer_lifecycle_fast.py"],
    "dit_core/trainer/validation.py": ["tests/test_trainer_tracking_fast.py"],
    "dit_core/trainer/evaluation.py": ["tests/test_trainer_tracking_fast.py"],
    # the small trainer modules: parsing, help, data order, progress lines, budget resolution
    "dit_core/trainer/cli.py": ["tests/test_train_config.py", "tests/test_trainer_pieces.py"],
    "dit_core/trainer/data_stream.py": [
        "tests/test_train_config.py",
        "tests/test_trainer_pieces.py",
        "tests/test_step_cost.py",
    ],
    # the direct backward/clip/AdamW calls against Accelerate's and a hand-written loop
    "dit_core/trainer/update.py": ["tests/test_step_cost.py"],
    "dit_core/trainer/progress.py": ["tests/test_train_config.py", "tests/test_trainer_pieces.py"],
    "dit_core/trainer/resolve.py": ["tests/test_train_config.py", "tests/test_trainer_pieces.py"],
    # cell states from real runs in a sqlite store (one store per session); no launcher, no trainer
    "sweeps/state.py": ["tests/test_sweeps_state_units.py", "tests/test_sweeps_state_pages.py"],
    # the joint IsoFLOP fit against its own model (exact), the t-interval's coverage, two-size budgets
    "analysis/joint_isoflop.py": ["tests/test_joint_isoflop.py"],
    # IsoFLOP shapes, priors, placement and the adaptive design against a fake trainer's known law
    "sweeps/design.py": ["tests/test_sweeps_design.py", "tests/test_demo_design.py"],
    # resampling (points or runs), intervals, bounds, failures, the forked workers and their order
    "analysis/bootstrap.py": ["tests/test_analysis_status.py"],
    # the sweep spec: expansion, budgets, validation and its messages, YAML and the spec record
    "sweeps/grid.py": ["tests/test_sweeps.py", "tests/test_demo_design.py", "-k", "not cell_lock"],
    # the launcher: plan, longest first, slots refilled, retries, relaunch, progress and time left;
    # the local sweeps run the fake trainer through submitit (~110 s for the three files)
    "sweeps/runner.py": [
        "tests/test_sweeps.py",
        "tests/test_sweeps_eta.py",
        "tests/test_sweeps_local.py",
        "-k",
        "not cell_lock and not two_launchers",  # launchers in child processes: mutmut's stats fail there
    ],
    # executor set-up, sbatch lines, the warning signal's timing, the requeue handler's SIGTERM shield
    # (the job-side code runs in child processes, which mutmut's stats cannot follow)
    "sweeps/executor.py": ["tests/test_sweeps.py", "-k", "not cell_lock"],
    # atomic saves, retention, the latest checkpoint, weights-only loads, and the trainer's resume
    "dit_core/checkpoint.py": ["tests/test_checkpoint.py", "tests/test_trainer_lifecycle_fast.py"],
    # one configuration mechanism: typed parsing, dotted overrides, YAML, generated flags, its errors
    "dit_core/configio.py": [
        "tests/test_configio.py",
        "tests/test_train_config.py",
        "tests/test_sweeps.py",
        "-k",
        "not cell_lock",
    ],
    # the photo stream: pure function of (seed, index), disjoint regions, accounting
    "dit_core/data/photos.py": ["tests/test_data_photos.py"],
    "dit_core/data/photo_options.py": ["tests/test_data_photos.py"],
    # build_dataset and the data-reuse accounting (in data/__init__.py before session 50)
    "dit_core/data/build.py": ["tests/test_data.py", "tests/test_data_photos.py"],
    "dit_core/lazy.py": ["tests/test_lazyexports_s50.py"],
    # leave-one-run-out refits on a known law, one corrupted run, the holdout, the CLI (~25 s)
    "analysis/influence.py": ["tests/test_analysis_influence.py"],
    # the points the fits see: a real sqlite MLflow store of synthetic runs, CSV input, seed averaging,
    # the schedule's valid points, the axes (the CLI fits and the Chinchilla refit are left out)
    "analysis/runs.py": [
        "tests/test_analysis_mlflow.py",
        "tests/test_analysis_status.py",
        "tests/test_analysis.py",
        "-k",
        "load_runs or fid_protocol or seed or points_valid or data_axis or effective_data or bad_input"
        " or chinchilla_data or csv",
    ],
    # the results JSON, the markdown report's sections, notes and tables, the report folder, the
    # analysis run in a real sqlite MLflow store (its failure path included); no CLI runs
    "analysis/report.py": [
        "tests/test_analysis.py",
        "tests/test_analysis_status.py",
        "tests/test_analysis_mlflow.py",
        "-k",
        "not cli",
    ],
    # the cost model: step and evaluation FLOPs, the dry-run bill and its assumptions
    "sweeps/cost.py": ["tests/test_cost.py"],
    # statuses, point selection, the three approaches' agreement, predictions and the holdout on known
    # laws; the fit CLI in-process (the run from the repo root as a script is a child process)
    "analysis/pipeline.py": [
        "tests/test_analysis.py",
        "tests/test_analysis_status.py",
        "-k",
        "not as_a_script",
    ],
    # the MLflow schema: params, tags, the run key, the sender's buffer and retries, resumed runs that
    # log each step once, the trainer's own runs (the real `mlflow server` tests are left out)
    "dit_core/tracking.py": [
        "tests/test_tracking.py",
        "tests/test_faults_tracking.py",
        "tests/test_trainer_tracking_fast.py",
        "-k",
        "not real_mlflow_server and not restart_mid_run",
    ],
    # statuses from best to worst, merged reasons, exit codes: the analysis's tests, in-process
    "analysis/status.py": [
        "tests/test_analysis_status.py",
        "tests/test_analysis.py",
        "-k",
        "not as_a_script",
    ],
    # FID's Frechet distance, IS, precision/recall, the metric names per domain and evaluate_samples:
    # closed forms, scipy and clean-fid's own function, the digits classifier (cached per session)
    "dit_core/evaluate/metrics.py": ["tests/test_evaluate.py", "tests/test_mutation_gaps_s37.py"],
    # the paper's families, the demo's scaling (ratios, rounding to heads), custom shapes, their errors
    "sweeps/families.py": ["tests/test_sweeps.py", "tests/test_demo_design.py", "-k", "not cell_lock"],
    # the dry run's cell table, the status table, counts like 2.73M (the dry runs of three test files)
    "sweeps/table.py": [
        "tests/test_sweeps_tables.py",
        "tests/test_sweeps.py",
        "tests/test_cost.py",
        "tests/test_sweeps_design.py",
        "-k",
        "not cell_lock",
    ],
    # the layers every block uses, the 2-D RoPE tables and the sin-cos tables: the model's tests
    # (parity with diffusers, blocks written out by hand, properties, input checks, label dropout's rate)
    "dit_core/layers.py": _MODEL_TESTS,
    "dit_core/rope.py": [
        "tests/test_blocks_reference.py",
        "tests/test_model_properties.py",
        "tests/test_models.py",
        "tests/test_mutation_gaps_s37.py",
    ],
    "dit_core/pos_embed.py": [
        "tests/test_blocks_reference.py",
        "tests/test_models.py",
        "tests/test_dit_parity.py",
        "tests/test_mutation_gaps_s37.py",
    ],
    # Gaussian stats, the Frechet distance against closed forms and scipy, the bootstrap SE
    "dit_core/evaluate/frechet.py": ["tests/test_evaluate.py", "tests/test_mutation_gaps_s37.py"],
    # the time a launch has left against schedules worked out by hand
    "sweeps/eta.py": ["tests/test_sweeps_eta.py"],
    # the launcher lock and the cell lock, taken in-process and by a real job shell
    "sweeps/lock.py": ["tests/test_sweeps.py", "tests/test_sweeps_state_units.py"],
    # the digits splits and images, the flip hash
    "dit_core/data/digits.py": ["tests/test_data.py"],
    "dit_core/data/flip.py": ["tests/test_data.py"],
    # what each figure draws, read back from the open figures (lines, points, bars, axes, labels)
    "analysis/plots.py": ["tests/test_analysis_plots.py"],
    # FID against loss, and the nearest shape (the runs' own or the paper's) to a recommended N
    "analysis/fidloss.py": ["tests/test_analysis.py", "-k", "fid_vs_loss"],
    "analysis/shapes.py": ["tests/test_analysis.py", "-k", "shape or param_counts"],
    # reference names (digits splits, photos options, folders, .npz) and the cached stats
    "dit_core/evaluate/reference.py": [
        "tests/test_evaluate.py",
        "tests/test_data_photos.py",
        "-k",
        "reference or clear_errors",
    ],
    # sampling for evaluation: the sample set's seeds, batches and guidance, the evaluation CLI and
    # its MLflow logging (the two-process tests run the module in child processes: left out)
    "dit_core/evaluate/sampling.py": [
        "tests/test_evaluate_sampling.py",
        "-k",
        "not two_processes and not every_rank",
    ],
    # torch.compile on CPU: when it pays, the modes, and the compiled path training like the plain one
    "dit_core/fast_path.py": ["tests/test_fast_path.py"],
    # latent extraction (shards, manifest, resume, skipped files) and the latents dataset (DataLoader
    # workers and ranks run in child processes: left out)
    "dit_core/extract_latents.py": _LATENTS_TESTS,
    "dit_core/data/latents.py": _LATENTS_TESTS,
    # the torch-free spec: shapes, names, parameter and FLOP counts, the budget's steps
    "dit_core/spec.py": [
        "tests/test_flops.py",
        "tests/test_models.py",
        "tests/test_model_input_checks.py",
        "tests/test_train_config.py",
        "tests/test_sweeps.py",
        "tests/test_mutation_gaps_s37.py",  # session 37: per-component FLOPs, the shape errors' field names
        "-k",
        "not cell_lock",
    ],
    # the fitting CLI in-process: flags and their refusals, outputs, exit codes, CSV and MLflow input
    # (session 38; `test_analysis.py`'s CLI tests are left out: -k "cli" would filter the others)
    "analysis/fit_scaling.py": [
        "tests/test_fit_scaling_inputs.py",
        "tests/test_fit_scaling_edges.py",
        "tests/test_fit_scaling_wording.py",
        "tests/test_qa_analysis_s37.py",
        "tests/test_bootstrap_minimum_s37.py",
        "tests/test_analysis_left_s38.py",
        "tests/test_analysis_mlflow.py",
    ],
    # power laws with intervals, the budgets' clusters, the compute frontier and its laws
    "analysis/laws.py": [
        "tests/test_analysis.py",
        "tests/test_analysis_status.py",
        "tests/test_fit_scaling_wording.py",  # session 37: the frontier's one-model-size reasons
        "tests/test_mutation_gaps_s37.py",
        "-k",
        "not cli",
    ],
    # the trainer's configuration: defaults, YAML, dotted overrides, CLI flags, validation
    "dit_core/config.py": [
        "tests/test_train_config.py",
        "tests/test_configio.py",
        "tests/test_trainer_pieces.py",
    ],
    # the small classifier behind fid_digits and fid_photos: its recipe, training, cache and features
    "dit_core/evaluate/domain_classifier.py": ["tests/test_evaluate_domain.py"],
    # images to uint8, the Inception extractor against clean-fid, the random-conv features
    "dit_core/evaluate/features.py": [
        "tests/test_evaluate.py",
        "tests/test_evaluate_inception.py",
        "tests/test_evaluate_domain.py",
    ],
    # state dicts to and from diffusers' DiTTransformer2DModel, checked by parity
    "dit_core/convert.py": ["tests/test_dit_parity.py"],
    # the ADM centre crop, the folder scan and the folder dataset
    "dit_core/data/imagefolder.py": [
        "tests/test_data.py",
        "tests/test_extract_latents.py",
        "-k",
        "not workers and not ranks",
    ],
    # what a cell passes to the trainer, and the trainer's config built from it
    "sweeps/task.py": [
        "tests/test_sweeps.py",
        "tests/test_demo_design.py",
        "tests/test_sweeps_seeds.py",
        "-k",
        "not cell_lock",
    ],
    "dit_core/ema.py": [
        "tests/test_train_config.py",
        "tests/test_training_truth.py",
        "tests/test_session35.py",  # ema_init_share and stale_ema_warning (session 35)
        "tests/test_mutation_gaps_s37.py",
        "-k",
        "ema or EMA",
    ],
    # most of its tests run fresh interpreters (glibc's defaults at start), which mutmut's stats cannot
    # follow: only the in-process refusal test maps to its mutants; docs/testing.md has hand-placed ones
    "dit_core/memory.py": ["tests/test_memory.py"],
    # a checkpoint's evaluation: the run's own protocol by default, and what departs from it
    "dit_core/evaluate/checkpoint_eval.py": [
        "tests/test_trainer_tracking_fast.py",
        "tests/test_evaluate_sampling.py",
        "-k",
        "(checkpoint or eval or cli) and not two_processes and not every_rank",
    ],
    "dit_core/data/config.py": [
        "tests/test_data.py",
        "tests/test_data_photos.py",
        "tests/test_train_config.py",
    ],
    "analysis/isoflop.py": [
        "tests/test_isoflop_closed_forms.py",
        "tests/test_analysis.py",
        "-k",
        "not cli and not chinchilla and not averaged_huber and not analyze_predict",
    ],
    # --device: names, auto, the machine's GPUs (a GPU is mocked: a CPU-only machine has none)
    "dit_core/device.py": [
        "tests/test_evaluate_inputs.py",
        "tests/test_sample_cli.py",
        "tests/test_mutation_gaps_s38.py",
    ],
    # the sampling CLI: sizes, labels, the grid, formats, output files and their errors, OOM, Ctrl-C
    "dit_core/sample.py": [
        "tests/test_sample_cli.py",
        "tests/test_eval_sample_s34.py",
        "tests/test_dit_core_s34.py",
        "tests/test_qa_core_s36.py",
        "tests/test_mutation_gaps_s38.py",
    ],
    # the evaluation CLI in-process: its checks before sampling, the JSON, MLflow logging and refusals
    "dit_core/evaluate/__main__.py": [
        "tests/test_evaluate_sampling.py",
        "tests/test_evaluate_inputs.py",
        "tests/test_cli_review.py",
        "tests/test_bad_input.py",
        "tests/test_s37.py",
        "tests/test_eval_sample_s34.py",
        "tests/test_dit_core_s34.py",
        "tests/test_qa_core_s36.py",
        "tests/test_mutation_gaps_s38.py",
        "-k",
        "not two_processes and not every_rank",
    ],
}

SOURCES = ["dit_core", "analysis", "sweeps", "tests", "pyproject.toml"]

# mutmut kills a mutant's tests after (estimated seconds + timeout_constant) x 30 CPU seconds (its
# default constant is 1). A test that only reads a module-scoped fixture is estimated at ~0 s, yet
# under a mutant it may be the one that builds the fixture: the plots' fixture (a fit, a bootstrap
# and 20 leave-one-out refits) takes ~30 CPU seconds with the imports, so every mutant timed out.
TIMEOUT_CONSTANT = {"analysis/plots.py": 4.0}


def _section(module: str, tests: list[str]) -> str:
    quoted = lambda xs: "[" + ", ".join(f'"{x}"' for x in xs) + "]"
    return (
        "[tool.mutmut]\n"
        'source_paths = ["dit_core/", "analysis/", "sweeps/"]\n'
        f"only_mutate = {quoted([module])}\n"
        f"pytest_add_cli_args_test_selection = {quoted(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-n", "0"]\n'  # in-process: no xdist workers
        'process_isolation = "forkserver"\n'
        f"timeout_constant = {TIMEOUT_CONSTANT.get(module, 1.0)}\n\n"
    )


def prepare(module: str, work: Path) -> None:
    """Copy the tree into `work` and point its [tool.mutmut] at `module` and its tests."""
    work.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "mutants")
    for name in SOURCES:
        src, dst = REPO / name, work / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=ignore, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)
    toml = (work / "pyproject.toml").read_text()
    tests = [t for t in SELECTIONS[module] if not t.startswith("tests/") or (REPO / t).exists()]
    toml, n = re.subn(r"\[tool\.mutmut\].*?(?=^\[)", _section(module, tests), toml, flags=re.S | re.M)
    if n != 1:
        raise SystemExit("error: pyproject.toml: no [tool.mutmut] section to replace")
    (work / "pyproject.toml").write_text(toml)


def _statuses(work: Path) -> dict[str, str]:
    """mutant name -> "killed", "survived", "not checked", ... from `mutmut results --all true`."""
    mutmut = Path(sys.executable).with_name("mutmut")
    out = subprocess.run([str(mutmut), "results", "--all", "true"], cwd=work, capture_output=True, text=True)
    pairs = (line.strip().rpartition(": ") for line in out.stdout.splitlines())
    return {name: status for name, _, status in pairs if "__mutmut_" in name}


def _module_of(name: str) -> str:
    return name.split(".x")[0]  # e.g. dit_core.diffusion.gaussian


def _sample(work: Path, k: int, seed: int) -> list[str]:
    """A uniform random sample of k mutants per source file (all of them when it has fewer)."""
    by_module: dict[str, list[str]] = {}
    for name in sorted(_statuses(work)):
        by_module.setdefault(_module_of(name), []).append(name)
    rng = random.Random(seed)
    return [n for names in by_module.values() for n in rng.sample(names, min(k, len(names)))]


def report(work: Path, only: list[str] | None = None) -> str:
    """Per source file: mutants, killed, survived, other outcomes, and the score killed / tested
    (over the sample `only` when given)."""
    statuses = _statuses(work)
    counts: dict[str, Counter] = {}
    for name, status in statuses.items():
        if only is None or name in only:
            counts.setdefault(_module_of(name), Counter())[status] += 1
    lines = []
    for module, c in sorted(counts.items()):
        tested = c["killed"] + c["survived"] + c["timeout"]
        score = (c["killed"] + c["timeout"]) / tested if tested else float("nan")
        rest = ", ".join(f"{k} {v}" for k, v in sorted(c.items()) if k not in ("killed", "survived"))
        lines.append(
            f"{module}: {sum(c.values())} mutants, {c['killed']} killed, {c['survived']} survived"
            f"{', ' + rest if rest else ''}; score {100 * score:.1f}% of the tested"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("module", nargs="?", help="a key of SELECTIONS, e.g. dit_core/diffusion/gaussian.py")
    p.add_argument("--max-children", type=int, default=1)
    p.add_argument(
        "--work", type=Path, default=None, help="scratch folder (default /tmp/ditscale-mutation/...)"
    )
    p.add_argument("--list", action="store_true", help="print the modules and their tests")
    p.add_argument("--report", action="store_true", help="only print per-file counts of the last run")
    p.add_argument(
        "--sample",
        type=int,
        default=0,
        help="test a uniform random sample of this many mutants per file (seed --seed), not all of them",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rerun-survivors", action="store_true", help="with --sample: test its survivors again")
    p.add_argument("mutants", nargs="*", help="mutant names or globs to run (default: all)")
    args = p.parse_intermixed_args(argv)
    if args.list or not args.module:
        for module, tests in SELECTIONS.items():
            print(module, " ".join(tests))
        return 0
    if args.module not in SELECTIONS:
        p.error(f"module {args.module!r} has no test selection; choose from: {', '.join(SELECTIONS)}")
    work = args.work or Path("/tmp/ditscale-mutation") / args.module.replace("/", "_").replace(
        "*", "all"
    ).removesuffix(".py")
    if args.report:
        print(report(work, _sample(work, args.sample, args.seed) if args.sample else None))
        return 0
    prepare(args.module, work)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    mutmut = Path(sys.executable).with_name("mutmut")
    names = list(args.mutants)
    if args.sample:
        if not (work / "mutants").exists():  # first generate the mutants (and the stats) without running them
            subprocess.call(
                [str(mutmut), "run", "--max-children", "1", "nothing-matches-this"], cwd=work, env=env
            )
        status = _statuses(work)
        redo = ("not checked", "survived", "no tests") if args.rerun_survivors else ("not checked",)
        names += [n for n in _sample(work, args.sample, args.seed) if status[n] in redo]
        if not names:
            print(report(work, _sample(work, args.sample, args.seed)))
            return 0
    cmd = [str(mutmut), "run", "--max-children", str(args.max_children), *names]
    rc = subprocess.call(cmd, cwd=work, env=env)
    print(f"scratch folder: {work} (run `mutmut results` / `mutmut show NAME` there)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
