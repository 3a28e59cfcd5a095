"""Numerical health: the curvature L and the safe step 1/L, the condition estimate and its
warning, divergence detection (step named, step size suggested), against numpy references."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import gradfit
from gradfit import health


def _hessian(X, *, loss="mse", reduction="mean", l2=0.0, w=None, intercept=True):
    """The objective's Hessian at W = 0 from the formula, in float64 numpy."""
    X = np.asarray(X, np.float64)
    m, n = X.shape
    A = np.c_[X, np.ones(m)] if intercept else X
    w = np.ones(m) if w is None else np.asarray(w, np.float64)
    s = w.sum()
    c = {("mse", "mean"): 2 / s, ("mse", "half_mean"): 1 / s, ("mse", "sum"): 2.0,
         ("bce", "mean"): 0.25 / s, ("bce", "sum"): 0.25}[loss, reduction]
    P = np.diag(np.r_[np.ones(n), np.zeros(A.shape[1] - n)])
    return c * (A * w[:, None]).T @ A + l2 * P


@pytest.mark.parametrize("loss, reduction", [("mse", "mean"), ("mse", "half_mean"), ("mse", "sum"), ("bce", "mean")])
@pytest.mark.parametrize("intercept", [True, False])
def test_lipschitz_matches_the_top_eigenvalue(x64, rng, loss, reduction, intercept):
    X = rng.standard_normal((50, 6)) * np.array([1, 2, 3, 0.5, 1, 4]) + 1.5
    w = rng.uniform(0.5, 2.0, 50)
    exact = np.linalg.eigvalsh(_hessian(X, loss=loss, reduction=reduction, l2=0.3, w=w, intercept=intercept))[-1]
    # The documented L: lambda_max of the unpenalised Hessian plus l2, an upper bound of the exact one.
    ref = np.linalg.eigvalsh(_hessian(X, loss=loss, reduction=reduction, w=w, intercept=intercept))[-1] + 0.3
    got = health.lipschitz(X, loss=loss, reduction=reduction, l2=0.3, sample_weight=w, fit_intercept=intercept)
    # The power method approaches from below; here the spectrum is well separated.
    assert 0.999 * ref <= got <= ref * (1 + 1e-9)
    assert got >= 0.999 * exact


def test_lipschitz_does_not_overflow_float32(rng):
    X = (rng.standard_normal((40, 3)) * 1e25).astype(np.float32)
    ref = np.linalg.eigvalsh(_hessian(X.astype(np.float64)))[-1]  # ~1e50, past float32's range
    got = health.lipschitz(X)
    assert np.isfinite(got)
    np.testing.assert_allclose(got, ref, rtol=1e-3)


def test_lipschitz_takes_the_largest_over_a_batch(x64, rng):
    X = rng.standard_normal((3, 20, 2)) * np.array([1.0, 5.0, 2.0])[:, None, None]
    ref = max(np.linalg.eigvalsh(_hessian(x))[-1] for x in X)
    np.testing.assert_allclose(health.lipschitz(X, batched=True), ref, rtol=1e-3)


def test_power_iterations_grow_with_log_n():
    assert health.power_iterations(10) == 20
    assert health.power_iterations(10**6) == int(np.ceil(2.5 * np.log(10**6 + 1))) + 1


def test_auto_learning_rate_is_one_over_L_and_descends(x64, rng):
    """learning_rate='auto' steps with 1/L: the loss never goes up and the fit reaches lstsq."""
    X = rng.standard_normal((40, 3)) * np.array([1.0, 3.0, 0.3]) + 0.5  # the shape of the tests below: one program
    y = X @ rng.standard_normal(3) + 0.1 * rng.standard_normal(40)
    L = np.linalg.eigvalsh(_hessian(X))[-1]
    # L is the raw Hessian's: gradient descent on raw (W, b), every step (as before the optimality test)
    r = gradfit.fit(X, y, learning_rate="auto", steps=20_000, standardize=False, tol=None)
    np.testing.assert_allclose(r.stats["learning_rate"], 1 / L, rtol=1e-3)
    assert np.all(np.diff(r.losses) <= 1e-12)
    ref = np.linalg.lstsq(np.c_[X, np.ones(40)], y, rcond=None)[0]
    np.testing.assert_allclose(np.r_[r.params.W, r.params.b], ref, rtol=1e-6, atol=1e-8)


def test_a_step_past_two_over_L_diverges(x64, rng):
    """The reference for 1/L: 2.2/L diverges, as the theory of gradient descent says."""
    X = rng.standard_normal((40, 3))
    y = X @ np.ones(3)
    L = np.linalg.eigvalsh(_hessian(X))[-1]
    with pytest.warns(RuntimeWarning, match="diverged"):
        r = gradfit.fit(X, y, learning_rate=2.2 / L, steps=5000, standardize=False)  # L: the raw Hessian's
    assert r.diverged
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not gradfit.fit(X, y, learning_rate=1.9 / L, steps=500, standardize=False).diverged


# --------------------------------------------------------------------------- divergence
def _numpy_gd_first_bad_step(X, y, lr, steps):
    """Plain gradient descent on mse ("mean") in float64 numpy; the first step t whose
    objective J_t is non-finite or exceeds 1e6 J_0 (the solver's rule), and p_{t-1}."""
    m, n = X.shape
    W, b = np.zeros(n), 0.0
    prev = (W, b)
    J0 = None
    for t in range(steps):
        r = X @ W + b - y
        J = np.mean(r * r)
        J0 = J if J0 is None else J0
        if not np.isfinite(J) or J > 1e6 * J0:
            return t, prev
        prev = (W, b)
        W, b = W - lr * (2 / m) * X.T @ r, b - lr * (2 / m) * r.sum()
    return None, (W, b)


def test_divergence_is_caught_in_the_chunk_it_happens_and_named(x64, rng):
    X = rng.standard_normal((40, 3))
    y = X @ np.array([1.0, -1.0, 2.0]) + 0.5
    L = np.linalg.eigvalsh(_hessian(X))[-1]
    lr = 2.6 / L  # the top mode grows 1.6x a step: past 1e6 J_0 after a few dozen steps
    t_ref, (W_ref, b_ref) = _numpy_gd_first_bad_step(X, y, lr, 10_000)
    assert 10 < t_ref < 200
    chunks_seen = []
    with pytest.warns(RuntimeWarning, match=rf"at step {t_ref} \(.*\): returning the last params before it; try learning_rate=(\S+)") as rec:
        r = gradfit.fit(X, y, learning_rate=lr, steps=10_000, chunk_size=8, standardize=False,  # the raw numpy loop
                        callback=lambda s, h: chunks_seen.append(1))
    assert r.diverged and not r.converged
    assert r.steps == t_ref + 1 and r.stats["diverged_at_step"] == t_ref
    # Caught inside the chunk where it happened: no chunk ran after it.
    assert r.stats["chunks"] == len(chunks_seen) == -(-(t_ref + 1) // 8)
    np.testing.assert_allclose(r.params.W, W_ref, rtol=1e-8)
    np.testing.assert_allclose(r.params.b, b_ref, rtol=1e-8)
    # The suggestion is the safe step 1/L, from below by the power method: within [1/L, 1.7/L] (to rounding: a
    # converged power method gives L itself).
    suggestion = r.stats["suggested_learning_rate"]
    assert (1 - 1e-9) / L <= suggestion <= 1.7 / L
    assert f"try learning_rate={suggestion:.3g} (was {lr:g})" in str(rec[0].message)


def test_divergence_within_the_first_chunk(rng):
    X = rng.standard_normal((40, 3)).astype(np.float32)
    y = X @ np.ones(3, np.float32)
    with pytest.warns(RuntimeWarning, match="diverged"):
        r = gradfit.fit(X, y, learning_rate=50.0, steps=100_000, chunk_size=256)
    assert r.diverged and r.stats["chunks"] == 1 and r.steps < 20
    assert np.isfinite(np.asarray(r.params.W)).all() and np.isfinite(float(r.loss))


def test_divergence_with_adam_suggests_a_tenth(rng):
    X = rng.standard_normal((40, 3)).astype(np.float32)
    y = X @ np.ones(3, np.float32)
    with pytest.warns(RuntimeWarning, match=r"try learning_rate=1e\+06 \(was 1e\+07\)"):
        r = gradfit.fit(X, y, optimizer="adam", learning_rate=1e7, steps=100)
    assert r.diverged and r.stats["suggested_learning_rate"] == pytest.approx(1e6)


# --------------------------------------------------------------------------- conditioning
def _condition_ref(X, **kw):
    ev = np.linalg.eigvalsh(_hessian(X, **kw))
    return ev[-1] / ev[0]


def test_condition_estimate_matches_numpy_on_small_data(rng):
    X = rng.standard_normal((300, 5)) * np.array([1, 10, 100, 1, 0.1]) + np.array([0, 5, 0, -3, 0])
    c = health.conditioning(X)
    assert c.exact and c.rows == 300 and c.constant_columns == ()
    np.testing.assert_allclose(c.condition, _condition_ref(X), rtol=1e-6)
    np.testing.assert_allclose(c.scale_spread, X.std(0).max() / X.std(0).min(), rtol=1e-9)


def test_condition_estimate_with_l2_and_no_intercept(rng):
    X = rng.standard_normal((100, 3)) * np.array([1, 50, 1])
    c = health.conditioning(X, fit_intercept=False, l2=0.5)
    np.testing.assert_allclose(c.condition, _condition_ref(X, intercept=False, l2=0.5), rtol=1e-6)


def test_condition_estimate_reads_a_sample_of_rows(rng):
    """m = 50 000: only 2048 evenly spaced rows are read, and the estimate is close."""
    X = rng.standard_normal((50_000, 4)) * np.array([1, 30, 1, 1])
    c = health.conditioning(X)
    assert c.rows == health.CONDITION_ROWS
    np.testing.assert_allclose(c.condition, _condition_ref(X), rtol=0.2)


def test_dependent_columns_are_left_out(rng):
    """Exact duplicates give a zero eigenvalue that gradient descent never excites."""
    X = rng.standard_normal((100, 2))
    c = health.conditioning(np.c_[X, X[:, 0], np.full(100, 7.0)])
    assert c.constant_columns == (3,)
    ev = np.linalg.eigvalsh(_hessian(np.c_[X, X[:, 0]]))  # the constant column is dropped
    assert ev[0] < 1e-12 * ev[-1]
    np.testing.assert_allclose(c.condition, ev[-1] / ev[1], rtol=1e-6)


def test_wide_data_use_the_diagonal_bound(rng):
    X = rng.standard_normal((300, 300)) * np.r_[np.ones(299), 100.0]
    c = health.conditioning(X)
    assert not c.exact
    assert c.condition >= 100.0**2 * 0.5  # max G_jj / min G_jj of the scaled column


def test_ill_conditioned_float32_warns_with_standardise(rng):
    X = (rng.standard_normal((200, 3)) * np.array([1.0, 300.0, 1.0])).astype(np.float32)
    y = X @ np.ones(3, np.float32)
    assert _condition_ref(X) > health.condition_limit(np.float32)
    # the raw problem is what gradient descent on raw (W, b) sees
    with pytest.warns(health.IllConditionedWarning, match=r"condition number ~.* standardise X.*float64.*2/L"):
        r = gradfit.fit(X, y, steps=3, learning_rate=1e-6, standardize=False)
    np.testing.assert_allclose(r.stats["condition_number"], _condition_ref(X), rtol=1e-5)
    # standardize=True (the default) optimises the standardised problem, which is well conditioned
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = gradfit.fit(X, y, steps=3, learning_rate=1e-6)
    Xs = (X.astype(np.float64) - X.mean(0)) / X.std(0)
    np.testing.assert_allclose(r.stats["condition_number"], _condition_ref(Xs), rtol=1e-5)


def test_standardised_or_float64_data_do_not_warn(rng):
    import jax

    X = rng.standard_normal((200, 3)) * np.array([1.0, 300.0, 1.0])
    y = X @ np.ones(3)
    Xs = (X - X.mean(0)) / X.std(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradfit.fit(Xs.astype(np.float32), y.astype(np.float32), steps=3)
        with jax.enable_x64(True):
            r = gradfit.fit(X, y, steps=3, learning_rate=1e-6)
    assert r.stats["dtype"] == "float64"


def test_correlated_columns_warn_with_l2(rng):
    x = rng.standard_normal(250)  # up to 256 rows: the padded shape of the float32 fits above, their programs
    X = np.c_[x, x + 1e-3 * rng.standard_normal(250), rng.standard_normal(250)].astype(np.float32)
    with pytest.warns(health.IllConditionedWarning, match="strongly correlated columns. Remedy: add an l2 penalty"):
        gradfit.fit(X, X[:, 2], steps=2)
    with warnings.catch_warnings():  # a penalty bounds the smallest eigenvalue away from 0
        warnings.simplefilter("error")
        gradfit.fit(X, X[:, 2], steps=2, l2=1.0)


@pytest.mark.parametrize("batch_size", [None, 1])
def test_divergence_on_the_last_step_is_caught(x64, batch_size):
    """The loop evaluates J before each update; an update that explodes on the very last step
    is caught by the final evaluation: the params before it are returned, reported diverged."""
    X = np.full((5, 1), 2.0)
    y = np.ones(5)
    # numpy: one full-batch step from zero with lr = 1000 gives W = 8000, b = 4000: J = 4e8 > 1e6 J_0.
    W1, b1 = 1000 * (2 / 5) * X.T @ y, 1000 * 2.0
    assert np.mean((X @ W1 + b1 - y) ** 2) > 1e6
    with pytest.warns(RuntimeWarning, match=r"diverged at step 1 \(.*\): returning the last params before it"):
        r = gradfit.fit(X, y, learning_rate=1000.0, steps=1, batch_size=batch_size)
    assert r.diverged and not r.converged and r.steps == 1 and r.stats["diverged_at_step"] == 1
    np.testing.assert_array_equal(np.asarray(r.params.W), 0.0)
    assert float(r.loss) == pytest.approx(1.0)


def test_lipschitz_with_huge_weights(rng):
    """"mean" divides by sum(w), so scaling every weight by 1e30 changes nothing (and nothing
    overflows float32 on the way)."""
    X = rng.standard_normal((40, 3)).astype(np.float32)
    w = rng.uniform(0.5, 2.0, 40).astype(np.float32)
    ref = np.linalg.eigvalsh(_hessian(X, w=w))[-1]
    np.testing.assert_allclose(health.lipschitz(X, sample_weight=w * np.float32(1e30)), ref, rtol=1e-3)


def test_lipschitz_from_a_sampled_start_is_close_above_on_many_rows(x64, rng):
    """m > CONDITION_ROWS: the power steps start from a row sample's top eigenvector; L is at least the full data's
    lambda_max to 1e-3 and the sample cannot overstate it by much."""
    X = rng.standard_normal((20_000, 8)) * np.array([1, 2, 3, 0.5, 1, 4, 1, 1]) + 0.5
    X[:, 1] += 0.8 * X[:, 5]
    ref = np.linalg.eigvalsh(_hessian(X))[-1]
    assert 0.999 * ref <= health.lipschitz(X) <= 1.1 * ref
