"""The one-pass blocked gradient: against jax.grad of the losses and numpy, every block split,
and the HLO reads X without a transposed copy; plus the "auto" plan choice."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradfit
from gradfit import datasets
from gradfit import _onepass, _plan, _stats, losses
from gradfit._params import Params
from _sample import crossed


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _numpy_bce(W, b, X, y):
    z = X @ W + b
    per = np.logaddexp(0, -z) * y + np.logaddexp(0, z) * (1 - y)
    return per.sum() if per.ndim == 1 else per.sum(axis=1).sum()


@pytest.mark.parametrize("loss, k, block, weights", crossed(  # 50 rows: one block; 7: many blocks and a tail
    ["mse", "bce"], [None, 2], [None, 7, 50], [False, True],
    fast=[("mse", None, 7, True), ("bce", 2, 50, False), ("bce", None, None, False), ("mse", 2, None, True)]))
def test_matches_autodiff(x64, loss, k, block, weights):
    rng = np.random.default_rng(0)
    m, n = 50, 3
    out = () if k is None else (k,)
    X = jnp.asarray(rng.standard_normal((m, n)))
    y = jnp.asarray(rng.random((m, *out)) if loss == "bce" else rng.standard_normal((m, *out)))
    w = jnp.asarray(rng.uniform(0, 2, m)) if weights else None
    params = Params(jnp.asarray(rng.standard_normal((n, *out))), jnp.asarray(rng.standard_normal(out)))
    reductions = losses.REDUCTIONS[loss]
    # every reduction in one compiled program each (one-pass, and jax.value_and_grad of the loss): not op by op
    onepass = jax.jit(lambda p, X, y, w: [_onepass.value_and_grad(p, X, y, loss=loss, reduction=r, sample_weight=w,
                                                                  block=block) for r in reductions])
    autodiff = jax.jit(lambda p, X, y, w: [jax.value_and_grad(losses.LOSSES[loss])(p, X, y, reduction=r,
                                                                                  sample_weight=w) for r in reductions])
    for (value, g), (ref_value, ref_g) in zip(onepass(params, X, y, w), autodiff(params, X, y, w), strict=True):
        np.testing.assert_allclose(value, ref_value, rtol=1e-12)
        chex.assert_trees_all_close(g, ref_g, rtol=1e-11, atol=1e-13)


def test_bce_value_against_numpy_and_finite_differences(x64):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 3))
    y = (rng.random(40) < 0.5).astype(float)
    W, b = rng.standard_normal(3), 0.3
    onepass = jax.jit(lambda p, X, y: _onepass.value_and_grad(p, X, y, loss="bce", reduction="sum", block=16))
    value, g = onepass(Params(jnp.asarray(W), jnp.asarray(b)), jnp.asarray(X), jnp.asarray(y))
    np.testing.assert_allclose(value, _numpy_bce(W, b, X, y), rtol=1e-12)
    h = 1e-6
    for j in range(3):
        e = np.eye(3)[j] * h
        fd = (_numpy_bce(W + e, b, X, y) - _numpy_bce(W - e, b, X, y)) / (2 * h)
        np.testing.assert_allclose(g.W[j], fd, rtol=1e-6)


def test_hlo_has_no_transpose_of_X():
    """The compiled step reads X in place: no transpose/copy of an (m, n) array."""
    m, n = 4096, 8
    X = jnp.zeros((m, n), jnp.float32)
    y = jnp.zeros((m,), jnp.float32)
    p = Params(jnp.zeros(n, jnp.float32), jnp.zeros((), jnp.float32))
    fn = jax.jit(lambda p, X, y: _onepass.value_and_grad(p, X, y, loss="bce", block=512))
    hlo = fn.lower(p, X, y).compile().as_text()
    assert f"f32[{n},{m}]" not in hlo  # no transposed copy of X
    assert "while" in hlo  # the blocked loop


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_fit_matches_direct(x64, loss):
    data = datasets.make_classification(300, 4, seed=1) if loss == "bce" else datasets.make_regression(300, 4, seed=1)
    X, y = np.asarray(data.X, np.float64), np.asarray(data.y, np.float64)
    a = gradfit.fit(X, y, loss=loss, grad="autodiff", steps=50, learning_rate=0.1)
    b = gradfit.fit(X, y, loss=loss, grad="onepass", steps=50, learning_rate=0.1)
    assert b.stats["plan"] == "onepass"
    np.testing.assert_allclose(b.losses, a.losses, rtol=1e-12)
    chex.assert_trees_all_close(b.params, a.params, rtol=1e-10, atol=1e-12)


def test_auto_plan_choice():
    # Many steps of full-batch MSE: statistics; BCE, minibatches or 1 step: the direct default.
    kw = dict(m=1_000_000, n=64, k=1, batch_size=None, line_search=False)
    assert _plan.choose("auto", loss="mse", steps=1000, **kw) == "stats"
    assert _plan.choose("auto", loss="mse", steps=1, **kw) == _plan.DIRECT
    assert _plan.choose("auto", loss="bce", steps=1000, **kw) == _plan.DIRECT
    assert _plan.choose("auto", loss="mse", steps=1000, **{**kw, "batch_size": 128}) == _plan.DIRECT
    # Wide X: the Gram pass costs more than a few steps.
    assert _plan.choose("auto", loss="mse", steps=3, **{**kw, "n": 4000}) == _plan.DIRECT
    assert _plan.choose("onepass", loss="mse", steps=1000, **kw) == "onepass"
    assert _plan.DIRECT == "hand"
    # Members vmapped over one X (sweeps, per-output columns): X^T S as one matrix product.
    assert _plan.choose("auto", loss="bce", steps=1000, members=16, **kw) == "autodiff"
    assert _plan.choose("auto", loss="mse", steps=1000, members=16, **kw) == "stats"
    assert _plan.choose("hand", loss="bce", steps=1000, members=16, **kw) == "hand"
    X = np.random.default_rng(0).standard_normal((500, 3)).astype(np.float32)
    r = gradfit.fit(X, X @ np.ones(3, np.float32), steps=100)
    assert r.stats["plan"] == "stats"


def test_plans_need_no_rank_promotion():
    """stats and onepass broadcast explicitly: they run with rank promotion set to raise."""
    rng = np.random.default_rng(3)
    X = jnp.asarray(rng.standard_normal((30, 3)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((30, 2)), jnp.float32)
    w = jnp.asarray(rng.random(30), jnp.float32)
    p = Params(jnp.ones((3, 2), jnp.float32), jnp.ones(2, jnp.float32))

    def plans(p, X, y, w):
        _onepass.value_and_grad(p, X, y, loss="mse", sample_weight=w, block=8)
        _onepass.value_and_grad(p, X, jnp.abs(y) / 4, loss="bce", sample_weight=w, block=8)
        st = _stats.sufficient_statistics(X, y, w, block=8)
        return _stats.value_and_grad(p, st)

    with jax.numpy_rank_promotion("raise"):  # checked as the code is traced (nothing to compile or run for it)
        jax.eval_shape(plans, p, X, y, w)


@pytest.mark.parametrize("grad", ["hand", "onepass"])
def test_compiled_step_reads_X_in_place(grad):
    """No plan's compiled step holds a transposed (n, m) copy of X."""
    from gradfit import _engine
    from gradfit._types import Data, Program

    m, n = 4096, 8
    data = Data(jnp.zeros((m, n), jnp.float32), jnp.zeros((m,), jnp.float32))
    p = Params(jnp.zeros(n, jnp.float32), jnp.zeros((), jnp.float32))
    program = Program("bce", "mean", grad, None, True, True, None, 1)
    fn = jax.jit(lambda p, d: _engine.value_and_grad(p, d, jnp.float32(0), program))
    hlo = fn.lower(p, data).compile().as_text()
    assert f"f32[{n},{m}]" not in hlo
