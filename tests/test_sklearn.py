"""gradfit.sklearn: scikit-learn's conformance suite, and fitted results against scikit-learn's
own Ridge / LinearRegression / LogisticRegression at the matching penalty."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.multiclass import OneVsRestClassifier  # noqa: E402
from sklearn.pipeline import make_pipeline, Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import (  # noqa: E402
    check_sample_weight_equivalence_on_dense_data,
    parametrize_with_checks,
)

from gradfit.sklearn import GDClassifier, GDRegressor  # noqa: E402

# The default suite runs each check of scikit-learn's suite at least once (-m slow: every one on both estimators).
# A check that both estimators get runs on one of them here when it asserts the same of both (their shared base:
# parameters, input validation, sample-weight plumbing, determinism) and the other one's run would compile programs
# of its own; the classifier is kept where a check goes through every prediction method (it has three).
# check_sample_weight_equivalence_on_dense_data runs on both in test_sample_weight_equivalence_in_float64.
_ON_THE_REGRESSOR = {"check_fit_score_takes_y", "check_dont_overwrite_parameters", "check_sample_weights_list",
                     "check_dtype_object", "check_f_contiguous_array_estimator"}
_ON_THE_CLASSIFIER = {"check_estimators_overwrite_params", "check_estimators_fit_returns_self",
                      "check_readonly_memmap_input", "check_sample_weights_not_an_array", "check_sample_weights_shape",
                      "check_sample_weights_not_overwritten", "check_estimators_dtypes", "check_fit2d_1feature",
                      "check_fit_idempotent", "check_fit_check_is_fitted", "check_n_features_in",
                      "check_methods_sample_order_invariance", "check_methods_subset_invariance",
                      "check_dict_unchanged", "check_fit2d_predict1d"}
_IN_FLOAT64_TEST = {"check_sample_weight_equivalence_on_dense_data"}


def _conformance_cases() -> list:
    """parametrize_with_checks's (estimator, check) pairs and test ids, those left out above marked slow."""
    mark = parametrize_with_checks([GDRegressor(), GDClassifier()])  # float64 input is fitted in float64: no xfail
    ids = mark.kwargs["ids"]
    cases = []
    for estimator, check in mark.args[1]:
        name = ids(check).split("(")[0]
        other = _ON_THE_CLASSIFIER if isinstance(estimator, GDRegressor) else _ON_THE_REGRESSOR
        slow = name in other or name in _IN_FLOAT64_TEST
        cases.append(pytest.param(estimator, check, id=f"{ids(estimator)}-{ids(check)}",
                                  marks=pytest.mark.slow if slow else ()))
    return cases


@pytest.mark.parametrize("estimator, check", _conformance_cases())
def test_sklearn_conformance(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


@pytest.mark.parametrize("estimator", [GDRegressor(), GDClassifier()], ids=["GDRegressor", "GDClassifier"])
def test_sample_weight_equivalence_in_float64(estimator):
    with jax.enable_x64(True), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check_sample_weight_equivalence_on_dense_data(type(estimator).__name__, estimator)


# --------------------------------------------------------------------------- references
def _rel(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def diabetes():
    """250 of the 442 rows: padded to 256 rows like the conformance checks' data, whose programs (10 features,
    float64) serve these fits too."""
    X, y = load_diabetes(return_X_y=True)
    return StandardScaler().fit_transform(X[:250]), y[:250]


@pytest.fixture(scope="module")
def breast_cancer():
    X, y = load_breast_cancer(return_X_y=True)
    return StandardScaler().fit_transform(X), y


@pytest.mark.parametrize(
    "params, reference",
    [
        # lbfgs reaches the exact optimum; alpha = 0 is ordinary least squares. tol is the
        # optimality test G <= tol (G^2 ~ the relative gap to the optimum): 1e-5 is within float32's
        # reach here (G bottoms out near 1.2e-6 on the data), so the fit converges, without a warning.
        (dict(optimizer="lbfgs", learning_rate=None, alpha=0.0, tol=1e-5), lambda m: LinearRegression()),
        # half_mean: Ridge(alpha * m).
        (dict(optimizer="lbfgs", learning_rate=None, alpha=0.01, tol=1e-5), lambda m: Ridge(alpha=0.01 * m)),
        # Plain gradient descent on a well-conditioned (penalised) problem.
        (dict(alpha=0.1, max_iter=2000, tol=None), lambda m: Ridge(alpha=0.1 * m)),
        # mean: Ridge(alpha * m / 2).
        (dict(alpha=0.1, max_iter=2000, tol=None, reduction="mean"), lambda m: Ridge(alpha=0.1 * m / 2)),
    ],
    ids=["lbfgs-ols", "lbfgs-ridge", "sgd-ridge-half_mean", "sgd-ridge-mean"],
)
def test_regressor_matches_sklearn(diabetes, params, reference):
    X, y = diabetes
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # with a tol: converged
        ours = GDRegressor(**params).fit(X, y)
    ref = reference(len(X)).fit(X, y)
    assert _rel(ours.coef_, ref.coef_) < 1e-3
    assert abs(ours.intercept_ - ref.intercept_) < 1e-3 * abs(ref.intercept_)
    np.testing.assert_allclose(ours.predict(X), ref.predict(X), rtol=1e-3)
    assert ours.score(X, y) == pytest.approx(ref.score(X, y), rel=1e-4)


def test_multioutput_regressor_matches_ridge(diabetes):
    X, y = diabetes
    # 5 outputs, as check_regressor_multioutput's: its statistics' program serves this fit too
    Y = np.stack([y, -0.5 * y + 10 * X[:, 0], X[:, 1], y * X[:, 2], X[:, 3] - 2 * X[:, 4]], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # converged: G <= 1e-5 (float32 reaches ~1e-6)
        ours = GDRegressor(optimizer="lbfgs", learning_rate=None, alpha=0.01, tol=1e-5).fit(X, Y)
    ref = Ridge(alpha=0.01 * len(X)).fit(X, Y)
    assert ours.coef_.shape == ref.coef_.shape == (5, X.shape[1])
    assert ours.intercept_.shape == (5,)
    assert _rel(ours.coef_, ref.coef_) < 1e-3
    assert _rel(ours.intercept_, ref.intercept_) < 1e-3
    assert ours.predict(X).shape == (len(X), 5)


def test_sample_weight_matches_ridge(diabetes):
    X, y = diabetes
    w = np.random.default_rng(0).uniform(0.2, 3.0, len(X))
    # With weights, "half_mean" divides by sum(w): Ridge(alpha * sum(w)).
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # converged: G <= 1e-5 (float32 reaches ~1e-6)
        ours = GDRegressor(optimizer="lbfgs", learning_rate=None, alpha=0.01, tol=1e-5).fit(X, y, sample_weight=w)
    ref = Ridge(alpha=0.01 * w.sum()).fit(X, y, sample_weight=w)
    assert _rel(ours.coef_, ref.coef_) < 1e-3
    assert abs(ours.intercept_ - ref.intercept_) < 1e-3 * abs(ref.intercept_)


@pytest.mark.parametrize(
    "params",
    [
        # tol: the optimality test, G <= 1e-6 (reached in float32 here; 1e-10 is not)
        dict(optimizer="lbfgs", learning_rate=None, alpha=None, tol=1e-6),
        dict(alpha=0.01, learning_rate=1.0, max_iter=3000, tol=None),
    ],
    ids=["lbfgs", "sgd"],
)
def test_binary_classifier_matches_logistic_regression(breast_cancer, params):
    X, y = breast_cancer
    m = len(X)
    params = dict(params)
    alpha = params.pop("alpha") or 1 / m  # LogisticRegression's default C=1
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # with a tol: converged
        ours = GDClassifier(alpha=alpha, **params).fit(X, y)
    ref = LogisticRegression(C=1 / (alpha * m), tol=1e-10, max_iter=10_000).fit(X, y)
    assert ours.coef_.shape == ref.coef_.shape == (1, X.shape[1])
    assert ours.intercept_.shape == (1,)
    assert _rel(ours.coef_, ref.coef_) < 1e-3
    assert _rel(ours.intercept_, ref.intercept_) < 1e-3
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-3)
    np.testing.assert_allclose(ours.decision_function(X), ref.decision_function(X), rtol=1e-2, atol=1e-3)
    assert (ours.predict(X) == ref.predict(X)).mean() > 0.99


@pytest.mark.parametrize(
    # lbfgs: tol is the optimality test, G <= 1e-6 (reached in float32 here; 1e-10 is not)
    "params", [dict(optimizer="lbfgs", learning_rate=None, tol=1e-6), dict(learning_rate=1.0, max_iter=2000, tol=None)],
    ids=["lbfgs", "sgd"],
)
def test_multiclass_is_one_vs_rest_logistic_regression(params):
    X, y = load_iris(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    names = np.array(["setosa", "versicolor", "virginica"])[y]  # string labels
    alpha = 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # with a tol: converged
        ours = GDClassifier(alpha=alpha, **params).fit(X, names)
    ref = OneVsRestClassifier(LogisticRegression(C=1 / (alpha * len(X)), tol=1e-10, max_iter=10_000)).fit(X, names)
    ref_coef = np.vstack([e.coef_ for e in ref.estimators_])
    ref_intercept = np.hstack([e.intercept_ for e in ref.estimators_])
    np.testing.assert_array_equal(ours.classes_, ref.classes_)
    assert ours.coef_.shape == (3, X.shape[1]) and ours.intercept_.shape == (3,)
    assert _rel(ours.coef_, ref_coef) < 1e-3
    assert _rel(ours.intercept_, ref_intercept) < 1e-3
    proba = ours.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(proba, ref.predict_proba(X), atol=1e-3)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
    assert ours.decision_function(X).shape == (len(X), 3)


# --------------------------------------------------------------------------- the ecosystem
def test_pipeline_and_grid_search():
    X, y = load_breast_cancer(return_X_y=True)
    pipe = Pipeline([("scale", StandardScaler()), ("gd", GDClassifier(max_iter=300, tol=None))])
    grid = GridSearchCV(pipe, {"gd__alpha": [1e-4, 1e-1], "gd__learning_rate": [0.05, 0.5]}, cv=3)
    grid.fit(X, y)
    assert set(grid.best_params_) == {"gd__alpha", "gd__learning_rate"}
    assert grid.best_score_ > 0.95
    assert grid.score(X, y) > 0.95
    # The refitted best estimator is the plain estimator with the chosen parameters.
    best = grid.best_estimator_.named_steps["gd"]
    assert best.alpha == grid.best_params_["gd__alpha"]
    assert best.learning_rate == grid.best_params_["gd__learning_rate"]

    Xr, yr = make_regression(200, 4, noise=1.0, random_state=0)  # 4 features: programs other tests here compile
    reg = GridSearchCV(make_pipeline(StandardScaler(), GDRegressor(max_iter=500, tol=None)), {"gdregressor__alpha": [0.0, 1.0]}, cv=3)
    reg.fit(Xr, yr)
    assert reg.best_params_ == {"gdregressor__alpha": 0.0}
    assert reg.score(Xr, yr) > 0.99


def test_predict_compiles_nothing():
    X, y = make_regression(100, 4, noise=0.1, random_state=0)
    est = GDRegressor(max_iter=50, tol=None).fit(X, y)
    events = []

    def listener(name, seconds, **kwargs):
        if name.endswith("backend_compile_duration"):
            events.append(name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        jax.jit(lambda a: a * 3 + 1)(jnp.ones(7))  # the listener does see compiles
        assert events, "the compile listener saw no compile: the test cannot detect one"
        events.clear()
        for m in (1, 7, 100, 513):
            pred = est.predict(np.random.default_rng(m).standard_normal((m, 4)))
            assert isinstance(pred, np.ndarray) and pred.shape == (m,)
        assert events == []
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_predict_is_the_linear_formula():
    X, y = load_iris(return_X_y=True)
    clf = GDClassifier(max_iter=100, tol=None).fit(X, y)
    z = X @ clf.coef_.T + clf.intercept_
    np.testing.assert_allclose(clf.decision_function(X), z, rtol=1e-6)
    p = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(clf.predict_proba(X), p / p.sum(1, keepdims=True), rtol=1e-6)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[z.argmax(1)])
    np.testing.assert_allclose(clf.predict_log_proba(X), np.log(clf.predict_proba(X)), rtol=1e-6)


def test_convergence_warning_and_n_iter(diabetes):
    X, y = diabetes
    with pytest.warns(ConvergenceWarning, match="max_iter=5"):
        est = GDRegressor(max_iter=5, tol=1e-8).fit(X, y)
    assert est.n_iter_ == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        # tol is the optimality test G <= tol: 1e-5 is reached in float32 (G bottoms out near
        # 1.2e-6 on these data, so tol=1e-6 ends "stalled away from the optimum", with a warning)
        est = GDRegressor(optimizer="lbfgs", learning_rate=None, max_iter=200, tol=1e-5).fit(X, y)
        assert est.n_iter_ < 200
        GDRegressor(max_iter=5, tol=None).fit(X, y)  # tol=None: no test, no warning


def test_warm_start_continues_gradient_descent():
    X, y = make_regression(80, 3, noise=0.5, random_state=1)
    X = StandardScaler().fit_transform(X)
    # Plain sgd has no optimizer state, so 30 + 20 warm-started steps are 50 steps.
    est = GDRegressor(max_iter=30, tol=None, warm_start=True).fit(X, y)
    est.set_params(max_iter=20).fit(X, y)
    one = GDRegressor(max_iter=50, tol=None).fit(X, y)
    np.testing.assert_allclose(est.coef_, one.coef_, rtol=1e-5)
    np.testing.assert_allclose(est.intercept_, one.intercept_, rtol=1e-5)
    cold = GDRegressor(max_iter=20, tol=None).fit(X, y)
    assert not np.allclose(cold.coef_, one.coef_, rtol=1e-3)
    with pytest.raises(ValueError, match="warm_start=False"):
        est.fit(X[:, :2], y)

    clf = GDClassifier(max_iter=10, tol=None, warm_start=True).fit(X, y > 0)
    with pytest.raises(ValueError, match="classes"):
        clf.fit(X, np.digitize(y, [-50, 50]))


def test_minibatches_and_random_state():
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    a = GDClassifier(batch_size=64, max_iter=20, tol=None, random_state=0).fit(X, y)
    b = GDClassifier(batch_size=64, max_iter=20, tol=None, random_state=0).fit(X, y)
    c = GDClassifier(batch_size=64, max_iter=20, tol=None, random_state=1).fit(X, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert not np.array_equal(a.coef_, c.coef_)
    assert a.score(X, y) > 0.95
    with pytest.warns(UserWarning, match="batch_size=1000 is larger"):
        GDClassifier(batch_size=1000, max_iter=5, tol=None).fit(X, y)


def test_verbose_prints_between_chunks(capsys):
    X, y = make_regression(50, 3, random_state=0)
    GDRegressor(max_iter=10, tol=None, verbose=1).fit(X, y)
    out = capsys.readouterr().out
    assert "[GDRegressor] step 10: objective" in out


def test_unfitted_and_one_class():
    with pytest.raises(NotFittedError):
        GDClassifier().predict(np.ones((2, 2)))
    with pytest.raises(ValueError, match="at least 2 classes"):
        GDClassifier().fit(np.ones((4, 2)), np.zeros(4))


@pytest.mark.parametrize(
    "estimator, match",
    [
        (GDRegressor(learning_rate=-1.0), "learning_rate must be a positive float"),
        (GDRegressor(learning_rate=None), "only meaningful with optimizer='lbfgs'"),
        (GDRegressor(max_iter=0), "max_iter must be a positive integer"),
        (GDRegressor(tol=-1.0), "tol must be a float >= 0"),
        (GDRegressor(alpha=-0.1), "alpha must be a float >= 0"),
        (GDRegressor(reduction="median"), "unknown reduction 'median'"),
        (GDClassifier(reduction="half_mean"), "unknown reduction 'half_mean'"),
        (GDRegressor(optimizer="adamm"), "did you mean 'adam'"),
        (GDRegressor(optimizer=3), "optimizer must be an optax alias name"),
        (GDRegressor(optimizer_options={"momentun": 0.9}), "did you mean 'momentum'"),
        (GDRegressor(batch_size=0), "batch_size must be a positive integer"),
        (GDRegressor(fit_intercept="yes"), "fit_intercept must be True or False"),
    ],
)
def test_bad_parameters_name_the_fix(estimator, match):
    X, y = make_regression(20, 2, random_state=0)
    if isinstance(estimator, GDClassifier):
        y = y > 0
    with pytest.raises(ValueError, match=match):
        clone(estimator).fit(X, y)


def test_bad_sample_weight():
    X, y = make_regression(20, 2, random_state=0)
    with pytest.raises(ValueError, match="negative"):
        GDRegressor().fit(X, y, sample_weight=-np.ones(20))
    with pytest.raises(ValueError, match="expected \\(20,\\)"):
        GDRegressor().fit(X, y, sample_weight=np.ones(3))
