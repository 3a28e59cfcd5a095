"""Cross-validation of a sweep: folds as 0/1 row-weight masks over one copy of X, fitted in the sweep's program.

A fold ``f`` is a pair ``(train_idx, val_idx)`` of row indices. Its lanes fit with row weights ``t_f * w`` (``t_f``
the 0/1 training mask (F, m), ``w`` the caller's sample_weight or 1) over the one shared X: the folds are a ``vmap``
level under the grid's members (:func:`with_folds`), so K members x F folds run as K x F lanes of one compiled
program per group. Each fold has its own :class:`~gradfit._types.Scaling` (it depends on the weights) and, for the
``"stats"`` plan, its own statistics (:func:`fold_statistics`: every fold's training and held-out Grams from about
one Gram's work, a training Gram the total less the held-out part, with the rows' rss and slope at each fold's
solution; the lanes are checked on them, not on the rows, unless a fold's statistics dropped an eigenvalue).
After the fit every lane is scored (:func:`score`; MSE on the "stats" plan from the held-out statistics):

    loss[i, f] = sum_r v_fr w_r l_r(p_if) / sum_r v_fr w_r      (F folds, m rows, v_f the held-out mask)

with ``l_r`` the unpenalised per-row loss (squared error summed over outputs; for bce the log-loss, also stored as
``log_loss``), ``train_loss`` the same over the training rows, and for bce ``accuracy``, the weighted mean over
rows and outputs of ``[z > 0] == [y > 1/2]``. A lane that diverged scores NaN, and :func:`best_index` skips a
member with any non-finite fold. An int ``cv`` is scikit-learn's ``check_cv``: ``StratifiedKFold(cv)`` for bce with
a 1-d y, else ``KFold(cv)`` (both unshuffled, same indices), in numpy; a splitter is asked for ``split(X, y)``."""

from __future__ import annotations

import functools
import numbers
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradfit import _engine, _stats, losses, solver
from gradfit._types import Data, Level, Params, Scaling


class Folds(NamedTuple):
    """Checked folds: the index pairs, and their masks times the row weights, (F, m) host arrays."""

    pairs: list[tuple[np.ndarray, np.ndarray]]
    train: np.ndarray  # (F, m) t_f * w
    val: np.ndarray  # (F, m) v_f * w
    memo: dict | None = None  # filled by fold_statistics: the folds' statistics over X, for score


class CVScores(NamedTuple):
    """Per-member, per-fold scores of a cross-validated sweep. ``scores``: name -> (K, F) (``loss`` the validation
    loss, ``train_loss``; bce: ``log_loss`` (= ``loss``), ``accuracy``); ``mean``/``std``: name -> (K,) over the
    folds (ddof 0, as GridSearchCV; NaN when a fold is); ``penalty``: each member's l2 (ties go to the larger)."""

    pairs: list[tuple[np.ndarray, np.ndarray]]
    scores: dict[str, np.ndarray]
    penalty: np.ndarray

    @property
    def mean(self) -> dict[str, np.ndarray]:
        return {k: np.mean(v, axis=1) for k, v in self.scores.items()}

    @property
    def std(self) -> dict[str, np.ndarray]:
        return {k: np.std(v, axis=1) for k, v in self.scores.items()}


def kfold(m: int, n_splits: int) -> np.ndarray:
    """Each row's held-out fold (m,) as ``KFold(n_splits)``: contiguous, the first ``m % n_splits`` one row longer."""
    sizes = np.full(n_splits, m // n_splits)
    sizes[: m % n_splits] += 1
    return np.repeat(np.arange(n_splits), sizes)


def stratified(labels: np.ndarray, n_splits: int) -> np.ndarray:
    """Each row's held-out fold (m,) as ``StratifiedKFold(n_splits)``: classes numbered by first appearance, each
    class's rows dealt to the folds in blocks by a round robin over the sorted labels (scikit-learn's rule)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    encoded = np.argsort(np.argsort(first))[inverse.ravel()]
    ordered = np.sort(encoded)
    allocation = np.asarray([np.bincount(ordered[i::n_splits], minlength=len(first)) for i in range(n_splits)])
    fold = np.empty(len(labels), int)
    for k in range(len(first)):
        fold[encoded == k] = np.repeat(np.arange(n_splits), allocation[:, k])
    return fold


def _pairs_of(fold: np.ndarray, n_splits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(n_splits)]


def split(cv, X, y, *, loss: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """``cv`` (an int >= 2, a splitter with ``split(X, y)``, or (train_idx, val_idx) pairs) as checked index pairs
    over the m rows; ValueError naming the problem and the fix."""
    m, y = np.shape(X)[0], np.asarray(y)
    if isinstance(cv, (bool, np.bool_, float, str, bytes, dict)):
        raise ValueError(f"cv={cv!r} is not an int, a splitter or a list of (train_idx, val_idx) pairs: give the "
                         "number of folds (an int >= 2), a scikit-learn splitter such as KFold(5), or the pairs")
    if isinstance(cv, numbers.Integral):
        if cv < 2:
            raise ValueError(f"cv={cv}: cross-validation needs at least 2 folds (e.g. cv=5); for no validation "
                             "leave cv=None")
        if cv > m:
            raise ValueError(f"cv={cv} folds need at least {cv} samples, got {m} sample{'s' * (m != 1)}: use cv <= {m}")
        if loss == "bce" and y.ndim == 1:
            counts = np.unique(y, return_counts=True)[1]
            if np.all(counts < cv):
                raise ValueError(f"cv={cv} stratified folds need at least {cv} samples of some class, got at most "
                                 f"{counts.max()} of each class: use cv <= {counts.max()}")
            return _pairs_of(stratified(y, int(cv)), int(cv))
        return _pairs_of(kfold(m, int(cv)), int(cv))
    if hasattr(cv, "split") and not isinstance(cv, str):
        cv = cv.split(np.zeros((m, 1)), y)  # the splitter reads the row count and y
    try:
        pairs = list(cv)
    except TypeError:
        raise ValueError(f"cv={cv!r} is not an int, a splitter or a list of (train_idx, val_idx) pairs") from None
    if len(pairs) < 1:
        raise ValueError("cv gave no folds: give at least one (train_idx, val_idx) pair")
    return [_check_pair(i, pair, m) for i, pair in enumerate(pairs)]


def _check_pair(i: int, pair, m: int) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ValueError(f"cv fold {i} is {type(pair).__name__} {pair!r:.60}: each fold is a (train_idx, val_idx) pair")
    out = []
    for name, idx in zip(("train", "validation"), pair):
        idx = np.asarray(idx)
        if idx.dtype == bool and idx.shape == (m,):
            idx = np.flatnonzero(idx)
        if idx.ndim != 1 or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
            raise ValueError(f"cv fold {i}: the {name} indices must be a 1-d array of row numbers, got shape "
                             f"{idx.shape} of {idx.dtype}")
        if idx.size == 0:
            raise ValueError(f"cv fold {i} has no {name} rows: every fold needs both training and validation rows")
        if idx.min() < 0 or idx.max() >= m:
            raise ValueError(f"cv fold {i}: {name} index {int(idx.min() if idx.min() < 0 else idx.max())} is out of "
                             f"range for {m} rows (0 to {m - 1})")
        counts = np.bincount(idx.astype(np.intp), minlength=m)  # O(m), not a sort
        if counts.max() > 1:
            raise ValueError(f"cv fold {i}: the {name} indices repeat a row; give each row at most once "
                             "(weight rows with sample_weight instead)")
        out.append((idx, counts))
    (train, in_train), (val, in_val) = out
    common = np.flatnonzero(in_train & in_val)
    if common.size:
        raise ValueError(f"cv fold {i}: rows {common[:5].tolist()} are both training and validation rows: a fold's "
                         "two index sets must not overlap")
    return train, val


def holdout(m: int, fraction: float, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """One fold: a random ``fraction`` of the rows (at least one) held out, the rest for training, from ``seed``."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation_fraction={fraction!r} must be in (0, 1), e.g. 0.2")
    perm = np.random.default_rng(seed).permutation(m)
    k = min(m - 1, max(1, int(round(fraction * m))))
    return [(np.sort(perm[k:]), np.sort(perm[:k]))]


def make_folds(pairs, inputs: solver.Inputs, loss_names: set[str]) -> Folds:
    """The masks of ``pairs`` times the checked row weights; ValueError for a fold of zero weight or (bce) a
    training fold whose targets are all 0 or all 1 in some output."""
    m, w = inputs.m, np.ones(inputs.m) if inputs.sample_weight is None else np.asarray(inputs.sample_weight)
    train, val = np.zeros((len(pairs), m)), np.zeros((len(pairs), m))
    for f, (t, v) in enumerate(pairs):
        train[f, t], val[f, v] = w[t], w[v]
    for name, masks in (("training", train), ("validation", val)):
        empty = np.flatnonzero(masks.sum(axis=1) <= 0)
        if empty.size:
            raise ValueError(f"cv fold {empty[0]} has {name} rows of total sample_weight 0: nothing to "
                             f"{'fit' if name == 'training' else 'score'}; give it rows of positive weight")
    if "bce" in loss_names:
        Y = np.asarray(inputs.y).reshape(m, -1)
        for f in range(len(pairs)):
            rows = Y[train[f] > 0]
            if np.any(np.all(rows == rows[:1], axis=0) & np.isin(rows[0], (0, 1))):
                raise ValueError(f"cv fold {f}'s training rows hold 1 class only (every target {rows[0].tolist()}): "
                                 "logistic regression needs both classes in every training fold; use fewer folds, "
                                 "stratified folds (an int cv with a 1-d y), or shuffle the rows")
    dtype = np.dtype(inputs.dtype)
    return Folds([(np.asarray(t), np.asarray(v)) for t, v in pairs], train.astype(dtype), val.astype(dtype), {})


def padded(folds: Folds, rows: int) -> Folds:
    """The masks with weight-0 columns up to ``rows``, the rows of the placed data (a small X is padded)."""
    pad = ((0, 0), (0, rows - folds.train.shape[1]))
    return folds._replace(train=np.pad(folds.train, pad), val=np.pad(folds.val, pad))


def fold_scaling(c, inputs: solver.Inputs, members, folds: Folds) -> Scaling:
    """Each fold's :class:`Scaling` (:func:`gradfit.solver.scaling` on its training weights), stacked (F, ...)."""
    parts = [solver.scaling(c, inputs._replace(sample_weight=w), members) for w in folds.train]
    return Scaling(*(np.stack(field) for field in zip(*parts)))


def _statistics(data: Data) -> _stats.Stats:
    """:func:`gradfit._stats.sufficient_statistics` of one fold's weights, less its SVD refinement of ``v*`` (the
    solution is ``A^+ c`` from the Gram, accurate to ``eps cond(A)``): weighted means, Gram, factors, rss, by the
    masked product over all m rows. :func:`fold_statistics` computes the same for every fold in about one pass."""
    X, w = data.X.astype(data.y.dtype), data.sample_weight
    Y = data.y[:, None] if data.y.ndim == 1 else data.y
    count = jnp.sum(w)
    x_mean, y_mean = (w @ a / count for a in (X, Y))
    gram = _stats.gram_block(X, Y, w, x_mean, y_mean)
    stats = _stats.factor(gram, x_mean, y_mean, count, data.y.ndim == 1)
    rss = _stats.residual_block(X, Y, w, stats)
    return stats._replace(rss=rss[0] if data.y.ndim == 1 else rss)


class _Layout(NamedTuple):
    """The static plan of :func:`_fold_program` (part of its compile key). S segments of rows are gathered in
    blocks; ``segment[f]`` is fold f's held-out segment, -1 for a fold on the masked path (``slow``, in order)."""

    segment: tuple[int, ...]  # (F,) the held-out segment of each fold, -1 for a masked fold
    slow: tuple[int, ...]  # the masked folds, in the order of the masks passed
    segments: int  # S
    partition: bool  # the segments split the total: every row of weight > 0 in exactly one
    block: int  # rows per contiguous block (the means, total and residual passes)


class _Segments(NamedTuple):
    """Row blocks of the segments, host arrays: ``rows`` (NB, B) row numbers, ``weight`` (NB, B) their weights (0 for
    padding), ``segment`` (NB,) each block's segment."""

    rows: np.ndarray
    weight: np.ndarray
    segment: np.ndarray


def _layout(folds: Folds, block: int) -> tuple[_Layout, _Segments, np.ndarray, np.ndarray]:
    """Sort the rows by held-out fold on the host: ``(layout, segments, total weights (m,), masked folds' training
    and held-out weights (2, F_slow, m))``. The total weight of a row is its weight in any fold (0 where it is in
    none). A fold is "fast" when its training weights are exactly the total less its held-out ones; its held-out
    rows of weight > 0 are one segment; when no row is held out by two fast folds, the rows of weight > 0 held out
    by none are one more segment and the segments split the total."""
    total = np.maximum(folds.train.max(axis=0), folds.val.max(axis=0))
    fast = [f for f in range(len(folds.train)) if np.array_equal(folds.train[f] + folds.val[f], total)]
    rows = [np.flatnonzero(folds.val[f] > 0) for f in fast]
    held = np.zeros(total.shape[0], int)
    for r in rows:
        held[r] += 1
    partition = bool(fast) and bool(held.max() <= 1)
    if partition and np.any((held == 0) & (total > 0)):
        rows.append(np.flatnonzero((held == 0) & (total > 0)))
    segment = [-1] * len(folds.train)
    for s, f in enumerate(fast):
        segment[f] = s
    slow = tuple(f for f in range(len(folds.train)) if segment[f] < 0)
    size = _segment_block(block, [len(r) for r in rows])
    blocks = np.concatenate([np.zeros((0, size), int)] + [  # -1 pads each segment to whole blocks
        np.pad(r, (0, -len(r) % size), constant_values=-1).reshape(-1, size) for r in rows])
    ids = np.concatenate([np.zeros(0, int)] + [np.full(-(-len(r) // size), s) for s, r in enumerate(rows)])
    seg = _Segments(np.maximum(blocks, 0).astype(np.int32), np.where(blocks >= 0, total[blocks], 0).astype(total.dtype),
                    ids.astype(np.int32))
    layout = _Layout(tuple(segment), slow, len(rows), partition, block)
    return layout, seg, total, np.stack([folds.train[list(slow)], folds.val[list(slow)]])


def _segment_block(block: int, lengths: list[int]) -> int:
    """Rows per gathered block: at most ``block``, small enough that padding each segment to whole blocks adds at
    most ~1/16 of the rows (at least 256 rows, or the longest segment), evened out over the longest segment."""
    if not lengths:
        return 1
    longest = max(lengths)
    size = max(1, min(block, longest, max(256, -(-sum(lengths) // (16 * len(lengths))))))
    return -(-longest // -(-longest // size))


def _recentre(gram: jax.Array, x_shift: jax.Array, y_shift: jax.Array, n: int):
    """A Gram of ``[x - s, 1, y - t]`` (p, p) about its own weighted means: ``(G', mu, nu, N)``. With ``N = G[n, n]``,
    ``d = G[n] / N`` (d_n := 0) the means less the shift, ``mu = s + d[:n]``, ``nu = t + d[n+1:]`` and
    ``T = I - e_n d^T`` (rows ``z' = z T``, exact because z_n = 1): ``G' = T^T G T``. Of the outputs' k x k block
    only the diagonal is re-centred (:func:`gradfit._stats.gram_block` forms only the diagonal), the rest kept."""
    count, q = gram[n, n], n + 1
    d = (gram[n] / jnp.where(count > 0, count, 1)).at[n].set(0)
    T = jnp.eye(gram.shape[0], dtype=gram.dtype).at[n].add(-d)
    out = T.T @ gram @ T
    diagonal = jnp.eye(gram.shape[0] - q, dtype=bool)
    out = out.at[q:, q:].set(jnp.where(diagonal, out[q:, q:], gram[q:, q:]))
    return out, x_shift + d[:n], y_shift + d[q:], count


def _fold_residuals(Xb, Yb, wb, stats: _stats.Stats, one_output: bool) -> tuple[jax.Array, jax.Array]:
    """``rss[f] = sum_i wb[i, f] (x_i W*_f + b*_f - y_i)^2`` (F, k) and the rows' slope there, ``g[f] = [X - mu_f,
    1]^T D_f r_f`` (F, q, k), over one block (B rows, wb (B, F)): every fold's predictions as one product
    ``X_b [W*_1 .. W*_F]``, as :func:`gradfit._stats.residual_moments` forms each."""
    n = Xb.shape[1]
    sol = stats.solution[..., None] if one_output else stats.solution  # (F, q, k)
    F, k = sol.shape[0], sol.shape[2]
    W = sol[:, :n]
    offset = sol[:, n] - jnp.einsum("fn,fnk->fk", stats.x_mean, W) + jnp.reshape(stats.y_mean, (F, k))
    r = (Xb @ jnp.moveaxis(W, 0, 1).reshape(n, F * k)).reshape(-1, F, k) + offset[None] - Yb[:, None, :]
    rw = wb[:, :, None] * r
    r_sum = jnp.sum(rw, axis=0)  # (F, k)
    xr = jnp.einsum("bn,bfk->fnk", Xb, rw) - stats.x_mean[:, :, None] * r_sum[:, None, :]
    return jnp.sum(rw * r, axis=0), jnp.concatenate([xr, r_sum[:, None, :]], axis=1)


def _held_out_grams(X, Y, segments: _Segments, shifts, S: int) -> jax.Array:
    """``H[s] = sum_{i in segment s} w_i z_i^T z_i`` (S, p, p), z about the common ``shifts``: each block's rows
    gathered by index (``jnp.take``), its Gram added to its segment's with Kahan compensation."""
    p = X.shape[1] + 1 + Y.shape[1]
    zero = jnp.zeros((S, p, p), Y.dtype)

    def one(i, carry):
        rows, s = segments.rows[i], segments.segment[i]
        Xb, Yb = jnp.take(X, rows, axis=0).astype(Y.dtype), jnp.take(Y, rows, axis=0)
        acc, comp = _stats.kahan_add((carry[0][s], carry[1][s]), _stats.gram_block(Xb, Yb, segments.weight[i], *shifts))
        return carry[0].at[s].set(acc), carry[1].at[s].set(comp)

    return jax.lax.fori_loop(0, segments.rows.shape[0], one, (zero, zero))[0]


def _fast_grams(X, Y, total, segments: _Segments, layout: _Layout, fast: list[int]):
    """The fast folds' training and held-out Grams, each about its own weighted means (:func:`_recentre`): the
    held-out Grams ``H`` of the segments about one common shift (the total's weighted means, so that they add and
    subtract), a training Gram the total less its held-out part: the sum of the other segments when they split the
    total, else ``T - H_f`` with the total ``T`` from one more contiguous pass. ``(G, mu, nu, N)``, each (2 F_fast,
    ...): the training ones first."""
    dtype, n = Y.dtype, X.shape[1]
    col_sums = lambda Xb, Yb, wb: (wb @ Xb, wb @ Yb)  # noqa: E731
    init = (jnp.zeros(n, dtype), jnp.zeros(Y.shape[1], dtype))
    x_sum, y_sum = _stats.block_sums(col_sums, X, Y, total, layout.block, init)
    count = jnp.sum(total)
    shifts = (x_sum / count, y_sum / count)
    H = _held_out_grams(X, Y, segments, shifts, layout.segments)
    held = H[np.asarray([layout.segment[f] for f in fast])]
    if layout.partition:
        others = np.ones((len(fast), layout.segments)) - np.eye(len(fast), layout.segments)
        grams = jnp.einsum("fs,spq->fpq", jnp.asarray(others, dtype), H)
    else:
        gram_fn = lambda Xb, Yb, wb: _stats.gram_block(Xb, Yb, wb, *shifts)  # noqa: E731
        zero = jnp.zeros(H.shape[1:], dtype)
        T = _stats.block_sums(gram_fn, X, Y, total, layout.block, (zero, zero), add=_stats.kahan_add)[0]
        grams = T[None] - held
    recentre = jax.vmap(functools.partial(_recentre, n=n), in_axes=(0, None, None))
    return recentre(jnp.concatenate([grams, held]), *shifts)


def _masked_gram(X, Y, w):
    """``(G, mu, nu, N)`` of the weights ``w`` (m,) over all rows, about their weighted means (:func:`_statistics`)."""
    count = jnp.sum(w)
    x_mean, y_mean = ((w @ a) / count for a in (X, Y))
    return _stats.gram_block(X, Y, w, x_mean, y_mean), x_mean, y_mean, count


def _fold_program(X, y, total, segments: _Segments, slow, weights, layout: _Layout) -> tuple[_stats.Stats, ...]:
    """Every fold's training and held-out statistics in one program (:func:`fold_statistics`), ``(train,
    held_out)``, each as :func:`_statistics` of its weights with a leading fold axis: the fast folds' Grams from the
    gathered segments (:func:`_fast_grams`), the masked folds' (``slow`` (2, F_slow, m): training, held-out weights)
    by masked products over all rows; then all 2F factors, and all 2F rss in one pass over the rows (``weights``
    (2F, m): the training weights, then the held-out ones)."""
    dtype, one_output = y.dtype, y.ndim == 1
    Y, F = (y[:, None] if one_output else y), len(layout.segment)
    fast = [f for f, s in enumerate(layout.segment) if s >= 0]
    parts = {}
    if fast:
        parts.update(zip(fast + [F + f for f in fast], zip(*_fast_grams(X, Y, total, segments, layout, fast))))
    for i, f in enumerate(layout.slow):
        parts[f], parts[F + f] = (_masked_gram(X.astype(dtype), Y, w[i]) for w in slow)
    gram, x_mean, y_mean, counts = (jnp.stack(v) for v in zip(*(parts[j] for j in range(2 * F))))
    stats = jax.vmap(_stats.factor, in_axes=(0, 0, 0, 0, None))(gram, x_mean, y_mean, counts, one_output)
    residuals = lambda Xb, Yb, wb: _fold_residuals(Xb, Yb, wb, stats, one_output)  # noqa: E731
    zero, zero_g = jnp.zeros((2 * F, Y.shape[1]), dtype), jnp.zeros((2 * F, X.shape[1] + 1, Y.shape[1]), dtype)
    add = lambda acc, term: (_stats.kahan_add(acc[0], term[0]), acc[1] + term[1])  # noqa: E731 (rss compensated)
    (rss, _), g = _stats.block_sums(residuals, X, Y, weights.T, layout.block, ((zero, zero), zero_g), add=add)
    g = jax.vmap(_stats._in_range)(g, stats)
    stats = stats._replace(rss=rss[:, 0] if one_output else rss, gradient=g[..., 0] if one_output else g)
    return jax.tree.map(lambda a: a[:F], stats), jax.tree.map(lambda a: a[F:], stats)


def fold_statistics(data: Data, folds: Folds) -> tuple[_stats.Stats, float, float]:
    """``(Stats with a leading fold axis, compile s, run s)``: the statistics of each fold's training weights, as
    :func:`_statistics` of its mask, from about one Gram's work in one program (:func:`_fold_program`): the rows are
    sorted by held-out fold once on the host (:func:`_layout`) and each fold's training Gram is the total less its
    held-out part. A fold whose training rows are not "all rows less the held-out ones" (any splitter's pairs may
    leave rows out) gets the masked product over all m rows instead. The held-out statistics go to
    ``folds.memo`` (when it is a dict), for :func:`score`."""
    dtype = data.y.dtype
    m, n = data.X.shape
    F, k = len(folds.pairs), 1 if data.y.ndim == 1 else data.y.shape[1]
    block = _stats.block_rows(n + 1 + 2 * F * k, np.dtype(dtype).itemsize, m)
    layout, segments, total, slow = _layout(folds, block)
    segments = _Segments(*(jnp.asarray(a) for a in segments))
    weights = jnp.asarray(np.concatenate([folds.train, folds.val]))
    args = (data.X, data.y, jnp.asarray(total), segments, jnp.asarray(slow), weights)
    exe, compile_seconds = _engine.compiled(_fold_program, (None,) * len(args), layout, (), args)
    start = time.perf_counter()
    train, held_out = jax.block_until_ready(exe(*args))
    if isinstance(folds.memo, dict):
        folds.memo["statistics"] = (data.X, data.y, train, held_out)
    return train, compile_seconds, time.perf_counter() - start


def with_folds(problem: solver.Problem, folds: Folds, scaling: Scaling) -> solver.Problem:
    """``problem`` with a fold level first: per-fold training weights (or statistics), scaling and params."""
    F = len(folds.pairs)
    train = jnp.asarray(folds.train)
    hyper = problem.hyper._replace(scaling=Scaling(*(jnp.asarray(v, problem.hyper.l2.dtype) for v in scaling)))
    level_hyper = solver.hyper_axes(hyper, None, Scaling(0, 0, 0, 0))
    op, check = problem.operand, problem.check
    if isinstance(op, _stats.Stats):  # already per fold (fold_statistics)
        level = Level(jax.tree.map(lambda _: 0, op), level_hyper, 0, None)
        if _stats.exact_rank(op):  # each lane checked on its fold's statistics (rss and slope from the rows),
            check = None  # not K x F passes over X
    else:
        op, level = op._replace(sample_weight=train), Level(Data(None, None, 0), level_hyper, 0, None)
    if check is not None:  # a check on the rows, with the same weights
        data, program, levels = check
        check = (data._replace(sample_weight=train), program, (Level(Data(None, None, 0), level_hyper, 0, None),
                                                               *levels))
    params = jax.tree.map(lambda a: jnp.broadcast_to(a, (F, *a.shape)), problem.params)
    return problem._replace(params=params, operand=op, hyper=hyper, levels=(level, *problem.levels), check=check)


def _lanes(W, b, X, y):
    """Every (member, fold) lane's coefficients side by side for one product per row block: ``(W_all (n, L k), b_all
    (L, k), Y (m, k), rows per block)``, column ``l k + j`` lane l's output j, W (K, F, n[, k])."""
    K, F, n = W.shape[:3]
    L, k = K * F, 1 if W.ndim == 3 else W.shape[3]
    W_all = jnp.moveaxis(W.reshape(L, n, k), 0, 1).reshape(n, L * k)
    Y = jnp.asarray(y, W.dtype).reshape(X.shape[0], -1)
    return W_all, b.reshape(L, k), Y, _stats.block_rows(L * k, W.dtype.itemsize, X.shape[0])


def _score_block(Xb, Yb, masks, W, b, loss: str):
    """One row block's contribution to every lane's masked sums, (2F, S, L): ``masks^T per`` (the weighted loss
    sums) and, for bce, ``masks^T hit`` (the correct-sign counts; S = 2, else 1), ``per``/``hit`` (B, L) from one
    product ``Xb [W_1 .. W_L]`` (B, L k), summed (loss) or averaged (accuracy) over the k outputs. masks (B, 2F):
    the folds' training then held-out weights."""
    B, (L, k) = Xb.shape[0], b.shape
    Z = (Xb @ W + b.reshape(1, -1)).reshape(B, L, k)
    Yb = Yb[:, None, :]
    per = jnp.sum(losses.bce_terms(Z, Yb)[0] if loss == "bce" else (Yb - Z) ** 2, axis=-1)
    parts = [per] + ([jnp.mean(((Z > 0) == (Yb > 0.5)).astype(Z.dtype), axis=-1)] if loss == "bce" else [])
    rows = (((0,), (0,)), ((), ()))
    return jax.lax.dot_general(masks, jnp.stack(parts, axis=1).reshape(B, -1), rows).reshape(-1, len(parts), L)


@functools.partial(jax.jit, static_argnames=("loss",))
def _score_program(W, b, X, y, masks, loss: str):
    """The module docstring's scores of every (member, fold) lane, W (K, F, n[, k]): one pass over X in row blocks
    of ~4 MiB of predictions (:func:`gradfit._stats.block_rows`), each block's predictions of all K F lanes one
    product and its masked sums products with the block's masks (:func:`_score_block`; ``masks`` (m, 2F): the
    folds' training then held-out weights, laid out row-major on the host), so nothing of X's length is formed per
    lane or transposed. (Vmapping a per-lane score formed (lanes, m) temporaries and row reductions: 0.75 s for 80
    lanes at m = 2e5, n = 32; one lane after another, 0.35 to 0.47 s; this, 0.16 to 0.28 s.)"""
    K, F = W.shape[:2]
    W_all, b_all, Y, rows = _lanes(W, b, X, y)
    init = jnp.zeros((2 * F, 2 if loss == "bce" else 1, K * F), W.dtype)
    sums = _stats.block_sums(lambda Xb, Yb, wb: _score_block(Xb, Yb, wb, W_all, b_all, loss), X, Y, masks, rows,
                             init, add=jnp.add)
    lane_fold = jnp.tile(jnp.arange(F), K)  # lane l = k F + f is fold f's
    pick = lambda a: jnp.take_along_axis(a, lane_fold[None], axis=0)[0].reshape(K, F)  # noqa: E731
    train_sum, val_sum = sums[:F], sums[F:]
    weight = jnp.sum(masks, axis=0)[:, None]  # (2F, 1)
    train_weight, val_weight = weight[:F], weight[F:]
    out = {"loss": pick(val_sum[:, 0] / val_weight), "train_loss": pick(train_sum[:, 0] / train_weight)}
    if loss == "bce":
        out["accuracy"] = pick(val_sum[:, 1] / val_weight)
    return out


def _held_out_block(Xb, Yb, rows, W, b, loss: str, F: int):
    """One row block's held-out sums for folds that partition the rows, (F, S, K): each row's predictions for the K
    members of its own fold only (``rows`` (B, 2): held-out weight, fold), so the per-row loss is formed for K lanes,
    not K F; a fold's sums are the ``segment_sum`` of its rows' weighted terms (a diverged lane's NaN stays in its
    own fold)."""
    B, (L, k) = Xb.shape[0], b.shape
    weight, fold = rows[:, 0], rows[:, 1].astype(jnp.int32)
    Z = (Xb @ W + b.reshape(1, -1)).reshape(B, L // F, F, k)
    Z = jnp.take_along_axis(Z, fold[:, None, None, None], axis=2)[:, :, 0]  # (B, K, k): the row's fold's members
    Yb = Yb[:, None, :]
    parts = [jnp.sum(losses.bce_terms(Z, Yb)[0] if loss == "bce" else (Yb - Z) ** 2, axis=-1)]
    if loss == "bce":
        parts.append(jnp.mean(((Z > 0) == (Yb > 0.5)).astype(Z.dtype), axis=-1))
    terms = jnp.where(weight[:, None, None] > 0, weight[:, None, None] * jnp.stack(parts, axis=1), 0)
    return jax.ops.segment_sum(terms, fold, num_segments=F)


@functools.partial(jax.jit, static_argnames=("loss",))
def _held_out_program(W, b, X, y, rows, loss: str):
    """Held-out loss (and accuracy) of every (member, fold) lane when each row is held out by at most one fold:
    :func:`_score_program`'s pass with the loss formed only for the row's own fold's members (1/F of the lanes;
    ``rows`` (m, 2): each row's held-out weight and fold)."""
    K, F = W.shape[:2]
    W_all, b_all, Y, block = _lanes(W, b, X, y)
    init = jnp.zeros((F, 2 if loss == "bce" else 1, K), W.dtype)
    sums = _stats.block_sums(lambda Xb, Yb, wb: _held_out_block(Xb, Yb, wb, W_all, b_all, loss, F),
                             X, Y, rows, block, init, add=jnp.add)
    weight = jax.ops.segment_sum(rows[:, 0], rows[:, 1].astype(jnp.int32), num_segments=F)[:, None]  # (F, 1)
    out = {"loss": (sums[:, 0] / weight).T}
    if loss == "bce":
        out["accuracy"] = (sums[:, 1] / weight).T
    return out


def training_losses(params: Params, final_loss: np.ndarray, l2s: list, reduction: str, folds: Folds
                    ) -> np.ndarray | None:
    """Each lane's weighted mean training loss from its final objective ``J = loss + (l2/2) ||W||^2`` (the
    objective is the loss over the fold's training rows): ``(J - (l2/2) ||W||^2) c``, ``c`` 1 ("mean"), 2
    ("half_mean") or ``1 / sum of the fold's training weights`` ("sum"); (K, F). None unless every member has one
    l2 (``l2s``, one per member) and the objective one value per lane."""
    W = np.asarray(params.W, np.float64)
    K, F = W.shape[:2]
    if np.shape(final_loss) != (K, F) or any(np.size(v) != 1 for v in l2s):
        return None
    l2 = np.asarray([float(np.ravel(v)[0]) for v in l2s])
    penalty = 0.5 * l2[:, None] * np.sum((W * W).reshape(K, F, -1), axis=-1)
    scale = {"mean": 1.0, "half_mean": 2.0}.get(reduction)
    scale = 1.0 / np.sum(folds.train, axis=1)[None, :] if scale is None else scale
    return (np.asarray(final_loss, np.float64) - penalty) * scale


@jax.jit
def _statistics_score_program(W, b, train: _stats.Stats, held_out: _stats.Stats) -> dict[str, jax.Array]:
    def lane(W, b, tr, ho):
        p = Params(W, b)
        return {"loss": _stats.squared_error_sum(p, ho) / ho.count,
                "train_loss": _stats.squared_error_sum(p, tr) / tr.count}

    return jax.vmap(jax.vmap(lane), in_axes=(0, 0, None, None))(W, b, train, held_out)


def _from_statistics(params: Params, X, y, folds: Folds) -> dict[str, jax.Array] | None:
    """MSE scores from the folds' statistics (:func:`fold_statistics`, of this X and y), no pass over the rows:
    ``S = sum_j lam_j ||(Q^T D (v - v*))_j||^2 + rss`` (:func:`gradfit._stats.squared_error_sum`) of the held-out
    and training statistics over their weights; None without them."""
    memo = folds.memo.get("statistics") if isinstance(folds.memo, dict) else None
    if memo is None or memo[0] is not X or memo[1] is not y:
        return None
    return _statistics_score_program(jnp.asarray(params.W), jnp.asarray(params.b), *memo[2:])


def score(params: Params, X, y, folds: Folds, loss: str, diverged: np.ndarray, train_loss: np.ndarray | None = None
          ) -> dict[str, np.ndarray]:
    """Every lane's scores (module docstring), name -> (K, F); params W (K, F, n[, k]); ``diverged`` (K, F, ...)
    lanes get NaN. Lanes are scored in one pass over X (:func:`_score_program`); MSE after :func:`fold_statistics`
    of the same X and y is scored from the statistics (:func:`_from_statistics`), O(n^2 k) per lane. Given the
    lanes' ``train_loss`` (:func:`training_losses`) and folds whose held-out rows do not overlap (k-fold splits),
    the pass forms the held-out rows' losses only (:func:`_held_out_program`: 1/F of the work)."""
    K, F = np.shape(params.W)[:2]
    dtype = np.asarray(params.W).dtype
    out = _from_statistics(params, X, y, folds) if loss == "mse" else None
    held = folds.val > 0
    if out is None and train_loss is not None and held.sum(axis=0).max(initial=0) <= 1:
        rows = np.ascontiguousarray(np.stack([folds.val.sum(axis=0), held.argmax(axis=0)], axis=1), dtype)
        out = {**_held_out_program(jnp.asarray(params.W), jnp.asarray(params.b), X, y, rows, loss),
               "train_loss": train_loss}
    if out is None:
        masks = np.ascontiguousarray(np.concatenate([folds.train, folds.val]).T, dtype)  # (m, 2F)
        out = _score_program(jnp.asarray(params.W), jnp.asarray(params.b), X, y, masks, loss)
    bad = np.asarray(diverged).reshape(K, F, -1).any(axis=-1)
    scores = {k: np.where(bad, np.nan, np.asarray(v, np.float64)) for k, v in out.items()}
    if loss == "bce":
        scores["log_loss"] = scores["loss"]
    return scores


def best_index(cv: CVScores) -> int | None:
    """The member of lowest mean validation loss among those finite in every fold; ties (within 1e-12 relative) go
    to the larger ``penalty`` (the stronger l2), then to the first. None when no member is finite."""
    mean = cv.mean["loss"]
    ok = np.isfinite(mean)
    if not ok.any():
        return None
    low = np.min(mean[ok])
    tied = np.flatnonzero(ok & (mean <= low + 1e-12 * abs(low)))
    return int(tied[np.argmax(cv.penalty[tied])])


def penalty(configs: list[dict[str, Any]], options: dict[str, Any]) -> np.ndarray:
    """Each member's l2 (its grid value, else the fixed option; the largest of per-output values)."""
    return np.asarray([float(np.max(c.get("l2", options.get("l2", 0.0)))) for c in configs], np.float64)
