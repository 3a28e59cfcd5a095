"""Cross-validated grids, gradfit against scikit-learn, side by side in one process (issue 15's goals).

    python scripts/bench_cv.py [--quick] [--rounds 3]

1. Ridge: 64 penalties x 5 folds, m = 200,000, n = 64 (float64): gradfit.sweep(grid={"l2": 2 alpha}, cv=folds,
   reduction="sum") against GridSearchCV(Ridge(), n_jobs=2) and RidgeCV(alphas, cv=folds) on the same folds.
2. Logistic: 16 values of C x 5 folds, m = 200,000, n = 32 (float64): gradfit.sweep(grid={"l2": 1 / C}, loss="bce",
   warm_start=True, refit=True) at its default tol against LogisticRegressionCV(Cs, cv=folds) at its defaults (it
   warm-starts and refits too); also gradfit at tol=1e-6 and with cold members. Each tool's largest error of a
   validation log-loss against sklearn newton-cholesky at tol=1e-10 (fold by fold) is printed: the times compare
   answers of the same or better accuracy.

Timings are the median of ``--rounds`` rounds, the tools interleaved in each round; gradfit's first (compiling)
call is timed apart and its program count printed (one compile per group). Prints a markdown table with ratios
and whether the chosen penalty agrees.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import jax
import numpy as np

import gradfit


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _ridge_case(m: int, n: int, K: int, rounds: int) -> list[tuple]:
    from sklearn.linear_model import Ridge, RidgeCV
    from sklearn.model_selection import GridSearchCV, KFold

    rng = np.random.default_rng(0)
    X = rng.standard_normal((m, n))
    y = X @ rng.standard_normal(n) + 5.0 * rng.standard_normal(m)
    alphas = np.logspace(-2, 6, K)
    folds = list(KFold(5).split(X))
    grid = {"l2": [2 * a for a in alphas]}
    opts = dict(reduction="sum", optimizer="lbfgs", steps=200, tol=1e-6)
    run = lambda: gradfit.sweep(X, y, grid=grid, cv=folds, **opts)  # noqa: E731
    first, result = _timed(run)
    tools = {
        "gradfit.sweep(cv=5)": lambda: run().best["l2"] / 2,
        "GridSearchCV(Ridge, n_jobs=2)": lambda: GridSearchCV(Ridge(), {"alpha": alphas}, cv=folds, n_jobs=2,
                                                              scoring="neg_mean_squared_error").fit(X, y)
        .best_params_["alpha"],
        "RidgeCV(cv=5)": lambda: RidgeCV(alphas=alphas, cv=folds, scoring="neg_mean_squared_error").fit(X, y).alpha_,
    }
    return _rounds(f"ridge {K} alphas x 5 folds, m={m}, n={n}", tools, rounds, first, result)


def _logistic_case(m: int, n: int, K: int, rounds: int) -> list[tuple]:
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    rng = np.random.default_rng(1)
    X = rng.standard_normal((m, n))
    y = (X @ rng.standard_normal(n) / np.sqrt(n) + rng.standard_normal(m) > 0).astype(np.float64)
    Cs = np.logspace(-4, 4, K)
    folds = list(StratifiedKFold(5).split(X, y))

    def run(tol=1e-4, warm=True, refit=True):  # tol=1e-4: gradfit's default
        return gradfit.sweep(X, y, grid={"l2": [1 / c for c in Cs]}, cv=folds, warm_start=warm, refit=refit,
                             loss="bce", reduction="sum", optimizer="lbfgs", steps=200, tol=tol)

    def sklearn_cv():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return LogisticRegressionCV(Cs=Cs, cv=folds, scoring="neg_log_loss").fit(X, y)  # refit=True

    # Independent reference: each fold's validation log-loss at sklearn's newton-cholesky solution, tol 1e-10.
    reference = np.empty((K, len(folds)))
    for f, (tr, va) in enumerate(folds):
        for i, C in enumerate(Cs):
            e = LogisticRegression(C=C, solver="newton-cholesky", tol=1e-10, max_iter=100).fit(X[tr], y[tr])
            z = X[va] @ e.coef_[0] + e.intercept_[0]
            reference[i, f] = np.mean(np.logaddexp(0, z) - y[va] * z)
    error = {"gradfit": lambda r: r.cv.scores["loss"], "sklearn": lambda e: -e.scores_[1.0].T}
    first, result = _timed(run)
    run(warm=False, refit=False)  # compiles the cold members' program outside the timed rounds
    tools = {"gradfit.sweep(cv=5, warm_start=True, refit=True)": (run, "gradfit"),
             "gradfit.sweep, as above with tol=1e-6": (lambda: run(tol=1e-6), "gradfit"),
             "gradfit.sweep, cold members, refit=False": (lambda: run(warm=False, refit=False), "gradfit"),
             "LogisticRegressionCV(Cs=16, cv=5)": (sklearn_cv, "sklearn")}
    times, accuracy, chosen = {k: [] for k in tools}, {}, {}
    for _ in range(rounds):
        for name, (fn, kind) in tools.items():
            seconds, out = _timed(fn)
            times[name].append(seconds)
            accuracy[name] = float(np.max(np.abs(error[kind](out) - reference)))
            chosen[name] = 1 / out.best["l2"] if kind == "gradfit" else float(out.C_[0])
    ours = statistics.median(times[next(iter(tools))])
    st, mean = result.stats, reference.mean(axis=1)
    case = f"logistic {K} Cs x 5 folds, m={m}, n={n}"
    print(f"{case}: gradfit's first call {first:.2f} s (compile {st['compile_seconds']:.2f} s, {st['programs']} step "
          f"programs, plan {st['plan']}); steps per lane: median {int(np.median(result.steps))}, max "
          f"{int(np.max(result.steps))}; largest error of a validation log-loss against newton-cholesky at tol "
          f"1e-10: " + ", ".join(f"{name} {err:.1e}" for name, err in accuracy.items())
          + f"; the reference's best C {Cs[np.argmin(mean)]:.4g}; its mean validation loss at each tool's C less "
          "the least: " + ", ".join(f"{name} {mean[np.argmin(abs(Cs - c))] - mean.min():.1e}"
                                    for name, c in chosen.items()))
    return [(case, name, statistics.median(t), statistics.median(t) / ours, f"{chosen[name]:.4g}")
            for name, t in times.items()]


def _rounds(case: str, tools: dict, rounds: int, first: float, result) -> list[tuple]:
    times, chosen = {k: [] for k in tools}, {}
    for _ in range(rounds):
        for name, fn in tools.items():
            seconds, chosen[name] = _timed(fn)
            times[name].append(seconds)
    ours = statistics.median(times[next(iter(tools))])  # the first tool is gradfit's headline
    st = result.stats
    print(f"{case}: gradfit's first call {first:.2f} s (compile {st['compile_seconds']:.2f} s, {st['programs']} "
          f"step programs, plan {st['plan']}); steps per lane: median {int(np.median(result.steps))}, "
          f"max {int(np.max(result.steps))}")
    return [(case, name, statistics.median(t), statistics.median(t) / ours, f"{chosen[name]:.4g}")
            for name, t in times.items()]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="m = 20,000 instead of 200,000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", default="ridge,logistic", help="comma-separated subset of ridge,logistic")
    args = parser.parse_args(argv)
    cases = set(args.cases.split(","))
    if not cases <= {"ridge", "logistic"}:
        parser.error(f"--cases {args.cases!r}: use a comma-separated subset of ridge,logistic")
    m = 20_000 if args.quick else 200_000
    with jax.enable_x64(True):
        rows = ((_ridge_case(m, 64, 64, args.rounds) if "ridge" in cases else [])
                + (_logistic_case(m, 32, 16, args.rounds) if "logistic" in cases else []))
    print(f"\njax {jax.__version__} on {jax.default_backend()}, median of {args.rounds} rounds\n")
    print("| case | tool | seconds | time / gradfit | chosen alpha or C |")
    print("|---|---|---:|---:|---:|")
    for case, name, seconds, ratio, chosen in rows:
        print(f"| {case} | {name} | {seconds:.3f} | {ratio:.1f}x | {chosen} |")


if __name__ == "__main__":
    main()
