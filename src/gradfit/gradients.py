"""Hand-derived gradients of the losses, each cross-checked against ``jax.grad``.

Each function has the signature of its loss in :mod:`gradfit.losses` and returns
:class:`~gradfit.Params` holding ``(dJ/dW, dJ/db)``. They are written from the seeds'
closed forms, not derived by autodiff; :func:`check_gradients` compares the two.

Notation: X (m, n), y and yhat (m,) or (m, k), W (n,) or (n, k), b () or (k,),
``r = yhat - y`` the residual, ``c`` the reduction's scale.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradfit import losses
from gradfit._params import Params, predict


def _weighted(r: jax.Array, sample_weight: jax.Array | None) -> tuple[jax.Array, jax.Array | int]:
    """Return (w * r, sum w) with w broadcast over outputs; (r, m) without weights."""
    if sample_weight is None:
        return r, r.shape[0]
    w = sample_weight if r.ndim == 1 else sample_weight[:, None]
    return w * r, jnp.sum(sample_weight)


def _linear_grad(X: jax.Array, scaled_residual: jax.Array) -> Params:
    """``(X^T s, sum_i s_i)``: the chain rule through ``yhat = X W + b`` for dJ/dyhat = s.

    ``X^T s`` reads X in place, never a transposed copy. For one output it is written as the
    reduction ``sum_i x_i s_i`` (one fused multiply-reduce), which XLA:CPU runs at about
    twice the bandwidth of the transposed matrix-vector product autodiff emits (measured:
    ~14 ms against ~28 ms for X of 512 MB on 2 cores; see ``docs/benchmarks.md``); for k
    outputs it is a contraction over the rows of both operands.
    """
    s = scaled_residual
    W = jnp.sum(X * s[:, None], axis=0) if s.ndim == 1 else jnp.tensordot(X, s, axes=(0, 0))
    return Params(W=W, b=jnp.sum(s, axis=0))


def mse(
    params: Params,
    X: jax.Array,
    y: jax.Array,
    *,
    reduction: str = "mean",
    sample_weight: jax.Array | None = None,
) -> Params:
    """Gradient of :func:`gradfit.losses.mse`, in closed form.

    With ``r = yhat - y``:

    - ``"mean"`` (the Q&A seed): ``dW = (2/m) X^T r``, ``db = (2/m) sum_i r_i``, which is
      the seed's ``dW = -(2/m) X^T (Y - Yhat)``, ``db = -(2/m) sum(Y - Yhat)``;
    - ``"half_mean"`` (the notes seed, samples in columns there):
      ``dW = (1/m) X^T r``, ``db = (1/m) sum_i r_i``, the seed's ``(1/m) X (h - y)^T``;
    - ``"sum"`` (the blog seed): ``dW = 2 X^T r``, ``db = 2 sum_i r_i``. The blog writes
      ``dL/dM = -2 (g - y) x^T`` for one sample with ``M`` (k, n); our ``W = M^T``, so
      ``dW = -2 x (g - y)^T`` summed over samples, the same numbers transposed.

    Shapes: dW like W, (n,) or (n, k); db like b, () or (k,).
    """
    losses._check_reduction(reduction, losses.MSE_REDUCTIONS, "mse")
    yhat = predict(params, X)
    losses._check_target_shape(yhat, y)
    wr, count = _weighted(yhat - y, sample_weight)
    scale = {"mean": 2 / count, "half_mean": 1 / count, "sum": 2}[reduction]
    return _linear_grad(X, scale * wr)


def bce(
    params: Params,
    X: jax.Array,
    y: jax.Array,
    *,
    reduction: str = "mean",
    sample_weight: jax.Array | None = None,
) -> Params:
    """Gradient of :func:`gradfit.losses.bce`, in closed form (the notes seed).

    With ``z = X W + b`` and ``a = sigmoid(z)``, ``dJ/dz_i = c (a_i - y_i)`` because
    ``sigmoid' = a (1 - a)`` cancels the cross-entropy's denominators. Hence

    ``dW = c X^T (a - y)``, ``db = c sum_i (a_i - y_i)``, ``c = 1/m`` ("mean") or 1 ("sum"),

    the seed's ``(1/m) X (a - y)^T`` with samples in rows.
    """
    losses._check_reduction(reduction, losses.BCE_REDUCTIONS, "bce")
    z = predict(params, X)
    losses._check_target_shape(z, y)
    wr, count = _weighted(jax.nn.sigmoid(z) - y, sample_weight)
    scale = 1 / count if reduction == "mean" else 1
    return _linear_grad(X, scale * wr)


def l2_penalty(params: Params, l2: jax.Array | float) -> Params:
    """Gradient of ``(l2/2) ||W||^2``: ``(l2 W, 0)``."""
    return Params(W=l2 * params.W, b=jnp.zeros_like(params.b))


GRADIENTS = {"mse": mse, "bce": bce}


class GradientCheck(NamedTuple):
    """One row of :func:`check_gradients`' table."""

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


def check_gradients(
    *,
    shapes: tuple[tuple[int, int, int | None], ...] = ((7, 3, None), (16, 5, 1), (33, 4, 3)),
    dtypes: tuple[str, ...] | None = None,
    seed: int = 0,
    rtol: dict[str, float] | None = None,
) -> list[GradientCheck]:
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
    for (loss_name, reductions), dtype, (m, n, k) in itertools.product(
        losses.REDUCTIONS.items(), dtypes, shapes
    ):
        out = () if k is None else (k,)
        X = jnp.asarray(rng.standard_normal((m, n)), dtype)
        y = rng.standard_normal((m, *out))
        y = jnp.asarray(rng.random((m, *out)) if loss_name == "bce" else y, dtype)
        params = Params(
            jnp.asarray(rng.standard_normal((n, *out)), dtype),
            jnp.asarray(rng.standard_normal(out), dtype),
        )
        for reduction in reductions:
            loss_fn = losses.LOSSES[loss_name]
            auto = jax.grad(loss_fn)(params, X, y, reduction=reduction)
            hand = GRADIENTS[loss_name](params, X, y, reduction=reduction)
            abs_err, rel_err = _relative_error(hand, auto)
            tol = tolerances[dtype]
            rows.append(
                GradientCheck(loss_name, reduction, dtype, m, n, k, abs_err, rel_err, tol, rel_err <= tol)
            )
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
