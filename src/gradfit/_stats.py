"""MSE by sufficient statistics: one pass over X, then every step costs O(n^2 k), whatever m is.

With row weights w_i (1 without ``sample_weight``), ``N = sum_i w_i``, shifts ``mu`` and ``nu`` near the
weighted means of X's and y's columns (those of 4096 evenly spaced rows, :func:`sample_shift`; streamed, the
first chunk's) and the augmented, shifted rows ``z_i = [x_i - mu, 1, y_i - nu]`` of length ``p = n + 1 + k``,
one pass computes the Gram

    G = sum_i w_i z_i^T z_i  (p, p)  =  [[ Xc^T D Xc    Xc^T D 1    Xc^T D Yc       ]
                                         [ 1^T D Xc     N           1^T D Yc        ]
                                         [ Yc^T D Xc    Yc^T D 1    diag(Yc^T D Yc) ]]

(Xc = X - mu, Yc = y - nu, D = diag(w); of the outputs' k x k block only the diagonal is formed). In those
coordinates ``yhat_i = (x_i - mu) W + bh`` with ``bh = b + mu W - nu``; stack ``v = [W; bh]`` (n + 1, k).
With ``A = G[:n+1, :n+1]``, ``c = G[:n+1, n+1:]``,

    S(W, b) = sum_i w_i ||x_i W + b - y_i||^2 = v^T A v - 2 v^T c + tr(Yc^T D Yc)
            = (v - v*)^T A (v - v*) + 2 g*^T (v - v*) + rss,    v* = A^+ c,

with ``rss`` and ``g* = [X - mu, 1]^T D r*`` the rows' residual sum of squares and half-slope at v* (residuals
``r*``), both from one more pass over the rows: the expansion of the quadratic S about v* is exact, and g* (0 in
exact arithmetic) carries whatever rounding v* has, so value and gradient are the data's, not the Gram's
(the fit needs no pass over X to check its answer). gradfit evaluates the second form, with
``D^-1 A D^-1 = Q diag(lam) Q^T`` factored once: ``t = Q^T D (v - v*)``, ``S = sum_j lam_j t_j^2 + 2 g*^T (v -
v*) + rss``, ``dS/dv = 2 D Q diag(lam) t + 2 g*``, and by the chain rule through bh: ``dS/dW = dS/dv[:n] +
mu^T dS/dv[n]``, ``dS/db = dS/dv[n]``. The reductions scale S as in :mod:`gradfit.losses` (1/N "mean", 1/(2N)
"half_mean", 1 "sum"). Each step is two (n+1)x(n+1) by (n+1)xk products: O(n^2 k).

Numerics: centring keeps the Gram's condition number free of ``(|mean|/std)^2`` (any shift is
exact: the ones column stays in G; a sampled mean leaves ~1/64 of a std); blocks are added with Kahan
compensation; rss and g* come from the residuals as the direct plans form them; eigenvalues below
``p * eps * max(lam)`` are set to 0. The iterates equal full-batch gradient descent up to rounding.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradfit import gradients, losses
from gradfit._types import Params

_BLOCK_BYTES = 4 << 20  # bytes of augmented rows per Gram block (stays in cache)
# Up to this many elements of [X, 1, y], v* comes from the rows (an SVD; error eps cond(X), not its square).
QR_ELEMENTS = 1 << 22
SHIFT_ROWS = 4096  # evenly spaced rows whose means shift X and y before the Gram (sample_shift)


class Stats(NamedTuple):
    """Sufficient statistics of weighted least squares, factored for O(n^2 k) steps; X (m, n), y (m,)
    [or (m, k)], ``q = n + 1``, ``p = n + 1 + k``. Streamed, the shift is the first chunk's means."""

    x_mean: jax.Array  # (n,) the shift mu of X's columns (near their weighted means)
    y_mean: jax.Array  # () [or (k,)] the shift nu of y (near its weighted means)
    count: jax.Array  # () sum of weights N (m without sample_weight)
    gram: jax.Array  # (p, p) weighted Gram of [X - mu, 1, y - nu] (outputs' block: its diagonal), module docstring
    eigvals: jax.Array  # (q,) eigenvalues of A scaled to a unit diagonal, D^-1 A D^-1; small ones set to 0
    eigvecs: jax.Array  # (q, q) their orthonormal eigenvectors (columns)
    solution: jax.Array  # (q,) [or (q, k)] v* = A^+ c: the least-squares [W; bh]
    rss: jax.Array  # () [or (k,)] residual sum of squares at v* (per output), >= 0
    diag: jax.Array  # (q,) the scaling D: the square roots of A's diagonal (1 where it is 0)
    gradient: jax.Array | None = None  # (q,) [or (q, k)] g* = [X - mu, 1]^T D r* from the rows, r* the residuals
    # at v* (half dS/dv there: 0 up to v*'s rounding); None: not formed (streamed, cross-validation folds)

    @property
    def dtype(self):
        return self.gram.dtype


def block_rows(n_columns: int, itemsize: int, m: int) -> int:
    """Rows per block for the Gram pass: ~4 MiB of augmented rows, at least 256, at most m."""
    return int(max(1, min(m, max(256, _BLOCK_BYTES // max(1, n_columns * itemsize)))))


def block_sums(fn, X, Y, w, block: int, init, add=None):
    """``add``-accumulate ``fn(X_b, Y_b, w_b)`` over blocks of ``block`` rows from ``init`` (a 16-bit
    X upcast per block in cache). Without ``add``, an X in the compute dtype is one whole-array call."""
    m = X.shape[0]
    if add is None and X.dtype == Y.dtype:
        return jax.tree.map(jnp.add, init, fn(X, Y, w))
    add = add or (lambda acc, term: jax.tree.map(jnp.add, acc, term))

    def one(start, size, acc):
        rows = lambda a: None if a is None else jax.lax.dynamic_slice_in_dim(a, start, size)  # noqa: E731
        return add(acc, fn(rows(X).astype(Y.dtype), rows(Y), rows(w)))

    n_full, tail = divmod(m, block)
    acc = jax.lax.fori_loop(0, n_full, lambda i, acc: one(i * block, block, acc), init)
    return one(n_full * block, tail, acc) if tail else acc


def gram_block(X: jax.Array, Y: jax.Array, w: jax.Array | None, x_shift: jax.Array, y_shift: jax.Array) -> jax.Array:
    """``Z^T diag(w) Z`` (p, p) of one block's rows ``Z = [X - mu, 1, Y - nu]``, with the k x k block of the
    outputs reduced to its diagonal (each output's sum of squares; nothing reads the rest): two products
    ``[X - mu, 1]^T D [X - mu, 1]`` and ``[X - mu, 1]^T D (Y - nu)``, (n + 1)(n + 1 + k) products per row, not
    (n + 1 + k)^2; no transposed copy."""
    Yc = Y - y_shift[None, :]
    Zx = jnp.concatenate([X - x_shift[None, :], jnp.ones((X.shape[0], 1), Y.dtype)], axis=1)
    Zw, Yw = (Zx, Yc) if w is None else (Zx * w[:, None], Yc * w[:, None])
    rows = (((0,), (0,)), ((), ()))
    top = jnp.concatenate([jax.lax.dot_general(Zw, Zx, rows), jax.lax.dot_general(Zw, Yc, rows)], axis=1)
    yy = jnp.diag(jnp.sum(Yw * Yc, axis=0))
    return jnp.concatenate([top, jnp.concatenate([top[:, Zx.shape[1]:].T, yy], axis=1)], axis=0)


def kahan_add(carry: tuple[jax.Array, jax.Array], term: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Add ``term`` to ``(total, compensation)`` by compensated (Kahan) summation."""
    total, comp = carry
    t = term - comp
    new = total + t
    return new, (new - total) - t


def _residuals(X: jax.Array, Y: jax.Array, stats: Stats) -> jax.Array:
    """``r = X W* + b* - Y`` (B, k) at ``stats.solution``, as the direct plans form the rows' products (no shifted
    copy of X: one read at memory speed)."""
    n = X.shape[1]
    solution = stats.solution if stats.solution.ndim == 2 else stats.solution[:, None]
    W_s, bh = solution[:n], solution[n]
    offset = bh - stats.x_mean @ W_s + jnp.reshape(stats.y_mean, (-1,))  # b* for the raw columns
    return X @ W_s + offset[None, :] - Y


def residual_block(X: jax.Array, Y: jax.Array, w: jax.Array | None, stats: Stats) -> jax.Array:
    """``sum_i w_i (x_i W* + b* - y_i)^2`` per output (k,) over one block (:func:`_residuals`)."""
    r = _residuals(X, Y, stats)
    return jnp.sum(r * r if w is None else r * r * w[:, None], axis=0)


def residual_moments(X: jax.Array, Y: jax.Array, w: jax.Array | None, stats: Stats) -> tuple[jax.Array, jax.Array]:
    """One block's ``(sum_i w_i r_i^2, [X - mu, 1]^T D r)`` ((k,), (q, k)) for the residuals ``r`` at
    ``stats.solution`` (:func:`_residuals`): :func:`residual_block` and, from the same rows, the data's gradient
    there (``X^T D r - mu 1^T D r``: no shifted copy of X)."""
    r = _residuals(X, Y, stats)
    rw = r if w is None else r * w[:, None]
    r_sum = jnp.sum(rw, axis=0)
    xr = gradients.xt_dot(X, rw) - stats.x_mean[:, None] * r_sum[None, :]  # X read in place, never transposed
    return jnp.sum(rw * r, axis=0), jnp.concatenate([xr, r_sum[None, :]], axis=0)


def factor(gram: jax.Array, x_shift: jax.Array, y_shift: jax.Array, count: jax.Array, one_output: bool) -> Stats:
    """Eigen-factor ``D^-1 A D^-1 = Q diag(lam) Q^T`` (``A = gram[:q, :q]``, ``D = diag(sqrt(A_jj))``,
    lam below ``p eps max(lam)`` set to 0) and solve ``v* = D^-1 Q diag(lam)^+ Q^T D^-1 c``,
    ``c = gram[:q, q:]``. ``rss`` is left 0 for the caller (:func:`residual_block`)."""
    gram = 0.5 * (gram + gram.T)
    q = x_shift.shape[0] + 1
    d = jnp.sqrt(jnp.diagonal(gram)[:q])
    d = jnp.where(d > 0, d, 1)
    lam, Q = jnp.linalg.eigh(gram[:q, :q] / (d[:, None] * d[None, :]))
    keep = lam > gram.shape[0] * jnp.finfo(gram.dtype).eps * jnp.max(jnp.abs(lam))
    lam = jnp.where(keep, lam, 0)
    inv = jnp.where(keep, 1 / jnp.where(keep, lam, 1), 0)
    solution = (Q @ (inv[:, None] * (Q.T @ (gram[:q, q:] / d[:, None])))) / d[:, None]
    rss = jnp.zeros((gram.shape[0] - q,), gram.dtype)
    if one_output:
        y_shift, solution, rss = jnp.reshape(y_shift, ()), solution[:, 0], rss[0]
    return Stats(x_shift, y_shift, count, gram, lam, Q, solution, rss, d)


def sample_shift(X: jax.Array, Y: jax.Array, w: jax.Array | None, rows: int = SHIFT_ROWS):
    """``(mu, nu)``: the weighted column means of X and Y over ``min(m, rows)`` evenly spaced rows (equal weights
    if theirs sum to 0), a shift near the means without a pass over X (any shift is exact: module docstring)."""
    m = X.shape[0]
    idx = jnp.asarray(np.unique(np.linspace(0, m - 1, min(m, rows)).round().astype(np.int32)))
    Xs, Ys = jnp.take(X, idx, axis=0).astype(Y.dtype), jnp.take(Y, idx, axis=0)
    ws = jnp.ones(idx.shape, Y.dtype) if w is None else jnp.take(w, idx)
    ws = jnp.where(jnp.sum(ws) > 0, ws, 1)
    return ws @ Xs / jnp.sum(ws), ws @ Ys / jnp.sum(ws)


def sufficient_statistics(X: jax.Array, y: jax.Array, sample_weight: jax.Array | None = None, *,
                          block: int | None = None) -> Stats:
    """:class:`Stats` of X (m, n), y (m,) or (m, k), sample_weight (m,) >= 0 or None, in two passes of ``block``
    rows (default :func:`block_rows`): the Gram centred on :func:`sample_shift` (then its factors, O(n^3)), the
    rss and the data's gradient at the solution. Jittable, ``vmap``-able."""
    m, n = X.shape
    dtype = y.dtype
    Y = y[:, None] if y.ndim == 1 else y
    k = Y.shape[1]
    block = min(m, block or block_rows(n + 1 + k, dtype.itemsize, m))
    w = sample_weight
    count = jnp.asarray(m, dtype) if w is None else jnp.sum(w)
    x_mean, y_mean = sample_shift(X, Y, w)
    zero = jnp.zeros((n + 1 + k,) * 2, dtype)
    gram_fn = lambda Xb, Yb, wb: gram_block(Xb, Yb, wb, x_mean, y_mean)  # noqa: E731
    gram, _ = block_sums(gram_fn, X, Y, w, block, (zero, zero), add=kahan_add)
    stats = factor(gram, x_mean, y_mean, count, y.ndim == 1)
    if m * (n + 1 + k) <= QR_ELEMENTS:  # accurate to eps * cond(X), not its square
        stats = stats._replace(solution=_solution_from_rows(X.astype(dtype), Y, w, stats, y.ndim == 1))
    moments = lambda Xb, Yb, wb: residual_moments(Xb, Yb, wb, stats)  # noqa: E731
    # A 16-bit X is upcast per block, and here the block feeds two products: a quarter of the Gram's rows keeps
    # that copy at ~1 MiB (tests/test_precision.py bounds the temporaries).
    rss, g = block_sums(moments, X, Y, w, max(1, block // 4), (jnp.zeros(k, dtype), jnp.zeros((n + 1, k), dtype)))
    g = _in_range(g, stats)
    return stats._replace(rss=rss[0] if y.ndim == 1 else rss, gradient=g[:, 0] if y.ndim == 1 else g)


def _in_range(g: jax.Array, stats: Stats) -> jax.Array:
    """``g`` (q, k) projected onto A's kept eigenvectors, ``D Q_keep Q_keep^T D^-1 g``: along a dropped one the
    model has no curvature, where a slope would make it unbounded (those fits are checked on the rows instead:
    :func:`exact_rank`)."""
    coeffs = stats.eigvecs.T @ (g / stats.diag[:, None])
    return (stats.eigvecs @ jnp.where(stats.eigvals[:, None] > 0, coeffs, 0)) * stats.diag[:, None]


def exact_rank(stats: Stats) -> bool:
    """Whether no eigenvalue of any problem's A was dropped (host): then value and gradient from statistics with
    :attr:`Stats.gradient` are the rows' own; otherwise the rows' slope along a dropped direction is unknown."""
    return stats.gradient is not None and bool(np.all(np.asarray(stats.eigvals) > 0))


def _solution_from_rows(X, Y, w, stats: Stats, one_output: bool) -> jax.Array:
    """``v*`` by least squares (an SVD) on the rows, ``[X - mu, 1] D^-1 (D v) ~ Y - nu``, rows times sqrt(w)."""
    Z = jnp.concatenate([X - stats.x_mean[None, :], jnp.ones((X.shape[0], 1), X.dtype)], axis=1) / stats.diag[None, :]
    R = Y - jnp.reshape(stats.y_mean, (1, -1))
    if w is not None:
        root = jnp.sqrt(w)[:, None]
        Z, R = Z * root, R * root
    v = jnp.linalg.lstsq(Z, R)[0] / stats.diag[:, None]
    return v[:, 0] if one_output else v


def _centred(params: Params, stats: Stats) -> jax.Array:
    """``v = [W; b + mu W - nu]``, shape (n + 1,) or (n + 1, k)."""
    bh = params.b + stats.x_mean @ params.W - stats.y_mean
    return jnp.concatenate([params.W, bh[None]], axis=0)


def _scaled(diff: jax.Array, stats: Stats) -> jax.Array:
    """``t = Q^T D (v - v*)``, the distance to the solution in the scaled eigenbasis."""
    return stats.eigvecs.T @ (diff * (stats.diag if diff.ndim == 1 else stats.diag[:, None]))


def _first_order(diff: jax.Array, stats: Stats) -> jax.Array:
    """``2 g*^T (v - v*)``, summed over outputs: the data's slope at v* (0 without :attr:`Stats.gradient`)."""
    return 0.0 if stats.gradient is None else 2 * jnp.sum(stats.gradient * diff)


def squared_error_sum(params: Params, stats: Stats) -> jax.Array:
    """``S = sum_i w_i ||x_i W + b - y_i||^2 = sum_j lam_j ||(Q^T D d)_j||^2 + 2 g*^T d + sum(rss)``, ``d = v - v*``
    (exact for the quadratic S: its expansion about v* with the rows' own value and slope there)."""
    diff = _centred(params, stats) - stats.solution
    t = _scaled(diff, stats)
    lam = stats.eigvals if t.ndim == 1 else stats.eigvals[:, None]
    return jnp.sum(lam * t * t) + _first_order(diff, stats) + jnp.sum(stats.rss)


def loss(params: Params, stats: Stats, *, reduction: str = "mean") -> jax.Array:
    """The MSE of :func:`gradfit.losses.mse` (same reductions), from the statistics: O(n^2 k)."""
    return losses.reduction_scale(reduction, stats.count) * squared_error_sum(params, stats)


def value_and_grad(params: Params, stats: Stats, *, reduction: str = "mean") -> tuple[jax.Array, Params]:
    """``(J, dJ/dp)`` of the MSE from the statistics, in closed form (module docstring):
    ``dS/dv = 2 D Q diag(lam) Q^T D (v - v*) + 2 g*`` (g* the rows' half-slope at v*, :attr:`Stats.gradient`:
    the gradient is the data's even where v* carries the Gram's rounding); ``dJ/dW = c (dS/dv[:n] + mu^T
    dS/dv[n])``, ``dJ/db = c dS/dv[n]``, c the reduction's scale. dW like W, db like b."""
    scale = losses.reduction_scale(reduction, stats.count)
    n = params.W.shape[0]
    diff = _centred(params, stats) - stats.solution
    t = _scaled(diff, stats)
    lam = stats.eigvals if t.ndim == 1 else stats.eigvals[:, None]
    lt = lam * t
    value = scale * (jnp.sum(lt * t) + _first_order(diff, stats) + jnp.sum(stats.rss))
    gv = stats.eigvecs @ lt
    gv = gv * (stats.diag if gv.ndim == 1 else stats.diag[:, None])
    gv = (2 * scale) * (gv if stats.gradient is None else gv + stats.gradient)
    g_b = gv[n]
    g_W = gv[:n] + (stats.x_mean * g_b if gv.ndim == 1 else stats.x_mean[:, None] * g_b[None, :])
    return value, Params(g_W, g_b)


def per_output(stats: Stats) -> tuple[Stats, Stats]:
    """Split k outputs into k problems for ``vmap``: (stats, in_axes); ``y_mean``, ``solution`` and
    ``gradient`` (output axis moved first) and ``rss`` mapped along axis 0, the rest shared."""
    move = lambda a: None if a is None else jnp.moveaxis(a, -1, -2)  # noqa: E731
    moved = stats._replace(solution=move(stats.solution), gradient=move(stats.gradient))
    return moved, Stats(None, 0, None, None, None, None, 0, 0, None, None if stats.gradient is None else 0)


def gram_blocks(stats: Stats, n: int) -> dict[str, jax.Array]:
    """The shifted moments in the Gram: ``xtx = Xc^T D Xc`` (n, n), ``xty = Xc^T D Yc`` (n, k),
    ``yty = diag(Yc^T D Yc)`` (k,), ``x_sum``, ``y_sum`` (small: the shift is near the means), ``count``; raw
    moments follow, e.g. ``X^T D X = xtx + mu x_sum^T + x_sum mu^T + N mu mu^T``."""
    G, q = stats.gram, n + 1
    return {"xtx": G[:n, :n], "xty": G[:n, q:], "yty": jnp.diagonal(G[q:, q:]), "x_sum": G[:n, n], "y_sum": G[q:, n],
            "count": G[n, n]}


def least_squares(stats: Stats, *, reduction: str = "mean", l2=0.0, fit_intercept: bool = True) -> tuple[Params, float]:
    """The exact minimiser of ``c S(W, b) + (l2/2) ||W||^2`` and its value, in float64 on the host
    (gradfit's one closed-form solver). In the shifted coordinates ``v = [W; b + mu W - nu] =
    T theta + t`` with ``theta = [W; b]`` (``W`` alone without an intercept, b = 0),
    ``T = [[I, 0], [mu^T, 1]]`` (or ``[I; mu^T]``) and ``t = [0; -nu]``; a zero gradient gives
    ``(2c T^T A T + l2 P) theta = 2c T^T (g - A t)`` with ``A = G[:q, :q]``, ``g = G[:q, q:]``
    and ``P`` the identity on W, 0 on b. Solved by least squares (a rank-deficient A is fine).
    """
    G = np.asarray(stats.gram, np.float64)
    mu = np.asarray(stats.x_mean, np.float64)
    nu = np.atleast_1d(np.asarray(stats.y_mean, np.float64))
    n, q = mu.shape[0], mu.shape[0] + 1
    c = float(losses.reduction_scale(reduction, float(stats.count)))
    A, g = G[:q, :q], G[:q, q:]
    T = np.vstack([np.eye(n), mu[None, :]])
    if fit_intercept:
        T = np.hstack([T, np.eye(q)[:, n:]])
    t = np.zeros((q, nu.shape[0]))
    t[n] = -nu
    P = np.diag([1.0] * n + [0.0] * (T.shape[1] - n))
    lhs = 2 * c * T.T @ A @ T + float(l2) * P
    theta = np.linalg.lstsq(lhs, 2 * c * T.T @ (g - A @ t), rcond=None)[0]
    W, b = theta[:n], (theta[n] if fit_intercept else np.zeros(nu.shape[0]))
    d = T @ theta + t - np.asarray(stats.solution, np.float64).reshape(q, -1)
    g_star = np.zeros_like(d) if stats.gradient is None else np.asarray(stats.gradient, np.float64).reshape(q, -1)
    slope = 2 * float(np.sum(g_star * d))
    value = c * (float(np.sum(d * (A @ d))) + slope + float(np.asarray(stats.rss, np.float64).sum()))
    value += 0.5 * float(l2) * float(np.sum(W * W))
    if np.ndim(stats.y_mean) == 0:
        W, b = W[:, 0], b[0]
    return Params(W, np.asarray(b)), value
