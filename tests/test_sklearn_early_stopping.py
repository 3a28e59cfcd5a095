"""GDRegressor / GDClassifier with early_stopping, validation_fraction and n_iter_no_change: against gradfit.fit on
the same split, losses written in numpy, and scikit-learn's own SGD defaults and conformance checks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_iris, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import SGDClassifier, SGDRegressor  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import check_estimator  # noqa: E402

import gradfit  # noqa: E402
from gradfit import _heldout  # noqa: E402
from gradfit.sklearn import GDClassifier, GDRegressor  # noqa: E402

NEW = ("early_stopping", "validation_fraction", "n_iter_no_change")


@pytest.fixture(scope="module")
def regression():
    X, y = make_regression(300, 8, noise=30.0, random_state=0)
    return StandardScaler().fit_transform(X), y


@pytest.fixture(scope="module")
def binary():
    X, y = load_breast_cancer(return_X_y=True)
    return StandardScaler().fit_transform(X[:400]), y[:400]


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def _log_loss(coef, intercept, X, t) -> float:
    z = X @ np.ravel(coef) + float(np.ravel(intercept)[0])
    return float(np.mean(np.logaddexp(0, z) - t * z))


# --------------------------------------------------------------------------- the same fit as gradfit.fit
def test_regressor_early_stopping_is_gradfit_fit_on_its_split(regression, x64):
    X, y = regression
    opts = dict(optimizer="adam", learning_rate=1.0, tol=None, alpha=1e-4)  # overshoots: the held-out loss turns up
    est = GDRegressor(max_iter=500, early_stopping=True, validation_fraction=0.2, n_iter_no_change=4, random_state=7,
                      **opts).fit(X, y)
    ref = gradfit.fit(X, y, loss="mse", reduction="half_mean", optimizer="adam", learning_rate=1.0, tol=None,
                      l2=1e-4, steps=500, early_stopping=True, validation_fraction=0.2, n_iter_no_change=4, seed=7)
    assert ref.status == "early_stopped" and est.n_iter_ == ref.steps < 500
    np.testing.assert_allclose(est.coef_, ref.params.W, rtol=1e-10)
    assert est.intercept_ == pytest.approx(float(ref.params.b), rel=1e-10)
    np.testing.assert_allclose(est.validation_losses_, ref.validation_losses, rtol=1e-10)
    assert est.validation_losses_.shape == (est.n_iter_,)
    # independently: half the mean squared error of coef_ on the held-out rows (an unstratified seeded split)
    train, held = _heldout.split_rows(y, 0.2, 7, stratify=False)
    resid = y[held] - X[held] @ est.coef_ - est.intercept_
    assert est.best_validation_loss_ == pytest.approx(0.5 * np.mean(resid**2), rel=1e-9)
    assert est.best_validation_loss_ == pytest.approx(np.min(est.validation_losses_), rel=1e-12)
    assert len(held) == 60 and np.union1d(train, held).size == len(y)


def test_sample_weights_are_split_with_their_rows(regression, x64):
    X, y = regression
    w = np.random.default_rng(0).uniform(0.2, 3.0, len(y))
    est = GDRegressor(optimizer="adam", learning_rate=1.0, tol=None, max_iter=300, early_stopping=True,
                      random_state=5).fit(X, y, sample_weight=w)
    ref = gradfit.fit(X, y, sample_weight=w, optimizer="adam", learning_rate=1.0, tol=None, l2=1e-4,
                      reduction="half_mean", steps=300, early_stopping=True, validation_fraction=0.1, seed=5)
    assert est.n_iter_ == ref.steps < 300
    np.testing.assert_allclose(est.coef_, ref.params.W, rtol=1e-10)
    _, held = _heldout.split_rows(y, 0.1, 5, stratify=False)  # the weighted half-MSE of coef_ on the held-out rows
    resid = y[held] - X[held] @ est.coef_ - est.intercept_
    assert est.best_validation_loss_ == pytest.approx(0.5 * np.sum(w[held] * resid**2) / np.sum(w[held]), rel=1e-9)


def test_multioutput_regressor_validates_the_joint_loss(regression, x64):
    X, y = regression
    Y = np.stack([y, -0.5 * y + 20 * X[:, 0]], axis=1)
    est = GDRegressor(optimizer="adam", learning_rate=1.0, tol=None, max_iter=300, early_stopping=True,
                      random_state=2).fit(X, Y)
    ref = gradfit.fit(X, Y, optimizer="adam", learning_rate=1.0, tol=None, l2=1e-4, reduction="half_mean", steps=300,
                      early_stopping=True, validation_fraction=0.1, seed=2)
    assert est.coef_.shape == (2, X.shape[1]) and est.n_iter_ == ref.steps
    np.testing.assert_allclose(est.coef_, np.asarray(ref.params.W).T, rtol=1e-10)
    np.testing.assert_allclose(est.validation_losses_, ref.validation_losses, rtol=1e-10)


def test_binary_classifier_early_stopping_is_gradfit_fit_on_a_stratified_split(binary, x64):
    X, y = binary
    labels = np.array(["benign", "malignant"])[1 - y]  # classes_[1] is "malignant", i.e. y == 0
    est = GDClassifier(optimizer="adam", learning_rate=0.3, tol=1e-8, max_iter=500, early_stopping=True,
                       validation_fraction=0.2, random_state=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # early-stopped: no "did not converge" warning
        est.fit(X, labels)
    t = (labels == "malignant").astype(np.float64)
    ref = gradfit.fit(X, t, loss="bce", optimizer="adam", learning_rate=0.3, tol=1e-8, l2=1e-4, steps=500,
                      early_stopping=True, validation_fraction=0.2, n_iter_no_change=5, seed=3)
    assert ref.status == "early_stopped" and est.n_iter_ == ref.steps < 500
    np.testing.assert_allclose(est.coef_, np.asarray(ref.params.W)[None], rtol=1e-10)
    np.testing.assert_allclose(est.intercept_, [float(ref.params.b)], rtol=1e-10)
    np.testing.assert_allclose(est.validation_losses_, ref.validation_losses, rtol=1e-10)
    _, held = _heldout.split_rows(labels, 0.2, 3, stratify=True)
    assert abs(t[held].mean() - t.mean()) < 0.01  # stratified
    assert est.best_validation_loss_ == pytest.approx(_log_loss(est.coef_, est.intercept_, X[held], t[held]),
                                                      rel=1e-9)


def test_multiclass_early_stops_each_one_vs_rest_problem_on_its_own(iris, x64):
    X, y = iris
    est = GDClassifier(optimizer="adam", learning_rate=0.3, tol=None, max_iter=200, early_stopping=True,
                       validation_fraction=0.2, random_state=1).fit(X, y)
    train, held = _heldout.split_rows(y, 0.2, 1, stratify=True)  # one split, stratified by the three classes
    assert np.bincount(y[held]).tolist() == [10, 10, 10]
    steps = []
    for j in range(3):
        t = (y == j).astype(np.float64)
        ref = gradfit.fit(X[train], t[train], loss="bce", optimizer="adam", learning_rate=0.3, tol=None, l2=1e-4,
                          steps=200, early_stopping=True, validation=(X[held], t[held]), seed=1)
        np.testing.assert_allclose(est.coef_[j], ref.params.W, rtol=1e-10)
        assert est.intercept_[j] == pytest.approx(float(ref.params.b), rel=1e-10)
        np.testing.assert_allclose(est.validation_losses_[j, :ref.steps], ref.validation_losses, rtol=1e-10)
        assert np.isnan(est.validation_losses_[j, ref.steps:]).all()
        assert est.best_validation_loss_[j] == pytest.approx(
            _log_loss(est.coef_[j], est.intercept_[j], X[held], t[held]), rel=1e-9)
        steps.append(ref.steps)
    assert min(steps) < 200 and est.n_iter_ == max(steps)  # one class stopped early, as SGDClassifier: the most
    assert est.validation_losses_.shape == (3, est.n_iter_) and est.score(X, y) > 0.85


# --------------------------------------------------------------------------- off: nothing changes
def test_without_early_stopping_the_split_options_are_unused(regression, iris, x64):
    X, y = regression
    plain = GDRegressor(max_iter=40, tol=None, random_state=0).fit(X, y)
    other = GDRegressor(max_iter=40, tol=None, random_state=0, validation_fraction=0.5, n_iter_no_change=1).fit(X, y)
    ref = gradfit.fit(X, y, optimizer="sgd", learning_rate=0.1, steps=40, tol=None, l2=1e-4, reduction="half_mean")
    np.testing.assert_allclose(plain.coef_, ref.params.W, rtol=1e-10)
    np.testing.assert_array_equal(plain.coef_, other.coef_)
    assert plain.n_iter_ == 40 and plain.validation_losses_ is None and plain.best_validation_loss_ is None
    clf = GDClassifier(max_iter=30, tol=None).fit(*iris)
    assert clf.validation_losses_ is None and clf.n_iter_ == 30


# --------------------------------------------------------------------------- the scikit-learn surface
@pytest.mark.parametrize("ours, sgd", [(GDRegressor, SGDRegressor), (GDClassifier, SGDClassifier)])
def test_defaults_are_sgds_and_params_round_trip(ours, sgd):
    assert {k: ours().get_params()[k] for k in NEW} == {k: sgd().get_params()[k] for k in NEW}
    est = ours(early_stopping=True, validation_fraction=0.25, n_iter_no_change=3)
    assert {k: clone(est).get_params()[k] for k in NEW} == dict(zip(NEW, (True, 0.25, 3)))
    est.set_params(early_stopping=False, n_iter_no_change=9)
    assert (est.early_stopping, est.validation_fraction, est.n_iter_no_change) == (False, 0.25, 9)


@pytest.mark.slow  # 9 s; tests/test_sklearn.py already runs the estimators in a Pipeline inside GridSearchCV
def test_grid_search_over_early_stopping_in_a_pipeline(binary):
    X, y = binary
    pipe = make_pipeline(StandardScaler(), GDClassifier(optimizer="adam", learning_rate=0.3, max_iter=200, tol=None,
                                                        early_stopping=True, random_state=0))
    grid = GridSearchCV(pipe, {"gdclassifier__n_iter_no_change": [2, 5],
                               "gdclassifier__validation_fraction": [0.1, 0.2]}, cv=3).fit(X, y)
    best = grid.best_estimator_.named_steps["gdclassifier"]
    assert best.n_iter_no_change == grid.best_params_["gdclassifier__n_iter_no_change"]
    assert best.n_iter_ < 200 and best.validation_losses_.shape == (best.n_iter_,)
    assert grid.best_score_ > 0.9


@pytest.mark.parametrize("options, match", [
    (dict(early_stopping="yes"), "early_stopping must be True or False"),
    (dict(validation_fraction=0.0), r"validation_fraction must be a float in \(0, 1\)"),
    (dict(validation_fraction=1.0), r"validation_fraction must be a float in \(0, 1\)"),
    (dict(validation_fraction="0.1"), "validation_fraction must be a float"),
    (dict(n_iter_no_change=0), "n_iter_no_change must be a positive integer"),
    (dict(n_iter_no_change=2.5), "n_iter_no_change must be a positive integer"),
])
def test_bad_early_stopping_parameters_name_the_fix(options, match, compile_counter):
    X, y = make_regression(20, 2, random_state=0)
    for est in (GDRegressor(**options), GDClassifier(**options)):
        with pytest.raises(ValueError, match=match):
            est.fit(X, y if isinstance(est, GDRegressor) else y > 0)
    assert compile_counter.count == 0  # refused before any compute


def test_validation_rows_without_weight_and_one_sample_are_refused(iris):
    X, y = iris
    _, held = _heldout.split_rows(y, 0.1, 0, stratify=True)
    w = np.ones(len(y))
    w[held] = 0.0
    with pytest.raises(ValueError, match="validation rows are all zero"):
        GDClassifier(early_stopping=True, random_state=0).fit(X, y, sample_weight=w)
    with pytest.raises(ValueError, match="n_samples=1"):
        GDRegressor(early_stopping=True).fit(X[:1], y[:1].astype(float))


@pytest.mark.slow
@pytest.mark.parametrize("estimator", [GDRegressor(early_stopping=True, random_state=0),
                                       GDClassifier(early_stopping=True, random_state=0)],
                         ids=lambda e: type(e).__name__)
def test_early_stopping_estimators_pass_check_estimator(estimator):
    # weights as repeated rows: a repeated row and a weighted one are held out differently (as SGD's early stopping)
    xfail = {"check_sample_weight_equivalence_on_dense_data": "the split holds out repeated rows differently"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check_estimator(estimator, expected_failed_checks=xfail)
