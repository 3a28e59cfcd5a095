"""Minibatch epochs: every row counted once per epoch (both samplings), and convergence."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

import gradfit
from _sample import crossed


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("weights, batch_size, shuffle", crossed(  # 100 rows: a padded last batch, exact, one batch
    [False, True], [7, 25, 100], ["blocks", "rows"],
    fast=[(False, 7, "blocks"), (True, 25, "rows"), (True, 100, "blocks")]))
def test_epoch_counts_every_row_once(x64, shuffle, batch_size, weights):
    """With the params frozen, the epoch's mean minibatch objective is the full objective at
    the initial params: every row (and its weight) enters once, padding enters with weight 0."""
    rng = np.random.default_rng(0)
    m, n = 100, 3
    X = rng.standard_normal((m, n))
    y = rng.standard_normal(m) + 2
    w = rng.uniform(0.1, 2, m) if weights else np.ones(m)
    full = np.sum(w * y**2) / np.sum(w)  # params start at 0
    # optax.set_to_zero() freezes the params (learning_rate=1e-300 is now refused as unable to
    # move them). An epoch that leaves the params unchanged stops the fit as "stalled", so each fit
    # records one epoch: two seeds give two different batch orders (what steps=2 used to cover).
    for seed in (0, 1):
        r = gradfit.fit(
            X, y, batch_size=batch_size, shuffle=shuffle, optimizer=optax.set_to_zero(), steps=2,
            sample_weight=w if weights else None, grad="autodiff", seed=seed,
        )
        np.testing.assert_allclose(r.losses, [full], rtol=1e-12)
        assert r.steps == 1 and r.status == "stalled" and not r.converged
        assert r.stats["shuffle"] == shuffle


def test_blocks_sgd_converges_to_least_squares(x64):
    rng = np.random.default_rng(1)
    m, n = 512, 4
    X = rng.standard_normal((m, n))
    y = X @ rng.standard_normal(n) + 0.5 + 0.01 * rng.standard_normal(m)
    r = gradfit.fit(X, y, batch_size=32, learning_rate=0.05, steps=60, optimizer="sgd")
    coef, *_ = np.linalg.lstsq(np.hstack([X, np.ones((m, 1))]), y, rcond=None)
    np.testing.assert_allclose(r.params.W, coef[:-1], atol=5e-3)
    np.testing.assert_allclose(r.params.b, coef[-1], atol=5e-3)


def test_blocks_order_changes_between_epochs_and_seeds(x64):
    """Batch order is random: different seeds give different iterates, the same seed the same bits."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((64, 2))
    y = rng.standard_normal(64)
    a = gradfit.fit(X, y, batch_size=8, learning_rate=0.1, steps=3, seed=0)
    b = gradfit.fit(X, y, batch_size=8, learning_rate=0.1, steps=3, seed=0)
    c = gradfit.fit(X, y, batch_size=8, learning_rate=0.1, steps=3, seed=1)
    np.testing.assert_array_equal(a.params.W, b.params.W)
    assert not np.allclose(a.params.W, c.params.W)


def test_unknown_shuffle():
    with pytest.raises(ValueError, match="unknown shuffle"):
        gradfit.fit(np.zeros((4, 1)), np.zeros(4), batch_size=2, shuffle="random")
