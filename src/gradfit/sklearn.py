"""scikit-learn estimators :class:`GDRegressor` and :class:`GDClassifier`, fitted by :func:`gradfit.fit`; they pass
``parametrize_with_checks``. Prediction is numpy's ``X @ coef_.T + intercept_`` (no compile). float64 input is
fitted in float64 (x64 on for the fit alone), float32 in float32."""

from __future__ import annotations

import contextlib
import numbers
import warnings

import jax
import numpy as np

try:
    from scipy.special import log_expit, log_softmax
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets, type_of_target
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as e:  # absent, or older than 1.6 (no validate_data)
    raise ImportError(f"gradfit.sklearn needs scikit-learn >= 1.6 ({e}): pip install 'gradfit[sklearn]'") from e

from gradfit import _optim, _validation, solver
from gradfit._types import Params

__all__ = ["GDClassifier", "GDRegressor"]


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


def _seed(random_state) -> int:
    """An int seed for gradfit from scikit-learn's ``random_state`` (None, int or RandomState)."""
    if _validation.is_int(random_state):
        return int(random_state) % (2**32)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


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

    def _fit(self, X: np.ndarray, Y: np.ndarray, sample_weight, out: tuple[int, ...], *, per_output: bool):
        """Fit Y (m,) or (m, k) (output shape ``out``) on X (m, n); returns the FitResult. ``per_output``:
        the k columns are independent problems (one-vs-rest)."""
        m = X.shape[0]
        warm = self._warm_params(X.shape[1], out)
        sw = None if sample_weight is None else np.asarray(sample_weight)  # fit checks the weights
        sw = np.full(m, sw) if sw is not None and sw.ndim == 0 else sw
        batch_size = self.batch_size
        if _validation.is_int(batch_size) and batch_size > m:
            warnings.warn(f"batch_size={batch_size} is larger than the {m} samples: using full batches of {m}",
                          UserWarning, stacklevel=3)
            batch_size = m
        with jax.enable_x64(True) if X.dtype == np.float64 else contextlib.nullcontext():
            return solver.fit(X, Y, loss=self._loss, reduction=self.reduction, optimizer=self.optimizer,
                              learning_rate=None if self.learning_rate is None else float(self.learning_rate),
                              steps=int(self.max_iter), tol=None if self.tol is None else float(self.tol),
                              l2=np.full(Y.shape[1], float(self.alpha)) if per_output else float(self.alpha),
                              init=warm, batch_size=batch_size, seed=_seed(self.random_state),
                              fit_intercept=self.fit_intercept, sample_weight=sw,
                              optimizer_options=self.optimizer_options,
                              callback=_printer(type(self).__name__) if self.verbose else None)

    def _finish(self, result):
        """Set ``n_iter_`` and warn like scikit-learn when ``max_iter`` ran out before ``tol``."""
        self.n_iter_ = int(np.asarray(result.steps).max())
        stopped = np.asarray(result.converged) | np.asarray(result.diverged)
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

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,) or (n_targets, n_features)
    intercept_ : float or ndarray of shape (n_targets,)
    n_iter_ : int
        Steps run (objective evaluations; epochs with ``batch_size``).
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when X has string feature names.
    """

    _loss = "mse"

    def __init__(self, *, learning_rate=0.1, max_iter=1000, tol=1e-4, alpha=1e-4, reduction="half_mean",
                 optimizer="sgd", optimizer_options=None, fit_intercept=True, batch_size=None,
                 random_state=None, verbose=0, warm_start=False):
        self._store(locals())

    def fit(self, X, y, sample_weight=None):
        """Fit on X (n_samples, n_features) and y (n_samples,) or (n_samples, n_targets)."""
        _check_params(self)
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], multi_output=True, y_numeric=True, reset=True)
        y = np.asarray(y, X.dtype)
        result = self._fit(X, y, sample_weight, () if y.ndim == 1 else (y.shape[1],), per_output=False)
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

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    coef_ : ndarray of shape (1, n_features) for two classes, (n_classes, n_features) otherwise
    intercept_ : ndarray of shape (1,) or (n_classes,)
    n_iter_ : int
        Steps run (the most over the one-vs-rest problems).
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when X has string feature names.
    """

    _loss = "bce"

    def __init__(self, *, learning_rate=0.1, max_iter=1000, tol=1e-4, alpha=1e-4, reduction="mean",
                 optimizer="sgd", optimizer_options=None, fit_intercept=True, batch_size=None,
                 random_state=None, verbose=0, warm_start=False):
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
        result = self._fit(X, T, sample_weight, () if binary else (len(classes),), per_output=not binary)
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
