"""X stored in a 16-bit float (bfloat16 or float16), computed in float32 (float64 with x64): each
element is upcast where used (:func:`gradfit._params.matmul`, :func:`gradfit.gradients.xt_dot`, per block in cache
for "onepass"/"stats"). Programs reading a 16-bit X compile with XLA's while-loop invariant code motion off
(:func:`compiler_options`), which would hoist a float32 copy of X."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

STORAGE_DTYPES = (np.dtype(jnp.bfloat16), np.dtype(np.float16))
_KEEP_UPCASTS_IN_LOOPS = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}


def is_storage_only(dtype) -> bool:
    """True for the 16-bit floats gradfit stores X in but never computes in."""
    return jnp.issubdtype(dtype, jnp.floating) and np.dtype(dtype) in STORAGE_DTYPES


def storage_dtype(X, compute_dtype) -> np.dtype:
    """The dtype X is kept in on the device: its own when it is a 16-bit float, else the compute dtype."""
    return np.dtype(X.dtype) if is_storage_only(X.dtype) else np.dtype(compute_dtype)


def compiler_options(*trees: Any) -> dict[str, str]:
    """XLA options for a program of inputs ``trees``: loop-invariant code motion off if an input of rank
    >= 2 is stored in a 16-bit float, else none."""
    for leaf in jax.tree.leaves(trees):
        if getattr(leaf, "ndim", 0) >= 2 and is_storage_only(getattr(leaf, "dtype", np.float32)):
            return dict(_KEEP_UPCASTS_IN_LOOPS)
    return {}
