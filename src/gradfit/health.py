"""Numerical health: curvature, a safe step size, conditioning, and separable classes.

Everything here reads the data, never the fit's program, so it can run before a fit (to
warn or to pick a step) or after it (to explain a failure).

The curvature of the objective. Write ``A = [X, 1]`` (m, n+1) (``X`` alone without an
intercept), ``D = diag(sample_weight)`` (the identity without weights) and ``s = sum(D)``.
For one output column the Hessian of ``J`` with respect to ``(W, b)`` is

- mse: ``H = c A^T D A + l2 P`` with ``c = 2/s`` ("mean"), ``1/s`` ("half_mean"), ``2`` ("sum");
- bce: ``H(W, b) = c A^T D S A + l2 P`` with ``S = diag(sigmoid'(z)) <= 1/4`` and ``c = 1/s``
  ("mean") or ``1`` ("sum"); at ``W = 0`` it is ``(c/4) A^T D A + l2 P``, and never larger;

``P`` is the identity on W and 0 on b (the bias is not penalised). With k outputs the Hessian
is k copies of this block. Its largest eigenvalue ``L`` bounds the gradient's Lipschitz
constant: plain gradient descent decreases J for every step below ``2/L`` and may diverge
above it, and ``1/L`` is the textbook safe step.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradfit import _precision, _validation, gradients
from gradfit._params import matmul, predict
from gradfit._types import Params

# Rows read by :func:`conditioning`; the exact eigenvalue estimate needs n + 1 <= this many columns.
CONDITION_ROWS = 2048
CONDITION_MAX_COLUMNS = 256
# Warn when rounding alone limits the weights' relative accuracy to worse than this:
# eps(dtype) * condition > ACCURACY (float32: condition > 8.4e3; float64: > 4.5e12).
ACCURACY = 1e-3
# Column scales (standard deviations) that differ by more than this factor, or means larger
# than this many standard deviations, are named as the cause (the remedy is to standardise).
SCALE_SPREAD = 100.0
OFFSET = 10.0


class IllConditionedWarning(RuntimeWarning):
    """The data make the fit slow or inaccurate in its dtype; the message gives the remedy."""


class SeparableWarning(RuntimeWarning):
    """Logistic regression without a penalty on separable classes: no minimiser exists."""


# --------------------------------------------------------------------------- curvature
def _curvature_scale(loss: str, reduction: str, total_weight) -> float:
    """The ``c`` of the module docstring, with bce's ``1/4`` folded in."""
    if loss == "mse":
        return {"mean": 2 / total_weight, "half_mean": 1 / total_weight, "sum": 2.0}[reduction]
    if loss == "bce":
        return {"mean": 0.25 / total_weight, "sum": 0.25}[reduction]
    raise ValueError(f"unknown loss {loss!r}: use 'mse' or 'bce'")


def power_iterations(n_features: int) -> int:
    """Iterations for :func:`lipschitz`: ``max(20, ceil(2.5 ln(n+1)) + 1)``.

    From a random start, the Rayleigh quotient after ``k`` power iterations underestimates
    the top eigenvalue by at most ``0.871 ln(n) / (k - 1)`` of it in expectation
    (Kuczyński & Woźniakowski, SIAM J. Matrix Anal. Appl. 13(4), 1992), so this ``k`` keeps
    the estimate above ``0.6 L`` and ``1/estimate`` below ``1.7/L``, inside the ``2/L`` limit.
    """
    return max(20, math.ceil(2.5 * math.log(n_features + 1)) + 1)


def _top_eigenvalue(X, sample_weight, intercept, key, iters):
    """Rayleigh quotient of ``A^T D A`` (``A = [X, intercept * 1]``) after ``iters`` power steps."""
    n = X.shape[1]
    v = jax.random.normal(key, (n + 1,), intercept.dtype)  # X may be stored in 16 bits
    v = v.at[n].multiply(intercept)

    def apply(v):
        u = matmul(X, v[:n]) + intercept * v[n]  # A v, (m,)
        du = sample_weight * u
        return jnp.concatenate([gradients.xt_dot(X, du), intercept * jnp.sum(du)[None]])

    def body(_, v):
        w = apply(v)
        return w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(v.dtype).tiny)

    v = v / jnp.linalg.norm(v)
    v = jax.lax.fori_loop(0, iters, body, v)
    return jnp.vdot(v, apply(v))


@functools.lru_cache(maxsize=None)
def _power_program(iters: int, options: tuple[tuple[str, str], ...]):
    """:func:`_top_eigenvalue` over a batch of problems, jitted with the XLA ``options`` of
    :func:`gradfit._precision.compiler_options` (for a 16-bit X: no float32 copy of X)."""
    fn = jax.vmap(functools.partial(_top_eigenvalue, iters=iters), in_axes=(0, 0, None, 0))
    return jax.jit(fn, compiler_options=dict(options) or None)


def lipschitz(
    X,
    *,
    loss: str = "mse",
    reduction: str = "mean",
    l2=0.0,
    sample_weight=None,
    fit_intercept: bool = True,
    batched: bool = False,
    seed: int = 0,
) -> float:
    """Estimate ``L``, the largest eigenvalue of the objective's Hessian (see the module doc).

    ``L = c * lambda_max(A^T D A) + max(l2)``, with ``lambda_max`` from
    :func:`power_iterations` power steps on device in X's dtype (each step reads X twice, as
    one gradient does). Exact for mse up to the power method; for bce an upper bound valid
    at every W. With ``batched`` (X of shape (B, m, n)) the largest L over the problems.
    """
    X = jnp.asarray(X)
    dtype = _validation.float_dtype(X)
    X = X.astype(_precision.storage_dtype(X, dtype))
    if not batched:
        X = X[None]
        sample_weight = None if sample_weight is None else jnp.asarray(sample_weight)[None]
    n = X.shape[2]
    w = jnp.ones(X.shape[:2], dtype) if sample_weight is None else jnp.broadcast_to(jnp.asarray(sample_weight, dtype), X.shape[:2])
    penalty = float(np.max(np.asarray(l2, np.float64)))
    # Power iterations on A / 2^e with 2^e ~ max |A| (exact scaling), so that A^T D A v cannot
    # overflow the dtype; lambda_max(A^T D A) = 4^e lambda_max((A/2^e)^T D (A/2^e)).
    # The weights are scaled to max 1 the same way: lambda_max scales by max(w).
    top = max(float(jnp.max(jnp.abs(X)).astype(dtype)), 1.0 if fit_intercept else 0.0)
    w_top = float(jnp.max(w))
    if top == 0 or w_top == 0:
        return penalty
    e = math.frexp(top)[1]
    X = X * jnp.asarray(2.0**-e, X.dtype)  # exact: a power of two
    intercept = jnp.asarray((1.0 if fit_intercept else 0.0) * 2.0**-e, dtype)
    keys = jax.random.split(jax.random.key(seed), X.shape[0])
    options = tuple(sorted(_precision.compiler_options(X).items()))
    lam = _power_program(power_iterations(n), options)(X, w / w_top, intercept, keys)
    lam = np.asarray(lam, np.float64) * 4.0**e * w_top
    total = np.asarray(jnp.sum(w, axis=1), np.float64)
    c = np.array([_curvature_scale(loss, reduction, t) for t in total])
    return float(np.max(c * lam) + penalty)


def safe_learning_rate(X, **kwargs) -> float:
    """``1/L`` (see :func:`lipschitz`, which takes the same arguments): the step that
    ``learning_rate="auto"`` uses for plain gradient descent (``optimizer="sgd"``).

    Below ``2/L`` gradient descent on mse decreases the objective at every step; with the
    power estimate of L this step is at most ``1.7/L``. For minibatches a batch's curvature
    can exceed the full data's, so a smaller step may be needed there.
    """
    L = lipschitz(X, **kwargs)
    if not L > 0:
        raise ValueError("X and the sample weights give zero curvature (every column is 0): there is nothing to fit")
    return 1.0 / L


# --------------------------------------------------------------------------- conditioning
class Conditioning(NamedTuple):
    """What :func:`conditioning` found (all from a sample of at most ``CONDITION_ROWS`` rows).

    condition: ``lambda_max / lambda_min`` of the objective's Hessian at W = 0 over its
      nonzero eigenvalues (float64 eigenvalues of the sample's Gram matrix; at most 1/eps64,
      and exact zeros of dependent columns, which gradient descent never excites, are
      left out), or the
      column-scale lower bound ``max G_jj / min G_jj`` when n + 1 > ``CONDITION_MAX_COLUMNS``.
    exact: whether ``condition`` came from eigenvalues (True) or the diagonal bound (False).
    scale_spread: max / min standard deviation over the non-constant columns.
    offset: max |mean| / std over the non-constant columns (0 without an intercept).
    constant_columns: indices of the columns left out of ``condition``: constant on the sample
      with an intercept (they duplicate the bias), all zero without one. Gradient descent from
      zeros never moves along them (see docs/faults.md).
    rows: rows read.
    """

    condition: float
    exact: bool
    scale_spread: float
    offset: float
    constant_columns: tuple[int, ...]
    rows: int


@functools.cache
def _blas_controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


def _single_threaded_blas():
    """BLAS on one thread for the small host matrices of :func:`conditioning`: on a few busy
    cores OpenBLAS's threads contend with XLA's, and a 1 ms product can take 100 ms (see
    scripts/bench_health.py). A no-op where threadpoolctl (a scikit-learn dependency) is absent."""
    controller = _blas_controller()
    return contextlib.nullcontext() if controller is None else controller.limit(limits=1, user_api="blas")


def _sample_rows(m: int, rows: int) -> np.ndarray:
    """``min(m, rows)`` evenly spaced row indices (deterministic; a memory map reads only these)."""
    if m <= rows:
        return np.arange(m)
    return np.unique(np.linspace(0, m - 1, rows).round().astype(np.int64))


def conditioning(X, *, fit_intercept: bool = True, l2=0.0, loss: str = "mse", reduction: str = "mean",
                 sample_weight=None, max_rows: int = CONDITION_ROWS) -> Conditioning:
    """Estimate how hard the data make gradient descent, cheaply and before any fit.

    Reads ``s = min(m, max_rows)`` evenly spaced rows of X (m, n) into float64 on the host and
    forms ``G = A_s^T D_s A_s / sum(D_s)`` (``A = [X, 1]`` with an intercept). The Hessian at
    W = 0 is ``H = c' G + l2 P`` (module doc; ``c'`` is c times ``sum(D)``), and ``condition``
    is its eigenvalue ratio. Cost: ``s (n+1)^2 + (n+1)^3`` flops for n + 1 <= 256, ``s n``
    above (the diagonal bound): independent of m, a few milliseconds, and under one pass over X
    once ``m >= s (n + 1)``.
    """
    with _single_threaded_blas():
        return _conditioning(X, fit_intercept, l2, loss, reduction, sample_weight, max_rows)


def _conditioning(X, fit_intercept, l2, loss, reduction, sample_weight, max_rows) -> Conditioning:
    X_host = X
    m, n = X.shape
    idx = _sample_rows(m, max_rows)
    Xs = np.asarray(X_host[idx] if not isinstance(X_host, jax.Array) else jnp.take(X_host, jnp.asarray(idx), axis=0), np.float64)
    w = np.ones(len(idx)) if sample_weight is None else np.asarray(sample_weight, np.float64)[idx]
    total = w.sum()
    if not total > 0:
        w, total = np.ones(len(idx)), float(len(idx))
    mean = w @ Xs / total
    std = np.sqrt(np.maximum(w @ (Xs - mean) ** 2 / total, 0.0))
    flat = (std == 0) | (std <= 1e-12 * np.abs(mean))
    # With an intercept a constant column duplicates the bias; without one only a zero column
    # is degenerate. Either way gradient descent from zeros never moves along it.
    drop = flat if fit_intercept else flat & (mean == 0)
    keep = ~drop
    if not keep.any() or flat.all():
        return Conditioning(1.0, True, 1.0, 0.0, tuple(np.flatnonzero(drop).tolist()), len(idx))
    spread = float(std[~flat].max() / std[~flat].min())
    offset = float(np.max(np.abs(mean[~flat]) / std[~flat])) if fit_intercept else 0.0
    A = Xs[:, keep]
    if fit_intercept:
        A = np.concatenate([A, np.ones((len(idx), 1))], axis=1)
    # c' G with the reduction's scale relative to a mean (the "sum" reductions scale by m).
    scale = _curvature_scale(loss, reduction, 1.0) * (m * total / len(idx) if reduction == "sum" else 1.0)
    penalty = float(np.min(np.asarray(l2, np.float64)))
    pen = np.full(A.shape[1], penalty)
    if fit_intercept:
        pen[-1] = 0.0
    if A.shape[1] <= CONDITION_MAX_COLUMNS:
        H = scale * ((A * w[:, None]).T @ A / total) + np.diag(pen)
        # Exactly dependent columns (duplicates) give zero eigenvalues that gradient descent
        # from zeros never excites: count them on the unit-diagonal H, where scales cannot hide
        # them, and leave that many smallest eigenvalues out.
        d = np.sqrt(np.diag(H))
        d[d == 0] = 1.0
        eps = np.finfo(np.float64).eps
        unit = np.linalg.eigvalsh(H / d[:, None] / d[None, :])
        rank_loss = int(np.sum(unit <= unit[-1] * A.shape[1] * eps * 16))
        ev = np.linalg.eigvalsh(H)[rank_loss:]
        top = ev[-1]
        condition = float(top / max(ev[0], top * eps)) if top > 0 else 1.0
        exact = True
    else:
        diag = scale * (w @ (A * A)) / total + pen
        condition = float(diag.max() / diag.min())
        exact = False
    return Conditioning(condition, exact, spread, offset, tuple(np.flatnonzero(drop).tolist()), len(idx))


def condition_limit(dtype) -> float:
    """The condition number above which :func:`check_conditioning` warns: ``ACCURACY / eps``."""
    return ACCURACY / float(np.finfo(dtype).eps)


def check_conditioning(X, dtype, *, batched: bool = False, stacklevel: int = 2, **kwargs) -> float:
    """Run :func:`conditioning` (on each of the first 8 problems when ``batched``) and warn
    with :class:`IllConditionedWarning` when ``eps(dtype) * condition > ACCURACY``.

    The message names the cause (column scales, offsets, or correlated columns) and the
    remedies: standardise X, float64, an l2 penalty, and a step below 2/L. Returns the
    largest condition estimate (NaN, unchecked, for arrays spread over several processes).
    """
    sw = kwargs.pop("sample_weight", None)
    if isinstance(X, jax.Array) and not X.is_fully_addressable:
        return float("nan")  # rows spread over several processes: not sampled from here
    problems = range(min(X.shape[0], 8)) if batched else [None]
    worst = None
    for i in problems:
        c = conditioning(X if i is None else X[i], sample_weight=sw if (i is None or sw is None) else sw[i], **kwargs)
        if worst is None or c.condition > worst.condition:
            worst = c
    limit = condition_limit(dtype)
    if worst.condition > limit:
        warnings.warn(_conditioning_message(worst, np.dtype(dtype), limit), IllConditionedWarning, stacklevel=stacklevel + 1)
    return worst.condition


def _conditioning_message(c: Conditioning, dtype: np.dtype, limit: float) -> str:
    eps = float(np.finfo(dtype).eps)
    head = (
        f"X is ill-conditioned for {dtype}: the objective's Hessian has condition number "
        f"~{c.condition:.1e} (from {c.rows} rows; above {limit:.1e}), so gradient descent needs "
        f"~{c.condition:.0e} steps and {dtype} rounding limits the weights to ~{min(eps * c.condition, 1):.0e} "
        "relative accuracy. Cause: "
    )
    remedies = []
    if c.scale_spread > SCALE_SPREAD or c.offset > OFFSET:
        why = []
        if c.scale_spread > SCALE_SPREAD:
            why.append(f"column scales differ by {c.scale_spread:.1e}x")
        if c.offset > OFFSET:
            why.append(f"column means are up to {c.offset:.1e} standard deviations from 0")
        remedies.append(f"{' and '.join(why)}. Remedy: standardise X, e.g. (X - X.mean(0)) / X.std(0)")
    else:
        remedies.append("strongly correlated columns. Remedy: add an l2 penalty (e.g. l2=1e-3) or drop redundant columns")
    if dtype != np.float64:
        remedies.append("or fit in float64 (float64 X with jax_enable_x64 on; in the CLI, data.dtype='float64')")
    remedies.append("and keep the learning rate below 2/L (learning_rate='auto' uses 1/L)")
    return head + "; ".join(remedies)


# --------------------------------------------------------------------------- separable classes
def separated(params: Params, X, y, *, batched: bool = False, sample_weight=None) -> np.ndarray:
    """Whether ``params`` classify every (positively weighted) row correctly with a margin:
    ``z_i = x_i W + b > 0`` where ``y_i = 1`` and ``< 0`` where ``y_i = 0``.

    If so, the classes are linearly separable and, without a penalty, the bce objective has
    no minimiser (``t * params`` lowers it towards 0 as t grows). Returns a boolean per
    problem and output column, shape ``(B?, k?)``. Rows with soft targets (not 0 or 1) make
    the answer False.
    """

    def one(p, X, y, w):
        z = predict(p, X)
        ok = jnp.where(y == 1, z > 0, jnp.where(y == 0, z < 0, False))
        if w is not None:
            ok = ok | ((w == 0) if ok.ndim == 1 else (w == 0)[:, None])
        return jnp.all(ok, axis=0)

    X = jnp.asarray(X)
    y = jnp.asarray(y, _validation.float_dtype(X))
    w = None if sample_weight is None else jnp.asarray(sample_weight)
    fn = jax.vmap(one, in_axes=(0, 0, 0, None if w is None else 0)) if batched else one
    return np.asarray(fn(params, X, y, w))


def separable_message(W_norm: float) -> str:
    return (
        "the classes are linearly separable (the fitted weights classify every training row "
        f"correctly) and l2 = 0, so the logistic loss has no minimiser: the weights grow without "
        f"bound as steps increase (now ||W|| = {W_norm:.3g}). Reported as not converged; add a "
        "penalty (e.g. l2=1e-3) for a finite solution"
    )


def lipschitz_from_stats(stats, *, loss: str = "mse", reduction: str = "mean", l2=0.0, fit_intercept: bool = True) -> float:
    """``L`` exactly, from the sufficient statistics of the ``"stats"`` plan: no pass over X.

    The statistics hold ``A = [X - mu, 1]^T D [X - mu, 1]`` (:mod:`gradfit._stats`); in the fit's
    coordinates ``(W, b)`` the Gram is ``T^T A T`` with ``T = [[I, 0], [mu^T, 1]]`` (``[I; mu^T]``
    without an intercept), so ``H = c T^T A T + l2 P`` (module doc) and L is its top eigenvalue,
    O(n^3) on the host. A leading batch axis gives the largest L over the problems.
    """
    gram = np.asarray(stats.gram, np.float64)
    mu = np.asarray(stats.x_mean, np.float64)
    count = np.asarray(stats.count, np.float64)
    penalty = float(np.max(np.asarray(l2, np.float64)))
    worst = 0.0
    for G, x_mean, total in zip(gram.reshape(-1, *gram.shape[-2:]), mu.reshape(-1, mu.shape[-1]), count.reshape(-1)):
        n = x_mean.shape[0]
        T = np.vstack([np.eye(n), x_mean[None, :]])
        if fit_intercept:
            T = np.hstack([T, np.eye(n + 1)[:, n:]])
        P = np.diag([1.0] * n + [0.0] * (T.shape[1] - n))
        H = _curvature_scale(loss, reduction, float(total)) * (T.T @ G[: n + 1, : n + 1] @ T) + penalty * P
        worst = max(worst, float(np.linalg.eigvalsh(H)[-1]))
    return worst
