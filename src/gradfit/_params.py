"""The linear model's products: ``X @ W`` (X possibly stored in 16 bits) and ``X @ W + b``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradfit._types import Params


def matmul(X: jax.Array, W: jax.Array) -> jax.Array:
    """``X @ W`` for X (m, n) and W (n,) or (n, k), in W's dtype. For X stored in a 16-bit float,
    one fused multiply-reduce ``sum_j float32(X_ij) W_j`` that reads X in place (``X @ W`` would
    first write a float32 copy of X)."""
    if X.dtype == W.dtype:
        return X @ W
    return _upcast_matmul(X, W)


def upcast_xt_dot(X: jax.Array, s: jax.Array) -> jax.Array:
    """``X^T s`` in s's dtype for a 16-bit X: one fused ``sum_i float32(x_i) s_i``. The barrier keeps
    XLA from merging this upcast with the forward product's into one float32 copy of X."""
    Xc = jax.lax.optimization_barrier(X).astype(s.dtype)
    if s.ndim == 1:
        return jnp.sum(Xc * s[:, None], axis=0)
    return jnp.sum(Xc[:, :, None] * s[:, None, :], axis=0)


def _upcast_product(X: jax.Array, W: jax.Array) -> jax.Array:
    Xc = X.astype(W.dtype)
    if W.ndim == 1:
        return jnp.sum(Xc * W[None, :], axis=1)
    return jnp.sum(Xc[:, :, None] * W[None, :, :], axis=1)


@jax.custom_vjp
def _upcast_matmul(X: jax.Array, W: jax.Array) -> jax.Array:
    return _upcast_product(X, W)


def _upcast_matmul_fwd(X, W):
    return _upcast_product(X, W), (X, W)


def _upcast_matmul_bwd(residuals, g):
    # dW = X^T g by its own fused upcast (autodiff's transpose would share the forward's).
    X, W = residuals
    dX = g[:, None] * W[None, :] if W.ndim == 1 else g @ W.T
    return dX.astype(X.dtype), upcast_xt_dot(X, g)


_upcast_matmul.defvjp(_upcast_matmul_fwd, _upcast_matmul_bwd)


def predict(params: Params, X: jax.Array) -> jax.Array:
    """Return ``X @ W + b``: shape (m,) for one output, (m, k) for k outputs (in W's dtype)."""
    b = params.b
    return matmul(X, params.W) + (b if b.ndim == 0 else b[None, :])
