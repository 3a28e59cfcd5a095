"""scikit-learn estimators :class:`GDRegressor` and :class:`GDClassifier`, fitted by :func:`gradfit.fit`, and their
cross-validated :class:`GDRegressorCV` and :class:`GDClassifierCV` (:func:`gradfit.sweep` with ``cv``: every penalty
and fold in one compiled program); they pass ``parametrize_with_checks``. Prediction is numpy's
``X @ coef_.T + intercept_`` (no compile). float64 input is fitted in float64 (x64 on for the fit alone), float32 in
float32."""

from __future__ import annotations

import contextlib
import numbers
import warnings

import jax
import numpy as np

try:
    from scipy.special import log_expit, log_softmax
    from scipy.stats import rankdata
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import check_scoring
    from sklearn.model_selection import check_cv
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets, type_of_target
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as e:  # absent, or older than 1.6 (no validate_data)
    raise ImportError(f"gradfit.sklearn needs scikit-learn >= 1.6 ({e}): pip install 'gradfit[sklearn]'") from e

from gradfit import _cv, _heldout, _optim, _validation, solver, sweeps
from gradfit._types import Params

__all__ = ["GDClassifier", "GDClassifierCV", "GDRegressor", "GDRegressorCV"]


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)


def _check_params(est) -> None:
    """Check the parameters scikit-learn names (fit checks the rest before any compute)."""
    name = type(est).__name__
    lr = est.learning_rate
    if lr is None and not (isinstance(est.optimizer, str) and est.optimizer in _optim.LINE_SEARCH):
        raise ValueError(f"{name}(learning_rate=None) is only meaningful with optimizer='lbfgs' (its line search "
                         "picks the step): give a positive float such as learning_rate=0.1")
    if lr is not None and (not _is_real(lr) or lr <= 0):
        raise ValueError(f"{name}: learning_rate must be a positive float (the step size), got {lr!r}; e.g. 0.1")
    if not _validation.is_int(est.max_iter) or est.max_iter < 1:
        raise ValueError(f"{name}: max_iter must be a positive integer (the most steps), got {est.max_iter!r}")
    if est.tol is not None and (not _is_real(est.tol) or est.tol < 0):
        raise ValueError(f"{name}: tol must be a float >= 0, or None to always run max_iter steps; got {est.tol!r}")
    if not _is_real(est.alpha) or est.alpha < 0:
        raise ValueError(f"{name}: alpha must be a float >= 0 (the L2 penalty; 0 for none), got {est.alpha!r}")
    if not _validation.is_int(est.verbose) or est.verbose < 0:
        raise ValueError(f"{name}: verbose must be an integer >= 0, got {est.verbose!r}")
    if not isinstance(est.warm_start, (bool, np.bool_)):
        raise ValueError(f"{name}: warm_start must be True or False, got {est.warm_start!r}")
    if not isinstance(est.early_stopping, (bool, np.bool_)):
        raise ValueError(f"{name}: early_stopping must be True or False, got {est.early_stopping!r}")
    if not _is_real(est.validation_fraction) or not 0 < est.validation_fraction < 1:
        raise ValueError(f"{name}: validation_fraction must be a float in (0, 1) (the share of rows held out), got "
                         f"{est.validation_fraction!r}; e.g. 0.1")
    if not _validation.is_int(est.n_iter_no_change) or est.n_iter_no_change < 1:
        raise ValueError(f"{name}: n_iter_no_change must be a positive integer (steps without a lower validation "
                         f"loss), got {est.n_iter_no_change!r}")


def _seed(random_state) -> int:
    """An int seed for gradfit from scikit-learn's ``random_state`` (None, int or RandomState)."""
    if _validation.is_int(random_state):
        return int(random_state) % (2**32)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def _weights(sample_weight, m: int):
    """``sample_weight`` as an array (a scalar repeated for the m rows), or None; :func:`gradfit.fit` checks it."""
    sw = None if sample_weight is None else np.asarray(sample_weight)
    return np.full(m, sw) if sw is not None and sw.ndim == 0 else sw


def _stack(runs: list) -> solver.FitResult:
    """The binary FitResults of one-vs-rest early stopping as one per-output result (curves NaN past each stop)."""
    steps = np.array([r.steps for r in runs])

    def pad(curves):
        out = np.full((len(runs), steps.max()), np.nan)
        for j, c in enumerate(curves):
            out[j, :len(c)] = c
        return out

    field = lambda f: np.array([f(r) for r in runs])  # noqa: E731
    return solver.FitResult(Params(field(lambda r: r.params.W).T, field(lambda r: r.params.b)),
                            field(lambda r: r.loss), pad([r.losses for r in runs]), steps,
                            field(lambda r: r.converged), field(lambda r: r.diverged),
                            {"grad_norm": [r.stats["grad_norm"] for r in runs],
                             "validation_loss": [r.stats["validation_loss"] for r in runs],
                             "best_step": [r.stats["best_step"] for r in runs]},
                            field(lambda r: r.status), pad([r.validation_losses for r in runs]))


def _printer(name: str):
    """``verbose``: a callback printing one line per compiled chunk (never per step)."""

    def show(state, history) -> None:
        step = int(np.max(np.asarray(state.step)))
        last = np.asarray(history)[..., step - 1] if step else np.nan
        print(f"[{name}] step {step}: objective {float(np.nansum(last)):.6g}", flush=True)

    return show


class _GDBase(BaseEstimator):
    """What both estimators share: the call into :func:`gradfit.fit`, warm starts and scores."""

    _loss: str

    def _store(self, params: dict) -> None:
        """``__init__``'s body: keep every parameter of ``locals()`` untouched."""
        for name, value in params.items():
            if name != "self":
                setattr(self, name, value)

    def _fit(self, X: np.ndarray, Y: np.ndarray, sw, init: Params | None, seed: int, *, per_output: bool = False,
             validation: tuple | None = None):
        """Fit Y (m,) or (m, k) on X (m, n) from ``init`` (None: a cold start); returns the FitResult. ``per_output``:
        the k columns are independent problems (one-vs-rest). ``validation``: (X_val, Y_val, sw_val) early-stops."""
        m = X.shape[0]
        batch_size = self.batch_size
        if _validation.is_int(batch_size) and batch_size > m:
            warnings.warn(f"batch_size={batch_size} is larger than the {m} samples: using full batches of {m}",
                          UserWarning, stacklevel=3)
            batch_size = m
        stop = {} if validation is None else dict(validation=validation, early_stopping=True,
                                                  n_iter_no_change=int(self.n_iter_no_change))
        with jax.enable_x64(True) if X.dtype == np.float64 else contextlib.nullcontext():
            return solver.fit(X, Y, loss=self._loss, reduction=self.reduction, optimizer=self.optimizer,
                              learning_rate=None if self.learning_rate is None else float(self.learning_rate),
                              steps=int(self.max_iter), tol=None if self.tol is None else float(self.tol),
                              l2=np.full(Y.shape[1], float(self.alpha)) if per_output else float(self.alpha),
                              init=init, batch_size=batch_size, seed=seed,
                              fit_intercept=self.fit_intercept, sample_weight=sw,
                              optimizer_options=self.optimizer_options,
                              callback=_printer(type(self).__name__) if self.verbose else None, **stop)

    def _held_out(self, X, Y, sw, seed: int, labels=None):
        """Early stopping's split, as :func:`gradfit.fit`'s ``validation_fraction`` (:func:`gradfit._heldout.split_rows`
        with ``seed``; stratified by ``labels`` when given): ``(X, Y, sw)`` of the training rows and the
        validation triple (sw None: unweighted)."""
        if len(X) < 2:
            raise ValueError(f"{type(self).__name__}: early_stopping holds out rows but got n_samples={len(X)}: give "
                             "at least 2 samples, or set early_stopping=False")
        if sw is not None:  # checked before indexing; kept in X's dtype (the check's copy may be float32)
            _validation.check_sample_weight(sw, Y, False, X.dtype)
            sw = np.asarray(sw, X.dtype)
        train, held = _heldout.split_rows(Y if labels is None else labels, float(self.validation_fraction), seed,
                                          labels is not None)
        if sw is not None and not np.any(sw[held] > 0):
            raise ValueError(f"{type(self).__name__}: the sample weights of the validation rows are all zero: use "
                             "another random_state or validation_fraction, or early_stopping=False")
        part = lambda rows: (X[rows], Y[rows], None if sw is None else sw[rows])  # noqa: E731
        return (*part(train), part(held))

    def _set_validation(self, result) -> None:
        """``validation_losses_`` and ``best_validation_loss_`` (None without early stopping)."""
        on = self.early_stopping
        self.validation_losses_ = np.asarray(result.validation_losses).copy() if on else None
        best = result.stats["validation_loss"] if on else None
        self.best_validation_loss_ = best if best is None or np.ndim(best) == 0 else np.asarray(best)

    def _finish(self, result):
        """Set ``n_iter_`` and warn like scikit-learn when ``max_iter`` ran out before ``tol``."""
        self.n_iter_ = int(np.asarray(result.steps).max())
        stopped = np.asarray(result.converged) | np.asarray(result.diverged) | (np.asarray(result.status) ==
                                                                                 "early_stopped")
        if self.tol is not None and not stopped.all():
            why = "stalled away from the optimum" if "stalled" in np.ravel(result.status) else \
                f"did not converge in max_iter={self.max_iter} steps"
            warnings.warn(f"{type(self).__name__} {why} (tol={self.tol}, scaled gradient norm "
                          f"{float(np.max(result.stats['grad_norm'])):.3g}): increase max_iter, raise learning_rate, "
                          "or use optimizer='lbfgs'", ConvergenceWarning, stacklevel=3)
        return self

    def _warm_params(self, n_features: int, out: tuple[int, ...]) -> Params | None:
        """The fitted (W, b) to start from when ``warm_start`` (None for a cold start)."""
        if not self.warm_start or not hasattr(self, "coef_"):
            return None
        coef = np.asarray(self.coef_)  # (n,), (1, n) or (k, n): the last axis is the features
        if coef.shape[-1] != n_features or coef.size != n_features * int(np.prod(out)):
            raise ValueError(f"warm_start=True but the previous fit had coef_ of shape {coef.shape}, which does not "
                             f"match this data ({n_features} features, {out[0] if out else 1} outputs): "
                             "set warm_start=False")
        W = coef.T.reshape(n_features, *out)
        return Params(W, np.asarray(self.intercept_, W.dtype).reshape(out))

    def _scores(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return X @ self.coef_.T + self.intercept_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags


class GDRegressor(RegressorMixin, _GDBase):
    """Linear regression by compiled gradient descent: minimises over ``W`` (n_features, n_targets), ``b``

        J(W, b) = c * sum_i w_i ||y_i - x_i W - b||^2 + (alpha / 2) ||W||^2

    with ``c = 1/(2 sum_i w_i)`` (``reduction="half_mean"``, default), ``1/sum_i w_i`` (``"mean"``) or ``1``
    (``"sum"``), ``w_i`` the sample weights. ``alpha`` is gradfit's ``l2``; for m unweighted samples:

    - ``reduction="half_mean"``: ``alpha`` is :class:`~sklearn.linear_model.SGDRegressor`'s
      ``alpha`` (``penalty="l2"``), and ``Ridge(alpha=alpha * m)``;
    - ``reduction="mean"``: ``Ridge(alpha=alpha * m / 2)``;
    - ``alpha=0``: :class:`~sklearn.linear_model.LinearRegression`.

    Parameters
    ----------
    learning_rate : float or None, default=0.1
        The step size; None only with ``optimizer="lbfgs"`` (its line search's).
    max_iter : int, default=1000
        The most steps (epochs when ``batch_size`` is set).
    tol : float or None, default=1e-4
        Stop when the scaled gradient norm ``G <= tol`` (:func:`gradfit.fit`'s ``tol``), else ConvergenceWarning.
    alpha : float, default=1e-4
        L2 penalty ``(alpha/2) ||W||^2``; the intercept is not penalised.
    reduction : {"half_mean", "mean", "sum"}, default="half_mean"
        How the squared errors are summed (see above).
    optimizer : str or optax.GradientTransformation, default="sgd"
        An optax alias name (``"sgd"``, ``"adam"``, ``"lbfgs"``, ...) or a transformation (``learning_rate=None``).
    optimizer_options : dict or None, default=None
        Extra options of the optax alias, e.g. ``{"momentum": 0.9}``.
    fit_intercept : bool, default=True
        False fixes ``intercept_`` at 0.
    batch_size : int or None, default=None
        Minibatch size (fit's ``shuffle="blocks"``), clipped with a warning to the samples; None: full batches.
    random_state : int, RandomState or None, default=None
        Seeds the minibatch order.
    verbose : int, default=0
        > 0 prints the step and objective between compiled chunks.
    warm_start : bool, default=False
        Start from the previous fit's ``coef_`` and ``intercept_`` (optimizer state restarts).
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the rows (seeded by ``random_state``, as :func:`gradfit.fit`'s split) and
        stop once their unpenalised loss has not fallen for ``n_iter_no_change`` steps; ``coef_`` is then the best
        step's (SGD keeps the last; MLP the best). ``tol`` keeps its test; any fall counts (SGD: by ``tol``).
    validation_fraction : float in (0, 1), default=0.1
        The share of rows held out with ``early_stopping`` (unused without it).
    n_iter_no_change : int >= 1, default=5
        Steps (epochs with ``batch_size``) without a lower validation loss that end the fit; only with early stopping.

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,) or (n_targets, n_features)
    intercept_ : float or ndarray of shape (n_targets,)
    n_iter_ : int
        Steps run (objective evaluations; epochs with ``batch_size``), including the ``n_iter_no_change`` last.
    validation_losses_ : ndarray of shape (n_iter_,) or None
        With ``early_stopping``, the validation loss (unpenalised, of ``reduction``) after each step; else None.
    best_validation_loss_ : float or None
        Their minimum (None without ``early_stopping``).
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when X has string feature names.
    """

    _loss = "mse"

    def __init__(self, *, learning_rate=0.1, max_iter=1000, tol=1e-4, alpha=1e-4, reduction="half_mean",
                 optimizer="sgd", optimizer_options=None, fit_intercept=True, batch_size=None,
                 random_state=None, verbose=0, warm_start=False, early_stopping=False, validation_fraction=0.1,
                 n_iter_no_change=5):
        self._store(locals())

    def fit(self, X, y, sample_weight=None):
        """Fit on X (n_samples, n_features) and y (n_samples,) or (n_samples, n_targets)."""
        _check_params(self)
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], multi_output=True, y_numeric=True, reset=True)
        y = np.asarray(y, X.dtype)
        init, seed = self._warm_params(X.shape[1], () if y.ndim == 1 else (y.shape[1],)), _seed(self.random_state)
        sw, val = _weights(sample_weight, len(X)), None
        if self.early_stopping:
            X, y, sw, val = self._held_out(X, y, sw, seed)
        result = self._fit(X, y, sw, init, seed, validation=val)
        self._set_validation(result)
        b = np.asarray(result.params.b)
        self.coef_ = np.asarray(result.params.W).T.copy()
        self.intercept_ = b[()] if b.ndim == 0 else b.copy()
        return self._finish(result)

    def predict(self, X) -> np.ndarray:
        """``X @ coef_.T + intercept_``: shape (n_samples,) or (n_samples, n_targets)."""
        return self._scores(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


class GDClassifier(ClassifierMixin, _GDBase):
    """Logistic regression by compiled gradient descent. Binary (``t_i = 1`` for ``classes_[1]``): minimises

        J(w, b) = c * sum_i s_i [ t_i softplus(-z_i) + (1 - t_i) softplus(z_i) ] + (alpha/2) ||w||^2,

    ``z_i = x_i . w + b``, ``c = 1/sum_i s_i`` (``reduction="mean"``) or 1 (``"sum"``), ``s_i`` the sample weights.
    ``alpha`` is gradfit's ``l2`` and :class:`~sklearn.linear_model.SGDClassifier`'s (``loss="log_loss"``); for m
    unweighted samples and ``reduction="mean"``, ``LogisticRegression(C=1 / (alpha * m))``.

    Multiclass: one-vs-rest, k binary problems ``vmap``-ed in one program with their own stopping tests, as
    ``OneVsRestClassifier(LogisticRegression(C=1 / (alpha * m)))``; ``predict_proba`` normalises the sigmoids.

    Parameters are those of :class:`GDRegressor`, except ``reduction``: ``{"mean", "sum"}``, default ``"mean"``.
    ``early_stopping`` holds out rows stratified by class, once; multiclass then fits each class on its own (one
    program each), stopping when its own validation log-loss stops falling, as ``SGDClassifier``.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    coef_ : ndarray of shape (1, n_features) for two classes, (n_classes, n_features) otherwise
    intercept_ : ndarray of shape (1,) or (n_classes,)
    n_iter_ : int
        Steps run (the most over the one-vs-rest problems).
    validation_losses_ : ndarray of shape (n_iter_,), (n_classes, n_iter_) for multiclass (NaN past a class's stop)
        With ``early_stopping``, the validation log-loss after each step; else None.
    best_validation_loss_ : float, ndarray of shape (n_classes,) for multiclass, or None
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when X has string feature names.
    """

    _loss = "bce"

    def __init__(self, *, learning_rate=0.1, max_iter=1000, tol=1e-4, alpha=1e-4, reduction="mean",
                 optimizer="sgd", optimizer_options=None, fit_intercept=True, batch_size=None,
                 random_state=None, verbose=0, warm_start=False, early_stopping=False, validation_fraction=0.1,
                 n_iter_no_change=5):
        self._store(locals())

    def fit(self, X, y, sample_weight=None):
        """Fit on X (n_samples, n_features) and class labels y (n_samples,)."""
        _check_params(self)
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], reset=True)
        check_classification_targets(y)
        name, kind = type(self).__name__, type_of_target(y)
        if kind not in ("binary", "multiclass"):
            raise ValueError(f"{name} fits binary or multiclass labels, got {kind!r} targets: one label per sample")
        classes, index = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"{name} needs samples of at least 2 classes in y, got 1 class ({classes[0]!r}): "
                             "check the labels (or the split that produced them)")
        if self.warm_start and hasattr(self, "classes_") and not np.array_equal(self.classes_, classes):
            raise ValueError(f"warm_start=True but y has classes {classes!r} where the previous fit had "
                             f"{self.classes_!r}: set warm_start=False")
        binary = len(classes) == 2
        T = (index == 1).astype(X.dtype) if binary else np.eye(len(classes), dtype=X.dtype)[index]
        init, seed = self._warm_params(X.shape[1], () if binary else (len(classes),)), _seed(self.random_state)
        sw, val = _weights(sample_weight, len(X)), None
        if self.early_stopping:  # held out once, stratified by class (for every one-vs-rest problem)
            X, T, sw, val = self._held_out(X, T, sw, seed, index)
        if val is None or binary:
            result = self._fit(X, T, sw, init, seed, per_output=not binary, validation=val)
        else:  # gradfit validates one problem at a time: a fit per class, each stopping on its own, as SGDClassifier
            result = _stack([self._fit(X, T[:, j], sw, None if init is None else Params(init.W[:, j], init.b[j]),
                                       seed, validation=(val[0], val[1][:, j], val[2])) for j in range(len(classes))])
        self._set_validation(result)
        self.classes_ = classes
        self.coef_ = np.asarray(result.params.W).reshape(X.shape[1], -1).T.copy()
        self.intercept_ = np.asarray(result.params.b).reshape(-1).copy()
        return self._finish(result)

    def decision_function(self, X) -> np.ndarray:
        """Logits ``X @ coef_.T + intercept_``: (n_samples,) for two classes, else (n_samples, n_classes)."""
        scores = self._scores(X)
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (n_samples, n_classes) in ``classes_`` order: ``[sigmoid(-z), sigmoid(z)]``, or the
        one-vs-rest sigmoids normalised, as ``softmax(log_sigmoid(z))`` (finite where every sigmoid underflows)."""
        return np.exp(self.predict_log_proba(X))

    def predict_log_proba(self, X) -> np.ndarray:
        """``log(predict_proba(X))``, computed from the logits without rounding to ``log(0)``."""
        z = self.decision_function(X)
        return np.stack([log_expit(-z), log_expit(z)], axis=1) if z.ndim == 1 else log_softmax(log_expit(z), axis=1)

    def predict(self, X) -> np.ndarray:
        """The most likely class of each sample, (n_samples,)."""
        scores = self.decision_function(X)
        return self.classes_[(scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)]


_IN_PROGRAM = {"neg_mean_squared_error": "loss", "neg_log_loss": "loss", "accuracy": "accuracy"}


class _CV:
    """What both cross-validated estimators share: folds by ``check_cv``, one :func:`gradfit.sweep` over the
    penalties with ``reduction="sum"``, scores (in the program, or a scorer per fold on the host), the refit."""

    def _check_cv_params(self, grid: np.ndarray, name: str) -> None:
        est = type(self).__name__
        if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid < 0):
            raise ValueError(f"{est}: {name} must be a non-empty 1-d list of floats >= 0, got {grid!r}")
        if self.learning_rate is not None and not (self.learning_rate == "auto" or
                                                   (_is_real(self.learning_rate) and self.learning_rate > 0)):
            raise ValueError(f"{est}: learning_rate must be None (lbfgs's line search), 'auto' (1/L) or a positive "
                             f"float, got {self.learning_rate!r}")
        if not _validation.is_int(self.max_iter) or self.max_iter < 1:
            raise ValueError(f"{est}: max_iter must be a positive integer (the most steps), got {self.max_iter!r}")
        if not _is_real(self.tol) or self.tol < 0:
            raise ValueError(f"{est}: tol must be a float >= 0, got {self.tol!r}")

    def _cv_fit(self, X, T, labels, sample_weight, l2: np.ndarray, *, classifier: bool):
        """Sweep ``l2`` with folds of ``check_cv(cv, labels)``; set ``cv_results_``, ``best_score_``, ``n_iter_``
        and return (best index, refitted FitResult)."""
        pairs = list(check_cv(self.cv, labels, classifier=classifier).split(X, labels))
        sw = None if sample_weight is None else np.asarray(sample_weight)
        sw = np.full(len(X), sw) if sw is not None and sw.ndim == 0 else sw
        options = dict(loss=self._loss, reduction="sum", optimizer=self.optimizer, steps=int(self.max_iter),
                       tol=float(self.tol), fit_intercept=self.fit_intercept, optimizer_options=self.optimizer_options)
        if self.learning_rate is not None:
            options["learning_rate"] = self.learning_rate
        with jax.enable_x64(True) if X.dtype == np.float64 else contextlib.nullcontext():
            path = classifier and self.optimizer == "lbfgs"  # as LogisticRegressionCV: each C from the last's solution
            result = sweeps.sweep(X, T, grid={"l2": [float(v) for v in l2]}, cv=pairs, sample_weight=sw,
                                  warm_start=path, **options)
            test = self._test_scores(result, X, labels, pairs)
            scores = _cv.CVScores(pairs, {"loss": -test}, np.asarray(l2, np.float64))
            best = _cv.best_index(scores)
            if best is None:
                raise ValueError(f"{type(self).__name__}: every penalty diverged or scored NaN in some fold: "
                                 "lower learning_rate, or use optimizer='lbfgs'")
            refit = solver.fit(X, T, sample_weight=sw, l2=float(l2[best]), **options)
        self.best_score_ = float(np.mean(test[best]))
        mean = np.mean(test, axis=1)
        self.cv_results_ = {**{f"split{f}_test_score": test[:, f] for f in range(len(pairs))},
                            "mean_test_score": mean, "std_test_score": np.std(test, axis=1),
                            "rank_test_score": rankdata(-np.where(np.isfinite(mean), mean, -np.inf), "min").astype(
                                np.int32),
                            "mean_train_score": -result.cv.mean["train_loss"]}
        return best, refit

    def _test_scores(self, result, X, labels, pairs) -> np.ndarray:
        """(K, F): ``scoring`` None is minus the validation loss (MSE or log-loss), as
        ``neg_mean_squared_error``/``neg_log_loss``; ``accuracy`` comes from the program; else a scorer per lane."""
        if self.scoring is None or _IN_PROGRAM.get(self.scoring) == "loss":
            return -result.cv.scores["loss"]
        if self.scoring == "accuracy" and self._loss == "bce" and np.ndim(result.params.b) == 2:
            return result.cv.scores["accuracy"]  # binary
        scorer = check_scoring(self, scoring=self.scoring)
        K, F = np.shape(result.final_loss)
        test = np.full((K, F), np.nan)
        for i in range(K):
            for f, (_, val) in enumerate(pairs):
                if np.isfinite(result.cv.scores["loss"][i, f]):
                    est = self._fold_estimator(result.params.W[i, f], result.params.b[i, f], X.shape[1])
                    test[i, f] = scorer(est, X[val], labels[val])
        return test


class GDRegressorCV(_CV, GDRegressor):
    """Ridge regression with the penalty chosen by cross-validation, as :class:`~sklearn.linear_model.RidgeCV`
    (``cv`` given): for each ``alpha`` in ``alphas`` and each fold, minimises scikit-learn's Ridge objective

        J(W, b) = sum_i w_i ||y_i - x_i W - b||^2 + alpha ||W||^2

    (gradfit's ``reduction="sum"``, ``l2 = 2 alpha``) on the fold's training rows; every (alpha, fold) pair is one
    lane of a single compiled program over the one X (:func:`gradfit.sweep` with ``cv``). ``alpha_`` has the lowest
    mean validation MSE (with ``scoring=None``; ties go to the larger alpha); it is then refitted on all the data.

    Parameters
    ----------
    alphas : array-like of float >= 0, default=(0.1, 1.0, 10.0)
    cv : int, cross-validation generator or iterable of (train, test) splits, default=5
        As ``check_cv(cv, y, classifier=False)``: an int is ``KFold(cv)``.
    scoring : str, callable or None, default=None
        None: minus the mean validation MSE (``neg_mean_squared_error``, computed in the program); else any
        scikit-learn scorer, evaluated per fold on the host (RidgeCV's None is R^2: pass ``scoring="r2"``).
    fit_intercept : bool, default=True
    optimizer : str, default="lbfgs"
        An optax alias; with ``"sgd"``, ``learning_rate="auto"`` (1/L) or a float, about 1/(2 sum_i w_i x_i^2).
    learning_rate : None, "auto" or float, default=None
    max_iter : int, default=500
    tol : float, default=1e-4
        gradfit's optimality test ``G <= tol`` (:func:`gradfit.fit`).
    optimizer_options : dict or None, default=None

    Attributes
    ----------
    alpha_ : float
    best_params_ : dict, ``{"alpha": alpha_}``
    best_score_ : float, the mean validation score of ``alpha_``
    cv_results_ : dict of arrays (n_alphas,): ``params``, ``param_alpha``, ``split{k}_test_score``,
        ``mean_test_score``, ``std_test_score``, ``rank_test_score``, ``mean_train_score`` (minus the training MSE)
    coef_, intercept_, n_iter_, n_features_in_ : as :class:`GDRegressor` (of the refit)
    """

    def __init__(self, *, alphas=(0.1, 1.0, 10.0), cv=5, scoring=None, fit_intercept=True, optimizer="lbfgs",
                 learning_rate=None, max_iter=500, tol=1e-4, optimizer_options=None):
        self._store(locals())

    def fit(self, X, y, sample_weight=None):
        """Cross-validate every alpha on X (n_samples, n_features), y (n_samples,) or (n_samples, n_targets),
        then refit the best on all of them."""
        alphas = np.atleast_1d(np.asarray(self.alphas, np.float64))
        self._check_cv_params(alphas, "alphas")
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], multi_output=True, y_numeric=True, reset=True)
        y = np.asarray(y, X.dtype)
        best, refit = self._cv_fit(X, y, y, sample_weight, 2 * alphas, classifier=False)
        self.alpha_ = float(alphas[best])
        self.best_params_ = {"alpha": self.alpha_}
        self.cv_results_.update(params=[{"alpha": float(a)} for a in alphas], param_alpha=alphas)
        b = np.asarray(refit.params.b)
        self.coef_ = np.asarray(refit.params.W).T.copy()
        self.intercept_ = b[()] if b.ndim == 0 else b.copy()
        return self._finish(refit)

    def _fold_estimator(self, W, b, n_features):
        est = GDRegressor()
        est.coef_, est.intercept_, est.n_features_in_ = np.asarray(W).T, np.asarray(b), n_features
        return est


class GDClassifierCV(_CV, GDClassifier):
    """Logistic regression with ``C`` chosen by cross-validation as :class:`~sklearn.linear_model.LogisticRegressionCV`:
    for each ``C`` in ``Cs`` and each fold, minimises scikit-learn's objective (binary; ``t_i`` in {0, 1})

        C sum_i s_i [t_i softplus(-z_i) + (1 - t_i) softplus(z_i)] + ||w||^2 / 2,   z_i = x_i . w + b

    i.e. gradfit's bce with ``reduction="sum"`` and ``l2 = 1 / C``; every (C, fold) pair is one lane of a single
    compiled program (:func:`gradfit.sweep` with ``cv``). With ``optimizer="lbfgs"`` the Cs run as a path from the
    smallest, each fold's fit starting from the previous C's solution and curvature pairs (``warm_start=True``), as
    LogisticRegressionCV warm-starts. Multiclass is one-vs-rest (as :class:`GDClassifier`), the
    classes sharing C. ``C_`` has the lowest mean validation log-loss (``scoring=None``; ties to the smaller C),
    refitted on all the data.

    Parameters
    ----------
    Cs : int or array-like of float > 0, default=10
        An int n is ``np.logspace(-4, 4, n)``, as LogisticRegressionCV.
    cv : int, cross-validation generator or iterable of (train, test) splits, default=5
        As ``check_cv(cv, y, classifier=True)``: an int is ``StratifiedKFold(cv)``.
    scoring : str, callable or None, default=None
        None: minus the mean validation log-loss (``neg_log_loss``, computed in the program; LogisticRegressionCV's
        None is accuracy: pass ``scoring="accuracy"``); else any scikit-learn scorer, per fold on the host.
    fit_intercept, optimizer, learning_rate, max_iter, tol, optimizer_options : as :class:`GDRegressorCV`

    Attributes
    ----------
    C_ : ndarray of shape (1,) for two classes, (n_classes,) otherwise (all equal)
    Cs_ : ndarray of shape (n_cs,)
    best_params_, best_score_, cv_results_ : as :class:`GDRegressorCV`, with ``C`` for ``alpha``
    classes_, coef_, intercept_, n_iter_, n_features_in_ : as :class:`GDClassifier` (of the refit)
    """

    def __init__(self, *, Cs=10, cv=5, scoring=None, fit_intercept=True, optimizer="lbfgs", learning_rate=None,
                 max_iter=500, tol=1e-4, optimizer_options=None):
        self._store(locals())

    def fit(self, X, y, sample_weight=None):
        """Cross-validate every C on X (n_samples, n_features) and labels y (n_samples,), refit the best."""
        Cs = np.logspace(-4, 4, self.Cs) if _validation.is_int(self.Cs) and self.Cs > 0 else \
            np.atleast_1d(np.asarray(self.Cs, np.float64))
        self._check_cv_params(Cs, "Cs")
        if np.any(Cs <= 0):
            raise ValueError(f"GDClassifierCV: Cs must be > 0 (the inverse penalty), got {Cs!r}")
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], reset=True)
        check_classification_targets(y)
        kind = type_of_target(y)
        if kind not in ("binary", "multiclass"):
            raise ValueError(f"GDClassifierCV fits binary or multiclass labels, got {kind!r} targets")
        classes, index = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"GDClassifierCV needs samples of at least 2 classes in y, got 1 class ({classes[0]!r})")
        binary = len(classes) == 2
        T = (index == 1).astype(X.dtype) if binary else np.eye(len(classes), dtype=X.dtype)[index]
        self.classes_ = classes
        best, refit = self._cv_fit(X, T, y, sample_weight, 1 / Cs, classifier=True)
        self.Cs_ = Cs
        self.C_ = np.full(1 if binary else len(classes), Cs[best])
        self.best_params_ = {"C": float(Cs[best])}
        self.cv_results_.update(params=[{"C": float(c)} for c in Cs], param_C=Cs)
        self.coef_ = np.asarray(refit.params.W).reshape(X.shape[1], -1).T.copy()
        self.intercept_ = np.asarray(refit.params.b).reshape(-1).copy()
        return self._finish(refit)

    def _fold_estimator(self, W, b, n_features):
        est = GDClassifier()
        est.coef_ = np.asarray(W).reshape(n_features, -1).T
        est.intercept_ = np.asarray(b).reshape(-1)
        est.classes_, est.n_features_in_ = self.classes_, n_features
        return est
