"""Loss and gradient in one pass over X: forward and backward per block of rows.

Autodiff of ``loss(X @ W + b)`` reads X twice per step (``z = X W``, then ``X^T dJ/dz``). Here
the rows are cut into blocks of about 2 MiB, which stay in cache between the two products:

    for each block b of rows (X_b (B, n), y_b, w_b):
        z_b  = X_b W + b                                   (B, k)
        per  = w_b * loss_i(z_b, y_b);  s_b = w_b * dloss/dz(z_b, y_b)
        J   += sum(per);   dW += X_b^T s_b;   db += sum_rows(s_b)

    mse: loss_i = ||z_i - y_i||^2,                 dloss/dz = 2 (z_i - y_i)
    bce: loss_i = y softplus(-z) + (1-y) softplus(z), dloss/dz = sigmoid(z_i) - y_i
         (both by gradfit.losses.bce_terms)

and the reduction's scale c (1/N "mean", 1/(2N) "half_mean", 1 "sum", N = sum of weights or m) multiplies J, dW and
db at the end. A ``lax.fori_loop`` over full blocks plus one static tail: any m, no padding. On XLA:CPU the loop runs
on one core (``docs/benchmarks.md``), so ``"auto"`` picks ``"hand"``; this plan is for memory-bound hosts and the
one-read reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradfit import losses
from gradfit._types import Params

_BLOCK_BYTES = 2 << 20  # ~2 MiB of X per block (a per-core L2; 8192+ rows at n = 64 measured best)


def block_rows(n: int, itemsize: int, m: int) -> int:
    """Rows per block: ~2 MiB of X (at least 64 rows, at most m)."""
    return int(max(1, min(m, max(64, _BLOCK_BYTES // max(1, n * itemsize)))))


def _per_row(loss: str, z: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(per-element loss, dloss/dz), each shaped like z."""
    if loss == "mse":
        r = z - y
        return r * r, 2 * r
    per, a = losses.bce_terms(z, y)
    return per, a - y


def value_and_grad(params: Params, X: jax.Array, y: jax.Array, *, loss: str, reduction: str = "mean",
                   sample_weight: jax.Array | None = None, block: int | None = None) -> tuple[jax.Array, Params]:
    """``(J, dJ/dp)`` of :func:`gradfit.losses.mse` or ``bce`` reading X once (module docstring).
    Shapes: X (m, n); y (m,) with W (n,), b (), or y (m, k) with W (n, k), b (k,). Jittable,
    ``vmap``-able; ``block`` rows per block (default :func:`block_rows`)."""
    m, n = X.shape
    dtype = params.W.dtype  # X may be stored in a 16-bit float (gradfit._precision)
    block = min(block_rows(n, dtype.itemsize, m) if block is None else block, m)

    def one_block(start, size, carry):
        total, gW, gb = carry
        Xb = jax.lax.dynamic_slice_in_dim(X, start, size).astype(dtype)  # a 16-bit X: upcast in cache
        yb = jax.lax.dynamic_slice_in_dim(y, start, size)
        z = Xb @ params.W
        z = z + (params.b if z.ndim == 1 else params.b[None, :])
        per, s = _per_row(loss, z, yb)
        if sample_weight is not None:
            wb = jax.lax.dynamic_slice_in_dim(sample_weight, start, size)
            wb = wb if z.ndim == 1 else wb[:, None]
            per, s = per * wb, s * wb
        gW = gW + jax.lax.dot_general(Xb, s, (((0,), (0,)), ((), ())))
        return total + jnp.sum(per), gW, gb + jnp.sum(s, axis=0)

    carry = (jnp.zeros((), dtype), jnp.zeros_like(params.W), jnp.zeros_like(params.b))
    n_full, tail = divmod(m, block)
    carry = jax.lax.fori_loop(0, n_full, lambda i, c: one_block(i * block, block, c), carry)
    total, gW, gb = one_block(n_full * block, tail, carry) if tail else carry
    count = m if sample_weight is None else jnp.sum(sample_weight)
    scale = losses.reduction_scale(reduction, count)
    return scale * total, Params(scale * gW, scale * gb)
