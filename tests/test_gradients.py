"""Hand-derived gradients against numpy from the seeds and against jax.grad."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradfit
from gradfit import Params, gradients, losses


def test_qa_seed_dW_db(x64, rng):
    """dW = -(2/m) X^T (Y - Yhat), db = -(2/m) sum(Y - Yhat)."""
    m, n = 30, 4
    X, Y = rng.standard_normal((m, n)), rng.standard_normal(m)
    W, b = rng.standard_normal(n), 0.3
    Y_hat = X.dot(W) + b
    dW = -(2 * (X.T).dot(Y - Y_hat)) / m
    db = -(2 * np.sum(Y - Y_hat)) / m
    g = gradients.mse(Params(W, jnp.asarray(b)), X, Y, reduction="mean")
    np.testing.assert_allclose(g.W, dW, rtol=1e-12)
    np.testing.assert_allclose(g.b, db, rtol=1e-12)


def test_notes_seed_linear_and_logistic(x64, rng):
    """Samples in columns: X_notes (n, m), h = w^T X + b; grad_w = (1/m) X (h - y)^T."""
    n, m = 5, 40
    Xn = rng.standard_normal((n, m))
    w, b = rng.standard_normal((n, 1)), 0.2
    y = rng.standard_normal((1, m))
    h = w.T @ Xn + b
    gw, gb = (1 / m) * Xn @ (h - y).T, (1 / m) * np.sum(h - y)
    g = gradients.mse(Params(w[:, 0], jnp.asarray(b)), Xn.T, y[0], reduction="half_mean")
    np.testing.assert_allclose(g.W, gw[:, 0], rtol=1e-12)
    np.testing.assert_allclose(g.b, gb, rtol=1e-12)
    # logistic: z = w^T X + b, a = sigmoid(z), grad_w = (1/m) X (a - y)^T
    yl = (rng.random((1, m)) < 0.5).astype(float)
    a = 1 / (1 + np.exp(-(w.T @ Xn + b)))
    g = gradients.bce(Params(w[:, 0], jnp.asarray(b)), Xn.T, yl[0])
    np.testing.assert_allclose(g.W, ((1 / m) * Xn @ (a - yl).T)[:, 0], rtol=1e-12)
    np.testing.assert_allclose(g.b, (1 / m) * np.sum(a - yl), rtol=1e-12)


def test_blog_seed_dL_dM_with_W_equal_M_transposed(x64, rng):
    """y = M x + b, L = sum_i (g_i - y_i)^2, dL/dM = -2 (g - y) x^T, dL/db = -2 (g - y)."""
    k, n = 3, 4
    M, b = rng.standard_normal((k, n)), rng.standard_normal(k)
    x, g_true = rng.standard_normal(n), rng.standard_normal(k)
    y = M @ x + b
    dM = -2 * np.outer(g_true - y, x)
    db = -2 * (g_true - y)
    grads = gradients.mse(Params(M.T, b), x[None, :], g_true[None, :], reduction="sum")
    np.testing.assert_allclose(grads.W, dM.T, rtol=1e-12)
    np.testing.assert_allclose(grads.b, db, rtol=1e-12)


@functools.partial(jax.jit, static_argnums=(4,))  # one program per example, not one per eager operation
def _three_ways(p, X, y, w, loss):
    """For each reduction of ``loss``: ``jax.value_and_grad`` of the loss, the hand gradient, and the hand value and
    gradient together."""
    out = {}
    for reduction in losses.REDUCTIONS[loss]:
        value, auto = jax.value_and_grad(losses.LOSSES[loss])(p, X, y, reduction=reduction, sample_weight=w)
        hand = gradients.GRADIENTS[loss](p, X, y, reduction=reduction, sample_weight=w)
        out[reduction] = (value, auto, hand,
                          *gradients.VALUE_AND_GRADIENTS[loss](p, X, y, reduction=reduction, sample_weight=w))
    return out


# Every example compiles one program (~1 s); -m slow runs test_fuzz's thousands of shapes.
@settings(max_examples=6, deadline=None)
@given(
    m=st.sampled_from([1, 5, 12]), n=st.sampled_from([1, 3, 6]), k=st.sampled_from([None, 1, 4]),
    loss=st.sampled_from(["mse", "bce"]), seed=st.integers(0, 2**31 - 1), weighted=st.booleans(),
)
def test_hand_gradients_equal_autodiff_in_float64(m, n, k, loss, seed, weighted):
    rng = np.random.default_rng(seed)
    out = () if k is None else (k,)
    with jax.enable_x64(True):
        X = jnp.asarray(rng.standard_normal((m, n)))
        y = jnp.asarray(rng.random((m, *out)) if loss == "bce" else rng.standard_normal((m, *out)))
        p = Params(jnp.asarray(rng.standard_normal((n, *out))), jnp.asarray(rng.standard_normal(out)))
        w = jnp.asarray(rng.random(m) + 0.1) if weighted else None
        for value, auto, hand, hand_value, hand_both in _three_ways(p, X, y, w, loss).values():
            for a, h in zip(auto, hand):
                np.testing.assert_allclose(h, a, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(hand_value, value, rtol=1e-12, atol=1e-14)
            for a, h in zip(hand, hand_both):
                np.testing.assert_array_equal(h, a)


@pytest.mark.slow  # CI runs the same table as `gradfit check-grads`
def test_check_gradients_table_all_within_tolerance(x64):
    rows = gradfit.check_gradients()
    assert {r.dtype for r in rows} == {"float32", "float64"}
    assert {(r.loss, r.reduction) for r in rows} == {
        ("mse", "mean"), ("mse", "half_mean"), ("mse", "sum"), ("bce", "mean"), ("bce", "sum")
    }
    assert all(r.ok for r in rows), gradients.format_table(rows)
    assert max(r.max_rel_error for r in rows if r.dtype == "float64") <= 1e-10


# --------------------------------------------------------------------------- X^T s in blocks
@settings(max_examples=200, deadline=None)
@given(m=st.integers(1, 40_000), n=st.integers(1, 300), itemsize=st.sampled_from([2, 4, 8]), parts=st.sampled_from([1, 2, 4]))
def test_block_rows_is_the_divisor_nearest_one_mib(m, n, itemsize, parts):
    rows = gradients.block_rows(m, n, itemsize, parts)
    low, target, high = (max(1, b // (n * itemsize)) for b in (256 << 10, 1 << 20, 2 << 20))
    valid = [r for r in range(low, high + 1) if m % r == 0 and (m // r) % parts == 0] if m >= 2 * low else []
    if not valid:
        assert rows == 0
    else:
        assert rows in valid and abs(rows - target) == min(abs(r - target) for r in valid)


@pytest.mark.parametrize("m, k, blocked", [(8192, None, True), (8192, 3, True), (12_289, None, False), (12_289, 2, False)])
def test_xt_dot_equals_the_transposed_product(x64, rng, m, k, blocked):
    # 8192 rows of 64 float64 features: blocks of 2048 rows (1 MiB); 12289 is prime: no blocks.
    X = rng.standard_normal((m, 64))
    s = rng.standard_normal((m,) if k is None else (m, k))
    assert bool(gradients.block_rows(m, 64, 8)) == blocked
    got = jax.jit(gradients.xt_dot)(jnp.asarray(X), jnp.asarray(s))
    np.testing.assert_allclose(got, X.T @ s, rtol=1e-11, atol=1e-11)
    # ... and under vmap (a sweep's members share X; a batch of problems maps it too)
    S = np.stack([s, 2 * s])
    got = jax.vmap(gradients.xt_dot, in_axes=(None, 0))(jnp.asarray(X), jnp.asarray(S))
    np.testing.assert_allclose(got[1], 2 * (X.T @ s), rtol=1e-11, atol=1e-11)


def test_xt_dot_blocks_leave_no_transposed_copy_of_X(rng):
    X = jnp.asarray(rng.standard_normal((8192, 64)), jnp.float32)
    s = jnp.asarray(rng.standard_normal(8192), jnp.float32)
    hlo = jax.jit(gradients.xt_dot).lower(X, s).compile().as_text()
    assert "transpose(" not in hlo and "f32[64,8192]" not in hlo
