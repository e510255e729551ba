"""Hand-placed mutants for code that mutmut cannot follow (it runs in child processes), or follows too
slowly on a busy machine (session 40: the lines sessions 39 and 40 added, docs/testing.md).

mutmut maps mutants to tests by recording callers in the test process; `sweeps/warm.py` runs in
the warm worker (a child) and its forks, so mutmut finds no test for it (docs/testing.md). Here
each mutant is one exact text replacement, applied alone to a scratch copy of the repository, and
the module's tests are run against it (stopping at the first failure):

    OMP_NUM_THREADS=1 python tests/hand_mutants.py sweeps/warm.py [NAME ...]

It prints one JSON line per mutant (killed, the first failing test, seconds) and a summary. Not a
test module (no ``test_`` prefix): pytest does not collect it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = Path("/tmp/ditscale-hand-mutants")

#: module -> (its tests, [(name, original text, mutated text)]); each original occurs exactly once
MUTANTS: dict[str, tuple[list[str], list[tuple[str, str, str]]]] = {
    "sweeps/warm.py": (
        ["tests/test_sweeps_warm.py"],
        [
            (
                "exit_code_missing_is_0",
                '_exit").read_text())\n        except (FileNotFoundError, ValueError):\n'
                "            return None",
                '_exit").read_text())\n        except (FileNotFoundError, ValueError):\n            return 0',
            ),
            ("done_ignores_lock", "alive() and not cell_lock_held(self.run_dir)", "alive()"),
            ("results_ignores_code", 'if kind == "success" and code == 0:', 'if kind == "success":'),
            ("results_signal_name", 'f"killed by {signal.Signals(-code).name}"', 'f"exit status {code}"'),
            ("results_no_remote_tb", "\\n{value or ''}\".rstrip()", '".rstrip()'),
            (
                "cancel_sigterm",
                '_file("_pid").read_text()), signal.SIGINT)',
                '_file("_pid").read_text()), signal.SIGTERM)',
            ),
            ("no_thread_env", "if threads:  # read by", "if False:  # read by"),
            ("no_pythonpath", 'env["PYTHONPATH"] = os.pathsep.join(', 'env["UNUSED"] = os.pathsep.join('),
            ("same_job_id", "self.submitted += 1\n", "self.submitted += 0\n"),
            ("close_keeps_stdin", "self.proc.stdin.close()", "self.proc.stdin.flush()"),
            ("kill_keeps_log", "self.log_path.unlink(missing_ok=True)", "pass"),
            ("warmup_no_dispose", "    _dispose_sql_engines()\n    tracking", "    tracking"),
            # the cell lock's wait moved to sweeps.lock.take_cell_lock in session 40: its mutants are there
            ("child_keeps_other_locks", "for fd in others:  # other cells", "for fd in []:  # other cells"),
            ("child_no_log_redirect", 'for fd, ext in ((1, "out"), (2, "err")):', "for fd, ext in ():"),
            ("child_no_sigint", "signal.signal(signal.SIGINT, signal.default_int_handler)", "pass"),
            ("child_sigterm_ignored", "(signal.SIGTERM, signal.SIG_DFL)", "(signal.SIGTERM, signal.SIG_IGN)"),
            ("child_no_usr2", "    signal.signal(signal.SIGUSR2, requeue)\n", ""),
            ("child_no_reseed", '        sys.modules["numpy"].random.seed()', "        pass"),
            ("child_no_threads", '        sys.modules["torch"].set_num_threads(threads)', "        pass"),
            ("child_requeue_as_success", "return REQUEUE_EXIT\n    except", "return 0\n    except"),
            (
                "child_error_code_0",
                '("error", traceback.format_exc()), 1',
                '("error", traceback.format_exc()), 0',
            ),
            (
                "fork_no_pid_file",
                '        atomic_write_bytes(slot.folder / f"{slot.job_id}_pid", str(pid).encode())\n',
                "",
            ),
            ("fork_started_0", "pid, time.monotonic(), False", "pid, 0.0, False"),
            ("request_lockfail_exit0", '_exit", b"1")', '_exit", b"0")'),
            (
                "reap_requeue_le",
                'slot.requeues < int(self.cfg["max_num_timeout"])',
                'slot.requeues <= int(self.cfg["max_num_timeout"])',
            ),
            (
                "reap_no_refork",
                "                    self.fork(slot)\n                    continue",
                "                    continue",
            ),
            (
                "reap_keeps_lock",
                "            os.close(slot.lock_fd)  # released",
                "            pass  # released",
            ),
            (
                "reap_exit_before_unlock",
                "            os.close(slot.lock_fd)  # released before the exit is reported: a relaunch"
                " sees it over\n"
                '            atomic_write_bytes(slot.folder / f"{slot.job_id}_exit", str(code).encode())',
                '            atomic_write_bytes(slot.folder / f"{slot.job_id}_exit", str(code).encode())\n'
                "            os.close(slot.lock_fd)",
            ),
            (
                "limits_no_delay",
                'float(self.cfg["timeout_s"]) - float(self.cfg["signal_delay_s"])',
                'float(self.cfg["timeout_s"])',
            ),
            ("limits_rewarn", "                slot.warned = True\n", ""),
            ("loop_exit_at_eof", "while not eof or self.by_pid:", "while not eof:"),
        ],
    ),
    # session 40: the code of sessions 39 and 40 (docs/testing.md, "Session 40"); tests/test_mutants_s40.py
    # holds the tests that kill the survivors of the first pass
    "dit_core/diffusion/respace.py": (
        [
            "tests/test_mutants_s40.py",
            "tests/test_diffusion.py",
            "tests/test_sampling_s40.py",
            "-k",
            "space_timesteps or respac or section or respace",
        ],
        [
            (
                "ddim_start_off_by_one",
                "num_timesteps - 1 - (n - 1) * stride",
                "num_timesteps - (n - 1) * stride",
            ),
            ("ddim_start_from_0", "range(num_timesteps - 1 - (n - 1) * stride,", "range(0,"),
            ("ddim_stride_plus_1", "stride = num_timesteps // n", "stride = num_timesteps // n + 1"),
            ("ddim_unchecked", "            _check_count(n, num_timesteps, section_counts)\n", ""),
            ("one_step_keeps_0", "        return [size - 1]", "        return [0]"),
            ("one_step_le", "    if count == 1:", "    if count <= 1:"),
            ("linspace_to_size", "np.linspace(0, size - 1, count)", "np.linspace(0, size, count)"),
            ("linspace_floor", "np.round(np.linspace(", "np.floor(np.linspace("),
            ("sections_ge", "if len(counts) > num_timesteps:", "if len(counts) >= num_timesteps:"),
            ("empty_unchecked", "    if not counts:\n", "    if False:\n"),
            (
                "section_size_plus_1",
                "_check_count(count, len(steps), section_counts, where)",
                "_check_count(count, len(steps) + 1, section_counts, where)",
            ),
            ("count_lt_0", "    if count < 1:", "    if count < 0:"),
            ("count_ge", "    if count > available:", "    if count >= available:"),
            (
                "where_two_sections",
                'where = "" if len(counts) == 1 else',
                'where = "" if len(counts) <= 2 else',
            ),
            ("section_first_step", "(steps {steps[0]}..{steps[-1]})", "(steps {steps[1]}..{steps[-1]})"),
            ("section_number", "in section {i + 1} (", "in section {i} ("),
            ("why_inverted", 'that many)" if not where else ""', 'that many)" if where else ""'),
            ("there_dropped", "{' there' if where else ''}", "{''}"),
            (
                "int_spec_as_range",
                "        counts = [section_counts]",
                "        counts = [section_counts, 1]",
            ),
            ("strip_dropped", "spec = section_counts.strip()", "spec = section_counts"),
            (
                "betas_prev_shift",
                "prev = np.concatenate([[1.0], abar[:-1]])",
                "prev = np.concatenate([abar[:1], abar[:-1]])",
            ),
        ],
    ),
    "sweeps/lock.py": (
        [
            "tests/test_mutants_s40.py",
            "tests/test_sweeps.py",
            "tests/test_sweeps_warm.py",
            "-k",
            "cell_lock or zygote_waits",
        ],
        [
            ("wait_none", "if time.monotonic() > end:", "if True:"),
            ("wait_zero", "end = time.monotonic() + wait_s", "end = time.monotonic()"),
            (
                "lock_shared",
                "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)",
                "fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)",
            ),
            ("shell_no_wait", "{script} {_FD} {path} {CELL_LOCK_WAIT_S}", "{script} {_FD} {path} 0"),
            ("shell_exit_code_only", "        sys.exit(str(e))", "        sys.exit(1)"),
            (
                "shell_default_wait",
                "take_cell_lock(int(sys.argv[1]), sys.argv[2], float(sys.argv[3]))",
                "take_cell_lock(int(sys.argv[1]), sys.argv[2])",
            ),
            ("shell_not_isolated", "{python} -I {script}", "{python} {script}"),
            (
                "message_what_dropped",
                'f"{what}: another job of this cell is alive"',
                '"another job of this cell is alive"',
            ),
            ("wait_s_default_1", "CELL_LOCK_WAIT_S = 10.0", "CELL_LOCK_WAIT_S = 1.0"),
            (
                "held_ex_probe",
                "fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)\n    except BlockingIOError:\n"
                "        return True",
                "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    except BlockingIOError:\n"
                "        return True",
            ),
        ],
    ),
    "dit_core/trainer/signals.py": (
        [
            "tests/test_mutants_s40.py",
            "tests/test_sync_s39.py",
            "tests/test_trainer_lifecycle_fast.py",
            "-k",
            "sync_interval or several_processes_agree or guard or signal_mid_run or sigterm_with_no"
            " or deferred or SignalSync",
        ],
        [
            ("due_gt", "step >= self.next_step", "step > self.next_step"),
            (
                "first_every",
                "        if self._last is None:\n            return 1",
                "        if self._last is None:\n            return self.every_steps",
            ),
            (
                "no_step_1",
                "        if steps <= 0:\n            return self.interval",
                "        if steps <= 0:\n            return 1",
            ),
            ("no_step_lt", "        if steps <= 0:", "        if steps < 0:"),
            ("fit_round", "int(self.every_s // step_s)", "round(self.every_s / step_s)"),
            ("zero_time_1", "if step_s > 0 else self.every_steps", "if step_s > 0 else 1"),
            ("no_floor_1", "return max(1, min(self.every_steps, fit))", "return min(self.every_steps, fit)"),
            ("no_cap", "return max(1, min(self.every_steps, fit))", "return max(1, fit)"),
            ("agree_no_floor", "self.interval = max(1, int(interval))", "self.interval = int(interval)"),
            ("agree_clock_0", "self._last = (step, self.clock())", "self._last = (step, 0.0)"),
            ("agree_step_0", "self._last = (step, self.clock())", "self._last = (0, self.clock())"),
            (
                "step_s_whole",
                "step_s = (self.clock() - self._last[1]) / steps",
                "step_s = self.clock() - self._last[1]",
            ),
            (
                "deferred_off_main",
                "if threading.current_thread() is not threading.main_thread():\n        yield got",
                "if threading.current_thread() is threading.main_thread():\n        yield got",
            ),
            (
                "deferred_not_recorded",
                "lambda signum, _frame: got.append(signum)",
                "lambda signum, _frame: None",
            ),
            ("deferred_twice", "for s in dict.fromkeys(got):", "for s in got:"),
            ("deferred_no_warning", "            if during:\n", "            if not during:\n"),
            ("deferred_not_resent", "            signal.raise_signal(s)", "            pass"),
            ("deferred_yield_copy", "    try:\n        yield got\n", "    try:\n        yield list(got)\n"),
            (
                "deferred_sig_dfl",
                "signal.SIG_DFL if handler is None else handler",
                "signal.SIG_IGN if handler is None else handler",
            ),
            (
                "deferred_restore_after",
                "        for s, handler in old.items():\n"
                "            signal.signal(s, signal.SIG_DFL if handler is None else handler)\n"
                "        for s in dict.fromkeys(got):\n            if during:\n"
                '                log.warning("received %s while %s; acting on it now", '
                "signal.Signals(s).name, during)\n"
                "            signal.raise_signal(s)\n",
                "        for s in dict.fromkeys(got):\n            if during:\n"
                '                log.warning("received %s while %s; acting on it now", '
                "signal.Signals(s).name, during)\n"
                "            signal.raise_signal(s)\n"
                "        for s, handler in old.items():\n"
                "            signal.signal(s, signal.SIG_DFL if handler is None else handler)\n",
            ),
        ],
    ),
    "sweeps/state.py": (
        ["tests/test_mutants_s40.py", "tests/test_left_s39.py", "-k", "noted_cancel or cancelled"],
        [
            (
                "note_drops_others",
                "jobs = {**cancelled_jobs(run_dir), str(job_id): int(interrupts)}",
                "jobs = {str(job_id): int(interrupts)}",
            ),
            (
                "note_keeps_old",
                "jobs = {**cancelled_jobs(run_dir), str(job_id): int(interrupts)}",
                "jobs = {str(job_id): int(interrupts), **cancelled_jobs(run_dir)}",
            ),
            ("note_plus_1", "str(job_id): int(interrupts)}", "str(job_id): int(interrupts) + 1}"),
            (
                "read_oserror_only",
                "    except (OSError, ValueError):\n        return {}",
                "    except OSError:\n        return {}",
            ),
            ("read_not_dict", "if isinstance(jobs, dict) else {}", ""),
            (
                "read_raw",
                "return {str(k): int(v) for k, v in jobs.items()}",
                "return {k: v for k, v in jobs.items()}",
            ),
            (
                "forget_missing_error",
                "(Path(run_dir) / CANCELLED_FILE).unlink(missing_ok=True)",
                "(Path(run_dir) / CANCELLED_FILE).unlink()",
            ),
            ("forget_nothing", "(Path(run_dir) / CANCELLED_FILE).unlink(missing_ok=True)", "pass"),
            (
                "states_sum",
                "st.interrupts = max(st.interrupts, cancelled_jobs(cells[cid]).get(ref.job_id, 0))",
                "st.interrupts = st.interrupts + cancelled_jobs(cells[cid]).get(ref.job_id, 0)",
            ),
            (
                "states_min",
                "st.interrupts = max(st.interrupts, cancelled_jobs(cells[cid]).get(ref.job_id, 0))",
                "st.interrupts = min(st.interrupts, cancelled_jobs(cells[cid]).get(ref.job_id, 0))",
            ),
            (
                "states_any_job",
                "cancelled_jobs(cells[cid]).get(ref.job_id, 0))",
                "max(cancelled_jobs(cells[cid]).values(), default=0))",
            ),
            (
                "states_note_ignored",
                "        if ref is not None:  # its last job cancelled",
                "        if False:  # its last job cancelled",
            ),
            (
                "tries_no_floor",
                "return max(0, self.attempts - self.interrupts)",
                "return self.attempts - self.interrupts",
            ),
        ],
    ),
    "analysis/runs.py": (
        [
            "tests/test_mutants_s40.py",
            "tests/test_analysis_s40.py",
            "tests/test_analysis_best_lr.py",
            "tests/test_axes_s39.py",
            "-k",
            "not influence and not token_space and not two_budgets and not cli",
        ],
        [
            ("one_lr_kept", 'points["lr"].nunique() < 2:', 'points["lr"].nunique() < 1:'),
            (
                "tried_ge_1",
                'finals = finals[finals["_g"].map(tried) > 1]',
                'finals = finals[finals["_g"].map(tried) >= 1]',
            ),
            ("seeds_fill_0", 'finals["n_seeds"].fillna(1)', 'finals["n_seeds"].fillna(0)'),
            (
                "loss_min_not_mean",
                'agg(loss=("loss", "mean"), k=("_s", "sum"))',
                'agg(loss=("loss", "min"), k=("_s", "sum"))',
            ),
            (
                "k_max",
                'agg(loss=("loss", "mean"), k=("_s", "sum"))',
                'agg(loss=("loss", "mean"), k=("_s", "max"))',
            ),
            (
                "bad_not_first",
                'means.sort_values(["bad", "loss", "lr"])',
                'means.sort_values(["loss", "bad", "lr"])',
            ),
            (
                "tie_larger_lr",
                'means.sort_values(["bad", "loss", "lr"])',
                'means.sort_values(["bad", "loss", "lr"], ascending=[True, True, False])',
            ),
            (
                "tie_row_order",
                'means.sort_values(["bad", "loss", "lr"])',
                'means.sort_values(["bad", "loss"])',
            ),
            (
                "bad_ignored",
                'means["bad"] = diverged_lrs(means["_g"], means["lr"], diverged)',
                'means["bad"] = False',
            ),
            ("seed_note_gt_2", 'if means["k"].max() > 1:', 'if means["k"].max() > 2:'),
            ("uneven_le", 'k.index[k["min"] < k["max"]]', 'k.index[k["min"] <= k["max"]]'),
            (
                "edge_min_only",
                'best[g] in (span.at[g, "min"], span.at[g, "max"])',
                'best[g] in (span.at[g, "min"],)',
            ),
            (
                "bad_kept_inverted",
                '(" (kept: every lr of the cell had one)" if k else "")',
                '(" (kept: every lr of the cell had one)" if not k else "")',
            ),
            ("bad_note_dropped", '    if means["bad"].any():', "    if False:"),
            (
                "diverged_inverted",
                "in pairs for g, x in zip(group, lr)",
                "not in pairs for g, x in zip(group, lr)",
            ),
            ("diverged_lr_str", 'diverged["lr"].astype(float)', 'diverged["lr"].astype(str)'),
            ("diverged_empty_df", "if rows else None", "if rows is not None else None"),
            (
                "diverged_cols",
                'columns=["run_id", "lr_group", "lr"]) if rows',
                'columns=["run_id", "lr", "lr_group"]) if rows',
            ),
            (
                "redraw_one_lr_cells",
                'raw = raw[raw["_g"].map(many) > 1]',
                'raw = raw[raw["_g"].map(many) >= 1]',
            ),
            (
                "redraw_no_replacement",
                "picks = [rng.integers(0, len(f), len(f)) for f in finals]",
                "picks = [np.arange(len(f)) for f in finals]",
            ),
            (
                "redraw_bad_not_first",
                "keys = [(b, float(f[p].mean()), x)",
                "keys = [(float(f[p].mean()), b, x)",
            ),
            (
                "redraw_max",
                "j = min(range(len(lrs)), key=keys.__getitem__)",
                "j = max(range(len(lrs)), key=keys.__getitem__)",
            ),
            ("redraw_nan_kept", "if np.isfinite(means[j]):", "if True:"),
            ("redraw_first_seed", "float(f[p].mean())", "float(f[p][0])"),
            ("redraw_no_resample", "float(f[p].mean())", "float(f.mean())"),
            ("redraw_step_nan", 'fitted["step"].fillna(-1.0).to_numpy()', 'fitted["step"].to_numpy()'),
            (
                "redraw_last_run",
                '.str.split(" + ", regex=False).str[0]',
                '.str.split(" + ", regex=False).str[-1]',
            ),
        ],
    ),
    "analysis/parametric.py": (
        [
            "tests/test_mutants_s40.py",
            "tests/test_analysis_s40.py",
            "tests/test_parametric_closed_forms.py",
            "-k",
            "weigh or seeds or parametric or objective or Weights",
        ],
        [
            (
                "pw_none_ones",
                "    if weights is None:\n        return None\n    w = np.asarray",
                "    if weights is None:\n        return np.ones(n)\n    w = np.asarray",
            ),
            ("pw_len_unchecked", "if len(w) != n or not", "if not"),
            ("pw_zero_ok", "np.isfinite(w) & (w > 0)", "np.isfinite(w) & (w >= 0)"),
            ("pw_nonfinite_ok", "np.all(np.isfinite(w) & (w > 0))", "np.all(w > 0)"),
            ("pw_equal_kept", "return None if np.all(w == w[0]) else w / w.mean()", "return w / w.mean()"),
            (
                "pw_any_equal",
                "return None if np.all(w == w[0]) else w / w.mean()",
                "return None if np.any(w == w[0]) else w / w.mean()",
            ),
            (
                "pw_unscaled",
                "return None if np.all(w == w[0]) else w / w.mean()",
                "return None if np.all(w == w[0]) else w",
            ),
            (
                "pw_sum",
                "return None if np.all(w == w[0]) else w / w.mean()",
                "return None if np.all(w == w[0]) else w / w.sum()",
            ),
            ("obj_value_unweighted", "h, dh = h * w, dh * w", "h, dh = h, dh * w"),
            ("obj_grad_unweighted", "h, dh = h * w, dh * w", "h, dh = h * w, dh"),
            ("obj_sqrt_w", "h, dh = h * w, dh * w", "h, dh = h * np.sqrt(w), dh * np.sqrt(w)"),
            ("grid_unweighted", "(h if w is None else h * w).sum(axis=-1)", "h.sum(axis=-1)"),
            ("stat_unweighted", "    if w is not None:\n        dh = dh * w\n", ""),
            (
                "varpro_rows_w",
                "loss = plain if w is None else plain / np.sqrt(w)",
                "loss = plain if w is None else plain / w",
            ),
            ("varpro_rhs_ones", "np.ones_like(loss) if w is None else np.sqrt(w))", "np.ones_like(loss))"),
            (
                "varpro_unweighted",
                "_varpro_starts(log_n, log_d, log_loss, cfg, w)\n",
                "_varpro_starts(log_n, log_d, log_loss, cfg)\n",
            ),
            (
                "grid_starts_unweighted",
                "scores = grid_objective(grid, log_n, log_d, log_loss, cfg.delta, w)",
                "scores = grid_objective(grid, log_n, log_d, log_loss, cfg.delta)",
            ),
            (
                "fit_starts_unweighted",
                "    starts = _grid_starts(*logs, cfg, w)\n",
                "    starts = _grid_starts(*logs, cfg)\n",
            ),
            (
                "polish_unweighted",
                "theta, f, stat = _polished(theta, f, stat, logs, cfg, bounds, w=w)",
                "theta, f, stat = _polished(theta, f, stat, logs, cfg, bounds)",
            ),
            (
                "e0_fit_unweighted",
                "[theta, *starts], bounds, fix_e=-np.inf, w=w)",
                "[theta, *starts], bounds, fix_e=-np.inf)",
            ),
            (
                "profile_unweighted",
                "profile = profile_e(theta, *logs, cfg, w=w)",
                "profile = profile_e(theta, *logs, cfg)",
            ),
            ("profile_min_unweighted", "cfg, bounds, fix_e=e, w=w)", "cfg, bounds, fix_e=e)"),
            (
                "boot_unweighted",
                "groups=groups, weights=w, redraw=redraw",
                "groups=groups, weights=None, redraw=redraw",
            ),
            (
                "boot_not_rescaled",
                "w = None if weights is None else point_weights(weights[idx], len(idx))",
                "w = None if weights is None else weights[idx]",
            ),
            (
                "boot_weights_not_drawn",
                "w = None if weights is None else point_weights(weights[idx], len(idx))",
                "w = None if weights is None else point_weights(weights, len(weights))",
            ),
        ],
    ),
}


def run(module: str, names: list[str]) -> list[dict]:
    tests, mutants = MUTANTS[module]
    work = SCRATCH / module.replace("/", "_")
    shutil.rmtree(work, ignore_errors=True)
    for part in ("dit_core", "sweeps", "analysis", "tests", "pyproject.toml"):
        src = ROOT / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / part)
    target = work / module
    original = target.read_text()
    env = {**os.environ, "PYTHONPATH": str(work), "OMP_NUM_THREADS": "1"}
    records = []
    for name, old, new in mutants:
        if names and name not in names:
            continue
        if original.count(old) != 1:
            raise SystemExit(f"{module}: mutant {name}'s text occurs {original.count(old)} times, not once")
        mutated = original.replace(old, new)
        compile(mutated, module, "exec")  # a mutant that does not parse would be 'killed' at collection
        target.write_text(mutated)
        t0 = time.monotonic()
        try:
            cmd = [sys.executable, "-m", "pytest", "-n", "0", "-p", "no:cacheprovider", "-x", "-q", *tests]
            proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
            out = proc.stdout + proc.stderr
            killed, failed = proc.returncode != 0, [ln for ln in out.splitlines() if ln.startswith("FAILED")]
        except subprocess.TimeoutExpired:
            killed, failed = True, ["timeout (600 s)"]
        finally:
            target.write_text(original)
        rec = {"mutant": name, "killed": killed, "by": failed[:1], "s": round(time.monotonic() - t0)}
        print(json.dumps(rec), flush=True)
        records.append(rec)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", choices=sorted(MUTANTS))
    parser.add_argument("names", nargs="*", help="only these mutants (default: all)")
    args = parser.parse_args()
    records = run(args.module, args.names)
    alive = [r["mutant"] for r in records if not r["killed"]]
    print(f"{len(records) - len(alive)} of {len(records)} killed; survived: {alive}")


if __name__ == "__main__":
    main()
