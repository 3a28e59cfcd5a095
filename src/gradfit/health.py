"""Numerical health, from the data before or after a fit: curvature, a safe step, conditioning, separable classes.

With ``A = [X, 1]`` (m, n+1) (``X`` without an intercept), ``D = diag(sample_weight)`` and ``s = sum(D)``, the
Hessian of ``J`` in ``(W, b)`` for one output column (k outputs: k copies) is

- mse: ``H = c A^T D A + l2 P`` with ``c = 2/s`` ("mean"), ``1/s`` ("half_mean"), ``2`` ("sum");
- bce: ``H(W, b) = c A^T D S A + l2 P``, ``S = diag(sigmoid'(z)) <= 1/4``, ``c = 1/s`` ("mean") or ``1``
  ("sum"); at ``W = 0`` it is ``(c/4) A^T D A + l2 P``, and never larger;

``P`` the identity on W, 0 on b. Its top eigenvalue ``L`` is the gradient's Lipschitz constant: gradient descent
decreases J for every step below ``2/L``; ``1/L`` is the safe step."""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradfit import _precision, _validation, gradients, losses
from gradfit._params import matmul, predict
from gradfit._types import Params, Scaling

CONDITION_ROWS = 2048  # rows read by conditioning()
CONDITION_MAX_COLUMNS = 256  # most columns n + 1 of its exact eigenvalue estimate
ACCURACY = 1e-3  # warn when eps(dtype) * condition > ACCURACY (float32: condition > 8.4e3; float64: > 4.5e12)
# column stds differing over SCALE_SPREAD times, or means over OFFSET stds, are named as the cause
SCALE_SPREAD, OFFSET = 100.0, 10.0


class IllConditionedWarning(RuntimeWarning):
    """The data make the fit slow or inaccurate in its dtype; the message gives the remedy."""


class SeparableWarning(RuntimeWarning):
    """Logistic regression without a penalty on separable classes: no minimiser exists."""


def _curvature_scale(loss: str, reduction: str, total_weight) -> float:
    """The ``c`` of the module docstring, with bce's ``1/4`` folded in."""
    if loss == "mse":
        return {"mean": 2 / total_weight, "half_mean": 1 / total_weight, "sum": 2.0}[reduction]
    if loss == "bce":
        return {"mean": 0.25 / total_weight, "sum": 0.25}[reduction]
    raise ValueError(f"unknown loss {loss!r}: use 'mse' or 'bce'")


def power_iterations(n_features: int) -> int:
    """Iterations for :func:`lipschitz`: ``max(20, ceil(2.5 ln(n+1)) + 1)``. The Rayleigh quotient after k steps
    underestimates the top eigenvalue by at most ``0.871 ln(n) / (k - 1)`` in expectation (Kuczyński &
    Woźniakowski 1992), so the estimate stays above ``0.6 L`` and ``1/estimate`` below ``1.7/L < 2/L``."""
    return max(20, math.ceil(2.5 * math.log(n_features + 1)) + 1)


def _top_eigenvalue(X, sample_weight, intercept, shift, inv_scale, start, scale, iters):
    """Rayleigh quotient of ``(A S)^T D (A S)`` after ``iters`` power steps from ``start``, ``A = [X, intercept 1]``
    times ``scale`` (a power of two, applied to the vectors: X is never copied), ``S`` the map from standardised
    coordinates (``u = v_W * inv_scale``, ``b = v_b - shift u``; :func:`gradfit._engine.to_model`)."""
    n = X.shape[1]

    def apply(v):
        u = v[:n] * inv_scale
        du = sample_weight * (matmul(X, u * scale) + intercept * v[n] - shift @ u)  # D A S v, (m,)
        total = jnp.sum(du)
        return jnp.concatenate([(gradients.xt_dot(X, du * scale) - shift * total) * inv_scale, intercept * total[None]])

    def body(_, v):
        w = apply(v)
        return w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(v.dtype).tiny)

    v = jax.lax.fori_loop(0, iters, body, start / jnp.linalg.norm(start))
    return jnp.vdot(v, apply(v))


@functools.cache
def _power_program(iters: int, options: tuple[tuple[str, str], ...], batched: bool):
    """:func:`_top_eigenvalue` vmapped over problems (one: X (m, n) gains the axis inside, no copy), jitted with
    :mod:`gradfit._precision`'s XLA options."""
    fn = jax.vmap(functools.partial(_top_eigenvalue, iters=iters), in_axes=(0, 0, None, 0, 0, 0, None))
    return jax.jit(fn if batched else lambda X, *rest: fn(X[None], *rest), compiler_options=dict(options) or None)


WARM_ITERATIONS = 3  # power steps from the sampled Hessian's top eigenvector, then the Rayleigh quotient (its error
# is quadratic in the start's: 3 steps of the full data refine it; scripts/bench_health.py)


def _sampled_top(X, sample_weight, fit_intercept: bool, shift, scale) -> tuple[float, np.ndarray, float]:
    """The top eigenvalue (per unit weight) and eigenvector of ``(A S)^T D (A S)`` on :data:`CONDITION_ROWS` rows,
    and the rows' largest |x|."""
    idx, Xs, w, _, _ = _sample(X, sample_weight, CONDITION_ROWS)
    A = np.concatenate([(Xs - shift) / scale, np.full((len(idx), 1), float(fit_intercept))], axis=1)
    controller = _blas_controller()  # one BLAS thread, as in conditioning()
    with contextlib.nullcontext() if controller is None else controller.limit(limits=1, user_api="blas"):
        lam, V = np.linalg.eigh((A * w[:, None]).T @ A / w.sum())
    big = np.abs(Xs[np.isfinite(Xs)])
    return float(lam[-1]), V[:, -1], float(big.max(initial=0.0))


def lipschitz(X, *, loss: str = "mse", reduction: str = "mean", l2=0.0, sample_weight=None, fit_intercept: bool = True,
              batched: bool = False, seed: int = 0, scaling: Scaling | None = None) -> float:
    """Estimate ``L = c * lambda_max(A^T D A) + max(l2)`` (module doc) by power steps on device in X's dtype: exact
    for mse up to the power method, an upper bound at every W for bce. One problem: :data:`WARM_ITERATIONS` steps
    from the top eigenvector of a row sample's matrix (L the larger of the two estimates); ``batched`` (X (B, m,
    n)): :func:`power_iterations` from random starts, the largest L. ``scaling`` (:func:`scaling`): L in a
    standardised fit's coordinates, ``c * lambda_max(S^T A^T D A S) + max(l2 / sigma^2)``."""
    X = jnp.asarray(X)
    dtype = _validation.float_dtype(X)
    X = X.astype(_precision.storage_dtype(X, dtype))
    shape, n = (X.shape[:2] if batched else (1, X.shape[0])), X.shape[-1]
    w = jnp.ones(shape, dtype) if sample_weight is None else jnp.broadcast_to(jnp.asarray(sample_weight, dtype), shape)
    shift, scale = (np.zeros(n), np.ones(n)) if scaling is None else (scaling.shift, scaling.scale)
    shift, scale = (np.broadcast_to(np.asarray(a, np.float64), (shape[0], n)) for a in (shift, scale))
    penalty = float(np.max(np.asarray(l2, np.float64)) * np.max(1.0 / scale**2))
    w_top = float(jnp.max(w))
    if w_top == 0:
        return penalty
    sampled, top = 0.0, None
    if batched:
        keys = jax.random.split(jax.random.key(seed), X.shape[0])
        start, iters = jax.vmap(lambda key: jax.random.normal(key, (n + 1,), dtype))(keys), power_iterations(n)
    else:
        sampled, vector, top = _sampled_top(X, sample_weight, fit_intercept, shift[0], scale[0])
        start, iters = jnp.asarray(vector[None], dtype), WARM_ITERATIONS
    start = start.at[:, n].multiply(float(fit_intercept))
    totals = np.asarray(jnp.sum(w, axis=1), np.float64)
    # Iterate on A / 2^e, 2^e ~ max |A| (exact), and w / max(w), so A^T D A v cannot overflow; scale back after.
    # One problem: 2^e from the sampled rows (no pass over X); a non-finite result (an unsampled larger value)
    # repeats the steps with the largest |x| of all rows.
    for exact in (False, True) if top is not None else (True,):
        if exact:
            top = float(_validation.max_abs(X).astype(dtype))
        elif top == 0:  # the sampled rows are 0: the others may not be
            continue
        lam = _power(X, w / w_top, max(top, 1.0 if fit_intercept else 0.0), fit_intercept, shift, scale, start,
                     iters, batched, dtype) * w_top
        if np.all(np.isfinite(lam)):
            break
    lam = np.maximum(lam, sampled * totals)  # the sample's estimate is per unit weight
    c = np.array([_curvature_scale(loss, reduction, t) for t in totals])
    return float(np.max(c * lam) + penalty)


def _power(X, w, top: float, fit_intercept: bool, shift, scale, start, iters: int, batched: bool, dtype) -> np.ndarray:
    """:func:`_top_eigenvalue` of every problem (float64, (B,)) on ``A / 2^e``, ``2^e ~ top``; 0 when ``top`` is."""
    if top == 0 or not np.isfinite(top):
        return np.zeros(start.shape[0]) if top == 0 else np.full(start.shape[0], np.inf)
    e = math.frexp(top)[1]
    intercept = jnp.asarray((1.0 if fit_intercept else 0.0) * 2.0**-e, dtype)
    options = tuple(sorted(_precision.compiler_options(X).items()))
    lam = _power_program(iters, options, batched)(X, w, intercept, jnp.asarray(shift * 2.0**-e, dtype),
                                                  jnp.asarray(1 / scale, dtype), start, jnp.asarray(2.0**-e, dtype))
    return np.asarray(lam, np.float64) * 4.0**e


def safe_learning_rate(X, **kwargs) -> float:
    """``1/L`` (:func:`lipschitz`, same arguments; at most ``1.7/L`` with the power estimate):
    ``learning_rate="auto"`` for ``optimizer="sgd"``. A minibatch's curvature may need a smaller one."""
    L = lipschitz(X, **kwargs)
    if not L > 0:
        raise ValueError("X and the sample weights give zero curvature (every column is 0): there is nothing to fit")
    return 1.0 / L


class Conditioning(NamedTuple):
    """What :func:`conditioning` found from ``rows`` rows. condition: ``lambda_max / lambda_min`` of the Hessian at
    W = 0 over its nonzero eigenvalues (float64), or the lower bound ``max G_jj / min G_jj`` when n + 1 >
    ``CONDITION_MAX_COLUMNS`` (``exact`` False). scale_spread, offset: max / min std, and max |mean| / std, over
    the non-constant columns. constant_columns: left out (gradient descent from zeros never moves along them)."""

    condition: float
    exact: bool
    scale_spread: float
    offset: float
    constant_columns: tuple[int, ...]
    rows: int


@functools.cache
def _blas_controller():
    """threadpoolctl's controller, or None without it (it comes with scikit-learn)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


def conditioning(X, *, fit_intercept: bool = True, l2=0.0, loss: str = "mse", reduction: str = "mean",
                 sample_weight=None, max_rows: int = CONDITION_ROWS, standardize: bool = False) -> Conditioning:
    """How hard the data make gradient descent, from ``s = min(m, max_rows)`` evenly spaced rows in float64 on the
    host: ``G = A_s^T D_s A_s / sum(D_s)``, the Hessian at W = 0 is ``H = c' G + l2 P`` (module doc; ``c'`` is c
    times ``sum(D)``), ``condition`` its eigenvalue ratio. ``standardize``: in a standardised fit's coordinates."""
    # BLAS on one thread: OpenBLAS's threads contend with XLA's for these small products (scripts/bench_health.py)
    controller = _blas_controller()
    with contextlib.nullcontext() if controller is None else controller.limit(limits=1, user_api="blas"):
        return _conditioning(X, fit_intercept, l2, loss, reduction, sample_weight, max_rows, standardize)


def _host_rows(a, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of ``a`` in float64 on the host (a memory map reads only them; a multi-process array: gathered)."""
    if not isinstance(a, jax.Array):
        return np.asarray(a[idx], np.float64)
    if a.is_fully_addressable:
        return np.asarray(jnp.take(a, jnp.asarray(idx), axis=0), np.float64)
    everywhere = jax.sharding.NamedSharding(a.sharding.mesh, jax.sharding.PartitionSpec())
    taken = jax.jit(lambda v: jnp.take(v, jnp.asarray(idx), axis=0), out_shardings=everywhere)(a)
    return np.asarray(taken.addressable_data(0), np.float64)


def _sample(X, sample_weight, max_rows: int):
    """At most ``max_rows`` evenly spaced rows of X in float64, their weights, and weighted column means and stds."""
    m = X.shape[0]
    idx = np.arange(m) if m <= max_rows else np.unique(np.linspace(0, m - 1, max_rows).round().astype(np.int64))
    Xs = _host_rows(X, idx)
    w = np.ones(len(idx)) if sample_weight is None else _host_rows(sample_weight, idx)
    w = w if w.sum() > 0 else np.ones(len(idx))
    mean = w @ Xs / w.sum()
    std = np.sqrt(np.maximum(w @ (Xs - mean) ** 2 / w.sum(), 0.0))
    return idx, Xs, w, mean, std


def _conditioning(X, fit_intercept, l2, loss, reduction, sample_weight, max_rows, standardize) -> Conditioning:
    m = X.shape[0]
    idx, Xs, w, mean, std = _sample(X, sample_weight, max_rows)
    s, total = len(idx), w.sum()
    flat = (std == 0) | (std <= 1e-12 * np.abs(mean))
    if standardize:  # the fit's own coordinates: units and offsets of the columns do not reach it
        s_ = scaling_of(np, Xs, np.zeros((len(Xs), 1)), w, 1.0, loss=loss, reduction="mean",
                        fit_intercept=fit_intercept, per_output=False, eps=0.0, tiny=0.0)
        Xs = (Xs - s_.shift) / s_.scale
        mean, std = w @ Xs / total, np.sqrt(np.maximum(w @ (Xs - w @ Xs / total) ** 2 / total, 0.0))
    drop = flat if fit_intercept else flat & (mean == 0)  # a constant column duplicates the bias; else a zero one
    dropped = tuple(np.flatnonzero(drop).tolist())
    if drop.all() or flat.all():
        return Conditioning(1.0, True, 1.0, 0.0, dropped, s)
    spread = float(std[~flat].max() / std[~flat].min())
    offset = float(np.max(np.abs(mean[~flat]) / std[~flat])) if fit_intercept else 0.0
    A = np.concatenate([Xs[:, ~drop], np.ones((s, 1))], axis=1) if fit_intercept else Xs[:, ~drop]
    # c' G with the reduction's scale relative to a mean (the "sum" reductions scale by m).
    scale = _curvature_scale(loss, reduction, 1.0) * (m * total / s if reduction == "sum" else 1.0)
    pen = np.full(A.shape[1], float(np.min(np.asarray(l2, np.float64))))
    pen[-1] = 0.0 if fit_intercept else pen[-1]
    if A.shape[1] > CONDITION_MAX_COLUMNS:
        diag = scale * (w @ (A * A)) / total + pen
        return Conditioning(float(diag.max() / diag.min()), False, spread, offset, dropped, s)
    H = scale * ((A * w[:, None]).T @ A / total) + np.diag(pen)
    # Exactly dependent columns give zero eigenvalues that gradient descent from zeros never excites:
    # count them on the unit-diagonal H, where scales cannot hide them, and leave that many out.
    d = np.where(np.diag(H) > 0, np.sqrt(np.diag(H)), 1.0)
    eps = np.finfo(np.float64).eps
    unit = np.linalg.eigvalsh(H / d[:, None] / d[None, :])
    ev = np.linalg.eigvalsh(H)[int(np.sum(unit <= unit[-1] * A.shape[1] * eps * 16)):]
    condition = float(ev[-1] / max(ev[0], ev[-1] * eps)) if ev[-1] > 0 else 1.0
    return Conditioning(condition, True, spread, offset, dropped, s)


SCALING_ROWS = 4096  # rows read by scaling()


def scaling(X, y, sample_weight=None, *, loss: str, reduction: str, fit_intercept: bool, per_output: bool = False,
            count=None, dtype=np.float32, max_rows: int = SCALING_ROWS) -> Scaling:
    """The :class:`~gradfit._types.Scaling` of a problem, from ``min(m, max_rows)`` evenly spaced rows:

    - ``shift``, ``scale``: the columns' weighted means and stds (with an intercept), or 0 and their root mean
      squares (without); a constant column gets scale 1;
    - ``curvature = c' N``: along a standardised column (2 for mse "mean", 1 "half_mean", 2N "sum"; bce c N / 4);
    - ``floor = eps^(1/4) * (J_const + eps * J_0)``: ``J_const`` the objective of the best constant model
      (``c N var(y)`` for mse, ``c N H(mean(y))`` for bce; the model 0 without an intercept), ``J_0`` the zero
      model's; per output column with ``per_output``, else summed.

    ``count``: the row weights' sum over all m rows (default: m, or the weights' sum). ValueError: overflow."""
    m = X.shape[0]
    idx, Xs, w, _, _ = _sample(X, sample_weight, max_rows)
    Y = _host_rows(y, idx).reshape(len(idx), -1)
    # Non-finite values are the data checks' to report, with their row; here they only must not crash.
    Xs, Y = (np.where(np.isfinite(a), a, 0) for a in (Xs, Y))
    if count is None:
        count = m if sample_weight is None else float(_host_rows(sample_weight, np.arange(m)).sum())
    big = np.max(np.abs(Xs), axis=0) if len(Xs) else np.zeros(Xs.shape[1])
    finfo = np.finfo(dtype)
    if np.any(big * big * count > float(finfo.max)):
        j = int(np.argmax(big))
        raise ValueError(f"column {j} of X has values up to {big[j]:.3g}, whose squares summed over {count:g} rows "
                         f"overflow {np.dtype(dtype)}: rescale that column (e.g. divide it by "
                         f"{10 ** int(np.log10(big[j])):.0e}) or fit in float64 (jax_enable_x64)")
    s = scaling_of(np, Xs, Y, w, count, loss=loss, reduction=reduction, fit_intercept=fit_intercept,
                   per_output=per_output, eps=float(finfo.eps), tiny=float(finfo.tiny))
    return Scaling(*(np.asarray(v, dtype) for v in s))


def scaling_of(xp, X, Y, w, count, *, loss, reduction, fit_intercept, per_output, eps, tiny) -> Scaling:
    """The formulas of :func:`scaling` on rows X (s, n), targets Y (s, k) and weights w (s,), with
    ``xp`` numpy (a sample, on the host) or jax.numpy (every row, traced: :func:`gradfit.solve`)."""
    total = xp.sum(w)
    mean = w @ X / total
    std = xp.sqrt(xp.maximum(w @ (X - mean[None, :]) ** 2 / total, 0.0))
    spread = std if fit_intercept else xp.sqrt(mean**2 + std**2)
    flat = (spread == 0) | (spread <= 1e-12 * xp.abs(mean))
    c_n = losses.reduction_scale(reduction, count) * count  # c N
    ybar = w @ Y / total
    if loss == "mse":
        zero = w @ Y**2 / total
        const = w @ (Y - ybar[None, :]) ** 2 / total if fit_intercept else zero
    else:
        p = xp.clip(ybar, 0.0, 1.0)
        safe = lambda q: xp.log(xp.where(q > 0, q, 1.0))  # noqa: E731 (0 log 0 = 0)
        zero = xp.full_like(p, xp.log(2.0))
        const = -(p * safe(p) + (1 - p) * safe(1 - p)) if fit_intercept else zero
    floor = eps**0.25 * c_n * (const + eps * zero)
    return Scaling(mean if fit_intercept else xp.zeros_like(mean), xp.where(flat, 1.0, spread),
                   (2.0 if loss == "mse" else 0.25) * c_n, xp.maximum(floor if per_output else xp.sum(floor), tiny))


def condition_limit(dtype) -> float:
    """The condition number above which :func:`check_conditioning` warns: ``ACCURACY / eps``."""
    return ACCURACY / float(np.finfo(dtype).eps)


def check_conditioning(X, dtype, *, batched: bool = False, stacklevel: int = 2, **kwargs) -> float:
    """:func:`conditioning` (of the first 8 problems when ``batched``); :class:`IllConditionedWarning` with cause
    and remedies when ``eps(dtype) * condition > ACCURACY``. Returns the largest (NaN: X over processes)."""
    sw = kwargs.pop("sample_weight", None)
    if isinstance(X, jax.Array) and not X.is_fully_addressable:
        return float("nan")  # rows spread over several processes: not sampled from here
    problems = [(X[i], None if sw is None else sw[i]) for i in range(min(X.shape[0], 8))] if batched else [(X, sw)]
    worst = max((conditioning(x, sample_weight=w, **kwargs) for x, w in problems), key=lambda c: c.condition)
    limit = condition_limit(dtype)
    if worst.condition > limit:
        warnings.warn(_conditioning_message(worst, np.dtype(dtype), limit), IllConditionedWarning,
                      stacklevel=stacklevel + 1)
    return worst.condition


def _conditioning_message(c: Conditioning, dtype: np.dtype, limit: float) -> str:
    accuracy = min(float(np.finfo(dtype).eps) * c.condition, 1)
    why = [f"column scales differ by {c.scale_spread:.1e}x"] if c.scale_spread > SCALE_SPREAD else []
    why += [f"column means are up to {c.offset:.1e} standard deviations from 0"] if c.offset > OFFSET else []
    remedies = [f"{' and '.join(why)}. Remedy: standardise X, e.g. (X - X.mean(0)) / X.std(0)" if why else
                "strongly correlated columns. Remedy: add an l2 penalty (e.g. l2=1e-3) or drop redundant columns"]
    if dtype != np.float64:
        remedies.append("or fit in float64 (float64 X with jax_enable_x64 on; in the CLI, data.dtype='float64')")
    remedies.append("and keep the learning rate below 2/L (learning_rate='auto' uses 1/L)")
    return (f"X is ill-conditioned for {dtype}: the objective's Hessian has condition number ~{c.condition:.1e} "
            f"(from {c.rows} rows; above {limit:.1e}), so gradient descent needs ~{c.condition:.0e} steps and "
            f"{dtype} rounding limits the weights to ~{accuracy:.0e} relative accuracy. Cause: " + "; ".join(remedies))


def separated(params: Params, X, y, *, batched: bool = False, sample_weight=None) -> np.ndarray:
    """Whether ``params`` classify every positively weighted row with a margin (``z > 0`` where ``y = 1``, ``< 0``
    where ``y = 0``; soft targets give False), shape ``(B?, k?)``: then unpenalised bce has no minimiser."""

    def one(p, X, y, w):
        z = predict(p, X)
        ok = jnp.where(y == 1, z > 0, jnp.where(y == 0, z < 0, False))
        if w is not None:
            ok = ok | ((w == 0) if ok.ndim == 1 else (w == 0)[:, None])
        return jnp.all(ok, axis=0)

    X = jnp.asarray(X)
    y, w = jnp.asarray(y, _validation.float_dtype(X)), None if sample_weight is None else jnp.asarray(sample_weight)
    fn = jax.vmap(one, in_axes=(0, 0, 0, None if w is None else 0)) if batched else one
    return np.asarray(fn(params, X, y, w))


def separable_message(W_norm: float) -> str:
    return ("the classes are linearly separable (the fitted weights classify every training row correctly) and "
            "l2 = 0, so the logistic loss has no minimiser: the weights grow without bound as steps increase "
            f"(now ||W|| = {W_norm:.3g}). Reported as not converged; add a penalty (e.g. l2=1e-3) for a finite "
            "solution")


def lipschitz_from_stats(stats, *, loss: str = "mse", reduction: str = "mean", l2=0.0,
                         fit_intercept: bool = True, scaling: Scaling | None = None) -> float:
    """``L`` exactly from the ``"stats"`` plan's statistics ``A = [X - mu, 1]^T D [X - mu, 1]``: the top eigenvalue
    of ``H = c T^T A T + l2 P`` with ``T = [[I, 0], [mu^T, 1]]`` (``[I; mu^T]`` without an intercept), O(n^3) on
    the host; the largest over a leading batch axis. ``scaling``: ``T = [[diag(1/sigma), 0], [(mu - shift) /
    sigma, 1]]`` and ``P = diag(1/sigma^2)``."""
    gram, mu, count = (np.asarray(a, np.float64) for a in (stats.gram, stats.x_mean, stats.count))
    n = mu.shape[-1]
    shift, scale = (np.zeros(n), np.ones(n)) if scaling is None else (scaling.shift, scaling.scale)
    shift, scale = (np.asarray(a, np.float64).reshape(-1, n) for a in (shift, scale))
    penalty = float(np.max(np.asarray(l2, np.float64)))
    worst = 0.0
    for i, (G, x_mean, total) in enumerate(zip(gram.reshape(-1, *gram.shape[-2:]), mu.reshape(-1, n), count.flat)):
        sigma, offset = scale[i % len(scale)], shift[i % len(shift)]
        T = np.eye(n + 1, n + int(fit_intercept))
        T[:n, :n] /= sigma[:, None]
        T[n, :n] = (x_mean - offset) / sigma
        P = np.diag([*(1.0 / sigma**2)] + [0.0] * int(fit_intercept))
        H = _curvature_scale(loss, reduction, float(total)) * (T.T @ G[: n + 1, : n + 1] @ T) + penalty * P
        worst = max(worst, float(np.linalg.eigvalsh(H)[-1]))
    return worst
