"""Streaming from .npy files: against numpy formulas, np.linalg.lstsq and the in-memory fit."""

from __future__ import annotations

import json
import threading
import time

import jax
import numpy as np
import optax
import pytest

import gradfit
from gradfit import Params, _stats, cli, stream
from _sample import thinned


def _save(tmp_path, X, y, name=""):
    xp, yp = tmp_path / f"X{name}.npy", tmp_path / f"y{name}.npy"
    np.save(xp, X)
    np.save(yp, y)
    return xp, yp


def _regression(rng, m=203, n=4, k=None, dtype=np.float64):
    out = () if k is None else (k,)
    X = rng.standard_normal((m, n)) + 0.5
    y = X @ rng.standard_normal((n, *out)) + 0.3 + 0.1 * rng.standard_normal((m, *out))
    return X.astype(dtype), y.astype(dtype)


def _classification(rng, m=203, n=4):
    X = rng.standard_normal((m, n))
    p = 1 / (1 + np.exp(-(X @ rng.standard_normal(n) + 0.2)))
    return X, (rng.random(m) < p).astype(np.float64)


# A chunk of 24 rows of 4 float64 features: 203 rows make 9 chunks, the last one short (11 rows).
SMALL = 24 * 4 * 8


# --------------------------------------------------------------------------- statistics
def _augmented(X, y, x_shift, y_shift):
    Y = y.reshape(len(y), -1)
    return np.hstack([X - x_shift, np.ones((len(X), 1)), Y - np.reshape(y_shift, (1, -1))])


def _gram(Z, n):
    """Z^T Z with the outputs' block reduced to its diagonal, as gradfit._stats forms it."""
    G = Z.T @ Z
    q = n + 1
    G[q:, q:] = np.diag(np.diag(G[q:, q:]))
    return G


@pytest.mark.parametrize("k,offset", [(None, 0.0), (3, 0.0), (None, 5.0), (3, 5.0)])
def test_sufficient_statistics_match_numpy(x64, rng, tmp_path, k, offset):
    """The streamed pass makes the in-memory plan's Stats: the Gram about the first chunk's means,
    and the residual sum of squares of lstsq."""
    X, y = _regression(rng, k=k)
    X = X - 0.5 + offset
    xp, yp = _save(tmp_path, X, y)
    s = stream.sufficient_statistics(xp, yp, chunk_bytes=SMALL)
    assert isinstance(s, _stats.Stats)
    np.testing.assert_allclose(s.x_mean, X[:24].mean(0), rtol=1e-12)
    np.testing.assert_allclose(s.y_mean, y[:24].mean(0), rtol=1e-12)
    Z = _augmented(X, y, np.asarray(s.x_mean), np.asarray(s.y_mean))
    np.testing.assert_allclose(s.gram, _gram(Z, X.shape[1]), rtol=1e-11, atol=1e-9)
    assert float(s.count) == len(X)
    A = np.hstack([X, np.ones((len(X), 1))])
    rss = np.sum((y - A @ np.linalg.lstsq(A, y, rcond=None)[0]) ** 2, axis=0)
    np.testing.assert_allclose(s.rss, rss, rtol=1e-9)


def test_statistics_of_row_ranges_add_up(x64, rng, tmp_path):
    X, y = _regression(rng, m=101)
    xp, yp = _save(tmp_path, X, y)
    parts = [stream.row_range(101, i, 3) for i in range(3)]
    assert parts == [(0, 34), (34, 68), (68, 101)]
    shift = (np.full(4, 0.5), np.asarray([0.3]))
    total = sum(np.asarray(stream.sufficient_statistics(xp, yp, rows=r, chunk_bytes=SMALL, shift=shift).gram)
                for r in parts)
    Z = _augmented(X, y, shift[0], shift[1])
    np.testing.assert_allclose(total, _gram(Z, X.shape[1]), rtol=1e-12)
    a, b = parts[1]
    part = stream.sufficient_statistics(xp, yp, rows=parts[1], chunk_bytes=SMALL, shift=shift)
    assert float(part.count) == b - a


@pytest.mark.parametrize("reduction", ["mean", "half_mean", "sum"])
def test_statistics_about_any_shift_give_the_losses(x64, rng, tmp_path, reduction):
    """The Gram about the first chunk's means (not the data's) still gives the exact loss and gradient."""
    X, y = _regression(rng, m=50, k=2)
    X[:24] += 3.0  # the first chunk's means are far from the data's
    xp, yp = _save(tmp_path, X, y)
    s = stream.sufficient_statistics(xp, yp, chunk_bytes=SMALL)
    p = Params(rng.standard_normal((4, 2)), rng.standard_normal(2))
    np.testing.assert_allclose(_stats.loss(p, s, reduction=reduction), gradfit.losses.mse(p, X, y, reduction=reduction),
                               rtol=1e-10)
    value, hand = _stats.value_and_grad(p, s, reduction=reduction)
    g = jax.grad(lambda q: gradfit.losses.mse(q, X, y, reduction=reduction))(p)
    for a, b in zip(hand, g):
        np.testing.assert_allclose(a, b, rtol=1e-10)


def test_statistics_of_uncentred_float32_columns_keep_their_spread(rng, tmp_path):
    """A column of mean 1000 and spread 1: float32 statistics about a shift still solve to lstsq."""
    X = (rng.standard_normal((20_000, 3)) + [1000.0, -50.0, 3.0]).astype(np.float32)
    y = (X @ [1.0, 2.0, -1.0] + 0.1 * rng.standard_normal(20_000)).astype(np.float32)
    xp, yp = _save(tmp_path, X, y)
    s = stream.sufficient_statistics(xp, yp, chunk_bytes=4096)
    params, _ = stream.least_squares(s)
    theta = np.linalg.lstsq(np.hstack([X.astype(np.float64), np.ones((len(X), 1))]), y.astype(np.float64), rcond=None)[0]
    np.testing.assert_allclose(params.W, theta[:3], rtol=2e-3)
    np.testing.assert_allclose(params.b, theta[3], rtol=2e-3, atol=1e-3 * abs(theta[3]))


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_optimum_of_streamed_statistics_equals_lstsq(x64, rng, tmp_path, fit_intercept):
    X, y = _regression(rng, m=150, k=2)
    xp, yp = _save(tmp_path, X, y)
    s = stream.sufficient_statistics(xp, yp, chunk_bytes=SMALL)
    params, value = stream.least_squares(s, fit_intercept=fit_intercept)
    A = np.hstack([X, np.ones((len(X), 1))]) if fit_intercept else X
    theta = np.linalg.lstsq(A, y, rcond=None)[0]
    np.testing.assert_allclose(params.W, theta[:4], rtol=1e-9, atol=1e-12)
    if fit_intercept:
        np.testing.assert_allclose(params.b, theta[4], rtol=1e-9)
    np.testing.assert_allclose(value, np.mean(np.sum((y - A @ theta) ** 2, axis=1)), rtol=1e-9)


# --------------------------------------------------------------------------- fits equal fit()
FULL_BATCH_CASES = [
    # (loss, k, grad, reduction, extra): "stats" reads the files twice for the statistics and once to check
    # the returned params, the others once per step
    ("mse", None, "stats", "mean", {}),
    # chunks of 2: the compiled program of test_new_hyperparameters_compile_nothing's statistics fits
    ("mse", 3, "stats", "half_mean", {"l2": 0.1, "chunk_size": 2}),
    ("mse", None, "stats", "sum", {"fit_intercept": False, "learning_rate": 1e-3}),
    ("mse", 2, "autodiff", "mean", {"l2": 0.05}),
    ("mse", None, "hand", "half_mean", {"optimizer": "adam", "learning_rate": 0.05}),
    ("mse", None, "onepass", "mean", {}),
    ("bce", None, "autodiff", "mean", {"l2": 0.01, "learning_rate": 0.5}),
    ("bce", None, "hand", "sum", {"learning_rate": 0.002, "optimizer": "sgd", "optimizer_options": {"momentum": 0.9}}),
]


@pytest.mark.parametrize("loss,k,grad,reduction,extra", thinned(
    FULL_BATCH_CASES, [FULL_BATCH_CASES[i] for i in (1, 3, 5, 7)]))  # every loss, k, plan and reduction
def test_streamed_full_batch_fit_has_the_in_memory_iterates(x64, rng, tmp_path, loss, k, grad, reduction, extra):
    if loss == "bce":
        X, y = _classification(rng)
    else:
        X, y = _regression(rng, k=k)
    xp, yp = _save(tmp_path, X, y)
    # tol=None: all 40 steps run (the default tol would stop some cases early), iterates compared one by one
    options = {"loss": loss, "reduction": reduction, "grad": grad, "steps": 40, "learning_rate": 0.1, "tol": None,
               **extra}
    ref = gradfit.fit(X, y, **options)
    got = stream.fit_streaming(xp, yp, chunk_bytes=SMALL, **options)
    assert got.stats["plan"] == grad and got.stats["n_chunks"] == 9
    # "stats": two passes for the statistics and one checking the returned params on the files;
    # the others: a pass per step, and one for the final loss
    assert got.stats["passes"] == (3 if grad == "stats" else 41)
    assert got.steps == ref.steps == 40
    np.testing.assert_allclose(got.losses, ref.losses, rtol=1e-10)
    for a, b in zip(got.params, ref.params):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got.loss, ref.loss, rtol=1e-10)
    assert got.converged == ref.converged and got.diverged == ref.diverged


def test_streamed_fit_stops_like_fit(x64, rng, tmp_path):
    # the shapes and settings of the full-batch case (mse, 3, stats, half_mean, chunks of 2): its compiled statistics
    # programs serve
    X, y = _regression(rng, k=3)
    xp, yp = _save(tmp_path, X, y)
    for grad in ("stats", "hand"):
        # the same plan in memory: the statistics plan's loop stops at 0.5*tol (its gradient is only
        # checked on the data at the end), a pass plan's at tol, so their step counts differ
        opts = dict(learning_rate=0.2, steps=5000, tol=1e-8, grad=grad, reduction="half_mean",
                    chunk_size=2 if grad == "stats" else None)
        ref = gradfit.fit(X, y, **opts)
        got = stream.fit_streaming(xp, yp, chunk_bytes=SMALL, **opts)
        assert ref.converged and got.converged and got.steps == ref.steps < 5000
        np.testing.assert_allclose(got.loss, ref.loss, rtol=1e-10)
    # divergence: the same rule, the same kept params
    with pytest.warns(RuntimeWarning, match="diverged"):
        ref = gradfit.fit(X, y, learning_rate=10.0, steps=200, reduction="half_mean", chunk_size=2)
    with pytest.warns(RuntimeWarning, match="diverged"):
        got = stream.fit_streaming(xp, yp, learning_rate=10.0, steps=200, grad="hand", chunk_bytes=SMALL,
                                   reduction="half_mean")
    assert got.diverged and got.steps == ref.steps
    np.testing.assert_allclose(got.params.W, ref.params.W, rtol=1e-9)


def test_lbfgs_on_streamed_statistics_reaches_lstsq(x64, rng, tmp_path):
    X, y = _regression(rng)
    xp, yp = _save(tmp_path, X, y)
    got = stream.fit_streaming(xp, yp, optimizer="lbfgs", steps=100, tol=1e-14, chunk_bytes=SMALL)
    theta = np.linalg.lstsq(np.hstack([X, np.ones((len(X), 1))]), y, rcond=None)[0]
    np.testing.assert_allclose(got.params.W, theta[:4], rtol=1e-6)
    np.testing.assert_allclose(got.params.b, theta[4], rtol=1e-6)
    assert got.steps < 100


def test_float32_files_fit_in_float32(rng, tmp_path):
    X, y = _regression(rng, dtype=np.float32)
    xp, yp = _save(tmp_path, X, y)
    got = stream.fit_streaming(xp, yp, learning_rate=0.1, steps=30, grad="hand", chunk_bytes=SMALL // 2)
    ref = gradfit.fit(X, y, learning_rate=0.1, steps=30)
    assert got.params.W.dtype == np.float32 and got.stats["dtype"] == "float32"
    np.testing.assert_allclose(got.params.W, ref.params.W, rtol=1e-5, atol=1e-6)
    # a memory map or an in-memory array streams the same as the path
    for X_in, y_in in ((np.load(xp, mmap_mode="r"), np.load(yp, mmap_mode="r")), (X, y)):
        again = stream.fit_streaming(X_in, y_in, learning_rate=0.1, steps=30, grad="hand", chunk_bytes=SMALL // 2)
        np.testing.assert_array_equal(again.params.W, got.params.W)


def test_new_hyperparameters_compile_nothing(x64, rng, tmp_path, compile_counter):
    X, y = _classification(rng)
    xp, yp = _save(tmp_path, X, y)
    # the settings of the full-batch case (bce, None, hand, sum): its compiled programs serve the first fit
    bce = dict(loss="bce", grad="hand", reduction="sum", optimizer_options={"momentum": 0.9}, chunk_bytes=SMALL)
    stream.fit_streaming(xp, yp, learning_rate=0.002, steps=3, **bce)
    before = compile_counter.count
    again = stream.fit_streaming(xp, yp, learning_rate=0.006, l2=0.1, tol=1e-3, steps=4, **bce)
    assert again.stats["compile_seconds"] == 0.0
    assert compile_counter.count == before
    y_reg = X @ rng.standard_normal((4, 3))  # the shapes and settings of the full-batch case (mse, 3, stats, half_mean)
    xp, yp = _save(tmp_path, X, y_reg, name="reg")
    seen = []
    stream.fit_streaming(xp, yp, learning_rate=0.1, steps=3, chunk_bytes=SMALL, chunk_size=2, reduction="half_mean")
    before = compile_counter.count
    again = stream.fit_streaming(xp, yp, learning_rate=0.2, l2=0.5, steps=5, chunk_bytes=SMALL, chunk_size=2,
                                 reduction="half_mean", callback=lambda state, history: seen.append(len(history)))
    assert again.stats["compile_seconds"] == 0.0 and again.stats["plan"] == "stats"
    assert compile_counter.count == before
    assert seen == [2, 4, 6]  # between compiled chunks of 2 steps (NaN-padded past the last step)


# --------------------------------------------------------------------------- minibatch epochs
def _numpy_minibatch_sgd(X, y, lr, batch_size, epochs):
    """Minibatch SGD on the mean squared error, rows in file order (the formula, by hand)."""
    W, b = np.zeros(X.shape[1]), 0.0
    values = []
    for _ in range(epochs):
        total = 0.0
        for a in range(0, len(X), batch_size):
            xb, yb = X[a:a + batch_size], y[a:a + batch_size]
            r = xb @ W + b - yb
            total += np.sum(r * r)
            W, b = W - lr * (2 / len(xb)) * xb.T @ r, b - lr * (2 / len(xb)) * np.sum(r)
        values.append(total / len(X))
    return W, b, np.asarray(values)


def test_minibatch_epochs_in_file_order_equal_numpy_sgd(x64, rng, tmp_path):
    X, y = _regression(rng)
    xp, yp = _save(tmp_path, X, y)
    got = stream.fit_streaming(xp, yp, batch_size=10, learning_rate=0.02, steps=3, shuffle="none", chunk_bytes=SMALL,
                               standardize=False)  # the raw (W, b) iterates of the numpy loop
    assert got.stats["chunk_rows"] == 20  # 24 rows rounded down to whole batches
    W, b, values = _numpy_minibatch_sgd(X, y, 0.02, 10, 3)
    np.testing.assert_allclose(got.losses, values, rtol=1e-10)
    np.testing.assert_allclose(got.params.W, W, rtol=1e-10)
    np.testing.assert_allclose(got.params.b, b, rtol=1e-10)
    np.testing.assert_allclose(got.loss, np.mean((X @ W + b - y) ** 2), rtol=1e-10)


def test_shuffled_epoch_visits_every_row_once(x64, rng, tmp_path):
    X, y = _regression(rng, k=2)
    xp, yp = _save(tmp_path, X, y)
    init = Params(rng.standard_normal((4, 2)), rng.standard_normal(2))
    # A zero update keeps the params at init (exactly, in the raw coordinates), so the epoch's mean
    # minibatch loss is the full objective at init exactly when every row is used once. An epoch
    # that leaves the params unchanged stops the fit as stalled, so each seed (a different
    # shuffle) runs one epoch.
    full = np.mean(np.sum((X @ init.W + init.b - y) ** 2, axis=1))
    zero = optax.set_to_zero()  # one transformation for both seeds: one compiled program
    for seed in (0, 1):
        got = stream.fit_streaming(xp, yp, batch_size=7, optimizer=zero, steps=2, init=init,
                                   seed=seed, standardize=False, chunk_bytes=SMALL)
        assert got.status == "stalled" and got.steps == 1
        np.testing.assert_allclose(got.losses, [full], rtol=1e-12)


def test_shuffled_epochs_are_seeded_and_converge(x64, rng, tmp_path):
    X, y = _regression(rng, m=300)
    xp, yp = _save(tmp_path, X, y)
    opts = dict(batch_size=16, learning_rate=0.01, steps=60, chunk_bytes=4 * SMALL)  # 4 chunks an epoch (96 rows)
    a = stream.fit_streaming(xp, yp, seed=1, **opts)
    b = stream.fit_streaming(xp, yp, seed=1, **opts)
    c = stream.fit_streaming(xp, yp, seed=2, **opts)
    np.testing.assert_array_equal(a.params.W, b.params.W)
    assert not np.array_equal(a.params.W, c.params.W)
    theta = np.linalg.lstsq(np.hstack([X, np.ones((len(X), 1))]), y, rcond=None)[0]
    np.testing.assert_allclose(a.params.W, theta[:4], atol=0.02)


def test_minibatch_bce_with_momentum_approaches_sklearn(x64, rng, tmp_path):
    from sklearn.linear_model import LogisticRegression

    X, y = _classification(rng, m=400)
    xp, yp = _save(tmp_path, X, y)
    l2 = 1e-3
    got = stream.fit_streaming(xp, yp, loss="bce", batch_size=32, learning_rate=0.02, steps=100, l2=l2,
                               optimizer_options={"momentum": 0.9}, chunk_bytes=4 * SMALL)  # 5 chunks an epoch
    ref = LogisticRegression(C=1 / (l2 * len(X)), tol=1e-12, max_iter=1000).fit(X, y)

    def objective(W, b):  # the notes seed's cost, plus (l2/2)||W||^2
        a = 1 / (1 + np.exp(-(X @ W + b)))
        return -np.mean(y * np.log(a) + (1 - y) * np.log(1 - a)) + 0.5 * l2 * W @ W

    best = objective(ref.coef_[0], ref.intercept_[0])
    np.testing.assert_allclose(got.loss, objective(np.asarray(got.params.W), float(got.params.b)), rtol=1e-10)
    assert 0 <= float(got.loss) - best < 1e-3 * best


# --------------------------------------------------------------------------- bad input
def test_file_errors_name_the_problem(tmp_path, rng):
    X, y = _regression(rng, m=20)
    xp, yp = _save(tmp_path, X, y)
    with pytest.raises(ValueError, match="fit_streaming"):
        gradfit.fit(str(xp), y)
    with pytest.raises(ValueError, match="does not exist"):
        stream.fit_streaming(tmp_path / "missing.npy", yp)
    np.save(tmp_path / "short.npy", y[:19])
    with pytest.raises(ValueError, match="20 rows but y has 19"):
        stream.fit_streaming(xp, tmp_path / "short.npy")
    np.save(tmp_path / "int.npy", (X * 10).astype(np.int32))
    with pytest.raises(ValueError, match="not a float"):
        stream.fit_streaming(tmp_path / "int.npy", yp)
    truncated = tmp_path / "trunc.npy"
    truncated.write_bytes(xp.read_bytes()[:-50])
    with pytest.raises(ValueError, match="truncated"):
        stream.fit_streaming(truncated, yp)
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not an array at all")
    with pytest.raises(ValueError, match="not a valid .npy"):
        stream.fit_streaming(garbage, yp)
    np.save(tmp_path / "fortran.npy", np.asfortranarray(X))
    with pytest.raises(ValueError, match="Fortran"):
        stream.fit_streaming(tmp_path / "fortran.npy", yp)
    with pytest.raises(ValueError, match="lbfgs"):
        stream.fit_streaming(xp, yp, loss="mse", grad="hand", optimizer="lbfgs")
    with pytest.raises(ValueError, match="statistics"):
        stream.fit_streaming(xp, yp, loss="bce", grad="stats")
    with pytest.raises(ValueError, match="rows="):
        stream.fit_streaming(xp, yp, rows=(5, 50))


@pytest.mark.parametrize("where", ["X", "y"])
def test_nan_found_while_streaming_names_the_rows(tmp_path, rng, where):
    X, y = _regression(rng, m=203)
    (X if where == "X" else y)[150] = np.nan
    xp, yp = _save(tmp_path, X, y)
    for grad in ("stats", "hand"):
        with pytest.raises(ValueError, match=rf"{where} has NaN or inf in rows 144\.\.167 \(first at row 150\)"):
            stream.fit_streaming(xp, yp, grad=grad, chunk_bytes=SMALL)
    with pytest.raises(ValueError, match="row 150"):
        stream.fit_streaming(xp, yp, batch_size=8, chunk_bytes=SMALL)
    assert [t for t in threading.enumerate() if t.name == "gradfit-prefetch"] == []


def test_bce_targets_out_of_range_are_found(tmp_path, rng):
    X, y = _classification(rng)
    y[30] = 2.0
    xp, yp = _save(tmp_path, X, y)
    with pytest.raises(ValueError, match=r"targets in \[0, 1\].*rows 24\.\.47"):
        stream.fit_streaming(xp, yp, loss="bce", chunk_bytes=SMALL)


def test_cli_streams_and_writes_nothing_on_bad_data(tmp_path, rng, capsys):
    X, y = _regression(rng, dtype=np.float32)
    xp, yp = _save(tmp_path, X, y)
    out = tmp_path / "run"
    base = ["fit", "--set", "data.stream=true", "--set", f"data.source='{xp}'", "--set", f"data.y_source='{yp}'",
            "--set", "fit.learning_rate=0.1", "--set", "fit.tol=1e-5", "--set", "stream.chunk_bytes=4096"]
    assert cli.main([*base, "--set", f"output.dir='{out}'"]) == 0
    report = json.loads((out / "report.json").read_text())
    # tol 1e-5: an optimality test float32 reaches; three passes: the statistics (two) and the final check
    assert report["plan"] == "stats" and report["passes"] == 3 and report["converged"]
    assert report["relative_distance_to_optimum"] < 1e-3
    X[100, 2] = np.inf
    xp, yp = _save(tmp_path, X, y, name="bad")
    bad_out = tmp_path / "bad_run"
    base[4], base[6] = f"data.source='{xp}'", f"data.y_source='{yp}'"
    assert cli.main([*base, "--set", f"output.dir='{bad_out}'"]) == 2
    assert "first at row 100" in capsys.readouterr().err
    assert not bad_out.exists()
    assert cli.main([*base, "--set", f"output.dir='{bad_out}'", "--set", "fit.devices=2"]) == 2
    assert "one process on one device" in capsys.readouterr().err


# --------------------------------------------------------------------------- the reader and its thread
def test_chunks_are_padded_with_zero_rows(x64, rng, tmp_path):
    X, y = _regression(rng, m=50)
    xp, yp = _save(tmp_path, X, y)
    data = stream.StreamedData.open(xp, yp, chunk_bytes=SMALL)
    assert (data.chunk_rows, data.n_chunks) == (24, 3)
    Xc, yc, valid = data.read(2)
    assert valid == 2 and Xc.shape == (24, 4)
    np.testing.assert_array_equal(Xc[:2], X[48:])
    assert not Xc[2:].any() and not yc[2:].any()


def test_prefetcher_runs_ahead_by_at_most_depth():
    produced = []

    def produce(i):
        produced.append(i)
        return i

    seen = []
    with stream.Prefetcher(produce, range(20), depth=2) as items:
        for i in items:
            time.sleep(0.01)
            # taken: i + 1 items; queued: <= 2; being produced: <= 1
            assert len(produced) <= i + 1 + 2 + 1
            seen.append(i)
    assert seen == list(range(20))


def test_prefetcher_error_reaches_the_consumer_and_the_thread_stops():
    def produce(i):
        if i == 3:
            raise OSError("disk on fire")
        return i

    p = stream.Prefetcher(produce, range(10), depth=2)
    with pytest.raises(OSError, match="disk on fire"):
        with p as items:
            assert list(items) == [0, 1, 2]  # raises before the list is made
    assert not p.alive


def test_prefetcher_stops_when_the_consumer_fails():
    p = stream.Prefetcher(lambda i: i, range(10_000), depth=2)
    with pytest.raises(RuntimeError):
        with p as items:
            for i in items:
                if i == 5:
                    raise RuntimeError("consumer failed")
    assert not p.alive


@pytest.mark.skipif(not hasattr(__import__("mmap"), "MADV_DONTNEED"), reason="needs madvise")
def test_read_pages_leave_the_process(tmp_path, rng):
    """After a pass, the file's pages are no longer resident in this process (only in the page cache)."""
    import os

    X = rng.standard_normal((20_000, 64))  # 10 MB
    xp, yp = _save(tmp_path, X, np.zeros(20_000))
    data = stream.StreamedData.open(xp, yp, chunk_bytes=1 << 20)
    for i in range(data.n_chunks):
        data.read(i)
    smaps = open(f"/proc/{os.getpid()}/smaps").read() if os.path.exists("/proc/self/smaps") else ""
    if not smaps:
        pytest.skip("no /proc/self/smaps")
    lines = smaps.splitlines()
    mapped = [j for j, line in enumerate(lines) if line.endswith(str(xp))]
    assert mapped, "the memory map of X is not in smaps"
    rss_kb = sum(next(int(s.split()[1]) for s in lines[j + 1:] if s.startswith("Rss:")) for j in mapped)
    assert rss_kb <= 2 * 1024, f"{rss_kb} kB of X still resident"
    np.asarray(data.X).sum()  # control: reading through the map without dropping keeps the pages
    lines = open(f"/proc/{os.getpid()}/smaps").read().splitlines()
    rss_kb = sum(next(int(s.split()[1]) for s in lines[j + 1:] if s.startswith("Rss:"))
                 for j, line in enumerate(lines) if line.endswith(str(xp)))
    assert rss_kb > 8 * 1024
