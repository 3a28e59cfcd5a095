"""Hand-derived gradients of the losses, each cross-checked against ``jax.grad``.

Each function has the signature of its loss in :mod:`gradfit.losses` and returns
:class:`~gradfit.Params` holding ``(dJ/dW, dJ/db)``. They are written from the seeds'
closed forms, not derived by autodiff; :func:`check_gradients` compares the two.

Notation: X (m, n), y and yhat (m,) or (m, k), W (n,) or (n, k), b () or (k,),
``r = yhat - y`` the residual, ``c`` the reduction's scale.
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
    """Return (w * r, sum w) with w broadcast over outputs; (r, m) without weights."""
    if sample_weight is None:
        return r, r.shape[0]
    w = sample_weight if r.ndim == 1 else sample_weight[:, None]
    return w * r, jnp.sum(sample_weight)


# Blocks of X for X^T s: 256 KiB to 2 MiB of rows, nearest 1 MiB (measured at m = 2e6 on the
# 2-core development machine, n = 16, 64, 256: 7.5 ms, the one-read floor, inside that range;
# 12-20 ms below or above it, and 12 ms for the unblocked multiply-reduce).
_BLOCK_BYTES = (256 << 10, 1 << 20, 2 << 20)


@functools.lru_cache(maxsize=256)
def block_rows(m: int, n: int, itemsize: int, parts: int = 1) -> int:
    """Rows per block of :func:`xt_dot`: a divisor R of m with R n itemsize bytes in
    [256 KiB, 2 MiB], the nearest to 1 MiB, and m / R a multiple of ``parts`` (the devices
    the rows are split over, so that each device holds whole blocks). 0 when there is none,
    or when X is under two blocks: then :func:`xt_dot` does not block."""
    low, target, high = (max(1, b // max(1, n * itemsize)) for b in _BLOCK_BYTES)
    if m < 2 * low:
        return 0
    for distance in range(max(target - low, high - target) + 1):
        for rows in (target - distance, target + distance):
            if low <= rows <= high and m % rows == 0 and (m // rows) % parts == 0:
                return rows
    return 0


def xt_dot(X: jax.Array, s: jax.Array, *, parts: int = 1) -> jax.Array:
    """``X^T s`` for X (m, n) and s (m,) or (m, k): shape (n,) or (n, k), X read once in place.

    Never a transposed copy of X. The rows are cut into blocks of R = :func:`block_rows`
    rows (about 1 MiB each, a reshape, no copy), each block's ``X_b^T s_b`` is one small
    product that stays in cache, and the block results are summed:

        X^T s = sum_b X_b^T s_b,   X_b = X[bR:(b+1)R]

    XLA runs the blocks on all cores. Measured on the 2-core development machine
    (m = 2e6, n = 64, float32, ``scripts/bench.py``): 7.5 ms for one output, the time of one
    plain read of X, against 12 ms for the multiply-reduce ``sum_i x_i s_i`` and 18-28 ms
    for the ``dot_general`` over rows that autodiff emits; for k = 4 outputs 24 ms against
    52 ms. Without a suitable R (m prime, say) it is the multiply-reduce (one output) or the
    contraction over rows (k outputs); so it is on backends other than CPU, where the blocks
    were not measured (a GPU reduces over rows well). ``parts``: see :func:`block_rows`.

    X stored in a 16-bit float (bfloat16) with s in float32: ``sum_i float32(x_i) s_i`` as one
    fused multiply-reduce (a block product would first write a float32 copy of X).
    """
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
    k = s.shape[1]
    return jnp.einsum("brk,brn->bkn", s.reshape(-1, rows, k), X.reshape(-1, rows, n)).sum(0).T


def _linear_grad(X: jax.Array, scaled_residual: jax.Array, parts: int = 1) -> Params:
    """``(X^T s, sum_i s_i)``: the chain rule through ``yhat = X W + b`` for dJ/dyhat = s."""
    s = scaled_residual
    return Params(W=xt_dot(X, s, parts=parts), b=jnp.sum(s, axis=0))


def _weighted_sum(per: jax.Array, sample_weight: jax.Array | None) -> jax.Array:
    """``sum_i w_i per_i`` over rows and outputs (``sum per`` without weights)."""
    if sample_weight is None:
        return jnp.sum(per)
    return jnp.sum(sample_weight * (per if per.ndim == 1 else jnp.sum(per, axis=-1)))


def mse_value_and_grad(params: Params, X: jax.Array, y: jax.Array, *, reduction: str = "mean",
                       sample_weight: jax.Array | None = None, parts: int = 1) -> tuple[jax.Array, Params]:
    """``(J, dJ/dp)`` of :func:`gradfit.losses.mse` in closed form, sharing ``yhat = X W + b``.

    With ``r = yhat - y`` and the reduction's scale c (1/N "mean", 1/(2N) "half_mean",
    1 "sum"; N = m or the sum of the weights):

    - ``J = c sum_i ||r_i||^2``;
    - ``dW = 2c X^T r``, ``db = 2c sum_i r_i``. For "mean" (the Q&A seed) that is the seed's
      ``dW = -(2/m) X^T (Y - Yhat)``, ``db = -(2/m) sum(Y - Yhat)``; for "half_mean" (the
      notes seed, samples in columns there) ``dW = (1/m) X^T r``, the seed's
      ``(1/m) X (h - y)^T``; for "sum" (the blog seed) ``dW = 2 X^T r``: the blog writes
      ``dL/dM = -2 (g - y) x^T`` for one sample with ``M`` (k, n); our ``W = M^T``, so
      ``dW = -2 x (g - y)^T`` summed over samples, the same numbers transposed.

    X is read twice (``X W`` and :func:`xt_dot`), never transposed in memory.
    Shapes: X (m, n); y (m,) with W (n,), b (), or (m, k) with W (n, k), b (k,); dW like W,
    db like b. ``parts``: see :func:`block_rows`.
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
    """``(J, dJ/dp)`` of :func:`gradfit.losses.bce` in closed form (the notes seed).

    With ``z = X W + b`` and ``a = sigmoid(z)``, ``dJ/dz_i = c (a_i - y_i)`` because
    ``sigmoid' = a (1 - a)`` cancels the cross-entropy's denominators. Hence

    ``dW = c X^T (a - y)``, ``db = c sum_i (a_i - y_i)``, ``c = 1/m`` ("mean") or 1 ("sum"),

    the seed's ``(1/m) X (a - y)^T`` with samples in rows. The loss and ``a`` come from one
    exponential per element (:func:`gradfit.losses.bce_terms`). Shapes as
    :func:`mse_value_and_grad`.
    """
    losses._check_reduction(reduction, losses.BCE_REDUCTIONS, "bce")
    z = predict(params, X)
    losses._check_target_shape(z, y)
    per, a = losses.bce_terms(z, y)
    wr, count = _weighted(a - y, sample_weight)
    scale = losses.reduction_scale(reduction, count)
    return scale * _weighted_sum(per, sample_weight), _linear_grad(X, scale * wr, parts)


def mse(params: Params, X: jax.Array, y: jax.Array, *, reduction: str = "mean",
        sample_weight: jax.Array | None = None) -> Params:
    """Gradient of :func:`gradfit.losses.mse`, in closed form: ``(dW, db)`` of
    :func:`mse_value_and_grad` (``dW = 2c X^T r``, ``db = 2c sum_i r_i``, r = yhat - y)."""
    return mse_value_and_grad(params, X, y, reduction=reduction, sample_weight=sample_weight)[1]


def bce(params: Params, X: jax.Array, y: jax.Array, *, reduction: str = "mean",
        sample_weight: jax.Array | None = None) -> Params:
    """Gradient of :func:`gradfit.losses.bce`, in closed form: ``(dW, db)`` of
    :func:`bce_value_and_grad` (``dW = c X^T (sigmoid(z) - y)``, ``db = c sum_i (sigmoid(z_i) - y_i)``)."""
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


def _relative_error(a: Params, b: Params) -> tuple[float, float]:
    abs_err = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(a, b))
    scale = max(float(jnp.max(jnp.abs(y))) for y in b)
    return abs_err, abs_err / max(scale, np.finfo(np.float64).tiny)


def check_gradients(*, shapes: tuple[tuple[int, int, int | None], ...] = ((7, 3, None), (16, 5, 1), (33, 4, 3)),
                    dtypes: tuple[str, ...] | None = None, seed: int = 0,
                    rtol: dict[str, float] | None = None) -> list[GradientCheck]:
    """Compare the hand-derived gradients with ``jax.grad`` of the losses.

    For every loss, reduction, dtype and ``(m, n, k)`` shape (k None for one output), draw
    random X, y and params, and compute the max relative error
    ``max |hand - autodiff| / max |autodiff|`` over W and b. Returns one
    :class:`GradientCheck` per case; ``ok`` is error <= tolerance (1e-10 for float64,
    1e-4 for float32 by default). float64 rows need ``jax_enable_x64``; without it they
    are left out.
    """
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
        params = Params(jnp.asarray(rng.standard_normal((n, *out)), dtype), jnp.asarray(rng.standard_normal(out), dtype))
        for reduction in reductions:
            auto = jax.grad(losses.LOSSES[loss_name])(params, X, y, reduction=reduction)
            hand = GRADIENTS[loss_name](params, X, y, reduction=reduction)
            abs_err, rel_err = _relative_error(hand, auto)
            tol = tolerances[dtype]
            rows.append(GradientCheck(loss_name, reduction, dtype, m, n, k, abs_err, rel_err, tol, rel_err <= tol))
    return rows


def format_table(rows: list[GradientCheck]) -> str:
    """Render :func:`check_gradients` rows as a fixed-width text table."""
    head = f"{'loss':<5} {'reduction':<10} {'dtype':<8} {'m':>4} {'n':>3} {'k':>4} {'max abs err':>12} {'max rel err':>12} {'tol':>8}  ok"
    lines = [head, "-" * len(head)]
    for r in rows:
        k = "-" if r.k is None else str(r.k)
        lines.append(
            f"{r.loss:<5} {r.reduction:<10} {r.dtype:<8} {r.m:>4} {r.n:>3} {k:>4} "
            f"{r.max_abs_error:>12.3e} {r.max_rel_error:>12.3e} {r.tolerance:>8.0e}  {'yes' if r.ok else 'NO'}"
        )
    return "\n".join(lines)
