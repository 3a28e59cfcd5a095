"""gradfit.solve: a pure fixed-step fit, checked against numpy gradient descent written from
the formulas, and differentiated against central finite differences in float64."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradfit
from gradfit import Params
from _sample import thinned


@pytest.fixture
def x64():
    """float64 for this test only; the flag is restored afterwards."""
    with jax.enable_x64(True):
        yield


def _problem(m=60, n=4, k=None, seed=0, dtype=np.float64, classification=False):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, n))
    W = rng.standard_normal((n,) if k is None else (n, k))
    z = X @ W + 0.3
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(float) if classification else z + 0.1 * rng.standard_normal(z.shape)
    return X.astype(dtype), y.astype(dtype)


def _numpy_gd(X, y, *, lr, l2, steps, loss, reduction="mean", momentum=None):
    """Full-batch gradient descent written from the formulas in numpy (float64).

    mse "mean": J = (1/m) sum ||y - XW - b||^2 + (l2/2)||W||^2, dW = (2/m) X^T r + l2 W, db = (2/m) sum r.
    bce "mean": J = (1/m) sum [y softplus(-z) + (1-y) softplus(z)] + (l2/2)||W||^2,
                dW = (1/m) X^T (sigmoid(z) - y) + l2 W, db = (1/m) sum (sigmoid(z) - y).
    Returns W, b and the objective at the start of every step.
    """
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    m = X.shape[0]
    W = np.zeros((X.shape[1], *y.shape[1:]))
    b = np.zeros(y.shape[1:])
    vW, vb = np.zeros_like(W), np.zeros_like(b)
    history = []
    for _ in range(steps):
        z = X @ W + b
        if loss == "mse":
            r = z - y
            c = {"mean": 1 / m, "half_mean": 0.5 / m, "sum": 1.0}[reduction]
            J = c * np.sum(r * r)
            s = 2 * c * r
        else:
            J = np.sum(y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z)) / m
            s = (1 / (1 + np.exp(-z)) - y) / m
        history.append(J + 0.5 * l2 * np.sum(W * W))
        gW = X.T @ s + l2 * W
        gb = s.sum(axis=0)
        if momentum is None:
            W, b = W - lr * gW, b - lr * gb
        else:  # optax.sgd(momentum=mu): v <- g + mu v; p <- p - lr v
            vW, vb = gW + momentum * vW, gb + momentum * vb
            W, b = W - lr * vW, b - lr * vb
    return W, b, np.array(history)


def _compiled_solve(X, y, **options):
    """``gradfit.solve(None, X, y, **options)`` under ``jax.jit``: one program, where an eager call compiles each of
    its ~80 operations on its own. The float32 tests below call solve eagerly (and compare it with jit)."""
    return jax.jit(lambda X, y: gradfit.solve(None, X, y, **options))(X, y)


@pytest.mark.parametrize("loss, reduction, k", thinned(  # one k for the multi-output cases: their eager ops are shared
    [("mse", "mean", None), ("mse", "half_mean", 2), ("mse", "sum", None), ("bce", "mean", None), ("bce", "mean", 2)],
    fast=[("mse", "half_mean", 2), ("mse", "sum", None), ("bce", "mean", 2)]))
def test_solve_matches_numpy_gradient_descent(x64, loss, reduction, k):
    X, y = _problem(k=k, classification=loss == "bce")
    lr = 0.002 if reduction == "sum" else 0.1
    W, b, history = _numpy_gd(X, y, lr=lr, l2=0.05, steps=40, loss=loss, reduction=reduction)
    sol = _compiled_solve(X, y, learning_rate=lr, l2=0.05, steps=40, loss=loss, reduction=reduction)
    np.testing.assert_allclose(sol.params.W, W, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sol.params.b, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sol.losses, history, rtol=1e-10)
    assert int(sol.steps) == 40 and not bool(sol.converged) and not bool(sol.diverged)
    assert sol.params.W.dtype == jnp.float64


def test_solve_with_momentum_matches_numpy(x64):
    X, y = _problem()
    W, b, _ = _numpy_gd(X, y, lr=0.05, l2=0.0, steps=30, loss="mse", momentum=0.9)
    sol = _compiled_solve(X, y, learning_rate=0.05, steps=30, optimizer_options={"momentum": 0.9})
    np.testing.assert_allclose(sol.params.W, W, rtol=1e-10)
    np.testing.assert_allclose(sol.params.b, b, rtol=1e-10)


def test_solve_computes_in_the_input_dtype():
    X, y = _problem(dtype=np.float32)
    # the eager call of test_inside_user_jit_without_retracing_for_new_values: the same programs
    sol = gradfit.solve(None, X, y, l2=0.1, learning_rate=0.05, steps=20)
    chex.assert_trees_all_equal_dtypes(sol.params, Params(jnp.zeros(1, jnp.float32), jnp.zeros((), jnp.float32)))
    assert sol.losses.dtype == jnp.float32 and sol.losses.shape == (20,)


def _split(X, y, m_train=45):
    return X[:m_train], y[:m_train], X[m_train:], y[m_train:]


def _central_difference(f, x, h):
    return (f(x + h) - f(x - h)) / (2 * h)


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_gradient_of_validation_loss_matches_finite_differences(x64, loss):
    X, y = _problem(classification=loss == "bce", seed=1)
    Xt, yt, Xv, yv = _split(X, y)
    loss_fn = gradfit.losses.LOSSES[loss]

    def val_loss(l2, lr):
        sol = gradfit.solve(None, Xt, yt, l2=l2, learning_rate=lr, steps=60, loss=loss)
        return loss_fn(sol.params, Xv, yv)

    # one compile: the reverse-mode gradient, and the values the finite differences are taken of
    value_and_grad = jax.jit(jax.value_and_grad(val_loss, argnums=(0, 1)))
    val = lambda l2, lr: value_and_grad(l2, lr)[0]  # noqa: E731
    l2, lr = 0.3, 0.02  # far from converged, so both derivatives are sizeable
    _, (g_l2, g_lr) = value_and_grad(l2, lr)
    fd_l2 = _central_difference(lambda t: val(t, lr), l2, 1e-5)
    fd_lr = _central_difference(lambda t: val(l2, t), lr, 1e-6)
    assert abs(float(fd_l2)) > 1e-4 and abs(float(fd_lr)) > 1e-4  # the check is not vacuous
    np.testing.assert_allclose(g_l2, fd_l2, rtol=1e-6)
    np.testing.assert_allclose(g_lr, fd_lr, rtol=1e-6)


def test_gradient_through_a_traced_optimizer_option_and_the_data(x64):
    X, y = _problem(seed=2)
    Xt, yt, Xv, yv = _split(X, y)

    def loss_of(momentum, Xt):
        sol = gradfit.solve(None, Xt, yt, learning_rate=0.05, steps=30, optimizer_options={"momentum": momentum})
        return gradfit.losses.mse(sol.params, Xv, yv)

    value_and_grad = jax.jit(jax.value_and_grad(loss_of, argnums=(0, 1)))  # one compile, values for the differences
    val_loss = lambda momentum, Xt: value_and_grad(momentum, Xt)[0]  # noqa: E731
    _, (g_mu, g_X) = value_and_grad(jnp.asarray(0.5), Xt)
    np.testing.assert_allclose(g_mu, _central_difference(lambda t: val_loss(t, Xt), jnp.asarray(0.5), 1e-6), rtol=1e-6)
    E = np.zeros_like(Xt)
    E[3, 1] = 1.0
    fd_X = _central_difference(lambda t: val_loss(jnp.asarray(0.5), Xt + t * E), 0.0, 1e-6)
    np.testing.assert_allclose(g_X[3, 1], fd_X, rtol=1e-6)


def test_forward_mode_through_lbfgs(x64):
    X, y = _problem(seed=3)
    Xt, yt, Xv, yv = _split(X, y)

    def val_loss(l2):
        sol = gradfit.solve(None, Xt, yt, l2=l2, optimizer="lbfgs", steps=8)
        return gradfit.losses.mse(sol.params, Xv, yv)

    # one compile: the tangent, and the values the finite difference is taken of
    primal_and_tangent = jax.jit(lambda l2: jax.jvp(val_loss, (l2,), (jnp.ones_like(l2),)))
    _, tangent = primal_and_tangent(jnp.asarray(0.2))
    fd = _central_difference(lambda t: primal_and_tangent(t)[0], jnp.asarray(0.2), 1e-5)
    np.testing.assert_allclose(tangent, fd, rtol=1e-5)


def test_inside_user_jit_without_retracing_for_new_values():
    X, y = _problem(dtype=np.float32)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def fitted(X, y, l2, lr):
        return gradfit.solve(None, X, y, l2=l2, learning_rate=lr, steps=20).params

    eager = gradfit.solve(None, X, y, l2=0.1, learning_rate=0.05, steps=20).params
    chex.assert_trees_all_close(fitted(X, y, 0.1, 0.05), eager, rtol=1e-5, atol=1e-6)
    fitted(X, y, 0.2, 0.01)  # new values, same program: a second trace would raise
    chex.clear_trace_counter()


def test_vmap_over_hyperparameters_and_problems(x64):
    X, y = _problem()
    l2s = jnp.array([0.0, 0.1, 1.0])
    lrs = jnp.array([0.05, 0.1, 0.2])
    # jit(vmap): one program (a vmap run op by op compiles each of its ~150 batched operations on its own)
    batched = jax.jit(jax.vmap(lambda l2, lr: gradfit.solve(None, X, y, l2=l2, learning_rate=lr, steps=25)))(l2s, lrs)
    chex.assert_shape(batched.params.W, (3, X.shape[1]))
    chex.assert_shape(batched.losses, (3, 25))
    for i in range(3):
        W, b, _ = _numpy_gd(X, y, lr=float(lrs[i]), l2=float(l2s[i]), steps=25, loss="mse")
        np.testing.assert_allclose(batched.params.W[i], W, rtol=1e-10)
        np.testing.assert_allclose(batched.params.b[i], b, rtol=1e-10)

    Xs = np.stack([X, 2 * X])
    ys = np.stack([y, y - 1])
    per_problem = jax.jit(jax.vmap(lambda X, y: gradfit.solve(None, X, y, learning_rate=0.05, steps=25).params))(Xs, ys)
    for i in range(2):
        W, b, _ = _numpy_gd(Xs[i], ys[i], lr=0.05, l2=0.0, steps=25, loss="mse")
        np.testing.assert_allclose(per_problem.W[i], W, rtol=1e-10)
        np.testing.assert_allclose(per_problem.b[i], b, rtol=1e-10)


def test_tol_freezes_the_state_and_pads_losses_with_nan(x64):
    X, y = _problem()
    sol = _compiled_solve(X, y, learning_rate=0.1, steps=500, tol=1e-6)
    n = int(sol.steps)
    assert bool(sol.converged) and 1 < n < 500
    assert np.isfinite(sol.losses[:n]).all() and np.isnan(sol.losses[n:]).all()
    # Frozen means: the same params as a run of exactly n steps.
    W, b, _ = _numpy_gd(X, y, lr=0.1, l2=0.0, steps=n - 1, loss="mse")
    np.testing.assert_allclose(sol.params.W, W, rtol=1e-10)


def test_divergence_is_status_not_nan(x64):
    X, y = _problem()
    sol = _compiled_solve(X, y, learning_rate=50.0, steps=100)
    assert bool(sol.diverged) and int(sol.steps) < 100
    chex.assert_tree_all_finite(sol.params)


def test_minibatches_are_reproducible_from_the_key():
    X, y = _problem(dtype=np.float32)
    run = jax.jit(lambda key: gradfit.solve(None, X, y, learning_rate=0.05, steps=5, batch_size=16, key=key).params)
    chex.assert_trees_all_equal(run(jax.random.key(0)), run(jax.random.key(0)))
    assert not np.allclose(run(jax.random.key(0)).W, run(jax.random.key(1)).W)


def test_params0_and_fit_intercept_false_keep_the_bias():
    X, y = _problem(dtype=np.float32)
    p0 = Params(jnp.zeros(4, jnp.float32), jnp.asarray(1.5, jnp.float32))
    sol = gradfit.solve(p0, X, y, learning_rate=0.1, steps=10, fit_intercept=False)
    assert float(sol.params.b) == 1.5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(loss="hinge"), "unknown loss 'hinge'"),
        (dict(reduction="half_mean", loss="bce"), "unknown reduction"),
        (dict(optimizer="adamm"), "did you mean 'adam'"),
        (dict(steps=0), "steps must be a positive integer"),
        (dict(steps=2.5), "steps must be a positive integer"),
        (dict(l2=np.ones(3)), "l2 has shape \\(3,\\).*vmap"),
        (dict(params0=Params(np.zeros(3), np.zeros(()))), "need W \\(4,\\)"),
        (dict(y=np.zeros(7)), "y has shape \\(7,\\)"),
        (dict(batch_size=1000), "batch_size=1000 is larger"),
        (dict(sample_weight=np.ones(3)), "sample_weight has shape"),
        (dict(optimizer_options={"momentun": 0.9}), "did you mean 'momentum'"),
    ],
)
def test_static_misuse_raises_before_compute(kwargs, match):
    X, y = _problem(dtype=np.float32)
    args = dict(params0=None, X=X, y=y, steps=5, learning_rate=0.1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        gradfit.solve(args.pop("params0"), args.pop("X"), args.pop("y"), **args)


def test_traced_steps_names_the_fix():
    X, y = _problem(dtype=np.float32)
    with pytest.raises(ValueError, match="static_argnames"):
        jax.jit(lambda s: gradfit.solve(None, X, y, steps=s, learning_rate=0.1).params)(5)
