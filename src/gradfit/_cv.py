"""Cross-validation of a sweep: folds as 0/1 row-weight masks over one copy of X, fitted in the sweep's program.

A fold ``f`` is a pair ``(train_idx, val_idx)`` of row indices. Its lanes fit with row weights ``t_f * w`` (``t_f``
the 0/1 training mask (F, m), ``w`` the caller's sample_weight or 1) over the one shared X: the folds are a ``vmap``
level under the grid's members (:func:`with_folds`), so K members x F folds run as K x F lanes of one compiled
program per group. Each fold has its own :class:`~gradfit._types.Scaling` (it depends on the weights) and, for the
``"stats"`` plan, its own statistics (:func:`fold_statistics`). After the fit every lane is scored (:func:`score`):

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
from gradfit._params import predict
from gradfit._types import Data, Level, Params, Scaling


class Folds(NamedTuple):
    """Checked folds: the index pairs, and their masks times the row weights, (F, m) host arrays."""

    pairs: list[tuple[np.ndarray, np.ndarray]]
    train: np.ndarray  # (F, m) t_f * w
    val: np.ndarray  # (F, m) v_f * w


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
        if len(np.unique(idx)) != idx.size:
            raise ValueError(f"cv fold {i}: the {name} indices repeat a row; give each row at most once "
                             "(weight rows with sample_weight instead)")
        out.append(idx)
    common = np.intersect1d(*out)
    if common.size:
        raise ValueError(f"cv fold {i}: rows {common[:5].tolist()} are both training and validation rows: a fold's "
                         "two index sets must not overlap")
    return out[0], out[1]


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
    return Folds([(np.asarray(t), np.asarray(v)) for t, v in pairs], train.astype(dtype), val.astype(dtype))


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
    solution is ``A^+ c`` from the Gram, accurate to ``eps cond(A)``): weighted means, Gram, factors, rss."""
    X, w = data.X.astype(data.y.dtype), data.sample_weight
    Y = data.y[:, None] if data.y.ndim == 1 else data.y
    count = jnp.sum(w)
    x_mean, y_mean = (w @ a / count for a in (X, Y))
    gram = _stats.gram_block(X, Y, w, x_mean, y_mean)
    stats = _stats.factor(gram, x_mean, y_mean, count, data.y.ndim == 1)
    rss = _stats.residual_block(X, Y, w, stats)
    return stats._replace(rss=rss[0] if data.y.ndim == 1 else rss)


def fold_statistics(data: Data, folds: Folds) -> tuple[_stats.Stats, float, float]:
    """``(Stats with a leading fold axis, compile s, run s)``: the statistics of each fold's training weights,
    :func:`_statistics` ``vmap``-ed over the F masks in one program (F Gram products over the one X, not yet the
    total less the held-out part)."""
    data = data._replace(sample_weight=jnp.asarray(folds.train))
    exe, compile_seconds = _engine.compiled(_statistics, ("data",), None, (Level(Data(None, None, 0), None, None, None),),
                                            (data,))
    start = time.perf_counter()
    stats = jax.block_until_ready(exe(data))
    return stats, compile_seconds, time.perf_counter() - start


def with_folds(problem: solver.Problem, folds: Folds, scaling: Scaling) -> solver.Problem:
    """``problem`` with a fold level first: per-fold training weights (or statistics), scaling and params."""
    F = len(folds.pairs)
    train = jnp.asarray(folds.train)
    hyper = problem.hyper._replace(scaling=Scaling(*(jnp.asarray(v, problem.hyper.l2.dtype) for v in scaling)))
    level_hyper = solver.hyper_axes(hyper, None, Scaling(0, 0, 0, 0))
    op = problem.operand
    if isinstance(op, _stats.Stats):  # already per fold (fold_statistics)
        level = Level(jax.tree.map(lambda _: 0, op), level_hyper, 0, None)
    else:
        op, level = op._replace(sample_weight=train), Level(Data(None, None, 0), level_hyper, 0, None)
    check = problem.check
    if check is not None:  # the statistics plan's check on the rows, with the same weights
        data, program, levels = check
        check = (data._replace(sample_weight=train), program, (Level(Data(None, None, 0), level_hyper, 0, None),
                                                               *levels))
    params = jax.tree.map(lambda a: jnp.broadcast_to(a, (F, *a.shape)), problem.params)
    return problem._replace(params=params, operand=op, hyper=hyper, levels=(level, *problem.levels), check=check)


def _lane(W, b, X, y, train, val, loss: str) -> dict[str, jax.Array]:
    z = predict(Params(W, b), X)
    y = jnp.asarray(y, z.dtype)
    mean = lambda w, v: jnp.sum(w * v) / jnp.sum(w)  # noqa: E731
    rows = lambda a: a if a.ndim == 1 else jnp.sum(a, axis=-1)  # noqa: E731
    per = rows(losses.bce_terms(z, y)[0] if loss == "bce" else (y - z) ** 2)
    out = {"loss": mean(val, per), "train_loss": mean(train, per)}
    if loss == "bce":
        hit = ((z > 0) == (y > 0.5)).astype(z.dtype)
        out["accuracy"] = mean(val, hit if hit.ndim == 1 else jnp.mean(hit, axis=-1))
    return out


@functools.partial(jax.jit, static_argnames=("loss", "batch"))
def _score_program(W, b, X, y, train, val, loss: str, batch: int):
    per_fold = jax.vmap(_lane, in_axes=(0, 0, None, None, 0, 0, None))
    return jax.lax.map(lambda p: per_fold(*p, X, y, train, val, loss), (W, b), batch_size=batch)


def score(params: Params, X, y, folds: Folds, loss: str, diverged: np.ndarray, budget: int) -> dict[str, np.ndarray]:
    """Every lane's scores (module docstring), name -> (K, F); params W (K, F, n[, k]); ``diverged`` (K, F, ...)
    lanes get NaN. Members run ``budget`` bytes of predictions at a time."""
    K, F = np.shape(params.W)[:2]
    itemsize = np.dtype(np.asarray(params.W).dtype).itemsize
    batch = int(max(1, min(K, budget // max(1, 4 * F * int(np.prod(np.shape(y))) * itemsize))))
    dtype = np.asarray(params.W).dtype
    out = _score_program(jnp.asarray(params.W), jnp.asarray(params.b), X, y, jnp.asarray(folds.train, dtype),
                         jnp.asarray(folds.val, dtype), loss, batch)
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
