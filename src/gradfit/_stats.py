"""MSE by sufficient statistics: one pass over X, then every step costs O(n^2 k), whatever m is.

For the squared error, every quantity a gradient step needs is a function of a few moments
of the data. With row weights w_i (1 without ``sample_weight``), ``N = sum_i w_i``, the
weighted column means ``mu = sum_i w_i x_i / N`` and ``nu = sum_i w_i y_i / N``, and the
*augmented, centred* rows ``z_i = [x_i - mu, 1, y_i - nu]`` of length ``p = n + 1 + k``,
one pass over the rows computes the weighted Gram matrix

    G = sum_i w_i z_i^T z_i  (p, p)  =  [[ Xc^T D Xc    Xc^T D 1    Xc^T D Yc ]
                                         [ 1^T D Xc     N           1^T D Yc  ]
                                         [ Yc^T D Xc    Yc^T D 1    Yc^T D Yc ]]

(Xc = X - mu, Yc = y - nu, D = diag(w)): X^T X, X^T y, y^T y, the column sums, sum y and N,
in the centred coordinates. Write the model in those coordinates,
``yhat_i = (x_i - mu) W + bh`` with ``bh = b + mu W - nu`` (so ``x_i W + b - y_i =
(x_i - mu) W + bh - (y_i - nu)``), and stack ``v = [W; bh]`` (n + 1, k). Then with
``A = G[:n+1, :n+1]`` and ``c = G[:n+1, n+1:]``,

    S(W, b) = sum_i w_i ||x_i W + b - y_i||^2 = v^T A v - 2 v^T c + tr(Yc^T D Yc)
            = (v - v*)^T A (v - v*) + rss,        v* = A^+ c,  rss = S at v*.

gradfit evaluates the second form, with ``A = Q diag(lam) Q^T`` factored once:
``S = sum_j lam_j ||(Q^T (v - v*))_j||^2 + rss``, ``dS/dv = 2 Q diag(lam) Q^T (v - v*)``,
and by the chain rule through bh: ``dS/dW = dS/dv[:n] + mu^T dS/dv[n]``,
``dS/db = dS/dv[n]``. The reductions scale S as in :mod:`gradfit.losses` (1/N "mean",
1/(2N) "half_mean", 1 "sum"). Each step is two (n+1)x(n+1) by (n+1)xk products: O(n^2 k).

Numerics (why this form, in the input dtype, float32 included):

- *Centring.* The Gram of raw X with an intercept column has condition number growing with
  ``|mean|/std`` squared; centring first (a cheap first pass for mu, nu) removes that. The
  ones column is kept in G, so a shift that is not exactly the mean (rounding) is still exact.
- *Accumulation.* Each block of rows (about 4 MiB of z) is one Gram product in the input
  dtype; the blocks' products are added with Kahan compensation, so the sum over m/B blocks
  adds no error that grows with m (what remains is the in-block error, ~ sqrt(B) eps).
- *No cancellation in the loss.* The naive ``v^T A v - 2 v^T c + y^T y`` subtracts numbers of
  size ``y^T y`` to get a residual that may be orders of magnitude smaller (relative error
  ~ eps / (1 - R^2)). The form above is a sum of non-negative terms plus the constant rss,
  so the *decrease* of the loss, which drives the ``tol`` test and line searches, is computed
  to working precision. The constant ``rss`` is not taken from the Gram (``tr(Yc^T D Yc) -
  c^T A^+ c`` would cancel to an absolute error of ~ eps * y^T y) but from one more read of
  X, as ``sum_i w_i ||x_i W* + b* - y_i||^2``: as accurate as the direct path's loss.
- *Rank deficiency.* Eigenvalues below ``p * eps * max(lam)`` are set to 0 (a constant or
  duplicated column): the gradient has no component there, exactly as ``X^T r`` has none.

The iterates equal full-batch gradient descent on the same objective up to rounding (tests
compare with the direct path and numpy in float64 to ~1e-10).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradfit._params import Params

# Rows per block of the Gram pass: about this many bytes of augmented rows, so a block stays
# in cache while its Gram product is formed.
_BLOCK_BYTES = 4 << 20


class Stats(NamedTuple):
    """Sufficient statistics of weighted least squares, factored for O(n^2 k) steps.

    Shapes for X (m, n), y (m,) [or (m, k)], ``q = n + 1``, ``p = n + 1 + k`` (k = 1 for 1-d y).
    """

    x_mean: jax.Array  # (n,) weighted column means of X (the centring shift mu)
    y_mean: jax.Array  # () [or (k,)] weighted means of y (nu)
    count: jax.Array  # () sum of weights N (m without sample_weight)
    gram: jax.Array  # (p, p) weighted Gram of [X - mu, 1, y - nu], see the module docstring
    eigvals: jax.Array  # (q,) eigenvalues of A = gram[:q, :q], small ones set to 0
    eigvecs: jax.Array  # (q, q) orthonormal eigenvectors of A (columns)
    solution: jax.Array  # (q,) [or (q, k)] v* = A^+ c: the least-squares [W; bh]
    rss: jax.Array  # () [or (k,)] residual sum of squares at v* (per output), >= 0

    @property
    def dtype(self):
        return self.gram.dtype


def block_rows(n_columns: int, itemsize: int, m: int) -> int:
    """Rows per block for the Gram pass: ~4 MiB of augmented rows, at least 256, at most m."""
    return int(max(1, min(m, max(256, _BLOCK_BYTES // max(1, n_columns * itemsize)))))


def _gram(Z: jax.Array, w: jax.Array | None) -> jax.Array:
    """``Z^T diag(w) Z`` as a contraction over rows (no transposed copy of Z)."""
    Zw = Z if w is None else Z * w[:, None]
    return jax.lax.dot_general(Zw, Z, (((0,), (0,)), ((), ())))


def sufficient_statistics(
    X: jax.Array,
    y: jax.Array,
    sample_weight: jax.Array | None = None,
    *,
    block: int | None = None,
) -> Stats:
    """One chunked pass over the rows: the centred weighted Gram matrix and its factors.

    Args:
      X: (m, n) features; y: (m,) or (m, k) targets; sample_weight: (m,) >= 0 or None.
      block: rows per block (default :func:`block_rows`); the last partial block is handled
        separately, so m need not be a multiple of it.

    Returns: a :class:`Stats`. Jittable and ``vmap``-able (shapes are static). Cost: three
    reads of X (the means, the Gram blocks at O(m p^2) flops, the residual at the
    least-squares solution) and O(n^3) for the eigendecomposition.
    """
    m, n = X.shape
    dtype = y.dtype  # X may be stored in a 16-bit float: each block is upcast in cache
    one_output = y.ndim == 1
    Y = y[:, None] if one_output else y
    k = Y.shape[1]
    p = n + 1 + k
    if block is None:
        block = block_rows(p, dtype.itemsize, m)
    block = min(block, m)

    def block_sums(fn, init):
        """``sum_b fn(X_b (upcast), Y_b, w_b)`` over row blocks (a 16-bit X is upcast per
        block in cache, never as a whole: gradfit._precision), or one whole-array call."""
        if X.dtype == dtype:
            return fn(X, Y, sample_weight)

        def one(start, size, acc):
            rows = lambda a: None if a is None else jax.lax.dynamic_slice_in_dim(a, start, size)  # noqa: E731
            return acc + fn(rows(X).astype(dtype), rows(Y), rows(sample_weight))

        n_full, tail = divmod(m, block)
        acc = jax.lax.fori_loop(0, n_full, lambda i, acc: one(i * block, block, acc), init)
        return one(n_full * block, tail, acc) if tail else acc

    if sample_weight is None:
        count = jnp.asarray(m, dtype)
        x_mean = block_sums(lambda Xb, Yb, wb: jnp.sum(Xb, axis=0), jnp.zeros(n, dtype)) / count
    else:
        count = jnp.sum(sample_weight)
        x_mean = block_sums(lambda Xb, Yb, wb: jnp.sum(Xb * wb[:, None], axis=0), jnp.zeros(n, dtype)) / count
    y_mean = (jnp.sum(Y, axis=0) if sample_weight is None else jnp.sum(Y * sample_weight[:, None], axis=0)) / count

    def block_gram(start, size):
        Xb = jax.lax.dynamic_slice_in_dim(X, start, size).astype(dtype)
        Yb = jax.lax.dynamic_slice_in_dim(Y, start, size)
        Z = jnp.concatenate([Xb - x_mean[None, :], jnp.ones((size, 1), dtype), Yb - y_mean[None, :]], axis=1)
        wb = None if sample_weight is None else jax.lax.dynamic_slice_in_dim(sample_weight, start, size)
        return _gram(Z, wb)

    def kahan_add(carry, term):
        total, comp = carry
        t = term - comp
        new = total + t
        return new, (new - total) - t

    n_full, tail = divmod(m, block)
    carry = (jnp.zeros((p, p), dtype), jnp.zeros((p, p), dtype))
    carry = jax.lax.fori_loop(0, n_full, lambda i, c: kahan_add(c, block_gram(i * block, block)), carry)
    if tail:
        carry = kahan_add(carry, block_gram(n_full * block, tail))
    gram = carry[0]
    gram = 0.5 * (gram + gram.T)

    eigvals, eigvecs, solution = _factor(gram, n)
    # rss from the Gram (y'y - c'A^+c) cancels to ~eps * y'y; one more read of X gives it
    # to the precision of the residuals themselves.
    W_s, bh = solution[:n], solution[n]
    shift = (bh - x_mean @ W_s + y_mean)[None, :]

    def squared_residuals(Xb, Yb, wb):
        r = Xb @ W_s + shift - Yb
        return jnp.sum(r * r if wb is None else r * r * wb[:, None], axis=0)

    rss = block_sums(squared_residuals, jnp.zeros(k, dtype))
    if one_output:
        y_mean, solution, rss = y_mean[0], solution[:, 0], rss[0]
    return Stats(x_mean, y_mean, count, gram, eigvals, eigvecs, solution, rss)


def _factor(gram: jax.Array, n: int):
    """Eigen-factor ``A = gram[:q, :q] = Q diag(lam) Q^T`` (small eigenvalues set to 0) and
    return (lam, Q, v* = A^+ c) with ``c = gram[:q, q:]``."""
    q = n + 1
    A = gram[:q, :q]
    c = gram[:q, q:]
    lam, Q = jnp.linalg.eigh(A)
    cutoff = gram.shape[0] * jnp.finfo(gram.dtype).eps * jnp.max(jnp.abs(lam))
    keep = lam > cutoff
    lam = jnp.where(keep, lam, 0)
    inv = jnp.where(keep, 1 / jnp.where(keep, lam, 1), 0)
    solution = Q @ (inv[:, None] * (Q.T @ c))
    return lam, Q, solution


def _scale(reduction: str, count):
    return {"mean": 1 / count, "half_mean": 0.5 / count, "sum": 1}[reduction]


def _centred(params: Params, stats: Stats) -> jax.Array:
    """``v = [W; b + mu W - nu]``, shape (n + 1,) or (n + 1, k)."""
    bh = params.b + stats.x_mean @ params.W - stats.y_mean
    return jnp.concatenate([params.W, bh[None]], axis=0)


def squared_error_sum(params: Params, stats: Stats) -> jax.Array:
    """``S = sum_i w_i ||x_i W + b - y_i||^2 = sum_j lam_j ||(Q^T (v - v*))_j||^2 + sum(rss)``."""
    d = _centred(params, stats) - stats.solution
    t = stats.eigvecs.T @ d
    lam = stats.eigvals if t.ndim == 1 else stats.eigvals[:, None]
    return jnp.sum(lam * t * t) + jnp.sum(stats.rss)


def loss(params: Params, stats: Stats, *, reduction: str = "mean") -> jax.Array:
    """The MSE of :func:`gradfit.losses.mse` (same reductions), from the statistics: O(n^2 k)."""
    return _scale(reduction, stats.count) * squared_error_sum(params, stats)


def value_and_grad(params: Params, stats: Stats, *, reduction: str = "mean") -> tuple[jax.Array, Params]:
    """``(J, dJ/dp)`` of the MSE from the statistics, in closed form (module docstring).

    ``dS/dv = 2 Q diag(lam) Q^T (v - v*)``; ``dJ/dW = c (dS/dv[:n] + mu^T dS/dv[n])``,
    ``dJ/db = c dS/dv[n]`` with c the reduction's scale. Shapes: dW like W, db like b.
    """
    scale = _scale(reduction, stats.count)
    n = params.W.shape[0]
    d = _centred(params, stats) - stats.solution
    t = stats.eigvecs.T @ d
    lam = stats.eigvals if t.ndim == 1 else stats.eigvals[:, None]
    lt = lam * t
    value = scale * (jnp.sum(lt * t) + jnp.sum(stats.rss))
    gv = (2 * scale) * (stats.eigvecs @ lt)
    g_b = gv[n]
    g_W = gv[:n] + (stats.x_mean * g_b if gv.ndim == 1 else stats.x_mean[:, None] * g_b[None, :])
    return value, Params(g_W, g_b)


def per_output(stats: Stats) -> tuple[Stats, Stats]:
    """Split k outputs into k independent problems for ``vmap``: (stats, in_axes).

    The output axis of ``solution`` moves to the front; ``y_mean``, ``solution`` and ``rss``
    are mapped along axis 0, the rest is shared. Works under a leading batch axis too.
    """
    moved = stats._replace(solution=jnp.moveaxis(stats.solution, -1, -2))
    axes = Stats(None, 0, None, None, None, None, 0, 0)
    return moved, axes


def gram_blocks(stats: Stats, n: int) -> dict[str, jax.Array]:
    """The familiar moments read back from the centred Gram (for users and tests).

    Returns ``xtx = Xc^T D Xc`` (n, n), ``xty = Xc^T D Yc`` (n, k), ``yty = Yc^T D Yc`` (k, k),
    ``x_sum = Xc^T D 1`` (n,) and ``y_sum = Yc^T D 1`` (k,) (both ~0: centred), ``count``.
    Raw moments follow, e.g. ``X^T D X = xtx + N mu mu^T``.
    """
    G = stats.gram
    q = n + 1
    return {
        "xtx": G[:n, :n], "xty": G[:n, q:], "yty": G[q:, q:],
        "x_sum": G[:n, n], "y_sum": G[q:, n], "count": G[n, n],
    }
