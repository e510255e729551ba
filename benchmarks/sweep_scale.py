"""A sweep of many cells through the real launcher and the real SLURM, against a PostgreSQL-backed
`mlflow server`: what do submit, relaunch and ``status`` cost at 1,000 cells, and does the tracking
store keep every run and metric point?

    bash slurm/slurm-ci.sh up && bash slurm/mlflow-db.sh up
    PYTHONPATH=.:tests python benchmarks/sweep_scale.py --cells 1000

Each cell is one task of one SLURM job array, run by `tests/_scale_trainer.py`, a stand-in that
starts in a fraction of a second and writes a real cell's MLflow schema (tags, params, metric points,
run status) over REST. Without ``--tracking-uri`` the benchmark starts its own `mlflow server` over a
fresh PostgreSQL database (`tests/_pg_server.py`) and counts the stored metric points in SQL.

Measured: submit (launch until the array is submitted and recorded), the array's run time,
tracking writes (requests/s and points/s over the jobs' window, retries, failed cells, server
errors), runs per cell (duplicates), lost points, relaunch (time, submissions) and ``status``
(median of ``--status-repeats``). `tests/test_sweep_scale.py` runs 200 cells and asserts the counts.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from dit_core.tracking import (  # noqa: E402
    FIXED_COST_METRICS,
    IMAGES_PER_S,
    IMAGES_SEEN,
    LR,
    TRAIN_FLOPS,
    TRAIN_LOSS,
    VAL_LOSS,
)
from sweeps.grid import ExecutorSpec, SweepSpec, expand  # noqa: E402
from sweeps.state import read_runs  # noqa: E402

__all__ = ["ScaleReport", "run_scale", "scale_spec", "slurm_cpus"]


@dataclass
class ScaleReport:
    cells: int
    parallelism: int
    submit_s: float = 0.0
    array_s: float = 0.0  # first submission -> every cell collected by the launcher
    runs: int = 0
    duplicates: int = 0
    failed_cells: int = 0
    write_requests: int = 0
    write_retries: int = 0
    write_window_s: float = 0.0
    requests_per_s: float = 0.0
    points_per_s: float = 0.0
    mean_request_ms: float = 0.0
    server_errors: int = 0
    points_expected: int = 0
    points_stored: int = 0
    lost_points: int = 0
    relaunch_s: float = 0.0
    relaunch_submitted: int = 0
    status_s: list[float] = field(default_factory=list)
    status_finished: int = 0

    @property
    def status_median_s(self) -> float:
        return statistics.median(self.status_s) if self.status_s else math.nan

    def lines(self) -> list[str]:
        return [
            f"cells {self.cells} (one SLURM array, parallelism {self.parallelism})",
            f"submit: {self.submit_s:.1f} s; array ran in {self.array_s:.1f} s",
            f"runs {self.runs}, duplicates {self.duplicates}, failed cells {self.failed_cells}",
            f"tracking writes: {self.write_requests} requests ({self.requests_per_s:.1f}/s, "
            f"mean {self.mean_request_ms:.0f} ms), {self.points_stored} points ({self.points_per_s:.0f}/s) "
            f"over {self.write_window_s:.1f} s; {self.write_retries} retries, "
            f"{self.server_errors} server errors",
            f"metric points: {self.points_expected} logged, {self.points_stored} stored, "
            f"{self.lost_points} lost",
            f"relaunch: {self.relaunch_submitted} submitted in {self.relaunch_s:.1f} s",
            f"status: {self.status_finished} finished; median {self.status_median_s:.2f} s "
            f"(runs: {', '.join(f'{s:.2f}' for s in self.status_s)})",
        ]


def slurm_cpus() -> int:
    """CPUs the SLURM node offers (the array's parallelism that the cluster allows)."""
    out = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0].rstrip("+"))


def scale_spec(cells: int, folder: Path, tracking_uri: str, parallelism: int, points: int = 5) -> SweepSpec:
    """``cells`` cells (a multiple of 10): 10 custom shapes (depth 1-10, width 32, 2 heads) x patch 2
    x ``cells / 10`` budgets, through `_scale_trainer`, one job array on SLURM."""
    if cells % 10:
        raise ValueError(f"cells must be a multiple of 10, got {cells}")
    spec = SweepSpec(
        name=f"scale{cells}",
        experiment=f"scale-{folder.name}",
        tracking_uri=tracking_uri,
        output_dir=str(folder / "runs"),
        families=[],
        shapes=[[d, 32, 2] for d in range(1, 11)],
        patch_sizes=[2],
        budgets=[1e10 * (1 + i) for i in range(cells // 10)],
        batch_size=8,
        trainer="_scale_trainer",
        final_eval=False,
        train={"points": points},
        executor=ExecutorSpec(
            name="slurm", timeout_min=10, array_parallelism=parallelism, mem_gb=0.25, max_retries=0
        ),
    )
    assert len(expand(spec)) == cells
    return spec


def _stored_points(db_uri: str | None, tracking_uri: str, run_ids: list[str], keys: list[str]) -> int:
    """Metric points of ``run_ids`` on the server: one SQL count when the database is known, else
    (any server) the metric history of every key of every run over REST."""
    if db_uri:
        import psycopg2

        with contextlib.closing(psycopg2.connect(db_uri)) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM metrics WHERE run_uuid = ANY(%s)", (run_ids,))
            return int(cur.fetchone()[0])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    return sum(len(client.get_metric_history(r, k)) for r in run_ids for k in keys)


def _status(spec: SweepSpec) -> tuple[float, str]:
    from sweeps.launch import show_status

    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        show_status(spec)
    return time.perf_counter() - t0, buf.getvalue()


def run_scale(
    spec: SweepSpec, *, db_uri: str | None = None, server_log: Path | None = None, status_repeats: int = 3
) -> ScaleReport:
    """Launch ``spec`` (waiting for its array), relaunch it, run ``status``; count everything."""
    from sweeps.runner import launch

    cells = expand(spec)
    rep = ScaleReport(len(cells), spec.executor.array_parallelism)
    first_report: list[float] = []
    t0 = time.perf_counter()
    res = launch(
        spec, poll_s=2.0, on_progress=lambda p: first_report or first_report.append(time.perf_counter())
    )
    t1 = time.perf_counter()
    rep.submit_s = (first_report[0] if first_report else t1) - t0  # first progress line: all submitted
    rep.array_s = t1 - (first_report[0] if first_report else t0)
    rep.failed_cells = len(res.errors)
    if res.errors:
        first = next(iter(res.errors.items()))
        print(f"{len(res.errors)} cells failed, e.g. {first[0]}: {first[1]}", file=sys.stderr)

    results = [r for r in res.results.values() if isinstance(r, dict)]
    rep.write_requests = sum(r["requests"] for r in results)
    rep.write_retries = sum(r["retries"] for r in results)
    rep.points_expected = sum(r["points"] for r in results)
    if results:
        rep.write_window_s = max(r["t_end"] for r in results) - min(r["t_start"] for r in results)
        rep.mean_request_ms = 1000 * sum(r["write_s"] for r in results) / max(1, rep.write_requests)
    runs = read_runs(spec.tracking_uri, spec.experiment, spec.name)
    rep.runs = sum(len(v) for v in runs.values())
    rep.duplicates = sum(len(v) - 1 for v in runs.values())
    missing = {c.cell_id for c in cells} - set(runs)
    if missing:
        print(f"{len(missing)} cells have no run, e.g. {sorted(missing)[:3]}", file=sys.stderr)
    run_ids = [r.info.run_id for v in runs.values() for r in v]
    keys = [TRAIN_LOSS, LR, TRAIN_FLOPS, IMAGES_SEEN, IMAGES_PER_S, VAL_LOSS, *FIXED_COST_METRICS]
    rep.points_stored = _stored_points(db_uri, spec.tracking_uri, run_ids, keys)
    rep.lost_points = rep.points_expected - rep.points_stored
    if rep.write_window_s > 0:
        rep.requests_per_s = rep.write_requests / rep.write_window_s
        rep.points_per_s = rep.points_stored / rep.write_window_s
    if server_log is not None and server_log.is_file():
        text = server_log.read_text(errors="replace")
        rep.server_errors = sum(1 for ln in text.splitlines() if " 500 " in ln or "Traceback" in ln)

    t2 = time.perf_counter()
    again = launch(spec, wait=False)
    rep.relaunch_s = time.perf_counter() - t2
    rep.relaunch_submitted = len(again.submitted)

    for _ in range(status_repeats):
        dt, out = _status(spec)
        rep.status_s.append(dt)
    last = out.strip().splitlines()[-1] if status_repeats else ""
    rep.status_finished = int(last.split()[0]) if last.endswith("finished") and last[0].isdigit() else 0
    return rep


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", type=int, default=1000, help="cells in the sweep (a multiple of 10)")
    p.add_argument("--parallelism", type=int, help="--array-parallelism (default: the node's SLURM CPUs)")
    p.add_argument("--tracking-uri", help="an mlflow server to use (default: start one over PostgreSQL)")
    p.add_argument("--workers", type=int, default=2, help="workers of the started mlflow server")
    p.add_argument("--folder", default="/tmp/ditscale-sweep-scale", help="runs, job logs, server log")
    p.add_argument("--status-repeats", type=int, default=3)
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args(argv)
    folder = Path(args.folder) / time.strftime("%Y%m%d-%H%M%S")
    folder.mkdir(parents=True)
    server = None
    try:
        if args.tracking_uri:
            uri, db, log = args.tracking_uri, None, None
        else:
            from _pg_server import start_pg_mlflow_server

            t0 = time.perf_counter()
            server = start_pg_mlflow_server(folder / "server", workers=args.workers)
            uri, db, log = server.url, server.db_uri, server.folder / "server.log"
            print(f"mlflow server over PostgreSQL at {uri} ({time.perf_counter() - t0:.1f} s to start)")
        spec = scale_spec(args.cells, folder, uri, args.parallelism or slurm_cpus())
        rep = run_scale(spec, db_uri=db, server_log=log, status_repeats=args.status_repeats)
    finally:
        if server is not None:
            from _pg_server import stop_pg_mlflow_server

            stop_pg_mlflow_server(server)
    for line in rep.lines():
        print(line)
    if args.json:
        Path(args.json).write_text(
            json.dumps({**asdict(rep), "status_median_s": rep.status_median_s}, indent=1)
        )
    ok = rep.runs == rep.cells and not (rep.duplicates or rep.lost_points or rep.relaunch_submitted)
    return 0 if ok and not rep.failed_cells else 1


if __name__ == "__main__":
    sys.exit(main())
