"""X stored in bfloat16 / float16: the fit is the float32 fit of the rounded X, with no float32 copy of X."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradfit
from gradfit import _engine, _precision, data, gradients, losses
from gradfit._params import Params, matmul
from _sample import thinned

M, N = 16_384, 32  # X: 1 MiB in bfloat16, 2 MiB as a float32 copy
ROWS = 8 * M  # the problem's X: 8 MiB in bfloat16, more than the row blocks of any plan (see the copy test)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((ROWS, N)).astype(np.float32)
    w = rng.standard_normal(N).astype(np.float32) / 4
    y = (X @ w + 0.3 + 0.05 * rng.standard_normal(ROWS)).astype(np.float32)
    labels = (rng.random(ROWS) < 1 / (1 + np.exp(-(X @ w)))).astype(np.float32)
    Xh = jnp.asarray(X, jnp.bfloat16)
    return {"X": X, "Xh": Xh, "X_rounded": np.asarray(Xh, np.float32), "mse": y, "bce": labels}


CASES = [
    ("mse", "stats", {}), ("mse", "hand", {}), ("mse", "onepass", {}), ("mse", "autodiff", {}),
    ("bce", "hand", {}), ("bce", "onepass", {}), ("bce", "autodiff", {}),
    ("bce", "hand", {"batch_size": 2048, "steps": 3}), ("mse", "onepass", {"batch_size": 1000, "steps": 3, "shuffle": "rows"}),
    ("bce", "auto", {"optimizer": "lbfgs", "learning_rate": None, "steps": 30}),
    ("mse", "hand", {"learning_rate": "auto"}),
]
FAST = [CASES[0], CASES[2], CASES[6], CASES[7], CASES[9]]  # every plan, both losses, minibatch, L-BFGS


@pytest.mark.parametrize("loss, grad, extra", thinned(CASES, FAST))
def test_bfloat16_X_fits_like_float32_on_the_rounded_X(problem, loss, grad, extra):
    kw = {"loss": loss, "grad": grad, "learning_rate": 0.2, "steps": 60, **extra}
    low = gradfit.fit(problem["Xh"], problem[loss], **kw)
    ref = gradfit.fit(problem["X_rounded"], problem[loss], **kw)
    assert low.params.W.dtype == jnp.float32 and low.loss.dtype == jnp.float32
    np.testing.assert_allclose(low.params.W, ref.params.W, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(low.losses, ref.losses, rtol=2e-5)
    assert low.steps == ref.steps


@pytest.mark.parametrize("loss, grad, extra", thinned(CASES, FAST))
def test_no_float32_copy_of_X_in_the_compiled_programs(problem, monkeypatch, loss, grad, extra):
    # XLA would hoist convert(X) out of the step loop as a float32 copy (16 MiB here, more
    # than the row blocks of any plan); the programs that read a 16-bit X are compiled
    # without that hoisting (gradfit._precision). The problem and options of
    # test_bfloat16_X_fits_like_float32_on_the_rounded_X: its compiled programs serve.
    X, y = problem["Xh"], problem[loss]
    m = X.shape[0]
    used = []  # every executable the fit takes from gradfit's one compile cache, compiled now or before
    compiled = _engine.compiled

    def recording(fn, *args):
        exe, seconds = compiled(fn, *args)
        used.append((fn, exe))
        return exe, seconds

    monkeypatch.setattr(_engine, "compiled", recording)
    gradfit.fit(X, y, loss=loss, grad=grad, **{"learning_rate": 0.2, "steps": 60, **extra})  # the fits test's options
    programs = list({id(exe): (fn, exe) for fn, exe in used}.values())
    assert programs
    for fn, exe in programs:
        name = getattr(fn, "__qualname__", fn)
        temp = exe.memory_analysis().temp_size_in_bytes
        assert temp < m * N * 2, f"{name}: {temp} bytes of temporaries, a float32 copy of X is {m * N * 4}"


def test_without_the_option_xla_copies_X():
    # The reason for gradfit._precision.compiler_options: the same step loop compiled plainly
    # holds a float32 copy of X.
    X = jnp.zeros((M, N), jnp.bfloat16)
    y = jnp.zeros(M, jnp.float32)
    p = Params(jnp.zeros(N, jnp.float32), jnp.zeros((), jnp.float32))

    def steps(p, X, y):
        def body(_, p):
            g = gradients.bce(p, X, y)
            return jax.tree.map(lambda a, b: a - 0.1 * b, p, g)

        return jax.lax.fori_loop(0, 5, body, p)

    lowered = jax.jit(steps).lower(p, X, y)
    plain = lowered.compile().memory_analysis().temp_size_in_bytes
    kept = lowered.compile(compiler_options=_precision.compiler_options(X)).memory_analysis().temp_size_in_bytes
    assert plain >= M * N * 4 > M * N * 2 > kept
    assert _precision.compiler_options(jnp.zeros((4, 4), jnp.float32)) == {}


def test_float16_X_is_kept_and_float64_under_x64(x64, problem):
    X16, y = problem["X"][:M].astype(np.float16), problem["mse"][:M].astype(np.float64)
    r = gradfit.fit(X16, y, learning_rate=0.2, steps=40, grad="hand")
    ref = gradfit.fit(X16.astype(np.float64), y, learning_rate=0.2, steps=40, grad="hand")
    assert r.params.W.dtype == jnp.float64  # computed in float64 with x64 on
    np.testing.assert_allclose(r.params.W, ref.params.W, rtol=1e-12, atol=1e-14)


def test_mixed_products_equal_the_float32_products(problem):
    Xh = problem["Xh"][:4096]
    Xr = jnp.asarray(problem["X_rounded"][:4096])
    rng = np.random.default_rng(1)
    # jitted, as the fits run them: a program each, not one per operation
    product, xt_dot, grad = jax.jit(matmul), jax.jit(gradients.xt_dot), jax.jit(jax.grad(losses.bce))
    for shape in [(N,), (N, 3)]:
        W = jnp.asarray(rng.standard_normal(shape), jnp.float32)
        np.testing.assert_allclose(product(Xh, W), Xr @ W, rtol=1e-5, atol=1e-5)
        s = jnp.asarray(rng.standard_normal((4096, *shape[1:])), jnp.float32)
        np.testing.assert_allclose(xt_dot(Xh, s), xt_dot(Xr, s), rtol=1e-4, atol=1e-4)
    # autodiff through the mixed product is the float32 gradient
    p = Params(jnp.asarray(rng.standard_normal(N), jnp.float32) / 4, jnp.asarray(0.1, jnp.float32))
    y = jnp.asarray(problem["bce"][:4096])
    a = grad(p, Xh, y)
    b = grad(p, Xr, y)
    np.testing.assert_allclose(a.W, b.W, rtol=1e-5, atol=1e-7)


def test_sweep_members_with_bfloat16_X_equal_fits(problem):
    Xh, y = problem["Xh"][:M], problem["bce"][:M]
    result = gradfit.sweep(Xh, y, grid={"learning_rate": [0.1, 0.5]}, loss="bce", steps=30)
    for lr, W in zip([0.1, 0.5], result.params.W):
        one = gradfit.fit(Xh, y, loss="bce", learning_rate=lr, steps=30)
        np.testing.assert_allclose(W, one.params.W, rtol=1e-5, atol=1e-7)


def test_config_dtype_bfloat16_stores_X_only():
    section = {"source": "synthetic", "n_samples": 500, "n_features": 4, "n_outputs": 0, "noise": 0.1, "seed": 0,
               "dtype": "bfloat16", "target": None, "features": None}
    ds = data.load(section)
    full = data.load({**section, "dtype": "float32"})
    assert ds.X.dtype == jnp.bfloat16 and ds.y.dtype == np.float32
    np.testing.assert_array_equal(ds.y, full.y)
    np.testing.assert_array_equal(np.asarray(ds.X, np.float32), np.asarray(full.X.astype(jnp.bfloat16), np.float32))
    with pytest.raises(ValueError, match="data.dtype 'int8' is not supported"):
        data.load({**section, "dtype": "int8"})
