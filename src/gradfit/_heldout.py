"""Held-out rows for :func:`gradfit.fit`'s validation: ``validation_fraction`` splits the rows (seeded, stratified
by class for bce with a 1-d y), ``validation=(X_val, y_val[, w_val])`` is checked against the training data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def split_rows(y, fraction: float, seed: int, stratify: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(train_rows, val_rows)``, sorted: ``round(fraction * m)`` rows held out at random from ``seed`` (at least 1,
    leaving at least 1); ``stratify``: that fraction of each class, at least one of every class with two rows or more.
    ValueError when m < 2."""
    labels = np.asarray(y)
    m = labels.shape[0]
    if m < 2:
        raise ValueError(f"validation_fraction needs at least 2 rows to hold some out, got {m}")
    rng = np.random.default_rng(seed)
    if not stratify:
        perm = rng.permutation(m)
        k = min(m - 1, max(1, int(round(fraction * m))))
        held = perm[:k]
    else:
        held = []
        for value in np.unique(labels):
            rows = rng.permutation(np.flatnonzero(labels == value))
            k = min(len(rows) - 1, max(1, int(round(fraction * len(rows)))))
            held.extend(rows[:k])
        held = np.asarray(held, np.int64)
    mask = np.zeros(m, bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def take(a, rows: np.ndarray):
    """Rows ``rows`` of ``a`` (None stays None; a jax.Array stays on its device)."""
    if a is None:
        return None
    return jnp.take(a, jnp.asarray(rows), axis=0) if isinstance(a, jax.Array) else np.asarray(a)[rows]


def check_like(train, val) -> None:
    """The validation data must have the training data's columns and outputs (ValueError)."""
    if val.n != train.n:
        raise ValueError(f"validation X has {val.n} columns but X has {train.n}: give X_val the same features")
    if val.k != train.k:
        raise ValueError(f"validation y has {'1' if val.k is None else val.k} output(s) per row but y has "
                         f"{'1' if train.k is None else train.k}: give y_val the shape of y")
