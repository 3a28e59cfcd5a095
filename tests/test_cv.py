"""Cross-validated sweeps (gradfit.sweep(cv=...), GDRegressorCV, GDClassifierCV, gradfit sweep with [sweep] cv)
against independent references: scikit-learn's Ridge and LogisticRegression fitted per fold, RidgeCV and
LogisticRegressionCV on the same folds and grid, fits on each fold's rows."""

from __future__ import annotations

import csv
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradfit
from gradfit import _cv, _stats, cli, datasets
from gradfit._types import Data
from _sample import thinned

sklearn = pytest.importorskip("sklearn")
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, Ridge, RidgeCV  # noqa: E402
from sklearn.metrics import log_loss, mean_squared_error  # noqa: E402
from sklearn.model_selection import KFold, ShuffleSplit, StratifiedKFold  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from gradfit.sklearn import GDClassifierCV, GDRegressorCV  # noqa: E402

ALPHAS = [0.01, 1.0, 30.0, 1000.0]  # Ridge's alpha: gradfit's l2 = 2 alpha with reduction="sum"
CS = [0.01, 0.1, 1.0, 10.0]  # LogisticRegression's C: l2 = 1 / C with reduction="sum"
# float64, sgd with the 1/L step, tight optimality test: the fits reach the optimum to ~1e-10
SOLVE = dict(reduction="sum", learning_rate="auto", steps=3000, tol=1e-9)


# session: --dist loadgroup sends this file's tests to a worker one by one, and a module fixture would end
# (and be built again) whenever the next test there is another file's
@pytest.fixture(scope="session")
def regression():
    d = datasets.make_regression(200, 5, seed=4, dtype=np.float64)
    return d.X, d.y


@pytest.fixture(scope="module")
def classification():
    d = datasets.make_classification(240, 4, seed=5, dtype=np.float64)
    return d.X, d.y


# session: as the fixture above
@pytest.fixture(scope="session")
def ridge_sweep(regression):
    with jax.enable_x64(True):
        return gradfit.sweep(*regression, grid={"l2": [2 * a for a in ALPHAS]}, cv=5, refit=True, **SOLVE)


def test_ridge_folds_equal_sklearn_ridge_per_fold(regression, ridge_sweep):
    X, y = regression
    folds = list(KFold(5).split(X))
    assert ridge_sweep.stats["plan"] == ["stats"] and ridge_sweep.params.W.shape == (4, 5, 5)
    assert [(t.tolist(), v.tolist()) for t, v in ridge_sweep.cv.pairs] == [(t.tolist(), v.tolist()) for t, v in folds]
    for i, alpha in enumerate(ALPHAS):
        for f, (train, val) in enumerate(folds):
            ridge = Ridge(alpha=alpha).fit(X[train], y[train])
            np.testing.assert_allclose(ridge_sweep.params.W[i, f], ridge.coef_, rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(ridge_sweep.cv.scores["loss"][i, f],
                                       mean_squared_error(y[val], ridge.predict(X[val])), rtol=1e-6)
            np.testing.assert_allclose(ridge_sweep.cv.scores["train_loss"][i, f],
                                       mean_squared_error(y[train], ridge.predict(X[train])), rtol=1e-6)
    mean = ridge_sweep.cv.mean["loss"]
    np.testing.assert_allclose(ridge_sweep.cv.std["loss"], np.std(ridge_sweep.cv.scores["loss"], axis=1))
    ref = RidgeCV(alphas=ALPHAS, cv=folds, scoring="neg_mean_squared_error").fit(X, y)
    assert ridge_sweep.best == {"l2": 2 * ref.alpha_} and ridge_sweep.best_index == int(np.argmin(mean))
    np.testing.assert_allclose(-ref.best_score_, mean[ridge_sweep.best_index], rtol=1e-6)
    np.testing.assert_allclose(ridge_sweep.refit.params.W, ref.coef_, rtol=1e-6, atol=1e-9)
    rows = ridge_sweep.rows()
    assert [r["best"] for r in rows] == [i == ridge_sweep.best_index for i in range(4)]
    assert ridge_sweep.table().splitlines()[1].split()[0] == f"{2 * ref.alpha_:g}"  # best first


def test_logistic_folds_equal_sklearn_per_fold(classification):
    X, y = classification
    with jax.enable_x64(True):
        result = gradfit.sweep(X, y, grid={"l2": [1 / c for c in CS]}, cv=5, loss="bce", **SOLVE)
    folds = list(StratifiedKFold(5).split(X, y))  # an int cv with bce is stratified, as check_cv
    assert all(np.array_equal(t, u) and np.array_equal(v, w) for (t, v), (u, w) in zip(result.cv.pairs, folds))
    assert np.all(result.converged)
    for i, C in enumerate(CS):
        for f, (train, val) in enumerate(folds):
            ref = LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(X[train], y[train])
            np.testing.assert_allclose(result.cv.scores["log_loss"][i, f],
                                       log_loss(y[val], ref.predict_proba(X[val])[:, 1]), rtol=1e-6)
            np.testing.assert_allclose(result.cv.scores["accuracy"][i, f], ref.score(X[val], y[val]))
            np.testing.assert_allclose(result.cv.scores["train_loss"][i, f],  # from the lane's objective
                                       log_loss(y[train], ref.predict_proba(X[train])[:, 1]), rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn 1.8's notices about its future defaults
        ref = LogisticRegressionCV(Cs=CS, cv=folds, scoring="neg_log_loss", tol=1e-12, max_iter=10_000).fit(X, y)
    assert result.best == {"l2": 1 / ref.C_[0]}


def test_numpy_folds_equal_sklearn_splitters(rng):
    with pytest.raises(ValueError, match="cv=7 stratified folds need at least 7 samples of some class"):
        _cv.split(7, np.zeros((7, 1)), np.array([0, 1, 0, 1, 0, 1, 0]), loss="bce")
    for m, k in ((10, 3), (103, 5), (9, 7)):
        labels = rng.integers(0, 3, m) if m > 2 * k else np.zeros(m, int)
        labels[:3] = [2, 0, 1]  # every class present; numbered by first appearance
        ours = _cv.split(k, np.zeros((m, 1)), labels, loss="bce")
        for (t, v), (u, w) in zip(ours, StratifiedKFold(k).split(np.zeros(m), labels), strict=True):
            np.testing.assert_array_equal(t, u)
            np.testing.assert_array_equal(v, w)
        for (t, v), (u, w) in zip(_cv.split(k, np.zeros((m, 1)), labels, loss="mse"), KFold(k).split(np.zeros(m)),
                                  strict=True):
            np.testing.assert_array_equal(t, u)
            np.testing.assert_array_equal(v, w)
    splitter = ShuffleSplit(3, test_size=0.25, random_state=0)
    pairs = _cv.split(splitter, np.zeros((40, 2)), np.zeros(40), loss="mse")
    assert [v.tolist() for _, v in pairs] == [w.tolist() for _, w in splitter.split(np.zeros(40))]


# each fold's statistics from its row weights over all rows (one compiled program per shape for every case)
_masked_statistics = jax.jit(jax.vmap(_cv._statistics, in_axes=(Data(None, None, 0),)))


def _masked_folds(pairs, m: int, w=None) -> _cv.Folds:
    w = np.ones(m) if w is None else w
    train, val = np.zeros((len(pairs), m)), np.zeros((len(pairs), m))
    for f, (t, v) in enumerate(pairs):
        train[f, t], val[f, v] = w[t], w[v]
    return _cv.Folds(pairs, train, val)


def _splits(m, labels, rng):
    overlapping = list(ShuffleSplit(4, test_size=0.3, random_state=0).split(np.zeros(m)))  # rows held out twice
    rows = rng.permutation(m)
    incomplete = [(rows[: m // 2], rows[m // 2:]),  # the complement: fast
                  (rows[m // 3:], rows[: m // 4]),  # rows in neither set: masked
                  (rows[40:], rows[:40])]
    # kfold and overlapping: 4 folds each, so their cases share the compiled masked statistics and scoring
    return {"kfold": (list(KFold(4).split(np.zeros(m))), (True,) * 4, True),
            "stratified": (list(StratifiedKFold(4, shuffle=True, random_state=1).split(np.zeros(m), labels)),
                           (True,) * 4, True),
            "overlapping": (overlapping, (True,) * 4, False),
            "incomplete": (incomplete, (True, False, True), True)}


@pytest.mark.parametrize("split, weighted, k", thinned(
    [("kfold", False, None), ("kfold", True, 2), ("stratified", True, None), ("overlapping", False, 2),
     ("incomplete", True, None)], fast=[("kfold", True, 2), ("overlapping", False, 2), ("incomplete", True, None)]))
def test_fold_statistics_from_one_pass_equal_masked_statistics(x64, rng, split, weighted, k):
    """Each fold's statistics from the one pass (total less held-out Grams, one common shift, re-centred) equal the
    masked product over all rows per fold, the rss equals numpy's least squares on the fold's rows, and the MSE
    scores from the held-out statistics equal those from the rows."""
    m, n = 160, 4
    X = rng.standard_normal((m, n)) * [1.0, 3.0, 0.5, 2.0] + [10.0, -4.0, 0.0, 100.0]  # means far from 0
    y = X @ rng.standard_normal((n, k or 1)) + 3.0 + rng.standard_normal((m, k or 1))
    y = y[:, 0] if k is None else y
    w = rng.uniform(0.0, 2.0, m) if weighted else None
    if weighted:
        w[:7] = 0.0  # rows of weight 0 anywhere
    pairs, fast, partition = _splits(m, (y if k is None else y[:, 0]) > np.median(y), rng)[split]
    folds = _cv.padded(_masked_folds(pairs, m, w), m + 3)._replace(memo={})  # a sweep's X may have padding rows
    pad = lambda a: jnp.asarray(np.pad(a, [(0, 3)] + [(0, 0)] * (a.ndim - 1)))  # noqa: E731
    data = Data(pad(X), pad(y))
    layout, segments, _, _ = _cv._layout(folds, 64)
    assert tuple(s >= 0 for s in layout.segment) == fast and layout.partition == partition
    if split == "kfold":
        assert segments.rows.size == m  # every row gathered once: one Gram's work, not F
    stats, _, _ = _cv.fold_statistics(data, folds)
    masked = _masked_statistics(data._replace(sample_weight=jnp.asarray(folds.train)))
    for name in ("count", "x_mean", "y_mean", "gram", "solution", "rss"):
        new, old = np.asarray(getattr(stats, name)), np.asarray(getattr(masked, name))
        assert new.shape == old.shape, name
        np.testing.assert_allclose(new, old, rtol=1e-10, atol=1e-10 * np.max(np.abs(old)), err_msg=name)
    lanes = (3, len(pairs))
    params = gradfit.Params(rng.standard_normal((*lanes, n, *y.shape[1:])), rng.standard_normal((*lanes, *y.shape[1:])))
    ok = np.zeros(lanes, bool)
    by_stats = _cv.score(params, data.X, data.y, folds, "mse", ok)  # from the held-out statistics
    by_rows = _cv.score(params, data.X, data.y, folds._replace(memo=None), "mse", ok)
    for name in ("loss", "train_loss"):
        np.testing.assert_allclose(by_stats[name], by_rows[name], rtol=1e-10, err_msg=name)
    for f, (t, _) in enumerate(pairs):
        root = np.sqrt(folds.train[f, t])[:, None]
        A = np.hstack([X[t], np.ones((len(t), 1))]) * root
        rss = np.linalg.lstsq(A, y[t].reshape(len(t), -1) * root, rcond=None)[1]
        np.testing.assert_allclose(np.reshape(stats.rss[f], -1), rss, rtol=1e-8)
        # The rows' slope at the fold's solution, [X - mu, 1]^T D r (numpy), ~0 here (float64, full rank).
        sol = np.asarray(stats.solution[f]).reshape(n + 1, -1)
        mu, nu = np.asarray(stats.x_mean[f]), np.reshape(np.asarray(stats.y_mean[f]), -1)
        r = (X[t] - mu) @ sol[:n] + sol[n] - (y[t].reshape(len(t), -1) - nu)
        slope = np.hstack([X[t] - mu, np.ones((len(t), 1))]).T @ (folds.train[f, t][:, None] * r)
        np.testing.assert_allclose(np.asarray(stats.gradient[f]).reshape(n + 1, -1), slope,
                                   atol=1e-9 * np.abs(X).max() * np.abs(r).sum())
    assert _stats.exact_rank(stats)


def test_weighted_folds_diverged_member_and_one_compile(regression, compile_counter):
    """Row weights multiply the fold masks; a diverged member scores NaN, is never best, and leaves the other
    member equal to fits on each fold's rows; a second sweep of new values compiles nothing."""
    X, y = (a.astype(np.float32) for a in regression)
    w = np.random.default_rng(1).uniform(0.5, 2.0, len(X)).astype(np.float32)
    folds = list(KFold(4, shuffle=True, random_state=0).split(X))
    opts = dict(l2=0.1, steps=300, tol=1e-4, grad="hand", sample_weight=w, compact=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the diverged member's fits warn
        result = gradfit.sweep(X, y, grid={"learning_rate": [0.1, 1e6]}, cv=folds, **opts)
        before = compile_counter.count
        again = gradfit.sweep(X, y, grid={"learning_rate": [0.2, 3e6]}, cv=folds, **opts)
    assert compile_counter.count == before  # the cross-validated grid's programs are reused
    assert result.stats["programs"] == 3 and again.stats["programs"] == 0  # init, chunk, final check: once
    assert result.diverged[1].all() and np.isnan(result.cv.scores["loss"][1]).all()
    assert result.best == {"learning_rate": 0.1} and np.isfinite(result.cv.scores["loss"][0]).all()
    opts.pop("compact"), opts.pop("sample_weight")
    for f, (train, val) in enumerate(folds):
        fit = gradfit.fit(X[train], y[train], learning_rate=0.1, sample_weight=w[train], **opts)
        assert fit.steps == result.steps[0, f] and fit.status == result.status[0, f]
        np.testing.assert_allclose(result.params.W[0, f], fit.params.W, rtol=1e-4, atol=1e-5)
        r = y[val] - X[val] @ np.asarray(fit.params.W, np.float64) - float(fit.params.b)
        np.testing.assert_allclose(result.cv.scores["loss"][0, f], np.sum(w[val] * r**2) / np.sum(w[val]), rtol=1e-4)
        r = y[train] - X[train] @ np.asarray(fit.params.W, np.float64) - float(fit.params.b)
        np.testing.assert_allclose(result.cv.scores["train_loss"][0, f],
                                   np.sum(w[train] * r**2) / np.sum(w[train]), rtol=1e-4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(cv=1), "at least 2 folds"),
    (dict(cv=500), "cv=500 folds need at least 500 samples, got 200 samples"),
    (dict(cv=True), "cv=True is not an int, a splitter or a list"),
    (dict(cv="five"), "is not an int, a splitter or a list"),
    (dict(cv=[(np.arange(0, 150), np.arange(140, 200))]), "both training and validation rows"),
    (dict(cv=[(np.arange(0, 150), np.arange(150, 201))]), "index 200 is out of range for 200 rows"),
    (dict(cv=[(np.arange(0, 150), np.array([], int))]), "has no validation rows"),
    (dict(cv=[(np.arange(0, 150), np.array([160, 160]))]), "repeat a row"),
    (dict(cv=[(np.arange(100), np.arange(100, 200))], sample_weight=np.r_[np.zeros(100), np.ones(100)]),
     "training rows of total sample_weight 0"),
    (dict(cv=5, devices=[0, 0]), "devices"),
    (dict(refit=True), "refit=True fits the best cross-validated member"),
])
def test_bad_cv_raises_before_compute(regression, monkeypatch, kwargs, message):
    monkeypatch.setattr(gradfit.solver, "build", lambda *a, **k: pytest.fail("compute started"))
    with pytest.raises(ValueError, match=None) as info:
        gradfit.sweep(*regression, grid={"l2": [0.0, 1.0]}, **kwargs)
    assert message in str(info.value)


def test_bce_training_fold_of_one_class_is_refused(classification, monkeypatch):
    X, y = classification
    order = np.argsort(y, kind="stable")  # unshuffled KFold on sorted labels: a fold of one class
    monkeypatch.setattr(gradfit.solver, "build", lambda *a, **k: pytest.fail("compute started"))
    with pytest.raises(ValueError, match="training rows hold 1 class only"):
        gradfit.sweep(X[order], y[order], grid={"l2": [1.0]}, loss="bce", cv=KFold(2))


def test_regressor_cv_matches_ridgecv_in_a_pipeline(regression):
    X, y = regression
    folds = list(KFold(5).split(X))
    ours = make_pipeline(StandardScaler(), GDRegressorCV(alphas=ALPHAS, cv=folds, optimizer="sgd", learning_rate="auto",
                                                         max_iter=3000, tol=1e-9)).fit(X, y)
    ref = make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS, cv=folds, scoring="neg_mean_squared_error")).fit(X, y)
    est, rcv = ours[-1], ref[-1]
    assert est.alpha_ == rcv.alpha_ and est.best_params_ == {"alpha": rcv.alpha_}
    np.testing.assert_allclose(est.best_score_, rcv.best_score_, rtol=1e-6)
    np.testing.assert_allclose(est.coef_, rcv.coef_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ours.predict(X), ref.predict(X), rtol=1e-6, atol=1e-9)
    assert est.cv_results_["rank_test_score"][ALPHAS.index(est.alpha_)] == 1
    assert set(est.cv_results_) >= {"params", "param_alpha", "split4_test_score", "mean_test_score", "std_test_score"}
    r2 = GDRegressorCV(alphas=ALPHAS, cv=folds, scoring="r2", optimizer="sgd", learning_rate="auto", max_iter=3000,
                       tol=1e-9).fit(X, y)  # a scorer per fold on the host: the same lanes
    assert r2.alpha_ == RidgeCV(alphas=ALPHAS, cv=folds).fit(X, y).alpha_


def test_classifier_cv_matches_logistic_regression_cv(classification):
    X, y = classification
    folds = list(StratifiedKFold(5).split(X, y))
    est = GDClassifierCV(Cs=CS, cv=5, optimizer="sgd", learning_rate="auto", max_iter=3000, tol=1e-9).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ref = LogisticRegressionCV(Cs=CS, cv=folds, scoring="neg_log_loss", tol=1e-12, max_iter=10_000).fit(X, y)
    assert est.C_.tolist() == ref.C_.tolist() and est.best_params_ == {"C": ref.C_[0]}
    np.testing.assert_allclose(est.cv_results_["mean_test_score"], ref.scores_[1].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(est.predict(X), ref.predict(X))


@pytest.mark.slow
@pytest.mark.parametrize("estimator", [GDRegressorCV(), GDClassifierCV(Cs=3, optimizer="sgd", learning_rate="auto", max_iter=300)],
                         ids=lambda e: type(e).__name__)
def test_cv_estimators_pass_check_estimator(estimator):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.utils.estimator_checks import check_estimator

    # weights as repeated rows: repeating rows changes the folds, as for RidgeCV and LogisticRegressionCV
    xfail = {"check_sample_weight_equivalence_on_dense_data": "folds split repeated rows differently"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check_estimator(estimator, expected_failed_checks=xfail)


# the data and settings of ridge_sweep: its compiled programs serve the command's sweep
CONFIG = """
[data]
source = "synthetic"
n_samples = 200
n_features = 5
seed = 4
dtype = "float64"

[fit]
steps = 3000
tol = 1e-9
reduction = "sum"
learning_rate = "auto"

[sweep]
grid = {{ l2 = [0.02, 2.0, 60.0, 2000.0] }}
{validation}

[output]
dir = "{out}"
"""


@pytest.mark.parametrize("validation, folds", [("cv = 5\nplot = true", 5), ("validation_fraction = 0.25\nplot = false", 1)])
def test_cli_sweep_with_cv_writes_scores_and_validation_curve(tmp_path, ridge_sweep, validation, folds):
    if folds > 1:
        pytest.importorskip("matplotlib")
    out, config = tmp_path / "run", tmp_path / "sweep.toml"
    config.write_text(CONFIG.format(out=out.as_posix(), validation=validation))
    assert cli.main(["sweep", "--config", str(config)]) == 0
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {"val_loss", "val_loss_std", "train_loss", "best"} <= set(rows[0])
    d = datasets.make_regression(200, 5, seed=4, dtype=np.float64)
    pairs = list(KFold(5).split(d.X)) if folds == 5 else _cv.holdout(200, 0.25, 4)
    val = [[mean_squared_error(d.y[v], Ridge(alpha=float(r["l2"]) / 2).fit(d.X[t], d.y[t]).predict(d.X[v]))
            for t, v in pairs] for r in rows]
    np.testing.assert_allclose([float(r["val_loss"]) for r in rows], np.mean(val, axis=1), rtol=1e-6)
    assert [r["best"] for r in rows] == [str(i == int(np.argmin(np.mean(val, axis=1)))) for i in range(4)]
    assert (out / "validation_curve.png").is_file() == (folds > 1)
    with np.load(out / "histories.npz") as h:
        assert h["val_loss"].shape == (4, folds) and h["losses"].ndim == 2


def test_config_refuses_bad_validation(tmp_path):
    out, config = tmp_path / "run", tmp_path / "sweep.toml"
    config.write_text(CONFIG.format(out=out.as_posix(), validation="cv = 1"))
    assert cli.main(["sweep", "--config", str(config)]) == 2
    assert not out.exists()


def test_lbfgs_lanes_are_never_compacted_so_the_grid_compiles_one_step_program(regression):
    """L-BFGS lanes run one after another, where a finished lane costs nothing: chunks of one step (lanes finishing
    at different chunks) still run every lane in the one program, in one member chunk, and the grid equals the
    compacting-free sweep."""
    X, y = (a.astype(np.float32) for a in regression)
    opts = dict(optimizer="lbfgs", grad="hand", steps=200, tol=1e-5, chunk_size=1)
    grid = {"l2": [1e-3, 1e-1, 10.0]}
    # a memory budget that vmapped members' temporaries over the rows would overflow: lanes hold theirs in turn
    result = gradfit.sweep(X, y, grid=grid, cv=3, memory_budget=8192, **opts)
    assert len(set(np.asarray(result.steps).ravel().tolist())) > 1  # lanes finished at different chunks
    assert result.stats["member_chunks"] == 1 and set(result.stats["batch_sizes"]) == {3}
    assert result.stats["programs"] <= 3  # init, chunk, final check: once for the grid
    fixed = gradfit.sweep(X, y, grid=grid, cv=3, compact=False, **opts)
    np.testing.assert_array_equal(result.params.W, fixed.params.W)
    # the scoring is chunked by the memory budget: float32 sums in another order
    np.testing.assert_allclose(result.cv.scores["loss"], fixed.cv.scores["loss"], rtol=1e-6)
