"""Every entry point runs one engine, so they agree: a table of configurations.

For each row of :data:`CASES` the reference is :func:`gradfit.fit` in the row's coordinates
(``standardize``: fit's default True, or False, the raw ``(W, b)`` iterates); the other entry
points that accept the configuration must give the same params (to the dtype's rounding), the
same loss and loss history, the same optimality ``G`` (``stats["grad_norm"]``, to its rounding)
and exactly the same ``steps``, ``converged``, ``diverged`` and ``status``:

- ``sweep``: the matching member of :func:`gradfit.sweep` (the row's value in a grid of a few);
- ``solve``: :func:`gradfit.solve`, the pure fixed-step function (full batch; scalar
  hyperparameters only), given the row's ``standardize`` (its own default is False);
- ``solve_vmap``: per-output rows only: ``jax.vmap`` of ``solve`` over the columns of y and the
  (k,) hyperparameter, which is what fit's per-output level is;
- ``stream_stats`` / ``stream_hand``: :func:`gradfit.fit_streaming` from ``.npy`` files in
  tmp_path with the statistics plan (MSE full batch only) and with per-step passes;
- ``sklearn``: :class:`gradfit.sklearn.GDRegressor` / :class:`~gradfit.sklearn.GDClassifier`
  (binary string labels): ``alpha`` is l2, ``max_iter`` is steps; its status is read from
  ``n_iter_`` and the warnings (RuntimeWarning: diverged; ConvergenceWarning: "stalled" or
  "max_steps", with G to 3 digits), its loss computed from ``coef_`` and ``intercept_``. The
  estimators always standardize (no parameter) and choose the plan as ``grad="auto"``: they are
  compared with ``fit(standardize=True, grad="auto")`` of the row.

The statistics plan tests ``G <= tol/2`` in its loop (its G only estimates the data's, which
the end-of-run check computes), a direct plan ``G <= tol``: with a ``tol`` the two kinds stop at
different steps, so in a row with a ``tol`` an entry point whose kind of plan is not fit's (solve
and stream_hand where fit uses the statistics, stream_stats where it reads X) is compared with fit
forced to that plan, which must itself agree with the row's fit in status.

Where an entry point refuses a configuration (solve: no (k,) arrays, no shuffle; fit_streaming:
no (k,) arrays; the estimators: no (k,) arrays, no shuffle; grad="stats": MSE full batch only;
lbfgs: no streamed passes) it is left out of that row with a comment, and
:func:`test_left_out_entry_points_refuse` checks that the refusal is a ValueError before compute.
:func:`test_fit_matches_numpy_gradient_descent` anchors the table's raw rows
(``standardize=False``) to an independent numpy loop written from the formulas.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradfit
from gradfit import Params
from _sample import thinned

try:  # scikit-learn is an optional extra: without it the estimators' column is left out
    from sklearn.exceptions import ConvergenceWarning

    from gradfit import sklearn as sklearn_mod
except ImportError:
    sklearn_mod = None

DIVERGED = re.compile(r"the fit diverged at step (\d+)")
GRAD_NORM = re.compile(r"scaled gradient norm ([0-9.eE+-]+)")  # in the estimators' ConvergenceWarning
ALL_FULL_BATCH_MSE = ("sweep", "solve", "stream_stats", "stream_hand", "sklearn")
ALL_BCE = ("sweep", "solve", "stream_hand", "sklearn")  # grad="stats" is MSE only
STATUSES = ("converged", "diverged", "stalled", "max_steps")


# --------------------------------------------------------------------------- the table
@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    entries: tuple[str, ...]  # entry points compared with fit (fit is always the reference)
    loss: str = "mse"
    dtype: str = "float32"
    data: str = "noisy"  # "ones": y = X @ ones; "noisy": a noisy linear model; "labels": 0/1 classes
    m: int = 200
    n: int = 4
    k: int | None = None
    learning_rate: Any = 0.1  # a float, or a (k,) tuple (per output)
    lr_over_L: float | None = None  # learning_rate = lr_over_L / gradfit.health.lipschitz(X, ...)
    l2: Any = 0.0  # a float, or a (k,) tuple (per output)
    steps: int = 50
    tol: float | None = None  # the optimality test G <= tol (None: every step runs)
    grad: str = "hand"
    reduction: str = "mean"
    optimizer: str = "sgd"
    batch_size: int | None = None
    chunk_rows: int = 64  # rows per streamed chunk (a multiple of batch_size)
    chunk_size: int | None = None  # steps per compiled chunk (None: fit's default)
    sweep: tuple[str, tuple] = ("learning_rate", (0.5, 1.0, 2.0))  # the grid key; multipliers of the row's value
    # the fit's coordinates: True (fit's default, standardized columns) or False (the raw (W, b)
    # iterates: the rows the numpy loop anchors, whose learning rates are set from the raw L)
    standardize: bool = True
    # expect(fit's result, case, rerun): what the row must exercise; rerun(steps) is fit of the
    # row with tol=None and that budget (to read G at earlier iterates)
    expect: Callable[[Any, Any, Callable], None] | None = None


def _expect_last_step_divergence(r, case, rerun):
    # The 10th update blows up: fit evaluates J after the last update, falls back to p_9.
    assert r.diverged and not r.converged and r.steps == 10 and r.status == "diverged"
    assert r.stats["diverged_at_step"] == 10
    np.testing.assert_allclose(float(r.loss), 1.374e6, rtol=5e-3)
    np.testing.assert_allclose(float(r.loss), r.losses[-1], rtol=1e-6)  # J(p_9), the last one recorded


def _expect_mid_run_divergence(r, case, rerun):
    assert r.diverged and not r.converged and 1 < r.steps < 20 and r.status == "diverged"
    assert r.stats["diverged_at_step"] == r.steps - 1


def _assert_clear_tol_crossings(r, case, rerun):
    """Each converged column crossed its loop test by a margin far above rounding, so every plan
    stops at the same step. The loop tests ``G <= tol`` at each evaluation: G at the params
    returned (after steps - 1 updates) is clearly below, G one update earlier clearly above.
    Both are read from reruns with tol=None (the end-of-run G on the data at those params)."""
    slack = 0.02 if case.dtype == "float32" else 1e-3
    steps, converged = np.atleast_1d(r.steps), np.atleast_1d(r.converged)
    reported = np.atleast_1d(r.stats["grad_norm"])
    for j in np.flatnonzero(converged):
        at = np.atleast_1d(rerun(int(steps[j]) - 1).stats["grad_norm"])[j]
        before = np.atleast_1d(rerun(int(steps[j]) - 2).stats["grad_norm"])[j]
        np.testing.assert_allclose(at, reported[j], rtol=1e-5)  # the same params: the G fit reported
        limit = case.tol
        assert at <= limit * (1 - slack) and before >= limit * (1 + slack), (j, at / limit, before / limit)


def _expect_converged(r, case, rerun):
    assert np.all(r.converged) and not np.any(r.diverged) and np.all(np.asarray(r.steps) < case.steps)
    assert np.all(np.asarray(r.status) == "converged")
    assert np.all(np.asarray(r.stats["grad_norm"]) <= case.tol)  # converged means G <= tol at the params
    _assert_clear_tol_crossings(r, case, rerun)


def _expect_converged_by_stats(r, case, rerun):
    assert r.stats["plan"] == "stats"  # "auto" chose the statistics plan (its cost model)
    _expect_converged(r, case, rerun)


def _expect_budget(r, case, rerun):
    assert not np.any(r.converged) and not np.any(r.diverged) and np.all(np.asarray(r.steps) == case.steps)
    assert np.all(np.asarray(r.status) == "max_steps")


def _expect_per_output_mixed(r, case, rerun):
    # columns stop on their own: different step counts, one column diverged, the others converged
    np.testing.assert_array_equal(r.diverged, [False, False, True])
    np.testing.assert_array_equal(r.converged, [True, True, False])
    np.testing.assert_array_equal(r.status, ["converged", "converged", "diverged"])
    assert len(set(np.asarray(r.steps).tolist())) == 3
    _assert_clear_tol_crossings(r, case, rerun)


def _expect_per_output_converged(r, case, rerun):
    assert np.all(r.converged) and len(set(np.asarray(r.steps).tolist())) == 3
    np.testing.assert_array_equal(r.status, ["converged"] * 3)
    _assert_clear_tol_crossings(r, case, rerun)


CASES = [
    Case(
        "diverge-last-step", ALL_FULL_BATCH_MSE, data="ones", lr_over_L=3.2, steps=10, standardize=False,
        expect=_expect_last_step_divergence,
    ),
    Case(
        "diverge-mid-run", ALL_FULL_BATCH_MSE, lr_over_L=12.0, steps=100, tol=1e-6, standardize=False,
        expect=_expect_mid_run_divergence,
    ),
    Case(
        "tol-mse", ALL_FULL_BATCH_MSE, lr_over_L=1.0, tol=1e-4, steps=100,
        expect=_expect_converged,
    ),
    Case(
        "l2-mse", ALL_FULL_BATCH_MSE, learning_rate=0.1, l2=0.3, steps=10, standardize=False,
        expect=_expect_budget,
    ),
    Case(
        "bce-tol-l2", ALL_BCE, loss="bce", data="labels", learning_rate=0.5, l2=0.01, tol=3e-4, steps=200,
        expect=_expect_converged,
    ),
    Case(
        # minibatch: shuffle="none" makes in-memory and streamed batches the same rows in the same
        # order; m = 210 leaves a short last batch (10 rows: padded in memory and in the last
        # chunk). Left out: solve (no shuffle option: a fresh permutation of the rows each epoch
        # from its key), the estimator (no shuffle option: fit's default "blocks" order from
        # random_state) and stream_stats (grad="stats" has no minibatches).
        "minibatch-mse", ("sweep", "stream_hand"), m=210, learning_rate=0.05, l2=0.01,
        batch_size=25, chunk_rows=50, steps=6, expect=_expect_budget,
    ),
    Case(
        # per-output l2 (the columns are vmapped problems, each with its own stopping test), by
        # the statistics plan in memory; the grid is over learning_rate, one value. fit_streaming
        # and the estimators take no (k,) arrays and solve takes scalars: they are left out,
        # except solve vmapped over the columns by hand.
        "per-output-l2-stats", ("sweep", "solve_vmap"), k=3, grad="stats", l2=(0.0, 0.3, 3.0),
        # tol=1.3e-3: G crosses every column's test (statistics: tol/2; direct: tol) by > 5%
        learning_rate=0.1, tol=1.3e-3, steps=100, chunk_size=16, sweep=("learning_rate", (1.0,)),
        expect=_expect_per_output_converged,
    ),
    Case(
        # per-output learning rates, one of them diverging; the grid is over tol (a traced key).
        # chunk_size=16: several chunks; the other member stops in the first, so the row's member
        # runs the rest compacted, alone. Left out as above.
        "per-output-lr-diverging", ("sweep", "solve_vmap"), k=3, grad="stats", learning_rate=(0.05, 0.2, 5.0),
        l2=0.01, tol=1e-3, steps=100, chunk_size=16, sweep=("tol", (1.0, 30.0)), expect=_expect_per_output_mixed,
    ),
    Case(
        # float64 (x64 on for this test only), joint multi-output with scalar hyperparameters (every
        # entry point takes y (m, 3)), and grad="auto": fit and the estimator pick the statistics
        # plan in memory (the cost model), solve and stream_hand read X at every step
        "f64-multi-output-auto-tol", ALL_FULL_BATCH_MSE, dtype="float64", k=3, reduction="half_mean",
        grad="auto", learning_rate=0.5, l2=0.01, tol=1e-10, steps=200, standardize=False,
        expect=_expect_converged_by_stats,
    ),
]


# --------------------------------------------------------------------------- data and options
def _data(case: Case):
    rng = np.random.default_rng(0)
    if case.data == "ones":
        X = rng.standard_normal((case.m, case.n)).astype(case.dtype)
        return X, X @ np.ones(case.n, case.dtype)
    X = rng.standard_normal((case.m, case.n))
    if case.data == "labels":
        p = 1 / (1 + np.exp(-(X @ rng.standard_normal(case.n) + 0.2)))
        return X.astype(case.dtype), (rng.random(case.m) < p).astype(case.dtype)
    X = X + 0.5
    out = () if case.k is None else (case.k,)
    y = X @ rng.standard_normal((case.n, *out)) + 0.3 + 0.1 * rng.standard_normal((case.m, *out))
    return X.astype(case.dtype), y.astype(case.dtype)


def _options(case: Case, X) -> dict:
    lr = case.learning_rate
    if case.lr_over_L is not None:
        lr = case.lr_over_L / gradfit.health.lipschitz(X, loss=case.loss, reduction=case.reduction, l2=case.l2)
    as_hyper = lambda v: np.asarray(v, case.dtype) if isinstance(v, tuple) else v
    opts = {
        "loss": case.loss, "reduction": case.reduction, "optimizer": case.optimizer, "learning_rate": as_hyper(lr),
        "l2": as_hyper(case.l2), "steps": case.steps, "tol": case.tol, "grad": case.grad,
        "standardize": case.standardize,
    }
    if case.batch_size is not None:
        opts.update(batch_size=case.batch_size, shuffle="none")
    if case.chunk_size is not None:
        opts.update(chunk_size=case.chunk_size)
    return opts


# --------------------------------------------------------------------------- outcomes
class Outcome(NamedTuple):
    """One entry point's result in one layout: W (n[, k]), b ([k]), status () or (k,)."""

    W: np.ndarray
    b: np.ndarray
    loss: float  # the objective at (W, b) (summed over per-output columns)
    steps: np.ndarray
    converged: np.ndarray
    diverged: np.ndarray
    losses: np.ndarray | None  # the objective history ([k,] steps), NaN past each column's steps
    plan: str | None  # None: chosen by "auto" where we cannot see it
    warned_step: int | None  # the step named by a divergence RuntimeWarning (None: no warning)
    status: np.ndarray | None  # "converged", "diverged", "stalled" or "max_steps" (None: not reported)
    grad_norm: np.ndarray | None  # G at (W, b), () or (k,) (None: not reported)
    grad_norm_rtol: float = 0.0  # the rounding of a G reported in text (3 significant digits)


def _status(converged, diverged, stalled) -> np.ndarray:
    """FitResult.status from the flags (a diverged fit is never converged or stalled)."""
    converged, diverged, stalled = (np.asarray(a) for a in (converged, diverged, stalled))
    return np.where(diverged, "diverged", np.where(converged, "converged", np.where(stalled, "stalled", "max_steps")))


class _Warnings:
    """Record every warning (the expected RuntimeWarnings of diverged fits are kept out of the log)."""

    def __enter__(self):
        self._cm = warnings.catch_warnings(record=True)
        self.caught = self._cm.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)

    def diverged_step(self) -> int | None:
        steps = [int(m.group(1)) for w in self.caught if issubclass(w.category, RuntimeWarning)
                 for m in [DIVERGED.search(str(w.message))] if m]
        assert len(steps) <= 1, steps
        return steps[0] if steps else None

    def of(self, category) -> list:
        return [w for w in self.caught if issubclass(w.category, category)]


def _from_fit(result, plan, warned) -> Outcome:
    return Outcome(np.asarray(result.params.W), np.asarray(result.params.b), float(result.loss),
                   np.asarray(result.steps), np.asarray(result.converged), np.asarray(result.diverged),
                   np.asarray(result.losses), plan, warned, np.asarray(result.status),
                   np.asarray(result.stats["grad_norm"]))


def run_fit(X, y, opts) -> tuple[Outcome, Any]:
    with _Warnings() as w:
        result = gradfit.fit(X, y, **opts)
    return _from_fit(result, result.stats["plan"], w.diverged_step()), result


def run_sweep(case: Case, X, y, opts) -> Outcome:
    key, multipliers = case.sweep
    value = opts[key]
    grid = {key: [m * value for m in multipliers]}
    fixed = {k: v for k, v in opts.items() if k != key}
    with _Warnings() as w:
        result = gradfit.sweep(X, y, grid=grid, **fixed)
    assert w.diverged_step() is None  # a sweep reports divergence as status only
    i = list(multipliers).index(1.0)
    assert result.configs[i][key] == value
    assert result.stats["groups"] == 1
    if case.id == "per-output-lr-diverging":  # several chunks: the members still running were compacted
        assert result.stats["batch_sizes"][0] == len(multipliers) and min(result.stats["batch_sizes"]) < len(multipliers)
    return Outcome(np.asarray(result.params.W[i]), np.asarray(result.params.b[i]), float(result.final_loss[i]),
                   np.asarray(result.steps[i]), np.asarray(result.converged[i]), np.asarray(result.diverged[i]),
                   np.asarray(result.losses[i]), result.stats["plan"][0], None, np.asarray(result.status[i]),
                   np.asarray(result.stats["grad_norm"])[i])


def _solve_kwargs(case: Case, opts) -> tuple[dict, str]:
    # solve reads X at every step: the statistics plan becomes a direct one (compared with fit
    # forced to that plan); "auto" is fit's own choice, likewise not solve's. solve's own default
    # is standardize=False: it is given the row's coordinates
    grad = "hand" if case.grad in ("stats", "auto") else case.grad
    return {"steps": case.steps, "learning_rate": opts["learning_rate"], "l2": opts["l2"], "loss": case.loss,
                "reduction": case.reduction, "optimizer": case.optimizer, "grad": grad, "tol": case.tol,
                "batch_size": case.batch_size, "standardize": case.standardize}, grad


# solve under jit (as research code calls it), so rows with the same static settings and shapes
# share one compiled program
_solve = jax.jit(gradfit.solve, static_argnames=("steps", "loss", "reduction", "optimizer", "grad", "batch_size",
                                                 "standardize"))


def _from_solution(sol, plan) -> Outcome:
    return Outcome(np.asarray(sol.params.W), np.asarray(sol.params.b), float(np.sum(sol.loss)), np.asarray(sol.steps),
                   np.asarray(sol.converged), np.asarray(sol.diverged), np.asarray(sol.losses), plan, None,
                   _status(sol.converged, sol.diverged, sol.stalled), np.asarray(sol.grad_norm))


def run_solve(case: Case, X, y, opts) -> Outcome:
    kwargs, grad = _solve_kwargs(case, opts)
    sol = _solve(None, jnp.asarray(X), jnp.asarray(y), **kwargs)
    return _from_solution(sol, grad)


def run_solve_vmap(case: Case, X, y, opts) -> Outcome:
    """Per-output hyperparameters by hand: solve vmapped over the columns of y and the (k,) arrays."""
    kwargs, grad = _solve_kwargs(case, opts)
    k = y.shape[1]
    lr = jnp.broadcast_to(jnp.asarray(kwargs.pop("learning_rate"), X.dtype), (k,))
    l2 = jnp.broadcast_to(jnp.asarray(kwargs.pop("l2"), X.dtype), (k,))
    one = lambda yc, lr_c, l2_c: _solve(None, jnp.asarray(X), yc, learning_rate=lr_c, l2=l2_c, **kwargs)
    sol = jax.vmap(one)(jnp.asarray(y).T, lr, l2)
    out = _from_solution(sol, grad)
    return out._replace(W=out.W.T)  # (k, n) -> (n, k)


def run_stream(case: Case, X, y, opts, tmp_path, grad: str) -> Outcome:
    xp, yp = tmp_path / "X.npy", tmp_path / "y.npy"
    np.save(xp, X)
    np.save(yp, y)
    chunk_bytes = case.chunk_rows * case.n * np.dtype(case.dtype).itemsize
    with _Warnings() as w:
        result = gradfit.fit_streaming(xp, yp, chunk_bytes=chunk_bytes, **{**opts, "grad": grad})
    stats = result.stats
    assert stats["plan"] == grad and stats["dtype"] == case.dtype
    assert stats["chunk_rows"] == case.chunk_rows and stats["n_chunks"] > 1  # really streamed in chunks
    if case.batch_size is not None:
        assert stats["chunk_rows"] % case.batch_size == 0  # a batch never mixes chunks
    return _from_fit(result, grad, w.diverged_step())


def run_sklearn(case: Case, X, y, opts) -> Outcome:
    kwargs = {"learning_rate": opts["learning_rate"], "max_iter": case.steps, "tol": case.tol, "alpha": case.l2,
                  "reduction": case.reduction, "optimizer": case.optimizer, "batch_size": case.batch_size, "random_state": 0}
    if case.loss == "mse":
        est, target = sklearn_mod.GDRegressor(**kwargs), y
        with _Warnings() as w:
            est.fit(X, target)
        W, b = est.coef_.T, np.asarray(est.intercept_)
    else:
        est, target = sklearn_mod.GDClassifier(**kwargs), np.where(y > 0.5, "yes", "no")
        with _Warnings() as w:
            est.fit(X, target)
        assert list(est.classes_) == ["no", "yes"]  # "yes" is the positive class, target 1
        W, b = est.coef_[0], np.asarray(est.intercept_[0])
    params = Params(jnp.asarray(W, X.dtype), jnp.asarray(b, X.dtype))
    loss = gradfit.losses.LOSSES[case.loss](params, jnp.asarray(X), jnp.asarray(y), reduction=case.reduction)
    loss = float(loss + gradfit.losses.l2_penalty(params, case.l2))
    warned = w.diverged_step()
    diverged = warned is not None
    # ConvergenceWarning (tol given, the fit neither converged nor diverged): "stalled away from
    # the optimum" or "did not converge in max_iter", naming G; no warning with a tol: converged.
    # With tol=None the estimator never warns: its status beyond divergence is not reported
    unconverged = [str(c.message) for c in w.of(ConvergenceWarning)]
    assert len(unconverged) <= 1, unconverged
    converged = case.tol is not None and not diverged and not unconverged
    status = grad_norm = None
    if diverged:
        status = "diverged"
    elif unconverged:
        status = "stalled" if "stalled away from the optimum" in unconverged[0] else "max_steps"
        grad_norm = float(GRAD_NORM.search(unconverged[0]).group(1))
    elif case.tol is not None:
        status = "converged"
    return Outcome(np.asarray(W), b, loss, np.asarray(est.n_iter_), np.asarray(converged), np.asarray(diverged),
                   None, None, warned, None if status is None else np.asarray(status),
                   None if grad_norm is None else np.asarray(grad_norm), 5e-3)


# --------------------------------------------------------------------------- comparing
def _rtol(dtype: str, same_plan: bool) -> float:
    # same plan: the same arithmetic up to batching (vmap) and fusion; across plans (statistics
    # vs direct, or an "auto" choice) the iterates differ by rounding, amplified by the steps
    # (measured: at most 6e-7 and 1.1e-5 relative in float32, 5e-16 in float64)
    if dtype == "float64":
        return 1e-12 if same_plan else 1e-10
    return 5e-6 if same_plan else 1e-4


# G's own rounding: G is the norm of a gradient that cancels to ~0 at the optimum, divided by
# sqrt(J), so near the optimum its error is absolute, not relative (measured over the table: at
# most 3.7e-6 in float32, between the statistics plan and a direct one on "per-output-lr-diverging",
# whose iterates differ by the Gram's rounding over 87 steps; 8e-16 in float64)
GRAD_NORM_ATOL = {"float32": 5e-6, "float64": 1e-14}


def assert_agree(name: str, got: Outcome, ref: Outcome, dtype: str) -> None:
    same = got.plan is not None and got.plan == ref.plan
    rtol = _rtol(dtype, same)
    what = f"{name} (plan {got.plan}) vs fit (plan {ref.plan})"
    np.testing.assert_array_equal(got.steps, ref.steps, err_msg=f"{what}: steps")
    np.testing.assert_array_equal(got.converged, ref.converged, err_msg=f"{what}: converged")
    np.testing.assert_array_equal(got.diverged, ref.diverged, err_msg=f"{what}: diverged")
    if got.status is not None:
        np.testing.assert_array_equal(got.status, ref.status, err_msg=f"{what}: status")
    scale = max(1.0, float(np.max(np.abs(ref.W))), float(np.max(np.abs(ref.b))))
    np.testing.assert_allclose(got.W, ref.W, rtol=rtol, atol=rtol * scale, err_msg=f"{what}: W")
    np.testing.assert_allclose(got.b, ref.b, rtol=rtol, atol=rtol * scale, err_msg=f"{what}: b")
    np.testing.assert_allclose(got.loss, ref.loss, rtol=rtol, atol=rtol, err_msg=f"{what}: loss")
    if got.grad_norm is not None:
        np.testing.assert_allclose(got.grad_norm, ref.grad_norm, rtol=max(rtol, got.grad_norm_rtol),
                                   atol=GRAD_NORM_ATOL[dtype], err_msg=f"{what}: grad_norm")
    if got.losses is not None:  # histories, NaN-padded to a common length
        T = max(got.losses.shape[-1], ref.losses.shape[-1])
        pad = lambda a: np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, T - a.shape[-1])], constant_values=np.nan)
        np.testing.assert_allclose(pad(got.losses), pad(ref.losses), rtol=rtol, atol=rtol, err_msg=f"{what}: losses")
    if got.warned_step is not None or name in ("stream_stats", "stream_hand", "sklearn"):
        assert got.warned_step == ref.warned_step, f"{what}: divergence warning names step {got.warned_step}"


# In the slow suite only: stopping by tol is also bce-tol-l2's (and f64-multi-output-auto-tol's), per-output stopping
# on the statistics also per-output-lr-diverging's.
SLOW_CASES = ("tol-mse", "per-output-l2-stats")


@pytest.mark.parametrize("case", thinned(CASES, [c for c in CASES if c.id not in SLOW_CASES]), ids=[c.id for c in CASES])
def test_entry_points_agree(case: Case, tmp_path, request):
    if case.dtype == "float64":
        request.getfixturevalue("x64")
    X, y = _data(case)
    opts = _options(case, X)
    ref, result = run_fit(X, y, opts)
    assert ref.W.dtype == np.dtype(case.dtype)
    assert (ref.warned_step is not None) == bool(np.any(ref.diverged))  # a diverged fit warns, once
    assert set(np.ravel(ref.status)) <= set(STATUSES)

    def rerun(steps):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return gradfit.fit(X, y, **{**opts, "tol": None, "steps": steps})

    if case.expect is not None:
        case.expect(result, case, rerun)
    references = {(case.standardize, case.grad): ref, (case.standardize, ref.plan): ref}

    def reference(standardize: bool, grad: str) -> Outcome:
        """fit of the row in these coordinates, with this plan ("auto": fit's own choice)."""
        if (standardize, grad) not in references:
            other, _ = run_fit(X, y, {**opts, "standardize": standardize, "grad": grad})
            if standardize == case.standardize:  # another plan, the same fit: the same verdict
                np.testing.assert_array_equal(other.status, ref.status, err_msg=f"fit(grad={grad!r}): status")
                assert other.warned_step == ref.warned_step
            references[(standardize, grad)] = other
        return references[(standardize, grad)]

    for entry in case.entries:
        if entry == "sklearn" and sklearn_mod is None:
            continue
        if entry == "sweep":
            got = run_sweep(case, X, y, opts)
        elif entry == "solve":
            got = run_solve(case, X, y, opts)
        elif entry == "solve_vmap":
            got = run_solve_vmap(case, X, y, opts)
        elif entry == "stream_stats":
            got = run_stream(case, X, y, opts, tmp_path, "stats")
        elif entry == "stream_hand":
            got = run_stream(case, X, y, opts, tmp_path, "hand")
        elif entry == "sklearn":
            got = run_sklearn(case, X, y, opts)
        else:
            raise AssertionError(entry)
        if entry == "sklearn":  # standardized, the plan chosen as fit's "auto"
            against = reference(True, "auto")
        else:
            against = ref
        assert_agree(entry, got, against, case.dtype)


# --------------------------------------------------------------------------- an independent anchor
def _numpy_optimality(X, y, w, b, l2, c, eps, tiny):
    """G of :func:`gradfit._engine.optimality`, from its formula, for J = c ||X W + b - Y||^2 +
    (l2/2)||W||^2 on all rows (weights 1, an intercept): the gradient in the coordinates of the
    standardized columns, ``g'_Wj = (g_Wj - mu_j g_b) / sigma_j``, and

        G^2 = [sum_j ||g'_Wj||^2 / (h + l2 / sigma_j^2) + ||g_b||^2 / h] / (2 max(J, floor))

    with h = 2 c m and floor = eps^(1/4) c m (var(y) + eps mean(y^2)) summed over outputs."""
    m = X.shape[0]
    mu, sigma = X.mean(axis=0), X.std(axis=0)
    sigma = np.where((sigma == 0) | (sigma <= 1e-12 * np.abs(mu)), 1.0, sigma)
    col = (lambda v: v) if w.ndim == 1 else (lambda v: v[:, None])
    r = X @ w + b - y
    gW, gb = 2 * c * (X.T @ r) + l2 * w, 2 * c * r.sum(axis=0)
    gW_fit = (gW - np.multiply.outer(mu, gb)) / col(sigma)
    h = 2 * c * m
    decrease = np.sum(gW_fit**2 / col(h + l2 / sigma**2)) + np.sum(gb**2) / h
    J = c * np.sum(r * r) + 0.5 * l2 * np.sum(w * w)
    Y = y.reshape(m, -1)
    floor = max(eps**0.25 * c * m * np.sum(Y.var(axis=0) + eps * np.mean(Y**2, axis=0)), tiny)
    return np.sqrt(decrease / (2 * max(abs(J), floor)))


def _numpy_gd(X, y, lr, l2, steps, tol, eps, tiny, c):
    """Gradient descent on the raw (W, b) of J = c ||X W + b - Y||^2 + (l2/2)||W||^2 in float64
    (c = 1/m: "mean", 1/(2m): "half_mean"), with the documented rules: J_t is evaluated at p_t
    before the update; the loop stops when G(p_t) <= tol (p_t kept); diverged when J_t is not finite or exceeds
    1e6 max(J_0, eps) (p_{t-1} kept); after the last step J is checked once more, and the fit is
    converged when G <= tol at the params returned ("stalled" if the loop stopped it without)."""
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
    n = X.shape[1]

    def J(w, b):
        r = X @ w + b - y
        return c * np.sum(r * r) + 0.5 * l2 * np.sum(w * w)

    def G(w, b):
        return _numpy_optimality(X, y, w, b, l2, c, eps, tiny)

    def bad(v, J0):
        return not np.isfinite(v) or v > 1e6 * max(J0, eps)

    def end(w, b, t, stopped):
        g = G(w, b)
        status = "converged" if tol is not None and g <= tol else "stalled" if stopped else "max_steps"
        return w, b, J(w, b), t, status, g, np.array(history)

    w, b = np.zeros((n, *y.shape[1:])), np.zeros(y.shape[1:])
    prev = (w, b)
    history, J0 = [], None
    for t in range(steps):
        v = J(w, b)
        history.append(v)
        J0 = v if t == 0 else J0
        if bad(v, J0):
            return *prev, J(*prev), t + 1, "diverged", G(*prev), np.array(history)
        if tol is not None and G(w, b) <= tol:
            return end(w, b, t + 1, stopped=True)
        r = X @ w + b - y
        prev = (w, b)
        w, b = w - lr * (2 * c * (X.T @ r) + l2 * w), b - lr * 2 * c * r.sum(axis=0)
    if bad(J(w, b), J0):
        return *prev, J(*prev), steps, "diverged", G(*prev), np.array(history)
    return end(w, b, steps, stopped=False)


ANCHORED = [c for c in CASES if not c.standardize]  # the raw rows


def test_anchored_rows():
    assert [c.id for c in ANCHORED] == ["diverge-last-step", "diverge-mid-run", "l2-mse", "f64-multi-output-auto-tol"]


@pytest.mark.parametrize("case", ANCHORED, ids=[c.id for c in ANCHORED])
def test_fit_matches_numpy_gradient_descent(case: Case, request):
    """The table's reference against the formula: plain gradient descent in numpy (float64) on
    the raw (W, b), so fit runs with standardize=False."""
    if case.dtype == "float64":
        request.getfixturevalue("x64")
    X, y = _data(case)
    opts = {**_options(case, X), "standardize": False}
    ref, _ = run_fit(X, y, opts)
    finfo = np.finfo(case.dtype)
    W, b, loss, steps, status, grad_norm, history = _numpy_gd(
        X, y, opts["learning_rate"], case.l2, case.steps, case.tol,
        float(finfo.eps), float(finfo.tiny), 1 / X.shape[0] if case.reduction == "mean" else 0.5 / X.shape[0])
    assert (int(ref.steps), str(ref.status)) == (steps, status)
    assert (bool(ref.converged), bool(ref.diverged)) == (status == "converged", status == "diverged")
    # float32 fits against float64 numpy: the float32 rounding of X @ w, grown by a diverging run
    rtol = 1e-9 if case.dtype == "float64" else 1e-4
    scale = max(1.0, float(np.max(np.abs(W))))
    np.testing.assert_allclose(ref.W, W, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(ref.b, b, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(ref.loss, loss, rtol=rtol)
    np.testing.assert_allclose(ref.losses, history, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(ref.grad_norm, grad_norm, rtol=rtol, atol=GRAD_NORM_ATOL[case.dtype])


# --------------------------------------------------------------------------- the left-out cells
def _small(k=None, dtype=np.float32):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 3)).astype(dtype)
    y = rng.standard_normal((40,) if k is None else (40, k)).astype(dtype)
    return X, y


LEFT_OUT = [
    ("solve-per-output-l2", "solve", {"l2": np.ones(3, np.float32)}, 3, "solve takes a scalar"),
    ("solve-stats-plan", "solve", {"grad": "stats"}, None, "reads X at every step"),
    ("stream-per-output-lr", "stream", {"learning_rate": np.full(3, 0.1, np.float32)}, 3, "scalar learning_rate"),
    ("stream-stats-bce", "stream", {"grad": "stats", "loss": "bce"}, None, "only for loss='mse'"),
    ("stream-stats-minibatch", "stream", {"grad": "stats", "batch_size": 10}, None, "minibatches"),
    ("stream-lbfgs-passes", "stream", {"optimizer": "lbfgs", "grad": "hand"}, None, "streamed pass"),
    ("fit-stats-bce", "fit", {"grad": "stats", "loss": "bce"}, None, "only for loss='mse'"),
]


@pytest.mark.parametrize("name,entry,options,k,match", LEFT_OUT, ids=[c[0] for c in LEFT_OUT])
def test_left_out_entry_points_refuse(name, entry, options, k, match, tmp_path):
    """The cells the table leaves out are refusals (ValueError before compute), not gaps."""
    X, y = _small(k)
    if options.get("loss") == "bce":
        y = (y > 0).astype(np.float32)
    with pytest.raises(ValueError, match=match):
        if entry == "solve":
            gradfit.solve(None, X, y, steps=3, **options)
        elif entry == "fit":
            gradfit.fit(X, y, steps=3, **options)
        else:
            np.save(tmp_path / "X.npy", X)
            np.save(tmp_path / "y.npy", y)
            gradfit.fit_streaming(tmp_path / "X.npy", tmp_path / "y.npy", steps=3, **options)
