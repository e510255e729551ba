"""How long the demo's parametric fit takes, and what the two session-14 changes give.

    python benchmarks/fit_speed.py                 # 3 alternating rounds, 200 resamples
    python benchmarks/fit_speed.py --rounds 5 --bootstrap 100

The points are the demo's 14 cells (`sweeps/configs/demo.yaml`: N and images seen from the sweep's
own expansion) with the seed-0 final losses of the README. Two comparisons, each project vs peer in
this process:

- the objective per call: `analysis.parametric.objective` (written out for one parameter vector)
  against the generic form it replaced (`_log_loss_and_shares` + `_huber` + `_dlogl_dtheta`, the
  forms the grid scoring still uses), medians of timeit repeats; both must give the same value;
- `fit_parametric` with 200 bootstrap resamples refitted in forked workers (one per CPU, the
  default) against one worker (`DITSCALE_FIT_WORKERS=1`), alternating rounds; the bootstrap samples
  must be identical.

Prints the medians and the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import timeit

import numpy as np

from analysis import parametric as P
from analysis.bootstrap import workers_available
from sweeps.grid import expand, load_spec

# the README's seed-0 final val losses (session 13's CPU type; session 12's agree to the third digit)
DEMO_LOSS = {
    "S-2-3e10": 0.0645, "B-2-3e10": 0.0680,
    "S-2-1e11": 0.0566, "B-2-1e11": 0.0587, "L-2-1e11": 0.0658, "XL-2-1e11": 0.0715,
    "S-2-3e11": 0.0525, "B-2-3e11": 0.0505, "L-2-3e11": 0.0556, "XL-2-3e11": 0.0599,
    "S-2-1e12": 0.0453, "B-2-1e12": 0.0441, "L-2-1e12": 0.0465, "XL-2-1e12": 0.0474,
}  # fmt: skip


def demo_points() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, D, loss) of the demo's 14 cells: parameters, images seen, final val loss."""
    cells = {c.cell_id: c for c in expand(load_spec())}
    n = np.array([cells[k].params for k in DEMO_LOSS], float)
    d = np.array([cells[k].steps * cells[k].batch_size for k in DEMO_LOSS], float)
    return n, d, np.array(list(DEMO_LOSS.values()))


def generic_objective(theta, log_n, log_d, log_loss, delta):
    """The objective as it was before session 14: the batched forms applied to one theta."""
    pred, w = P._log_loss_and_shares(theta, log_n, log_d)
    val, dh = P._huber(pred - log_loss, delta)
    return float(val.sum()), np.array([np.dot(dh, v) for v in P._dlogl_dtheta(w, log_n, log_d)])


def time_objective(logs, repeat: int = 7, number: int = 3000) -> dict[str, float]:
    theta = np.array([np.log(0.017), np.log(0.35), np.log(0.42), 0.33, 0.28])
    f_new, g_new = P.objective(theta, *logs, 1e-3)
    f_old, g_old = generic_objective(theta, *logs, 1e-3)
    assert abs(f_new - f_old) <= 1e-15 * max(1.0, abs(f_old)) and np.allclose(
        g_new, g_old, rtol=1e-12, atol=0
    )
    fns = {"written out": P.objective, "generic": generic_objective}
    runs: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):  # alternating, so a slow spell of the machine hits both
        for name, fn in fns.items():
            runs[name].append(timeit.timeit(lambda fn=fn: fn(theta, *logs, 1e-3), number=number))
    return {k: statistics.median(v) / number * 1e6 for k, v in runs.items()}


def time_fit(points, bootstrap: int, workers: int) -> tuple[float, dict[str, np.ndarray]]:
    os.environ["DITSCALE_FIT_WORKERS"] = str(workers)
    t0 = time.perf_counter()
    fit = P.fit_parametric(*points, n_bootstrap=bootstrap, seed=0)
    return time.perf_counter() - t0, fit.bootstrap.samples


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of the two fits")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples per fit")
    args = p.parse_args(argv)
    points = demo_points()
    logs = tuple(np.log(x) for x in points)
    us = time_objective(logs)
    print(f"objective per call (14 points): written out {us['written out']:.1f} us, generic "
          f"{us['generic']:.1f} us: {us['generic'] / us['written out']:.2f}x")  # fmt: skip
    many = workers_available()
    if many < 2:
        print("one CPU available: no parallel comparison")
        return
    times: dict[int, list[float]] = {1: [], many: []}
    samples = {}
    for r in range(args.rounds):
        for w in (1, many) if r % 2 == 0 else (many, 1):
            t, samples[w] = time_fit(points, args.bootstrap, w)
            times[w].append(t)
    same = all(np.array_equal(samples[1][k], samples[many][k], equal_nan=True) for k in samples[1])
    m1, mn = statistics.median(times[1]), statistics.median(times[many])
    print(f"fit_parametric, {args.bootstrap} resamples, medians of {args.rounds} rounds: "
          f"1 worker {m1:.1f} s, {many} workers {mn:.1f} s: {m1 / mn:.2f}x; "
          f"bootstrap samples identical: {same}")  # fmt: skip


if __name__ == "__main__":
    main()
