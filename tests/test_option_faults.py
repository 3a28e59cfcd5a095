"""Faults in fit's options and the estimators (issue 13): each a ValueError naming the option,
its range and the value, raised before anything is compiled; or a stable result."""

from __future__ import annotations

import time

import numpy as np
import pytest
from test_faults import raises_before_compute

import gradfit
from gradfit import _optim, _options


@pytest.mark.parametrize("optimizer, options, match", [
    ("adam", {"b1": 2.0}, r"b1=2.0 for 'adam' is out of range: b1 must be in \[0, 1\)"),
    ("adam", {"b2": 1.0}, r"b2=1.0 for 'adam' is out of range: b2 must be in \[0, 1\)"),
    ("adam", {"b2": -0.5}, r"b2=-0.5 .* must be in \[0, 1\)"),
    ("adam", {"eps": 0.0}, r"eps=0.0 for 'adam' is out of range: eps must be in \(0, inf\)"),
    ("sgd", {"momentum": float("nan")}, r"momentum=nan for 'sgd' must be a finite number"),
    ("sgd", {"momentum": -0.1}, r"momentum=-0.1 .* must be in \[0, 1\)"),
    ("sgd", {"momentum": 1.0}, r"momentum=1.0 .* must be in \[0, 1\) .*grow without bound"),
    ("rmsprop", {"decay": float("inf")}, r"decay=inf for 'rmsprop' must be a finite number"),
    ("lbfgs", {"memory_size": 0}, r"memory_size=0 for 'lbfgs' is out of range: memory_size must be in \[1, inf\)"),
])
def test_optimizer_option_out_of_range(compile_counter, data, optimizer, options, match):
    lr = None if optimizer == "lbfgs" else 0.01
    with raises_before_compute(compile_counter, match):
        gradfit.fit(*data, optimizer=optimizer, learning_rate=lr, optimizer_options=options, steps=5)


def test_optimizer_option_at_its_default_bound_is_accepted():
    """An option whose optax default is the bound itself (lars's eps = 0) may be set to it."""
    _optim.resolve("lars", {"eps": 0.0, "momentum": 0.0}, 0.1)
    _optim.resolve("sgd", {"momentum": 0.0}, 0.1)


def test_callback_not_callable(compile_counter, data):
    with raises_before_compute(compile_counter, r"callback must be a function, callback\(state, history\).* got int 5"):
        gradfit.fit(*data, callback=5, steps=5)


@pytest.mark.parametrize("option, match", [
    ({"l2": 1e39}, r"l2 = 1e\+39 overflows float32"),
    ({"learning_rate": 1e39}, r"learning_rate = 1e\+39 overflows float32"),
    ({"init": gradfit.Params(np.full(3, 1e39), np.float64(0.0))}, r"init W holds values up to 1e\+39, which overflow"),
    ({"init": gradfit.Params(np.zeros(3), np.float64(np.nan))}, r"init.b contains NaN or inf"),
])
def test_option_overflows_the_dtype(compile_counter, data, option, match):
    with raises_before_compute(compile_counter, match):
        gradfit.fit(*data, steps=5, **option)


def test_sample_weight_underflows_in_float32(compile_counter, data):
    with raises_before_compute(compile_counter, r"sample_weight values underflow to 0 in float32: rescale the weights"):
        gradfit.fit(*data, sample_weight=np.full(30, 1e-50), steps=5)
    with raises_before_compute(compile_counter, r"sample_weight values sum beyond the largest number in float32"):
        gradfit.fit(*data, sample_weight=np.full(30, 3e38), steps=5)


def test_chunk_size_larger_than_steps(data):
    """A chunk's history is no longer than the run: chunk_size=2**28 with 5 steps allocates 5."""
    assert _options.check({"steps": 5, "chunk_size": 2**28}).options.chunk_size == 5
    start = time.perf_counter()
    r = gradfit.fit(*data, steps=5, chunk_size=2**28, tol=None)
    assert r.losses.shape == (5,) and r.steps == 5 and time.perf_counter() - start < 60


def test_predict_proba_far_from_the_data(rng):
    """One-vs-rest probabilities where every sigmoid underflows: finite, summing to 1."""
    pytest.importorskip("sklearn")
    from gradfit.sklearn import GDClassifier

    X = rng.standard_normal((60, 2))
    y = np.argmax(X @ rng.standard_normal((2, 3)), axis=1)
    clf = GDClassifier(max_iter=20, tol=None).fit(X, y)
    for scale in (1.0, 1e6):
        p, logp = clf.predict_proba(X * scale), clf.predict_log_proba(X * scale)
        assert np.isfinite(p).all() and np.isfinite(logp).all()
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
        np.testing.assert_allclose(np.exp(logp), p)
    binary = GDClassifier(max_iter=20, tol=None).fit(X, y == 0)
    p = binary.predict_proba(X * 1e6)
    assert np.isfinite(p).all() and np.isfinite(binary.predict_log_proba(X * 1e6)).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)


def test_a_big_endian_array_fits_as_its_native_twin():
    d = gradfit.datasets.make_regression(60, 3, seed=0)
    big = gradfit.fit(d.X.astype(">f4"), d.y.astype(">f4"), learning_rate=0.1, steps=20)
    native = gradfit.fit(d.X, d.y, learning_rate=0.1, steps=20)
    np.testing.assert_array_equal(big.params.W, native.params.W)
