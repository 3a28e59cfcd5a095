"""Fuzzing the public functions with hypothesis: shapes, dtypes and values, good and bad.

The contract checked: every call either returns, with no silent NaN (params finite; a
non-finite loss only with ``diverged=True``), or raises a documented error (ValueError, or
its subclass ConfigError) from gradfit's own code, never from deep inside JAX, optax or
numpy. A small sample runs by default; ``-m slow`` runs a few thousand examples.
"""

from __future__ import annotations

import math
import tempfile
import traceback
import warnings
from pathlib import Path

import hypothesis.extra.numpy as hnp
import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import gradfit
from gradfit import config, gradients, losses

@pytest.fixture
def selected_slow(request):
    """The thousands-of-examples runs go only when asked for: ``pytest -m slow``."""
    expr = request.config.getoption("-m") or ""
    if "slow" not in expr or "not slow" in expr:
        pytest.skip("a few thousand examples: run with -m slow")


FAST = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
SLOW = settings(max_examples=2500, deadline=None, suppress_health_check=list(HealthCheck))


def _raised_by_gradfit(e: BaseException) -> bool:
    """The error was raised in gradfit's own code (a documented check), not inside a dependency."""
    frame = traceback.extract_tb(e.__traceback__)[-1]
    return f"{Path('gradfit')}" in frame.filename and "site-packages/jax" not in frame.filename


def _documented_error(e: BaseException) -> None:
    assert isinstance(e, ValueError), f"undocumented {type(e).__name__}: {e}"
    assert _raised_by_gradfit(e), f"ValueError from inside a dependency: {e}\n{''.join(traceback.format_tb(e.__traceback__))}"
    assert str(e), "an error must say what is wrong"


# --------------------------------------------------------------------------- fit
SPECIAL = st.sampled_from([np.nan, np.inf, -np.inf, 1e300, -1e39, 0.0])
VALUES = st.one_of(st.floats(-1e3, 1e3, allow_nan=False), SPECIAL)


MISTAKES = ("shape", "values", "reduction", "learning_rate", "steps", "tol", "l2", "batch_size", "targets")


@st.composite
def fit_cases(draw):
    """A fit with at most one mistake (none in about half the cases), so that both the checks
    and the compiled loop (every loss, reduction, dtype, minibatches, divergence) are fuzzed."""
    mistake = draw(st.sampled_from((None,) * len(MISTAKES) + MISTAKES))
    m = draw(st.sampled_from([1, 5]))
    n = draw(st.sampled_from([1, 3]))
    k = draw(st.sampled_from([None, 2]))
    out = () if k is None else (k,)
    loss = draw(st.sampled_from(["mse", "bce"]))
    elements = VALUES if mistake == "values" else st.floats(-30, 30, allow_nan=False)
    X = draw(hnp.arrays(np.float64, (m, n), elements=elements))
    if loss == "bce" and mistake != "targets":
        y = draw(hnp.arrays(np.float64, (m, *out), elements=st.sampled_from([0.0, 1.0, 0.3])))
    else:
        y = draw(hnp.arrays(np.float64, (m, *out), elements=elements))
    dtype = draw(st.sampled_from(["float32", "float32", "float64", "float16", "int32", "bool"]))
    with np.errstate(all="ignore"):
        X = X.astype(dtype) if dtype != "bool" else X > 0
    if mistake == "shape":
        X = draw(st.sampled_from([X[:, 0], X[:0], X[:, :0], X[None], X[:-1] if m > 1 else X.T]))
    good_reductions = losses.REDUCTIONS[loss]

    def pick(name, good, bad):
        return draw(bad if mistake == name else good)

    kwargs = dict(
        loss=loss,
        reduction=pick("reduction", st.sampled_from(good_reductions), st.sampled_from(["max", "half_mean"])),
        optimizer=draw(st.sampled_from(["sgd", "sgd", "adam"])),
        learning_rate=pick(
            "learning_rate",
            st.one_of(st.sampled_from([None, "auto", 1e3, 10.0]), st.floats(1e-4, 1.0)),
            st.sampled_from([0.0, -1.0, np.nan, np.inf, "fast", [0.1, 0.2, 0.3]]),
        ),
        steps=pick("steps", st.sampled_from([1, 7, 30]), st.sampled_from([-1, 0, 2.5, 2**40])),
        tol=pick("tol", st.sampled_from([None, 1e-6, 0.0]), st.sampled_from([-1.0, np.nan])),
        l2=pick("l2", st.sampled_from([0.0, 0.1]), st.sampled_from([-1.0, np.inf, [0.1] * 5])),
        batch_size=pick("batch_size", st.sampled_from([None, None, 1, m]), st.sampled_from([0, m + 1])),
        chunk_size=8,
        seed=draw(st.integers(-5, 5)),
    )
    if kwargs["learning_rate"] == "auto" and kwargs["optimizer"] != "sgd" and mistake != "learning_rate":
        kwargs["optimizer"] = "sgd"
    return X, y, kwargs


def _check_fit(case):
    X, y, kwargs = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # divergence and health warnings are allowed
        try:
            r = gradfit.fit(X, y, **kwargs)
        except Exception as e:  # noqa: BLE001 - the point is to see every kind
            _documented_error(e)
            event(f"error: {str(e)[:25]}")
            return
    event("fitted" + (" (diverged)" if r.diverged else ""))
    W, b = np.asarray(r.params.W), np.asarray(r.params.b)
    assert np.isfinite(W).all() and np.isfinite(b).all(), "params must never be NaN or inf"
    assert not (r.converged and r.diverged)
    assert 1 <= r.steps <= kwargs["steps"]
    if not r.diverged:
        assert np.isfinite(float(r.loss)) and np.isfinite(r.losses).all(), "a NaN loss must be reported as diverged"


@FAST
@given(fit_cases())
def test_fit_fuzz_sample(case):
    _check_fit(case)


@pytest.mark.slow
@SLOW
@given(fit_cases())
def test_fit_fuzz(selected_slow, case):
    _check_fit(case)


# --------------------------------------------------------------------------- losses and gradients
@st.composite
def loss_cases(draw):
    m = draw(st.integers(1, 6))
    n = draw(st.integers(1, 4))
    k = draw(st.sampled_from([None, 1, 3]))
    out = () if k is None else (k,)
    name = draw(st.sampled_from(["mse", "bce"]))
    finite = st.floats(-100, 100, allow_nan=False, width=32)
    X = draw(hnp.arrays(np.float32, (m, n), elements=finite))
    W = draw(hnp.arrays(np.float32, (n, *out), elements=finite))
    b = draw(hnp.arrays(np.float32, out, elements=finite))
    if name == "bce":
        y = draw(hnp.arrays(np.float32, (m, *out), elements=st.floats(0, 1, width=32)))
    else:
        y = draw(hnp.arrays(np.float32, (m, *out), elements=finite))
    if draw(st.integers(0, 9)) == 0:  # sometimes y of the wrong shape
        y = y[..., None] if y.ndim == 1 else y[:, 0]
    reduction = draw(st.sampled_from(["mean", "sum", "half_mean", "median"]))
    return name, reduction, X, y, gradfit.Params(W, b)


def _reference_loss(name, reduction, X, y, p):
    """numpy float64 from the formulas in gradfit.losses' docstrings."""
    X, y, W, b = (np.asarray(a, np.float64) for a in (X, y, p.W, p.b))
    z = X @ W + b
    if name == "mse":
        per = (y - z) ** 2
    else:
        per = y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z)
    total = per.sum()
    return {"sum": total, "mean": total / len(X), "half_mean": total / (2 * len(X))}[reduction]


def _check_loss(case):
    name, reduction, X, y, p = case
    try:
        value = float(losses.LOSSES[name](p, X, y, reduction=reduction))
        grad = gradients.GRADIENTS[name](p, X, y, reduction=reduction)
    except Exception as e:  # noqa: BLE001
        _documented_error(e)
        return
    ref = _reference_loss(name, reduction, X, y, p)
    assert not math.isnan(value)
    if np.isfinite(ref) and ref < 1e30:
        assert value == pytest.approx(ref, rel=1e-4, abs=1e-4 * (1 + abs(ref)))
    auto = jax.grad(losses.LOSSES[name])(p, X, y, reduction=reduction)
    for g, a in zip(grad, auto):
        g, a = np.asarray(g, np.float64), np.asarray(a, np.float64)
        if np.isfinite(a).all():
            assert np.isfinite(g).all()
            np.testing.assert_allclose(g, a, rtol=2e-3, atol=2e-3 * (1 + np.abs(a).max()))


@FAST
@given(loss_cases())
def test_losses_and_gradients_fuzz_sample(case):
    _check_loss(case)


@pytest.mark.slow
@SLOW
@given(loss_cases())
def test_losses_and_gradients_fuzz(selected_slow, case):
    _check_loss(case)


# --------------------------------------------------------------------------- config
KEYS = [f"{s}.{k}" for s, keys in config.DEFAULTS.items() for k in keys]
TOML_VALUES = st.one_of(
    st.integers(-10**20, 10**20).map(str), st.floats(allow_nan=False).map(repr), st.text(max_size=8).map(repr),
    st.sampled_from(["true", "false", "none", "[1, 2]", "{momentum = 0.9}", "1979-05-27", "inf", "nan", "'auto'", "[", ""]),
)
OVERRIDES = st.one_of(
    st.text(max_size=30),
    st.builds(lambda k, v: f"{k}={v}", st.one_of(st.sampled_from(KEYS), st.text(max_size=12)), TOML_VALUES),
)


def _check_config(result_or_error):
    if isinstance(result_or_error, BaseException):
        assert isinstance(result_or_error, config.ConfigError), repr(result_or_error)
        _documented_error(result_or_error)
        return
    cfg = result_or_error
    assert set(cfg) == set(config.DEFAULTS)
    for section, keys in config.DEFAULTS.items():
        assert set(cfg[section]) == set(keys)


def _call(fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001
        return e


def _check_override(texts):
    for text in texts:
        r = _call(config.parse_override, text)
        if not isinstance(r, BaseException):
            ((section, values),) = r.items()
            assert len(values) == 1
    _check_config(_call(config.load, None, texts))


@st.composite
def toml_documents(draw):
    if draw(st.booleans()):
        return draw(st.binary(max_size=60))
    lines = []
    for section, keys in config.DEFAULTS.items():
        if draw(st.booleans()):
            continue
        lines.append(f"[{draw(st.sampled_from([section, section, section + 's']))}]")
        for key in draw(st.lists(st.sampled_from([*keys, "learnig_rate", "x"]), max_size=4, unique=True)):
            lines.append(f"{key} = {draw(TOML_VALUES)}")
    return "\n".join(lines).encode()


def _check_document(content):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.toml"
        path.write_bytes(content)
        _check_config(_call(config.load, path))


@FAST
@given(st.lists(OVERRIDES, max_size=3), toml_documents())
def test_config_fuzz_sample(texts, content):
    _check_override(texts)
    _check_document(content)


@pytest.mark.slow
@SLOW
@given(st.lists(OVERRIDES, max_size=3), toml_documents())
def test_config_fuzz(selected_slow, texts, content):
    _check_override(texts)
    _check_document(content)
