"""Input checks that run before any compute, each error naming the problem and the fix."""

from __future__ import annotations

import difflib
import numbers
import os

import jax
import jax.numpy as jnp
import numpy as np

_CHECK_BLOCK_BYTES = 64 << 20  # a block of rows checked at a time (a memory map holds one at a time)
INT32_MAX = 2**31 - 1


def as_numeric(a, name: str) -> np.ndarray | jax.Array:
    """Return ``a`` as a real numeric array (numpy, memory map or jax), or raise ValueError."""
    if isinstance(a, (str, os.PathLike)):
        raise ValueError(f"{name} is a path ({str(a)!r}), not an array: load it with np.load, or stream .npy files "
                         "bigger than memory with gradfit.fit_streaming(X_path, y_path, ...)")
    try:
        arr = a if isinstance(a, jax.Array) else np.asarray(a)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} could not be read as a numeric array: {e}") from None
    kind = "f" if jnp.issubdtype(arr.dtype, jnp.floating) else np.dtype(arr.dtype).kind  # bfloat16 too
    if kind == "c":
        raise ValueError(f"{name} is complex ({arr.dtype}): gradfit fits real-valued data; pass the real part "
                         "or split real and imaginary parts into columns")
    if kind not in "biuf":
        raise ValueError(f"{name} has dtype {arr.dtype}, not a real number type: convert it with "
                         f"np.asarray({name}, dtype=np.float32) after encoding any text or categorical columns")
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))  # big-endian: one copy


def float_dtype(X) -> np.dtype:
    """The compute dtype for X: its float dtype (float64 needs x64), else JAX's default float (ints, 16-bit)."""
    dt = np.dtype(X.dtype).newbyteorder("=")
    if dt.kind != "f" or dt == np.float16:
        return np.dtype(jnp.result_type(float))
    return np.dtype(np.float32) if dt == np.float64 and not jax.config.jax_enable_x64 else dt


def _row_blocks(a: np.ndarray):
    """``a`` as (rows, rest) in blocks of at most ``_CHECK_BLOCK_BYTES``."""
    rows = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(-1, 1)
    block = max(1, _CHECK_BLOCK_BYTES // max(1, rows.shape[1] * a.dtype.itemsize))
    return (rows[i : i + block] for i in range(0, rows.shape[0], block))


_sum_finite = jax.jit(lambda a: jnp.isfinite(jnp.sum(a)))  # one read at memory speed
_all_finite = jax.jit(lambda a: jnp.all(jnp.isfinite(a)))  # fused: one read, no mask of a's size (slower)
max_abs = jax.jit(lambda a: jnp.max(jnp.abs(a)))  # no |a| copy either


def _host_sum_finite(a: np.ndarray) -> bool:
    """Whether a float array's row sums are all finite: a C-contiguous float32/64 array by BLAS products with ones
    per row block (at memory speed on every core; bounded memory for a memory map), else by one ``np.sum``."""
    if a.ndim >= 2 and a.flags.c_contiguous and a.dtype in (np.float32, np.float64):
        ones = np.ones(a.shape[-1], a.dtype)
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow only sends us to the exact check
            return all(np.isfinite(block @ ones).all() for block in _row_blocks(a.reshape(-1, a.shape[-1])))
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.sum(a)))


def check_finite(a, name: str) -> None:
    """Raise ValueError if ``a`` holds NaN or inf. A finite sum rules both out in one fast pass; a non-finite one
    (NaN or inf, or an overflow of large values) is confirmed element by element (numpy: in row blocks)."""
    if isinstance(a, jax.Array):
        bad = a.size > 0 and not bool(_sum_finite(a)) and not bool(_all_finite(a))
    else:  # numpy or a memory map: only floats can hold NaN or inf
        bad = jnp.issubdtype(a.dtype, jnp.floating) and a.size > 0 and not _host_sum_finite(a) and any(
            not np.isfinite(b).all() for b in _row_blocks(a))
    if bad:
        raise ValueError(f"{name} contains NaN or inf: drop or impute those rows first "
                         f"(e.g. mask = np.isfinite({name}).all(axis=-1))")


def check_range(a, name: str, dtype) -> None:
    """Raise ValueError if finite values of ``a`` overflow when narrowed to ``dtype`` (checked in row blocks)."""
    src = np.dtype(a.dtype)
    if src.kind != "f" or src.itemsize <= np.dtype(dtype).itemsize or a.size == 0:
        return
    limit = float(np.finfo(dtype).max)
    big = float(max_abs(a) if isinstance(a, jax.Array) else max(np.max(np.abs(b)) for b in _row_blocks(a)))
    if big > limit:
        raise ValueError(f"{name} has values up to {big:.3g}, beyond {np.dtype(dtype)}'s range ({limit:.3g}), where "
                         "they would become inf: rescale the data, or enable float64 with "
                         "jax.config.update('jax_enable_x64', True)")


def check_xy(X, y, *, loss: str, batched: bool = False):
    """Validate X (m, n) and y (m,) or (m, k) (with a leading B when ``batched``); return them as arrays."""
    X, y = as_numeric(X, "X"), as_numeric(y, "y")
    lead = 1 if batched else 0
    if X.ndim == 1 + lead:
        hint = "" if batched else "; a leading batch axis of problems makes X (B, m, n)"
        raise ValueError(f"X has shape {X.shape}: expected a 2-d array (samples, features); for a single feature "
                         f"use X.reshape(-1, 1){hint}")
    if X.ndim != 2 + lead:
        raise ValueError(f"X has shape {X.shape}: expected (m, n) rows of samples"
                         + (", or (B, m, n) for a batch of B problems" if X.ndim == 3 else ""))
    if y.ndim not in (1 + lead, 2 + lead):
        raise ValueError(f"y has shape {y.shape}: expected (m,) for one output or (m, k) for k outputs")
    if batched and X.shape[0] != y.shape[0]:
        raise ValueError(f"X holds {X.shape[0]} problems but y holds {y.shape[0]}: the leading batch axes must match")
    m, n = X.shape[lead], X.shape[lead + 1]
    if m == 0:
        raise ValueError("X has no rows (m = 0): a fit needs at least one sample")
    if n == 0:
        raise ValueError("X has no columns (n = 0): a fit needs at least one feature")
    if y.shape[lead] != m:
        raise ValueError(f"X has {m} rows but y has {y.shape[lead]}: give one target per row of X")
    if y.ndim == 2 + lead and y.shape[-1] == 0:
        raise ValueError("y has zero output columns: give y as (m,) or (m, k) with k >= 1")
    for a, name in ((X, "X"), (y, "y")):
        check_finite(a, name)
        check_range(a, name, float_dtype(X))
    if loss == "bce":
        lo, hi = float(y.min()), float(y.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"bce needs targets in [0, 1] but y spans [{lo:g}, {hi:g}]: encode classes as 0/1 "
                             "(e.g. y = (labels == positive_label).astype(float))")
    return X, y


def check_sample_weight(sw, y, batched: bool, dtype):
    """Row weights (m,) or (B, m), finite, >= 0 with a positive sum (else ValueError), in ``dtype``."""
    if sw is None:
        return None
    sw = as_numeric(sw, "sample_weight")
    want = tuple(y.shape[: 2 if batched else 1])
    if tuple(sw.shape) != want:
        raise ValueError(f"sample_weight has shape {tuple(sw.shape)}: expected {want}, one weight per row")
    check_finite(sw, "sample_weight")
    check_range(sw, "sample_weight", dtype)
    if bool((sw < 0).any()) or not bool((sw.sum(axis=-1) > 0).all()):
        raise ValueError("sample_weight must be >= 0 with a positive sum: drop rows with negative weights (weights "
                         "all zero leave nothing to fit)")
    sw = sw.astype(dtype)  # the weights the fit sees: tiny ones round to 0, their sum may overflow
    total = np.asarray(sw.sum(axis=-1) if isinstance(sw, jax.Array) else sw.sum(axis=-1, dtype=np.float64))
    if not (total > 0).all() or not (total <= float(np.finfo(dtype).max)).all():
        why = "underflow to 0" if not (total > 0).all() else "sum beyond the largest number"
        raise ValueError(f"sample_weight values {why} in {np.dtype(dtype)}: rescale the weights (only their ratios "
                         "matter with reduction='mean'), e.g. sample_weight / sample_weight.max()")
    return jnp.asarray(sw)


def is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))


def is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not is_bool(value)


def suggest(word: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to a misspelt ``word``, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def positive_int(value, name: str) -> int:
    """``value`` as an int in [1, 2**31 - 1] (the loop counts in int32), or raise ValueError."""
    if not is_int(value) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if value > INT32_MAX:
        raise ValueError(f"{name}={value} is too large: the compiled loop counts in int32, so use at most {INT32_MAX}")
    return int(value)


def seed(value) -> int:
    """A PRNG seed: an integer in [-2**63, 2**63 - 1] (what ``jax.random.key`` takes)."""
    if not is_int(value):
        raise ValueError(f"seed must be an integer, got {value!r}")
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"seed={value} does not fit in 64 bits: use an integer in [-2**63, 2**63 - 1]")
    return int(value)


def _show(value) -> str:
    """A value for an error message: arrays as plain lists, not ``array(...)``."""
    return repr(np.asarray(value).tolist() if isinstance(value, (np.ndarray, np.generic, jax.Array)) else value)


def hyperparameter(value, name: str, *, positive: bool, allowed_ndims: tuple[int, ...] = (0,)) -> np.ndarray:
    """Check a float hyperparameter (scalar, or 1-d per-output with 1 in ``allowed_ndims``); float64 array."""
    if is_bool(value) or value is None:
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be a number, got {_show(value)}") from None
    if arr.ndim not in allowed_ndims:
        expected = "a scalar" + (" or a 1-d array of one value per output column" if 1 in allowed_ndims else "")
        raise ValueError(f"{name} has shape {arr.shape}: expected {expected}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite, got {_show(value)}")
    if positive and not (arr > 0).all():
        raise ValueError(f"{name} must be > 0, got {_show(value)}: try a small positive value such as 0.01")
    if not positive and not (arr >= 0).all():
        raise ValueError(f"{name} must be >= 0, got {_show(value)}")
    return arr
