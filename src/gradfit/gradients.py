"""Hand-derived gradients of :mod:`gradfit.losses` (same signatures), from the seeds' closed forms,
as :class:`~gradfit.Params` ``(dJ/dW, dJ/db)``; :func:`check_gradients` compares them with ``jax.grad``.
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradfit import losses
from gradfit._params import predict, upcast_xt_dot
from gradfit._types import Params


def _weighted(r: jax.Array, sample_weight: jax.Array | None) -> tuple[jax.Array, jax.Array | int]:
    """(w * r, sum w), w broadcast over outputs; (r, m) without weights."""
    if sample_weight is None:
        return r, r.shape[0]
    w = sample_weight if r.ndim == 1 else sample_weight[:, None]
    return w * r, jnp.sum(sample_weight)


# Blocks of X for X^T s: 256 KiB to 2 MiB, nearest 1 MiB (the one-read floor on 2 CPU cores, m = 2e6).
_BLOCK_BYTES = (256 << 10, 1 << 20, 2 << 20)


@functools.lru_cache(maxsize=256)
def block_rows(m: int, n: int, itemsize: int, parts: int = 1) -> int:
    """Rows per block of :func:`xt_dot`: a divisor R of m with R n itemsize bytes in [256 KiB, 2 MiB],
    nearest 1 MiB, m / R a multiple of ``parts`` (devices); 0 if none or X is under two blocks."""
    low, target, high = (max(1, b // max(1, n * itemsize)) for b in _BLOCK_BYTES)
    if m < 2 * low:
        return 0
    for distance in range(max(target - low, high - target) + 1):
        for rows in (target - distance, target + distance):
            if low <= rows <= high and m % rows == 0 and (m // rows) % parts == 0:
                return rows
    return 0


def xt_dot(X: jax.Array, s: jax.Array, *, parts: int = 1) -> jax.Array:
    """``X^T s`` for X (m, n) and s (m,) or (m, k): shape (n,) or (n, k), X read once in place, never
    transposed. On CPU, ``sum_b X_b^T s_b`` over blocks of R = :func:`block_rows` rows (cache-resident
    products); else, or without such R, a multiply-reduce or contraction. A 16-bit X: one fused upcast."""
    m, n = X.shape
    if X.dtype != s.dtype:  # X stored in a 16-bit float: a fused convert-multiply-reduce, no copy of X
        return upcast_xt_dot(X, s)
    rows = block_rows(m, n, X.dtype.itemsize, parts) if jax.default_backend() == "cpu" else 0
    if s.ndim == 1:
        if not rows:
            return jnp.sum(X * s[:, None], axis=0)
        return jnp.einsum("brn,br->bn", X.reshape(-1, rows, n), s.reshape(-1, rows)).sum(0)
    if not rows:
        return jnp.tensordot(X, s, axes=(0, 0))
    return jnp.einsum("brk,brn->bkn", s.reshape(-1, rows, s.shape[1]), X.reshape(-1, rows, n)).sum(0).T


def _linear_grad(X: jax.Array, s: jax.Array, parts: int = 1) -> Params:
    """``(X^T s, sum_i s_i)``: the chain rule through ``yhat = X W + b`` for dJ/dyhat = s."""
    return Params(W=xt_dot(X, s, parts=parts), b=jnp.sum(s, axis=0))


def _weighted_sum(per: jax.Array, sample_weight: jax.Array | None) -> jax.Array:
    """``sum_i w_i per_i`` over rows and outputs (``sum per`` without weights)."""
    if sample_weight is None:
        return jnp.sum(per)
    return jnp.sum(sample_weight * (per if per.ndim == 1 else jnp.sum(per, axis=-1)))


def mse_value_and_grad(params: Params, X: jax.Array, y: jax.Array, *, reduction: str = "mean",
                       sample_weight: jax.Array | None = None, parts: int = 1) -> tuple[jax.Array, Params]:
    """``(J, dJ/dp)`` of :func:`gradfit.losses.mse` in closed form, sharing ``yhat = X W + b``.

    With ``r = yhat - y`` and the reduction's scale c (1/N "mean", 1/(2N) "half_mean", 1 "sum";
    N = m or the sum of the weights): ``J = c sum_i ||r_i||^2``, ``dW = 2c X^T r``, ``db = 2c sum_i r_i``.
    "mean" (the Q&A seed): ``dW = -(2/m) X^T (Y - Yhat)``, ``db = -(2/m) sum(Y - Yhat)``; "half_mean"
    (the notes seed, samples in columns): ``dW = (1/m) X^T r``, its ``(1/m) X (h - y)^T``; "sum" (the
    blog seed, ``y = M x + b`` with M (k, n), ``dL/dM = -2 (g - y) x^T`` per sample): ``W = M^T``, so
    ``dW = 2 X^T r``, the same numbers transposed.

    Shapes: X (m, n); y (m,) with W (n,), b (), or (m, k) with W (n, k), b (k,); dW like W, db like b.
    X is read twice, never transposed; ``parts``: :func:`block_rows`.
    """
    losses._check_reduction(reduction, losses.MSE_REDUCTIONS, "mse")
    yhat = predict(params, X)
    losses._check_target_shape(yhat, y)
    r = yhat - y
    wr, count = _weighted(r, sample_weight)
    scale = losses.reduction_scale(reduction, count)
    value = scale * _weighted_sum(r * r, sample_weight)
    return value, _linear_grad(X, (2 * scale) * wr, parts)


def bce_value_and_grad(params: Params, X: jax.Array, y: jax.Array, *, reduction: str = "mean",
                       sample_weight: jax.Array | None = None, parts: int = 1) -> tuple[jax.Array, Params]:
    """``(J, dJ/dp)`` of :func:`gradfit.losses.bce` in closed form (the notes seed): with ``z = X W + b``,
    ``a = sigmoid(z)``, ``dJ/dz_i = c (a_i - y_i)`` (``sigmoid' = a (1 - a)`` cancels the denominators),
    so ``dW = c X^T (a - y)``, ``db = c sum_i (a_i - y_i)``, ``c = 1/m`` ("mean") or 1 ("sum"): the
    seed's ``(1/m) X (a - y)^T`` with samples in rows. Shapes as :func:`mse_value_and_grad`."""
    losses._check_reduction(reduction, losses.BCE_REDUCTIONS, "bce")
    z = predict(params, X)
    losses._check_target_shape(z, y)
    per, a = losses.bce_terms(z, y)
    wr, count = _weighted(a - y, sample_weight)
    scale = losses.reduction_scale(reduction, count)
    return scale * _weighted_sum(per, sample_weight), _linear_grad(X, scale * wr, parts)


def mse(params: Params, X: jax.Array, y: jax.Array, *, reduction: str = "mean",
        sample_weight: jax.Array | None = None) -> Params:
    """Gradient of :func:`gradfit.losses.mse`: ``dW = 2c X^T r``, ``db = 2c sum_i r_i``, r = yhat - y."""
    return mse_value_and_grad(params, X, y, reduction=reduction, sample_weight=sample_weight)[1]


def bce(params: Params, X: jax.Array, y: jax.Array, *, reduction: str = "mean",
        sample_weight: jax.Array | None = None) -> Params:
    """Gradient of :func:`gradfit.losses.bce`: ``dW = c X^T (a - y)``, ``db = c sum_i (a_i - y_i)``, a = sigmoid(z)."""
    return bce_value_and_grad(params, X, y, reduction=reduction, sample_weight=sample_weight)[1]


def l2_penalty(params: Params, l2: jax.Array | float) -> Params:
    """Gradient of ``(l2/2) ||W||^2``: ``(l2 W, 0)``."""
    return Params(W=l2 * params.W, b=jnp.zeros_like(params.b))


GRADIENTS = {"mse": mse, "bce": bce}
VALUE_AND_GRADIENTS = {"mse": mse_value_and_grad, "bce": bce_value_and_grad}


class GradientCheck(NamedTuple):
    """One row of :func:`check_gradients`' table (k is None for one output)."""

    loss: str
    reduction: str
    dtype: str
    m: int
    n: int
    k: int | None
    max_abs_error: float
    max_rel_error: float
    tolerance: float
    ok: bool


def check_gradients(*, shapes: tuple[tuple[int, int, int | None], ...] = ((7, 3, None), (16, 5, 1), (33, 4, 3)),
                    dtypes: tuple[str, ...] | None = None, seed: int = 0,
                    rtol: dict[str, float] | None = None) -> list[GradientCheck]:
    """Compare the hand-derived gradients with ``jax.grad`` of the losses on random data: per loss,
    reduction, dtype and ``(m, n, k)`` shape, ``max |hand - autodiff| / max |autodiff|`` over W and b,
    ``ok`` when <= tolerance (1e-10 float64, only with ``jax_enable_x64``; 1e-4 float32)."""
    if dtypes is None:
        dtypes = ("float32", "float64") if jax.config.jax_enable_x64 else ("float32",)
    tolerances = {"float32": 1e-4, "float64": 1e-10, **(rtol or {})}
    rng = np.random.default_rng(seed)
    rows = []
    for (loss_name, reductions), dtype, (m, n, k) in itertools.product(losses.REDUCTIONS.items(), dtypes, shapes):
        out = () if k is None else (k,)
        X = jnp.asarray(rng.standard_normal((m, n)), dtype)
        y = rng.standard_normal((m, *out))
        y = jnp.asarray(rng.random((m, *out)) if loss_name == "bce" else y, dtype)
        params = Params(jnp.asarray(rng.standard_normal((n, *out)), dtype),
                        jnp.asarray(rng.standard_normal(out), dtype))
        for reduction in reductions:
            auto = jax.grad(losses.LOSSES[loss_name])(params, X, y, reduction=reduction)
            hand = GRADIENTS[loss_name](params, X, y, reduction=reduction)
            abs_err = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(hand, auto))
            rel_err = abs_err / max(max(float(jnp.max(jnp.abs(y))) for y in auto), np.finfo(np.float64).tiny)
            tol = tolerances[dtype]
            rows.append(GradientCheck(loss_name, reduction, dtype, m, n, k, abs_err, rel_err, tol, rel_err <= tol))
    return rows


def format_table(rows: list[GradientCheck]) -> str:
    """Render :func:`check_gradients` rows as a fixed-width text table."""
    head = (f"{'loss':<5} {'reduction':<10} {'dtype':<8} {'m':>4} {'n':>3} {'k':>4} "
            f"{'max abs err':>12} {'max rel err':>12} {'tol':>8}  ok")
    return "\n".join([head, "-" * len(head)] + [
        f"{r.loss:<5} {r.reduction:<10} {r.dtype:<8} {r.m:>4} {r.n:>3} {'-' if r.k is None else r.k:>4} "
        f"{r.max_abs_error:>12.3e} {r.max_rel_error:>12.3e} {r.tolerance:>8.0e}  {'yes' if r.ok else 'NO'}"
        for r in rows])
