"""X stored in a 16-bit float (bfloat16 or float16), computed in float32.

A fit reads X once or twice per step, so the bytes of X set the time of a large-m step and
the rows that fit in memory. Passing X as ``bfloat16`` halves both: gradfit keeps X in the
16-bit dtype it was given, while the parameters, y, the sample weights, every product and
every sum stay in the compute dtype (float32; float64 with ``jax_enable_x64``). Each element
of X is upcast where it is used, inside the fused multiply-reduce that consumes it
(:func:`gradfit._params.matmul`, :func:`gradfit.gradients.xt_dot`) or per row block in cache
(``grad="onepass"``, ``"stats"``).

The one obstacle is XLA's while-loop invariant code motion: X does not change between steps,
so XLA moves ``convert(X)`` out of the step loop as a full float32 copy, which would cost
more memory than storing float32 in the first place (``scripts/bf16_hoist.py``). Programs
that read a 16-bit X are therefore compiled with that one pass disabled
(:func:`compiler_options`), per compilation: no global XLA flag is set.

The accuracy cost is that of rounding X to 8 significant bits (relative error <= 2^-9 per
element): the fit solves the rounded problem exactly in float32. ``docs/bfloat16.md``
measures it (``scripts/bench_bf16.py``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

STORAGE_DTYPES = (np.dtype(jnp.bfloat16), np.dtype(np.float16))

# Keep the per-use upcasts of a 16-bit X inside the loops (see the module docstring).
_KEEP_UPCASTS_IN_LOOPS = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}


def is_storage_only(dtype) -> bool:
    """True for the 16-bit floats gradfit stores X in but never computes in."""
    return jnp.issubdtype(dtype, jnp.floating) and np.dtype(dtype) in STORAGE_DTYPES


def storage_dtype(X, compute_dtype) -> np.dtype:
    """The dtype X is kept in on the device: its own when it is a 16-bit float, else the compute dtype."""
    return np.dtype(X.dtype) if is_storage_only(X.dtype) else np.dtype(compute_dtype)


def compiler_options(*trees: Any) -> dict[str, str]:
    """XLA options for a program whose inputs are ``trees``: none, unless an input of rank
    >= 2 is stored in a 16-bit float (then loop-invariant code motion is off, see above)."""
    for leaf in jax.tree.leaves(trees):
        if getattr(leaf, "ndim", 0) >= 2 and is_storage_only(getattr(leaf, "dtype", np.float32)):
            return dict(_KEEP_UPCASTS_IN_LOOPS)
    return {}
