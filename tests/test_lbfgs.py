"""L-BFGS (optax's, with its zoom line search) inside the compiled loop, against scikit-learn."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import gradfit
from gradfit import datasets


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("grad", ["auto", "onepass", "autodiff"])
def test_logistic_regression_matches_sklearn(x64, grad):
    from sklearn.linear_model import LogisticRegression

    d = datasets.make_classification(600, 5, seed=3, dtype=np.float64)
    C = 0.5
    ref = LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(d.X, d.y)
    r = gradfit.fit(d.X, d.y, loss="bce", optimizer="lbfgs", l2=1 / (C * len(d.X)), steps=100, tol=1e-14, grad=grad)
    assert not r.diverged
    assert r.steps < 60  # quasi-Newton: tens of iterations, not the hundreds of gradient descent
    np.testing.assert_allclose(r.params.W, ref.coef_[0], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(r.params.b, ref.intercept_[0], rtol=1e-6, atol=1e-8)


def test_lbfgs_float32_reaches_tight_gap():
    """float32, compiled loop: the objective gap to the float64 optimum is ~1e-6 or better."""
    from sklearn.linear_model import LogisticRegression

    d = datasets.make_classification(5000, 8, seed=4)
    m = len(d.X)
    ref = LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(d.X.astype(np.float64), d.y)
    r = gradfit.fit(d.X, d.y, loss="bce", optimizer="lbfgs", l2=1 / m, steps=50, tol=1e-9)

    def J(W, b):
        z = d.X.astype(np.float64) @ np.asarray(W, np.float64) + float(b)
        return np.mean(np.logaddexp(0, z) - d.y * z) + 0.5 / m * float(np.sum(np.asarray(W, np.float64) ** 2))

    J_star = J(ref.coef_[0], ref.intercept_[0])
    assert (J(r.params.W, r.params.b) - J_star) / J_star < 2e-6


def test_lbfgs_iterates_equal_optax_reference_loop_at_one_evaluation_per_step(x64):
    """The documented optax loop (value and gradient recomputed at every iterate by jax.value_and_grad) against
    gradfit's, which takes them from the line search's state: same iterates, and about one evaluation a step."""
    import jax.numpy as jnp
    import optax

    d = datasets.make_classification(400, 5, seed=7, dtype=np.float64)
    X, y, l2 = jnp.asarray(d.X), jnp.asarray(d.y), 0.1

    def J(p):
        z = X @ p[0] + p[1]
        return jnp.mean(jnp.logaddexp(0, z) - y * z) + 0.5 * l2 * jnp.sum(p[0] ** 2)

    opt, p = optax.lbfgs(), (jnp.zeros(5), jnp.zeros(()))

    @jax.jit
    def step(p, state):
        value, g = jax.value_and_grad(J)(p)
        updates, state = opt.update(g, state, p, value=value, grad=g, value_fn=J)
        return optax.apply_updates(p, updates), state

    # optax's initial state holds weak-typed scalars its updates return strongly typed: made strong here, every
    # step runs the one compiled program (else the second step compiles the step again)
    state = jax.tree.map(lambda a: jnp.asarray(a, a.dtype), opt.init(p))
    for _ in range(6):
        p, state = step(p, state)
    r = gradfit.fit(d.X, d.y, loss="bce", optimizer="lbfgs", l2=l2, steps=6, tol=None, standardize=False)
    assert r.steps == 6
    np.testing.assert_allclose(r.params.W, p[0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(r.params.b, p[1], rtol=1e-9, atol=1e-12)
    assert r.stats["evaluations"] <= 6 + 1 + 3  # the seed, one per accepted step, a few extra trial points


def test_a_step_that_already_converged_makes_no_line_search(x64):
    # Started at scikit-learn's answer, the seed's J and dJ pass the test at step 0: no update, so no trial point
    # (its line search would be discarded); the run's evaluations are the seed's alone.
    from sklearn.linear_model import LogisticRegression

    d = datasets.make_classification(600, 5, seed=3, dtype=np.float64)
    C = 0.5
    ref = LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(d.X, d.y)
    init = gradfit.Params(W=ref.coef_[0], b=np.asarray(ref.intercept_[0]))
    r = gradfit.fit(d.X, d.y, loss="bce", optimizer="lbfgs", l2=1 / (C * len(d.X)), steps=100, tol=1e-6, init=init)
    assert r.converged and r.steps == 1
    assert r.stats["evaluations"] == 1
    np.testing.assert_array_equal(r.params.W, ref.coef_[0])
    cold = gradfit.fit(d.X, d.y, loss="bce", optimizer="lbfgs", l2=1 / (C * len(d.X)), steps=100, tol=1e-6)
    assert cold.converged and cold.stats["evaluations"] >= cold.steps  # each step that moved: its line search
