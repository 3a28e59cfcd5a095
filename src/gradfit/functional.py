"""The functional core: :func:`solve`, ``steps`` iterations of :func:`gradfit.fit`'s step and rules
(:mod:`gradfit._engine`) in one ``lax.scan``: it runs inside ``jit``, under ``vmap``, and is differentiable. Only
static things (names, shapes, ``steps``) are checked, not values."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradfit import _engine, _optim, _options, _validation, health
from gradfit._types import Data, Hyper, Params, Program, Scaling


class Solution(NamedTuple):
    """What :func:`solve` returns (under ``vmap`` the mapped axes first). params: W (n,) or (n, k),
    b () or (k,). loss: () ``J`` at ``params``. losses: (steps,) the objective at each step's start
    (an epoch's mean with ``batch_size``), NaN once stopped. steps: () int32. converged: () ``G <= tol``
    at ``params``. diverged: () J non-finite or grown 1e6-fold (``params`` the last before).
    stalled: () stopped moving (or by ``ftol``) short of the optimum. grad_norm: () ``G`` at ``params``."""

    params: Params
    loss: jax.Array
    losses: jax.Array
    steps: jax.Array
    converged: jax.Array
    diverged: jax.Array
    stalled: jax.Array
    grad_norm: jax.Array


def _static_int(value, name: str) -> int:
    if isinstance(value, jax.core.Tracer):
        raise ValueError(f"{name} is traced, but it fixes the length of the compiled loop: pass a Python int "
                         f"(under jax.jit, mark it static, e.g. jax.jit(f, static_argnames='{name}'))")
    return _validation.positive_int(value, name)


def _scalar(value, name: str, dtype) -> jax.Array:
    if jnp.shape(value) != ():
        raise ValueError(f"{name} has shape {jnp.shape(value)}: solve takes a scalar; for one value per output or "
                         "per member, jax.vmap the call over them")
    return jnp.asarray(value, dtype)


def solve(params0: Params | None, X: jax.Array, y: jax.Array, *, steps: int,
          learning_rate: float | jax.Array | None = None, l2: float | jax.Array = 0.0, loss: str = "mse",
          reduction: str = "mean", optimizer: str | optax.GradientTransformation = "sgd",
          optimizer_options: dict[str, Any] | None = None, grad: str = "autodiff", tol: float | jax.Array | None = None,
          sample_weight: jax.Array | None = None, fit_intercept: bool = True, batch_size: int | None = None,
          key: jax.Array | None = None, ftol: float | jax.Array | None = None, standardize: bool = False) -> Solution:
    """Fit ``yhat = X @ W + b`` by ``steps`` gradient steps: a pure function of arrays.

    Minimises ``J(p) = loss(p; X, y, reduction) + (l2/2) ||W||^2`` (:mod:`gradfit.losses`) by
    ``steps`` optax updates of ``dJ/dp``; for ``optimizer="sgd"``, ``p_{t+1} = p_t - learning_rate *
    dJ/dp(p_t)``. Differentiable in every array argument (``"lbfgs"``: forward mode only).

    Args:
      params0: W (n,) with b () for y (m,), or W (n, k) with b (k,) for y (m, k); None: zeros.
      X: (m, n) features, rows are samples; its float dtype is the compute dtype (float64 only
        with x64; integer X computes in JAX's default float). y: (m,) or (m, k) targets.
      steps: the scan length (epochs with ``batch_size``), a Python int.
      learning_rate: () step size; default 0.01, or the line search's for ``"lbfgs"``.
      l2: () penalty ``(l2/2) ||W||^2``, bias not penalised.
      loss, reduction, optimizer, sample_weight: as for :func:`gradfit.fit`.
      optimizer_options: the optax alias's options; array or float values are differentiable inputs.
      grad: ``"autodiff"`` (``jax.grad``), ``"hand"`` (:mod:`gradfit.gradients`) or ``"onepass"``.
      tol, ftol: () freeze the fit once ``G <= tol`` or stalled by ``ftol``; None runs all steps.
      standardize: optimise in the centred and scaled columns' coordinates; False (default) runs
        the seeds' iterates on ``(W, b)`` exactly.
      fit_intercept: False keeps b at its value in ``params0``.
      batch_size: minibatches over a fresh permutation of the rows each epoch; None is full-batch.
      key: the PRNG key of the permutations; default ``jax.random.key(0)``.

    Returns a :class:`Solution`. Raises ValueError (while tracing) for an unknown name,
    inconsistent shapes or a non-integer ``steps``.

    Example: the gradient of a validation loss with respect to ``l2``::

        def val_loss(l2):
            fitted = gradfit.solve(None, X_train, y_train, l2=l2, learning_rate=0.1, steps=200)
            return gradfit.losses.mse(fitted.params, X_val, y_val)

        jax.grad(val_loss)(0.1)
    """
    if grad in ("stats", "auto"):
        raise ValueError(f"solve reads X at every step: use grad='autodiff', 'hand' or 'onepass', not {grad!r}")
    for name, value in (("fit_intercept", fit_intercept), ("standardize", standardize)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    steps = _static_int(steps, "steps")
    X, y = jnp.asarray(X), jnp.asarray(y)
    if X.ndim != 2:
        raise ValueError(f"X has shape {X.shape}: expected (m, n), rows of samples; vmap solve for a batch of problems")
    m, n = X.shape
    if y.ndim not in (1, 2) or y.shape[0] != m:
        raise ValueError(f"y has shape {y.shape} for X of shape {X.shape}: expected ({m},) or ({m}, k)")
    dtype = _validation.float_dtype(X)
    params0 = _params0(params0, n, y.shape[1:], dtype, X.shape, y.shape)
    if sample_weight is not None and jnp.shape(sample_weight) != (m,):
        raise ValueError(f"sample_weight has shape {jnp.shape(sample_weight)}: expected ({m},), one weight per row")
    if batch_size is not None:
        batch_size = _static_int(batch_size, "batch_size")
        if batch_size > m:
            raise ValueError(f"batch_size={batch_size} is larger than the {m} rows of X: use batch_size <= {m} or None")
    if learning_rate is None and isinstance(optimizer, str) and optimizer not in _optim.LINE_SEARCH:
        learning_rate = _options.DEFAULT_LEARNING_RATE
    options = dict(optimizer_options or {})  # array-valued (maybe traced) options are inputs of the program
    arrays = {k: v for k, v in options.items() if isinstance(v, (jax.Array, np.ndarray, np.floating, jax.core.Tracer))}
    probe = {k: (0.0 if k in arrays else v) for k, v in options.items()}
    spec, traced = _optim.resolve(optimizer, probe, learning_rate)
    traced.update(arrays)
    _options.check_program(loss, reduction, grad, spec, batch_size)
    data = Data(X.astype(dtype), y.astype(dtype), None if sample_weight is None else jnp.asarray(sample_weight, dtype))
    w = jnp.ones(m, dtype) if data.sample_weight is None else data.sample_weight
    finfo = jnp.finfo(dtype)
    scaling = health.scaling_of(jnp, data.X, data.y.reshape(m, -1), w, jnp.sum(w), loss=loss, reduction=reduction,
                                fit_intercept=fit_intercept, per_output=False, eps=float(finfo.eps),
                                tiny=float(finfo.tiny))
    optional = lambda v, name: jnp.asarray(-1.0, dtype) if v is None else _scalar(v, name, dtype)  # noqa: E731
    hyper = Hyper(None if learning_rate is None else _scalar(learning_rate, "learning_rate", dtype),
                  _scalar(l2, "l2", dtype), optional(tol, "tol"), jnp.asarray(steps, jnp.int32),
                  {name: _scalar(v, f"optimizer_options[{name!r}]", dtype) for name, v in traced.items()},
                  optional(ftol, "ftol"), Scaling(*(jnp.asarray(v, dtype) for v in scaling)))
    program = Program(loss, reduction, grad, spec, learning_rate is not None, fit_intercept, batch_size, steps,
                      shuffle="rows", standardize=standardize)
    state = _engine.init_state(params0, data, hyper, jax.random.key(0) if key is None else key, program)

    def body(state, _):
        active = _engine.is_active(state, hyper)
        state, value = _engine.update(state, data, hyper, program)
        return state, jnp.where(active, value, jnp.nan)

    state, history = jax.lax.scan(body, state, None, length=steps)
    final, optimality = _engine.final_check(state, data, hyper, program)
    state, end = _engine.finalize(state, final, optimality, hyper)
    again, optimality = _engine.final_check(state, data, hyper, program)  # at the params returned
    final = jnp.where(end, again, final)
    return Solution(state.params, final, history, state.step, state.converged, state.diverged, state.stalled,
                    optimality)


def _params0(params0, n: int, out: tuple[int, ...], dtype, x_shape, y_shape) -> Params:
    if params0 is None:
        return Params(jnp.zeros((n, *out), dtype), jnp.zeros(out, dtype))
    if not isinstance(params0, tuple) or len(params0) != 2:  # Params, or a (W, b) pair
        raise ValueError(f"params0 must be gradfit.Params(W, b) or None, got {type(params0).__name__}")
    params0 = Params(*params0)
    if jnp.shape(params0.W) != (n, *out) or jnp.shape(params0.b) != out:
        raise ValueError(f"params0 has W {jnp.shape(params0.W)} and b {jnp.shape(params0.b)} but X {x_shape} and "
                         f"y {y_shape} need W {(n, *out)} and b {out}")
    return Params(jnp.asarray(params0.W, dtype), jnp.asarray(params0.b, dtype))
