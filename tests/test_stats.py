"""MSE by sufficient statistics: the moments against numpy, value and gradient against numpy
and jax.grad of the direct loss, and fits whose iterates equal the direct path's."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradfit
from gradfit import _stats, losses
from gradfit._params import Params
from _sample import crossed, thinned


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


# Compiled, as gradfit runs them (the statistics in solver._statistics_pass, the objective inside the fit's step):
# one program per shape, where an eager call compiles each of its operations on its own (~80 for the statistics).
_statistics = jax.jit(_stats.sufficient_statistics, static_argnames="block")
_value_and_grad = jax.jit(_stats.value_and_grad, static_argnames="reduction")
_loss = jax.jit(_stats.loss, static_argnames="reduction")
_mse_grad = jax.jit(jax.grad(losses.mse), static_argnames="reduction")  # autodiff of the direct loss: the reference


@jax.jit
def _rows_rss_and_slope(X, Y, w, stats):
    """The rows' rss and slope g* at ``stats.solution``, formed as sufficient_statistics forms them."""
    rss, g = _stats.residual_moments(X, Y, w, stats)
    g = _stats._in_range(g, stats)
    return (rss[0], g[:, 0]) if stats.solution.ndim == 1 else (rss, g)


def _problem(rng, m=301, n=4, k=None, offset=5.0, weights=False):
    out = () if k is None else (k,)
    X = rng.standard_normal((m, n)) * rng.uniform(0.5, 3, n) + offset
    W = rng.standard_normal((n, *out))
    y = X @ W + 1.5 + 0.3 * rng.standard_normal((m, *out))
    w = rng.uniform(0, 2, m) if weights else None
    return X, y, w


def _numpy_mse(W, b, X, y, w, reduction):
    """The MSE written from the formula, in float64 numpy."""
    r = X @ W + b - y
    per = r * r if r.ndim == 1 else np.sum(r * r, axis=1)
    w = np.ones(len(X)) if w is None else w
    total = np.sum(w * per)
    return {"mean": total / w.sum(), "half_mean": total / (2 * w.sum()), "sum": total}[reduction]


@pytest.mark.parametrize("block, weights", crossed(  # 301 rows: many blocks + tail, one block + tail
    [None, 64, 300], [False, True], fast=[(None, True), (64, False), (300, True)]))
def test_moments_match_numpy(x64, weights, block):
    rng = np.random.default_rng(1)
    X, y, w = _problem(rng, k=2, weights=weights)
    st = _statistics(jnp.asarray(X), jnp.asarray(y), None if w is None else jnp.asarray(w), block=block)
    ww = np.ones(len(X)) if w is None else w
    # The shift: the weighted means of 4096 evenly spaced rows (here every row: m = 301), i.e. the means.
    mu, nu = np.asarray(st.x_mean), np.asarray(st.y_mean)
    np.testing.assert_allclose(mu, (ww @ X) / ww.sum(), rtol=1e-12)
    np.testing.assert_allclose(nu, (ww @ y) / ww.sum(), rtol=1e-12)
    Xc, Yc = X - mu, y - nu
    blocks = _stats.gram_blocks(st, X.shape[1])
    np.testing.assert_allclose(st.count, ww.sum(), rtol=1e-12)
    np.testing.assert_allclose(blocks["xtx"], Xc.T @ (ww[:, None] * Xc), rtol=1e-11)
    np.testing.assert_allclose(blocks["xty"], Xc.T @ (ww[:, None] * Yc), rtol=1e-11, atol=1e-9)
    np.testing.assert_allclose(blocks["yty"], np.sum(ww[:, None] * Yc * Yc, axis=0), rtol=1e-11)
    np.testing.assert_allclose(blocks["x_sum"], 0, atol=1e-9)
    # The least-squares solution and its residual, against np.linalg.lstsq on [X, 1].
    A = np.hstack([X, np.ones((len(X), 1))]) * np.sqrt(ww)[:, None]
    coef, *_ = np.linalg.lstsq(A, y * np.sqrt(ww)[:, None], rcond=None)
    W_ls, b_ls = coef[:-1], coef[-1]
    v = np.vstack([W_ls, (b_ls + mu @ W_ls - nu)[None]])
    np.testing.assert_allclose(st.solution, v, rtol=1e-9, atol=1e-10)
    rss = np.sum(ww[:, None] * (X @ W_ls + b_ls - y) ** 2, axis=0)
    np.testing.assert_allclose(st.rss, rss, rtol=1e-8)


@pytest.mark.parametrize("weights, k, reduction", crossed(  # k=2 as elsewhere in this file: shapes shared
    [False, True], [None, 2], ["mean", "half_mean", "sum"],
    fast=[(False, None, "mean"), (True, 2, "half_mean"), (True, None, "sum"), (False, 2, "sum")]))
def test_value_and_grad_match_numpy_and_autodiff(x64, reduction, k, weights):
    rng = np.random.default_rng(2)
    X, y, w = _problem(rng, k=k, weights=weights)
    out = () if k is None else (k,)
    params = Params(jnp.asarray(rng.standard_normal((X.shape[1], *out))), jnp.asarray(rng.standard_normal(out)))
    st = _statistics(jnp.asarray(X), jnp.asarray(y), None if w is None else jnp.asarray(w))
    value, g = _value_and_grad(params, st, reduction=reduction)
    np.testing.assert_allclose(value, _numpy_mse(np.asarray(params.W), np.asarray(params.b), X, y, w, reduction), rtol=1e-10)
    np.testing.assert_allclose(_loss(params, st, reduction=reduction), value, rtol=1e-12)
    direct = _mse_grad(
        params, jnp.asarray(X), jnp.asarray(y), reduction=reduction, sample_weight=None if w is None else jnp.asarray(w)
    )
    chex.assert_trees_all_close(g, direct, rtol=1e-9, atol=1e-9)
    chex.assert_trees_all_equal_shapes(g, params)


def test_rank_deficient_columns(x64):
    """A constant and a duplicated column: gradient still equals X^T r, loss still exact."""
    rng = np.random.default_rng(3)
    X, y, _ = _problem(rng, n=2)
    X = np.hstack([X, np.full((len(X), 1), 2.0), X[:, :1]])  # (301, 4), the shape of the other problems here
    params = Params(jnp.asarray(rng.standard_normal(4)), jnp.asarray(0.7))
    st = _statistics(jnp.asarray(X), jnp.asarray(y))
    assert int(jnp.sum(st.eigvals == 0)) == 2
    value, g = _value_and_grad(params, st)
    np.testing.assert_allclose(value, _numpy_mse(np.asarray(params.W), 0.7, X, y, None, "mean"), rtol=1e-10)
    chex.assert_trees_all_close(g, _mse_grad(params, jnp.asarray(X), jnp.asarray(y)), rtol=1e-9, atol=1e-9)


def test_float32_loss_decrease_has_no_cancellation():
    """Near the optimum of an R^2 ~ 1 - 1e-6 problem, the float32 loss is accurate *relative to
    the residual* (the naive v'Av - 2v'c + y'y form is not), and float32 stats match float64."""
    rng = np.random.default_rng(4)
    m, n = 20_000, 8
    X = rng.standard_normal((m, n)) + 3
    W = rng.standard_normal(n) * 10
    y = X @ W + 100 + 1e-2 * rng.standard_normal(m)
    Xf, yf = jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32)
    st = _statistics(Xf, yf)
    W_ls, *_ = np.linalg.lstsq(np.hstack([X, np.ones((m, 1))]), y, rcond=None)
    near = W_ls + 1e-3 * rng.standard_normal(n + 1)
    p_near = Params(jnp.asarray(near[:-1], jnp.float32), jnp.asarray(near[-1], jnp.float32))
    p_opt = Params(jnp.asarray(W_ls[:-1], jnp.float32), jnp.asarray(W_ls[-1], jnp.float32))
    # The excess over the optimum, the quantity tol tests and line searches compare.
    Xr = np.hstack([X, np.ones((m, 1))])
    true_excess = np.mean((Xr @ near - y) ** 2) - np.mean((Xr @ W_ls - y) ** 2)
    got_excess = float(_loss(p_near, st) - _loss(p_opt, st))
    assert abs(got_excess - true_excess) <= 1e-2 * true_excess
    # The reported value: rss comes from the residuals, not from y'y - c'A^+c (which would be
    # off by ~eps * var(y) * m, here > 100% of the loss).
    np.testing.assert_allclose(float(_loss(p_near, st)), np.mean((Xr @ near - y) ** 2), rtol=2e-2)
    np.testing.assert_allclose(float(st.rss) / m, np.mean((Xr @ W_ls - y) ** 2), rtol=2e-2)


FIT_CASES = [
    dict(),
    dict(sample_weight="w", reduction="sum", learning_rate=2e-5),
    dict(reduction="half_mean", l2=0.3),
    dict(fit_intercept=False, optimizer="adam"),
    dict(k=2, learning_rate=np.array([0.01, 0.005]), l2=np.array([0.0, 0.1])),  # per-output vmap
]


@pytest.mark.parametrize("kw", thinned(FIT_CASES, [FIT_CASES[i] for i in (1, 3, 4)]))
def test_fit_iterates_equal_direct_path(x64, kw):
    rng = np.random.default_rng(5)
    kw = dict(kw)
    X, y, w = _problem(rng, m=200, k=kw.pop("k", None), offset=0.0, weights=True)
    if kw.get("sample_weight") == "w":
        kw["sample_weight"] = w
    kw.setdefault("learning_rate", 0.01)
    direct = gradfit.fit(X, y, grad="autodiff", steps=60, **kw)
    st = gradfit.fit(X, y, grad="stats", steps=60, **kw)
    assert st.stats["plan"] == "stats" and direct.stats["plan"] == "autodiff"
    np.testing.assert_allclose(st.losses, direct.losses, rtol=1e-10)
    chex.assert_trees_all_close(st.params, direct.params, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(st.loss, direct.loss, rtol=1e-10)


def test_batched_problems_and_lbfgs(x64):
    rng = np.random.default_rng(6)
    X, y, _ = _problem(rng, m=150, offset=1.0)
    XB, yB = np.stack([X, 0.5 * X]), np.stack([y, -y])
    direct = gradfit.fit(XB, yB, grad="autodiff", steps=40, learning_rate=0.01, batched=True)
    st = gradfit.fit(XB, yB, grad="stats", steps=40, learning_rate=0.01, batched=True)
    chex.assert_trees_all_close(st.params, direct.params, rtol=1e-9, atol=1e-10)
    # L-BFGS with its line search: the stats objective serves value_fn too.
    a = gradfit.fit(X, y, optimizer="lbfgs", grad="autodiff", steps=50, tol=1e-14)
    b = gradfit.fit(X, y, optimizer="lbfgs", grad="stats", steps=50, tol=1e-14)
    W_ls, *_ = np.linalg.lstsq(np.hstack([X, np.ones((len(X), 1))]), y, rcond=None)
    np.testing.assert_allclose(b.params.W, W_ls[:-1], rtol=1e-7)
    np.testing.assert_allclose(a.params.W, b.params.W, rtol=1e-7)


def test_float32_fit_matches_direct():
    rng = np.random.default_rng(7)
    X, y, _ = _problem(rng, m=5000, n=6, offset=2.0)
    X, y = X.astype(np.float32), y.astype(np.float32)
    direct = gradfit.fit(X, y, grad="autodiff", steps=300, learning_rate=0.02)
    st = gradfit.fit(X, y, grad="stats", steps=300, learning_rate=0.02)
    assert st.params.W.dtype == jnp.float32
    chex.assert_trees_all_close(st.params, direct.params, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(st.losses, direct.losses, rtol=1e-4)


def test_invalid_stats_requests():
    X = np.zeros((10, 2), np.float32)
    with pytest.raises(ValueError, match="only for loss='mse'"):
        gradfit.fit(X, np.zeros(10, np.float32), loss="bce", grad="stats")
    with pytest.raises(ValueError, match="minibatches"):
        gradfit.fit(X, np.zeros(10, np.float32), grad="stats", batch_size=4)
    with pytest.raises(ValueError, match="unknown grad"):
        gradfit.fit(X, np.zeros(10, np.float32), grad="gram")


@pytest.mark.parametrize("plan", ["stats", "onepass"])
def test_plans_vmap_over_hyperparameters(x64, plan):
    """A sweep vmaps the same step over learning rates and l2: each member equals its own fit."""
    from gradfit import _optim, health
    from gradfit._driver import CompiledStepper, drive
    from gradfit._types import Data, Hyper, Level, Program, Scaling

    rng = np.random.default_rng(8)
    X, y, _ = _problem(rng, offset=0.5)
    lrs, l2s = np.array([0.01, 0.02, 0.005]), np.array([0.0, 0.1, 1.0])
    spec, _ = _optim.resolve("sgd", None, 0.01)
    program = Program("mse", "mean", plan, spec, True, True, None, 64)
    data = Data(jnp.asarray(X), jnp.asarray(y))
    if plan == "stats":
        data = _statistics(data.X, data.y)
    # the problem's scaling (standardized coordinates, fit's default), shared by the members; no
    # tol/ftol test (-1): every member runs its 30 steps
    scaling = Scaling(*map(jnp.asarray, health.scaling(X, y, loss="mse", reduction="mean", fit_intercept=True,
                                                       dtype=np.float64)))
    hyper = Hyper(jnp.asarray(lrs), jnp.asarray(l2s), jnp.full(3, -1.0), jnp.full(3, 30, jnp.int32), {},
                  jnp.full(3, -1.0), scaling)
    params = Params(jnp.zeros(X.shape[1]), jnp.zeros(()))
    level = Level(None, Hyper(0, 0, 0, 0, {}, 0, Scaling(None, None, None, None)), None, None)
    stepper = CompiledStepper(data, hyper, program, (level,))
    out = drive(stepper, stepper.init(params, jax.random.key(0)), hyper, chunk_steps=64)
    for i in range(3):
        ref = gradfit.fit(X, y, grad="autodiff", learning_rate=lrs[i], l2=l2s[i], steps=30, tol=None)
        np.testing.assert_allclose(out.state.params.W[i], ref.params.W, rtol=1e-9, atol=1e-12)


def test_float32_moments_accumulate_accurately():
    """float32 Gram of 200k rows with |mean| >> std: centring + Kahan keep it at float32 rounding."""
    rng = np.random.default_rng(9)
    m, n = 200_000, 6
    X = (rng.standard_normal((m, n)) * rng.uniform(0.1, 2, n) + 100).astype(np.float32)
    y = (X @ rng.standard_normal(n) + rng.standard_normal(m)).astype(np.float32)
    st = _statistics(jnp.asarray(X), jnp.asarray(y))
    X64, y64 = X.astype(np.float64), y.astype(np.float64)
    # The shift (sampled means) is within a small fraction of a std of the means; the Gram is exact about it.
    assert np.all(np.abs(np.asarray(st.x_mean, np.float64) - X64.mean(0)) < 0.1 * X64.std(0))
    Xc, yc = X64 - np.asarray(st.x_mean, np.float64), y64 - float(st.y_mean)
    blocks = _stats.gram_blocks(st, n)
    np.testing.assert_allclose(blocks["xtx"], Xc.T @ Xc, rtol=2e-5, atol=2e-5 * m)
    np.testing.assert_allclose(blocks["xty"][:, 0], Xc.T @ yc, rtol=2e-5, atol=2e-5 * m)
    coef, *_ = np.linalg.lstsq(np.hstack([X64, np.ones((m, 1))]), y64, rcond=None)
    np.testing.assert_allclose(st.solution[:n], coef[:n], rtol=1e-3)


@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize("k", [None, 2])
def test_expansion_about_a_rounded_solution_is_the_rows_objective(x64, k, weights):
    """Value and gradient from statistics whose v* is off (as a float32 Gram's can be): with the rows' rss and
    slope g* at that v* (residual_moments), they equal numpy's on the rows at any params, to 1e-9 in float64.
    Without g* the gradient would be off by 2 A (v* - v_true), here ~1e2 times the tolerance."""
    rng = np.random.default_rng(4)
    X, y, w = _problem(rng, k=k, weights=weights)
    m, n = X.shape
    w_j = None if w is None else jnp.asarray(w)
    st = _statistics(jnp.asarray(X), jnp.asarray(y), w_j)
    off = st._replace(solution=st.solution + 1e-2 * rng.standard_normal(st.solution.shape))
    Y = y.reshape(m, -1)
    rss, g = _rows_rss_and_slope(jnp.asarray(X), jnp.asarray(Y), w_j, off)
    off = off._replace(rss=rss, gradient=g)
    assert _stats.exact_rank(off)
    W = rng.standard_normal((n,) if k is None else (n, k))
    b = rng.standard_normal(() if k is None else (k,))
    value, grad = _value_and_grad(Params(jnp.asarray(W), jnp.asarray(b)), off, reduction="sum")
    ww = np.ones(m) if w is None else w
    r = (X @ W + b - y).reshape(m, -1) * np.sqrt(ww)[:, None]
    np.testing.assert_allclose(float(value), np.sum(r * r), rtol=1e-10)
    g_W = 2 * X.T @ (r * np.sqrt(ww)[:, None])
    np.testing.assert_allclose(np.asarray(grad.W).reshape(n, -1), g_W, rtol=1e-9, atol=1e-9 * np.abs(g_W).max())
    without, _ = _value_and_grad(Params(jnp.asarray(W), jnp.asarray(b)), off._replace(gradient=None), reduction="sum")
    assert abs(float(without) - np.sum(r * r)) > 1e-6 * np.sum(r * r)  # g* carries what the rounded v* lost


def test_dropped_directions_are_checked_on_the_rows(x64):
    """A duplicated column: an eigenvalue is dropped, so the statistics do not vouch for the rows' slope
    (exact_rank False) and a fit on them is checked on the rows; the slope kept has no part along the drop."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((301, 3))  # (301, 4) with the duplicate, the shape of the other problems here
    X = np.hstack([X, X[:, :1]])
    y = X @ np.array([1.0, -2.0, 0.5, 1.0]) + 0.1 * rng.standard_normal(301)
    st = _statistics(jnp.asarray(X), jnp.asarray(y))
    assert not _stats.exact_rank(st)
    dropped = np.asarray(st.eigvecs)[:, np.asarray(st.eigvals) == 0]
    np.testing.assert_allclose(dropped.T @ (np.asarray(st.gradient) / np.asarray(st.diag)), 0, atol=1e-12)
    result = gradfit.fit(X, y, grad="stats", learning_rate=0.1, tol=1e-8, steps=2000)
    r = X @ np.asarray(result.params.W) + float(result.params.b) - y
    np.testing.assert_allclose(result.loss, np.mean(r * r), rtol=1e-12)
