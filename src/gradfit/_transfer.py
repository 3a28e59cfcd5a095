"""Host arrays onto a device: one copy at memory speed, or none where the array allows it.

jaxlib's CPU client aliases a host array that is C-contiguous, already of the target dtype and 64-byte aligned
(:func:`jax.device_put` then costs no copy); any other array it copies by a path measured at ~1 GB/s on a 2-core
host (X of 256 MB: 0.19-0.28 s, mostly first-touch page faults). numpy allocates a large array with huge pages, so
copying into a 64-byte-aligned numpy buffer (row blocks on every core: ``np.copyto`` releases the GIL) and handing
that over takes 0.035-0.045 s for the same X on 2 cores (one thread: 0.07 s). ``scripts/bench_speed.py`` measures
the fits this serves. Other backends copy to their own memory anyway.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

ALIGN = 64  # bytes: the alignment jaxlib's CPU client needs to alias a host buffer
SMALL = 1 << 20  # bytes: below this, jnp.asarray's copy costs nothing worth avoiding
PARALLEL = 16 << 20  # bytes: from this size the copy runs on every core


def aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised C-contiguous numpy array whose data start on an :data:`ALIGN`-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def is_aliasable(a: np.ndarray, dtype) -> bool:
    """Whether the CPU client can use ``a``'s memory as a device array of ``dtype`` without a copy."""
    return a.dtype == np.dtype(dtype) and a.flags.c_contiguous and a.ctypes.data % ALIGN == 0


def to_device(a, dtype) -> jax.Array:
    """``a`` (numpy, memory map or jax.Array) as a ``dtype`` array on JAX's default device.

    On the CPU a large host array is aliased when :func:`is_aliasable` (so it must not change while the result is
    in use: gradfit keeps it only for the call), else copied once into an aligned buffer that the result owns."""
    if isinstance(a, jax.Array) or jax.default_backend() != "cpu" or np.asarray(a).nbytes < SMALL:
        return jnp.asarray(a, dtype)
    a = np.asarray(a)
    if not is_aliasable(a, dtype):
        host = aligned_empty(a.shape, dtype)
        copy_rows(host, a)
        a = host
    return jax.device_put(a)


def to_device_all(arrays, dtypes) -> list:
    """:func:`to_device` of each array (None stays None), the small host ones moved in one transfer (each
    ``jnp.asarray`` of a small array costs ~0.1 ms, about what a whole small fit's steps cost)."""
    out = [None if a is None else to_device(a, dt) if isinstance(a, jax.Array) or np.asarray(a).nbytes >= SMALL
           else np.asarray(a, dt) for a, dt in zip(arrays, dtypes)]
    small = [i for i, a in enumerate(out) if isinstance(a, np.ndarray)]
    for i, moved in zip(small, jax.device_put([out[i] for i in small])):
        out[i] = moved
    return out


def copy_rows(out: np.ndarray, a: np.ndarray) -> None:
    """``out[...] = a`` (any dtype cast), in row blocks on every core for a large array."""
    workers = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if out.nbytes < PARALLEL or workers < 2 or out.ndim == 0 or out.shape[0] < workers:
        np.copyto(out, a, casting="unsafe")
        return
    bounds = np.linspace(0, out.shape[0], workers + 1).astype(int)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda i: np.copyto(out[bounds[i] : bounds[i + 1]], a[bounds[i] : bounds[i + 1]],
                                          casting="unsafe"), range(workers)))
