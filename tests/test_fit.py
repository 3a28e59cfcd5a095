"""gradfit.fit against independent references: the seeds' numpy loops, lstsq, scikit-learn."""

import subprocess
import sys
import warnings

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradfit
from gradfit import Params, datasets, health


def _regression(rng, m=60, n=4, k=None):
    out = () if k is None else (k,)
    X = rng.standard_normal((m, n))
    y = X @ rng.standard_normal((n, *out)) + 0.5 + 0.1 * rng.standard_normal((m, *out))
    return X, y


# ----------------------------------------------------------------- the seeds, iterate for iterate
@pytest.mark.parametrize("grad", ["autodiff", "hand"])
def test_qa_seed_loop_reproduced_iterate_for_iterate(x64, rng, grad):
    X, Y = _regression(rng)
    m, lr, steps = len(X), 0.05, 37
    W, b = np.zeros(X.shape[1]), 0.0
    for _ in range(steps):  # the Q&A seed, verbatim
        Y_hat = X.dot(W) + b
        dW = -(2 * (X.T).dot(Y - Y_hat)) / m
        db = -(2 * np.sum(Y - Y_hat)) / m
        W = W - lr * dW
        b = b - lr * db
    # the seed's iterates are on raw (W, b), every step: standardize=False, tol=None
    r = gradfit.fit(X, Y, learning_rate=lr, steps=steps, grad=grad, standardize=False, tol=None)
    assert r.steps == steps and not r.converged and not r.diverged
    np.testing.assert_allclose(r.params.W, W, rtol=1e-12)
    np.testing.assert_allclose(r.params.b, b, rtol=1e-12)
    assert r.params.W.dtype == jnp.float64


def test_notes_seed_half_mean_and_logistic_loops(x64, rng):
    n, m, lr, steps = 4, 60, 0.3, 25  # the shape of _regression's problems: the statistics' program is shared
    Xn = rng.standard_normal((n, m))  # samples in columns, as in the notes
    y = rng.standard_normal((1, m))
    w, b = np.zeros((n, 1)), 0.0
    for _ in range(steps):
        h = w.T @ Xn + b
        w, b = w - lr * (1 / m) * Xn @ (h - y).T, b - lr * (1 / m) * np.sum(h - y)
    r = gradfit.fit(Xn.T, y[0], reduction="half_mean", learning_rate=lr, steps=steps, standardize=False, tol=None)
    np.testing.assert_allclose(r.params.W, w[:, 0], rtol=1e-12)
    np.testing.assert_allclose(r.params.b, b, rtol=1e-12)

    yl = (rng.random((1, m)) < 1 / (1 + np.exp(-Xn[0]))).astype(float)
    w, b = np.zeros((n, 1)), 0.0
    for _ in range(steps):
        a = 1 / (1 + np.exp(-(w.T @ Xn + b)))
        w, b = w - lr * (1 / m) * Xn @ (a - yl).T, b - lr * (1 / m) * np.sum(a - yl)
    r = gradfit.fit(Xn.T, yl[0], loss="bce", learning_rate=lr, steps=steps, grad="hand", standardize=False,
                    tol=None)
    np.testing.assert_allclose(r.params.W, w[:, 0], rtol=1e-12)
    np.testing.assert_allclose(r.params.b, b, rtol=1e-12)


def test_blog_seed_multi_output_sum_loop(x64, rng):
    """y = M x + b per sample, L = sum ||g - y||^2, M' = M + lr 2 (g - y) x^T summed over samples."""
    k, n, m, lr, steps = 3, 4, 60, 0.002, 30  # _regression(rng, k=3)'s shape: the statistics' program is shared
    X = rng.standard_normal((m, n))
    G = X @ rng.standard_normal((n, k)) + 1.0
    M, b = np.zeros((k, n)), np.zeros(k)
    for _ in range(steps):
        Y = X @ M.T + b
        M = M + lr * 2 * (G - Y).T @ X
        b = b + lr * 2 * (G - Y).sum(0)
    r = gradfit.fit(X, G, reduction="sum", learning_rate=lr, steps=steps, standardize=False, tol=None)
    np.testing.assert_allclose(r.params.W, M.T, rtol=1e-12)
    np.testing.assert_allclose(r.params.b, b, rtol=1e-12)


# ----------------------------------------------------------------- optima
def test_converges_to_lstsq(x64, rng):
    X, y = _regression(rng, k=3)
    A = np.hstack([X, np.ones((len(X), 1))])
    coef = np.linalg.lstsq(A, y, rcond=None)[0]
    # tol is the scaled gradient norm G (G^2 ~ relative gap): 1e-12 is within float64's reach
    r = gradfit.fit(X, y, learning_rate=0.2, steps=5000, tol=1e-12)
    assert r.converged and r.status == "converged" and r.stats["grad_norm"] <= 1e-12
    np.testing.assert_allclose(r.params.W, coef[:-1], rtol=1e-6)
    np.testing.assert_allclose(r.params.b, coef[-1], rtol=1e-6)


def test_diabetes_reaches_ridge_optimum(x64):
    sklearn = pytest.importorskip("sklearn.linear_model")
    ds = datasets.load_diabetes(dtype=np.float64)
    m, alpha = len(ds.X), 1.0
    ref = sklearn.Ridge(alpha=alpha).fit(ds.X, ds.y)
    r = gradfit.fit(ds.X, ds.y, optimizer="lbfgs", l2=2 * alpha / m, steps=500, tol=1e-14)
    np.testing.assert_allclose(r.params.W, ref.coef_, rtol=1e-3)
    np.testing.assert_allclose(r.params.b, ref.intercept_, rtol=1e-3)
    # plain gradient descent gets there too, in float32 (condition number ~470: many steps)
    # (tol=1e-6, near float32's floor for G: the default 1e-4 bounds (J - J*)/J, not ||W - W*||)
    r32 = gradfit.fit(ds.X.astype(np.float32), ds.y.astype(np.float32), learning_rate=0.2,
                      l2=2 * alpha / m, steps=30000, tol=1e-6)
    rel = np.linalg.norm(np.asarray(r32.params.W) - ref.coef_) / np.linalg.norm(ref.coef_)
    assert rel < 1e-3


@pytest.mark.slow  # the same fit (standardised breast cancer, l2 = 1/(C m), L-BFGS, float64) against LogisticRegression:
# tests/test_sklearn.py::test_binary_classifier_matches_logistic_regression[lbfgs]; fit's L-BFGS against it to
# rtol 1e-6: tests/test_lbfgs.py::test_logistic_regression_matches_sklearn
def test_breast_cancer_reaches_logistic_regression_optimum(x64):
    sklearn = pytest.importorskip("sklearn.linear_model")
    ds = datasets.load_breast_cancer(dtype=np.float64)
    m, C = len(ds.X), 1.0
    ref = sklearn.LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(ds.X, ds.y)
    r = gradfit.fit(ds.X, ds.y, loss="bce", optimizer="lbfgs", l2=1 / (C * m), steps=1000, tol=1e-15)
    assert not r.diverged
    np.testing.assert_allclose(r.params.W, ref.coef_[0], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(r.params.b, ref.intercept_[0], rtol=1e-3)


# ----------------------------------------------------------------- compiled loop behaviour
def test_new_learning_rate_and_l2_compile_nothing(rng, compile_counter):
    X, y = _regression(rng)
    gradfit.fit(X, y, learning_rate=0.1, l2=0.0, steps=50)
    before = compile_counter.count
    r = gradfit.fit(X, y, learning_rate=0.03, l2=0.5, steps=80, tol=1e-6)
    assert compile_counter.count == before
    assert r.stats["compile_seconds"] == 0.0


def test_adam_options_are_traced(rng, compile_counter):
    X, y = _regression(rng)
    gradfit.fit(X, y, optimizer="adam", learning_rate=0.1, optimizer_options={"b1": 0.9}, steps=20)
    before = compile_counter.count
    gradfit.fit(X, y, optimizer="adam", learning_rate=0.2, optimizer_options={"b1": 0.5}, steps=20)
    assert compile_counter.count == before


def test_tol_stops_early_and_sets_converged(rng):
    """tol is the optimality test: G, for mse without a penalty the norm of the correlations of
    the residual with the standardised columns and the constant, over the residual's rms (or,
    for a fit that explains almost all of y like this one, over the root of the floor)."""
    X, y = _regression(rng)
    r = gradfit.fit(X, y, learning_rate=0.1, steps=10_000, tol=3e-5)  # float32 stalls at G ~ 1e-5 here
    assert r.converged and r.status == "converged" and not r.diverged and r.steps < 10_000
    assert r.losses.shape == (r.steps,)
    G = float(r.stats["grad_norm"])
    assert G <= 3e-5
    res = X @ np.asarray(r.params.W, np.float64) + float(r.params.b) - y  # G again, in numpy
    Z = np.hstack([(X - X.mean(0)) / X.std(0), np.ones((len(X), 1))])
    floor = float(health.scaling(X, y, loss="mse", reduction="mean", fit_intercept=True).floor)
    expected = np.linalg.norm(Z.T @ res / len(X)) / np.sqrt(max(np.mean(res**2), floor))
    assert G == pytest.approx(expected, rel=0.2, abs=1e-6)  # float32 rounding of the params and gradient


def test_ftol_stops_when_the_objective_stops_changing_and_reports_stalled(rng):
    """The objective-change test (ftol, tol=None): stopped at the first step with
    |J_{t-1} - J_t| <= ftol max(|J_{t-1}|, |J_t|, floor), reported stalled, never converged."""
    X, y = _regression(rng)
    r = gradfit.fit(X, y, learning_rate=0.1, steps=10_000, ftol=1e-6, tol=None)
    assert r.status == "stalled" and not r.converged and not r.diverged and r.steps < 10_000
    assert r.losses.shape == (r.steps,)
    floor = float(health.scaling(X, y, loss="mse", reduction="mean", fit_intercept=True).floor)
    last, prev, before = (float(v) for v in r.losses[-1:-4:-1])
    assert abs(prev - last) <= 1e-6 * max(abs(prev), abs(last), floor)
    assert abs(before - prev) > 1e-6 * max(abs(before), abs(prev), floor)


def test_divergence_stops_warns_and_returns_last_finite_params(rng):
    X, y = _regression(rng)
    with pytest.warns(RuntimeWarning, match="diverged at step"):
        r = gradfit.fit(X, y, learning_rate=10.0, steps=1000, standardize=False)  # raw iterates, replayed below
    assert r.diverged and not r.converged and r.steps < 1000
    assert np.isfinite(np.asarray(r.params.W)).all() and np.isfinite(float(r.loss))
    # the returned params are the iterate before the exploding loss: replay plain GD in numpy
    W, b = np.zeros(X.shape[1]), 0.0
    for _ in range(r.steps - 2):
        res = X @ W + b - y
        W, b = W - 10.0 * 2 * X.T @ res / len(X), b - 10.0 * 2 * res.mean()
    np.testing.assert_allclose(r.params.W, W, rtol=1e-3)


def test_nonfinite_gradient_diverges_without_nan(rng):
    X, y = _regression(rng)
    # X whose squares overflow float32 is now refused before compute (health.scaling)
    with pytest.raises(ValueError, match="overflow float32"):
        gradfit.fit(X * 1e18, y, learning_rate=1.0, steps=100)
    # 1e17 passes that check; a raw step of 1.0 then overflows the loss and gradient at step 1
    # (raw columns of 1e17 beside the intercept's 1 are ill-conditioned too: that warning is expected)
    with pytest.warns(RuntimeWarning, match="diverged at step 1"), warnings.catch_warnings():
        warnings.simplefilter("ignore", health.IllConditionedWarning)
        r = gradfit.fit(X * 1e17, y, learning_rate=1.0, steps=100, standardize=False)
    assert r.diverged
    assert np.isfinite(np.asarray(r.params.W)).all()


def test_dtype_is_kept(x64, rng):
    X, y = _regression(rng)
    assert gradfit.fit(X, y, steps=3).params.W.dtype == jnp.float64
    r = gradfit.fit(X.astype(np.float32), y.astype(np.float32), steps=3)
    assert r.params.W.dtype == jnp.float32 and r.losses.dtype == np.float32


def test_import_changes_no_jax_setting():
    code = (
        "import jax; before = dict(jax.config.values); import gradfit; "
        "after = dict(jax.config.values); "
        "print(sorted(k for k in after if before.get(k) != after[k]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------- multi-output and vmap
def test_multi_output_equals_separate_fits(rng):
    X, Y = _regression(rng, k=3)
    # tol=0: the same 100 steps (with a tol, the joint test is on the joint objective)
    joint = gradfit.fit(X, Y, learning_rate=0.1, steps=100, tol=0)
    for j in range(3):
        single = gradfit.fit(X, Y[:, j], learning_rate=0.1, steps=100, tol=0)
        np.testing.assert_allclose(joint.params.W[:, j], single.params.W, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(joint.params.b[j], single.params.b, rtol=1e-5, atol=1e-6)


def test_per_output_learning_rates_and_l2_equal_separate_fits(x64, rng):
    X, Y = _regression(rng, k=3)
    lrs, l2s = np.array([0.01, 0.05, 0.2]), np.array([0.0, 0.1, 1.0])
    # float64: the stopping tests see the same values in both programs (in float32, G ~ 1e-6 is at
    # rounding level, where one program's rounding may stall a member the other converges)
    r = gradfit.fit(X, Y, learning_rate=lrs, l2=l2s, steps=150, tol=1e-6)
    assert r.params.W.shape == (4, 3) and r.params.b.shape == (3,)
    assert r.steps.shape == (3,) and r.losses.shape[0] == 3
    assert r.converged.tolist() == [False, False, True]
    for j in range(3):
        single = gradfit.fit(X, Y[:, j], learning_rate=lrs[j], l2=l2s[j], steps=150, tol=1e-6)
        assert r.steps[j] == single.steps and r.converged[j] == single.converged
        assert r.status[j] == single.status
        np.testing.assert_allclose(r.params.W[:, j], single.params.W, rtol=1e-5, atol=1e-6)
        # the objective from the statistics is exact to ~eps * J_0 in absolute terms (cancellation),
        # which is more than rtol=1e-5 once J has fallen ~300-fold (member 0)
        np.testing.assert_allclose(r.losses[j, : single.steps], single.losses, rtol=1e-5,
                                   atol=10 * np.finfo(np.float32).eps * single.losses[0])
        assert np.isnan(r.losses[j, single.steps:]).all()


def test_batch_of_problems_equals_separate_fits(x64, rng):
    problems = [_regression(rng, m=50) for _ in range(3)]
    X = np.stack([p[0] for p in problems])
    y = np.stack([p[1] for p in problems])
    r = gradfit.fit(X, y, batched=True, learning_rate=0.1, steps=300, tol=1e-8)
    assert r.params.W.shape == (3, 4)
    for i, (Xi, yi) in enumerate(problems):
        single = gradfit.fit(Xi, yi, learning_rate=0.1, steps=300, tol=1e-8)
        assert r.steps[i] == single.steps
        np.testing.assert_allclose(r.params.W[i], single.params.W, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- minibatches
def test_one_full_minibatch_is_gradient_descent(x64, rng):
    X, y = _regression(rng)
    full = gradfit.fit(X, y, learning_rate=0.05, steps=20)
    mini = gradfit.fit(X, y, learning_rate=0.05, steps=20, batch_size=len(X))
    np.testing.assert_allclose(mini.params.W, full.params.W, rtol=1e-10)


def test_short_last_batch_is_used_not_dropped(x64, rng):
    """With a tiny step, one epoch of "sum" minibatch SGD is one full-batch step to O(lr^2);
    dropping the short last batch (7 of 60 rows here) would be an O(lr) difference."""
    X, y = _regression(rng, m=60)
    lr = 1e-7
    mini = gradfit.fit(X, y, reduction="sum", learning_rate=lr, steps=1, batch_size=53, standardize=False)
    g = -2 * np.hstack([X.T @ y, y.sum()])  # gradient at zero
    expected = -lr * g
    got = np.hstack([mini.params.W, mini.params.b])
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_minibatch_is_reproducible_and_converges(rng):
    X, y = _regression(rng, m=100)  # the program of the test below (batches of 30, a short last one of 10)
    a = gradfit.fit(X, y, learning_rate=0.02, steps=60, batch_size=30, seed=3)  # 240 updates (was 30 epochs of 10)
    b = gradfit.fit(X, y, learning_rate=0.02, steps=60, batch_size=30, seed=3)
    np.testing.assert_array_equal(a.params.W, b.params.W)
    coef = np.linalg.lstsq(np.hstack([X, np.ones((100, 1))]), y, rcond=None)[0]
    assert np.linalg.norm(np.asarray(a.params.W) - coef[:-1]) / np.linalg.norm(coef[:-1]) < 0.05


def test_minibatch_size_change_without_recompile_of_last_batch(rng, compile_counter):
    X, y = _regression(rng, m=100)
    gradfit.fit(X, y, learning_rate=0.02, steps=3, batch_size=30)
    before = compile_counter.count
    gradfit.fit(X, y, learning_rate=0.05, steps=5, batch_size=30, seed=1)
    assert compile_counter.count == before


# ----------------------------------------------------------------- optimizers
def test_optax_transformation_and_lbfgs(rng):
    X, y = _regression(rng)
    r = gradfit.fit(X, y, optimizer=optax.adam(0.05), steps=500)
    assert r.loss < 0.05
    with pytest.raises(ValueError, match="carries its own learning rate"):
        gradfit.fit(X, y, optimizer=optax.adam(0.05), learning_rate=0.1)
    # float32: G (~ sqrt of the relative gap) reaches about 1e-5..1e-6, so a tol of 1e-5
    r = gradfit.fit(X, y, optimizer="lbfgs", steps=50, tol=1e-5)
    assert r.converged and r.status == "converged" and r.steps < 50 and r.stats["grad_norm"] <= 1e-5


def test_sgd_momentum_matches_numpy_heavy_ball(x64, rng):
    X, y = _regression(rng)
    lr, mu, steps = 0.05, 0.9, 15
    W, b, vW, vb = np.zeros(4), 0.0, np.zeros(4), 0.0
    for _ in range(steps):
        res = X @ W + b - y
        gW, gb = 2 * X.T @ res / len(X), 2 * res.mean()
        vW, vb = gW + mu * vW, gb + mu * vb  # optax.trace: v = g + mu v
        W, b = W - lr * vW, b - lr * vb
    r = gradfit.fit(X, y, optimizer="sgd", learning_rate=lr, optimizer_options={"momentum": mu}, steps=steps,
                    standardize=False, tol=None)
    np.testing.assert_allclose(r.params.W, W, rtol=1e-10)


def test_fit_intercept_false_keeps_bias_zero(x64, rng):
    X, y = _regression(rng)
    r = gradfit.fit(X, y, fit_intercept=False, learning_rate=0.1, steps=3000, tol=1e-14)
    assert float(r.params.b) == 0.0
    np.testing.assert_allclose(r.params.W, np.linalg.lstsq(X, y, rcond=None)[0], rtol=1e-6)


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(X=np.array([[np.nan, 1.0]] * 3)), "X contains NaN"),
        (dict(y=np.array([1.0, np.inf, 0.0])), "y contains NaN or inf"),
        (dict(y=np.ones(4)), "3 rows but y has 4"),
        (dict(X=np.ones((0, 2)), y=np.ones(0)), "no rows"),
        (dict(X=np.ones((3, 0))), "no columns"),
        (dict(X=np.ones(3)), "reshape"),
        (dict(X=np.array([["a", "b"]] * 3)), "not a real number type"),
        (dict(X=np.ones((3, 2)) * 1j), "complex"),
        (dict(loss="bce", y=np.array([0.0, 2.0, 1.0])), r"targets in \[0, 1\]"),
        (dict(loss="hinge"), "unknown loss"),
        (dict(optimizer="adamm"), "did you mean 'adam'"),
        (dict(steps=0), "steps must be a positive integer"),
        (dict(steps=2.5), "steps must be a positive integer"),
        (dict(learning_rate=0.0), "learning_rate must be > 0"),
        (dict(learning_rate=-1.0), "learning_rate must be > 0"),
        (dict(l2=-0.1), "l2 must be >= 0"),
        (dict(batch_size=10), "batch_size=10 is larger"),
        (dict(init=Params(np.zeros(3), np.zeros(()))), "init has W"),
        (dict(grad="numeric"), "unknown grad"),
        (dict(reduction="half_mean", loss="bce", y=np.array([0.0, 1.0, 1.0])), "unknown reduction"),
        (dict(optimizer_options={"momentun": 0.9}), "did you mean 'momentum'"),
    ],
)
def test_bad_input_raises_before_compute(kwargs, match, compile_counter):
    args = dict(X=np.ones((3, 2)), y=np.array([0.0, 1.0, 1.0]))
    args.update(kwargs)
    X, y = args.pop("X"), args.pop("y")
    before = compile_counter.count
    with pytest.raises(ValueError, match=match):
        gradfit.fit(X, y, **args)
    assert compile_counter.count == before
