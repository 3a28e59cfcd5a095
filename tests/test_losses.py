"""Losses against numpy written from each seed's formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradfit import Params, losses


def _problem(rng, m=20, n=4, k=None):
    out = () if k is None else (k,)
    X = rng.standard_normal((m, n))
    y = rng.standard_normal((m, *out))
    p = Params(rng.standard_normal((n, *out)), rng.standard_normal(out))
    return X, y, p


@pytest.mark.parametrize("k", [None, 1, 3])
def test_mse_reductions_match_the_seeds(x64, rng, k):
    X, y, p = _problem(rng, k=k)
    m = len(X)
    yhat = X @ p.W + p.b
    sq = np.sum((y - yhat) ** 2)
    # Q&A seed: J = (1/m) sum (y_i - h(x_i))^2
    np.testing.assert_allclose(losses.mse(p, X, y, reduction="mean"), sq / m, rtol=1e-12)
    # notes seed: J = 1/(2m) ||h - y||^2
    np.testing.assert_allclose(losses.mse(p, X, y, reduction="half_mean"), sq / (2 * m), rtol=1e-12)
    # blog seed: L = sum_i (g_i - y_i)^2
    np.testing.assert_allclose(losses.mse(p, X, y, reduction="sum"), sq, rtol=1e-12)


@pytest.mark.parametrize("k", [None, 2])
def test_bce_matches_the_notes_formula(x64, rng, k):
    X, _, p = _problem(rng, k=k)
    y = rng.random((len(X),) if k is None else (len(X), k))
    z = X @ p.W + p.b
    a = 1 / (1 + np.exp(-z))
    per = -(y * np.log(a) + (1 - y) * np.log(1 - a))
    np.testing.assert_allclose(losses.bce(p, X, y), per.sum() / len(X), rtol=1e-12)
    np.testing.assert_allclose(losses.bce(p, X, y, reduction="sum"), per.sum(), rtol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_bce_is_finite_and_exact_for_extreme_logits(x64, dtype):
    X = jnp.ones((4, 1), dtype)
    y = jnp.asarray([1.0, 0.0, 1.0, 0.0], dtype)
    for logit, expected in [(1000.0, [0.0, 1000.0, 0.0, 1000.0]), (-1000.0, [1000.0, 0.0, 1000.0, 0.0]),
                            (5000.0, [0.0, 5000.0, 0.0, 5000.0])]:
        p = Params(jnp.asarray([logit], dtype), jnp.asarray(0.0, dtype))
        per = losses.binary_cross_entropy(p, X, y)
        assert per.dtype == dtype
        np.testing.assert_array_equal(np.asarray(per), np.asarray(expected, dtype))
        g = jax.grad(losses.bce)(p, X, y)
        assert np.isfinite(np.asarray(g.W)).all()


def test_l2_penalty_is_half_squared_norm_of_W_only(rng):
    p = Params(jnp.asarray([[1.0, 2.0], [3.0, 4.0]]), jnp.asarray([10.0, 20.0]))
    np.testing.assert_allclose(losses.l2_penalty(p, 0.5), 0.25 * 30.0)


def test_losses_keep_dtype(rng):
    X, y, p = _problem(rng)
    p32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p)
    assert losses.mse(p32, jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32)).dtype == jnp.float32


def test_shape_mismatch_is_an_error_not_a_broadcast(rng):
    X, y, p = _problem(rng, k=2)
    with pytest.raises(ValueError, match="y has shape"):
        losses.mse(p, X, y[:, :1])
    with pytest.raises(ValueError, match="unknown reduction"):
        losses.mse(p, X, y, reduction="avg")
    with pytest.raises(ValueError, match="unknown reduction"):
        losses.bce(p, X, y, reduction="half_mean")


def test_sample_weight_mean_divides_by_weight_sum(x64, rng):
    X, y, p = _problem(rng)
    w = rng.random(len(X))
    r = y - (X @ p.W + p.b)
    np.testing.assert_allclose(losses.mse(p, X, y, sample_weight=w), np.sum(w * r**2) / w.sum(), rtol=1e-12)


def test_bce_second_derivative_is_smooth_at_zero_logits(x64, rng):
    # W = 0 puts every logit at 0, where the formula's max(z, 0) and |z| have kinks: the
    # curvature must still be mean a (1 - a) = 1/4, as for the textbook formula.
    X = rng.standard_normal((30, 3))
    y = (rng.random(30) < 0.5).astype(float)
    for W in (np.zeros(3), rng.standard_normal(3)):
        hess = jax.hessian(lambda b: losses.bce(Params(jnp.asarray(W), b), X, y))(jnp.asarray(0.2 if W.any() else 0.0))
        a = 1 / (1 + np.exp(-(X @ W + (0.2 if W.any() else 0.0))))
        np.testing.assert_allclose(hess, np.mean(a * (1 - a)), rtol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_bce_terms_keep_the_digits_of_small_losses(x64, dtype):
    z = jnp.asarray([20.0, -20.0, 30.0, 0.0, 3.0, -3.0, 1000.0], dtype)
    y = jnp.asarray([1.0, 0.0, 1.0, 1.0, 0.25, 0.5, 1.0], dtype)
    loss, a = losses.bce_terms(z, y)
    zz, yy = np.asarray(z, np.float64), np.asarray(y, np.float64)
    exact = yy * np.logaddexp(0, -zz) + (1 - yy) * np.logaddexp(0, zz)  # log1p(e^-20) = 2.06e-9 stays
    np.testing.assert_allclose(loss, exact, rtol=1e-6 if dtype == jnp.float32 else 1e-14)
    np.testing.assert_allclose(a, 1 / (1 + np.exp(-zz)), rtol=1e-6 if dtype == jnp.float32 else 1e-14)
    assert loss.dtype == a.dtype == dtype
