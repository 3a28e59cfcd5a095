"""Rows sharded across devices (JAX SPMD): X, y and the row weights split over a 1-d mesh, axis
``"rows"``, the rest replicated. Uneven row counts are padded with zero rows of weight 0."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gradfit import _precision
from gradfit._types import Data

AXIS = "rows"

AUTO_MIN_ROWS = 1 << 20  # devices=None shards from here on (below, the all-reduce costs more; a rough guide)


def resolve_devices(devices: Any, m: int) -> tuple[jax.Device, ...]:
    """The devices a fit of m rows runs on, from the ``devices=`` option; raise ValueError.

    ``None``: every device (all processes') when there are several and ``m >= AUTO_MIN_ROWS`` or several processes
    take part, else the first. An int d: the first d devices. A sequence: ``jax.Device`` objects or ids from
    ``jax.devices()``."""
    available = jax.devices()
    if devices is None:
        many = len(available) > 1 and (m >= AUTO_MIN_ROWS or jax.process_count() > 1)
        return tuple(available) if many else (available[0],)
    if isinstance(devices, bool):
        raise ValueError(f"devices must be None, a device count or a list of devices, got {devices!r}")
    if isinstance(devices, (int, np.integer)):
        if not 1 <= devices <= len(available):
            raise ValueError(f"devices={int(devices)} but {len(available)} device(s) are available "
                             f"({available[0].platform}): use an integer from 1 to {len(available)}, or None for all "
                             "of them")
        return tuple(available[: int(devices)])
    if isinstance(devices, (str, bytes)) or not isinstance(devices, Sequence) or len(devices) == 0:
        raise ValueError("devices must be None, a positive device count, "
                         f"or a non-empty list of jax devices or device ids, got {devices!r}")
    by_id = {d.id: d for d in available}
    chosen = []
    for d in devices:
        if isinstance(d, jax.Device):
            if d not in available:
                raise ValueError(f"device {d} is not one of jax.devices() ({len(available)} devices): pick from those")
            chosen.append(d)
        elif isinstance(d, (int, np.integer)) and not isinstance(d, bool) and int(d) in by_id:
            chosen.append(by_id[int(d)])
        else:
            raise ValueError(f"devices holds {d!r}, which is not a jax device or a device id; "
                             f"the ids are {sorted(by_id)}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"devices lists a device twice ({[d.id for d in chosen]}): give each device once")
    return tuple(chosen)


def row_mesh(devices: Sequence[jax.Device]) -> Mesh:
    """A 1-d mesh with axis ``"rows"`` over ``devices`` (in the order given)."""
    return Mesh(np.asarray(devices, dtype=object), (AXIS,))


def row_sharding(mesh: Mesh, row_axis: int = 0) -> NamedSharding:
    """``NamedSharding(mesh, P(None, ..., "rows"))``: axis ``row_axis`` split, the rest whole."""
    return NamedSharding(mesh, P(*([None] * row_axis), AXIS))


def padded_rows(m: int, n_devices: int) -> int:
    """The smallest multiple of ``n_devices`` that is >= m: ``ceil(m / d) * d``."""
    return -(-m // n_devices) * n_devices


def is_sharded(a: Any) -> bool:
    """True for a jax.Array laid out over more than one device (e.g. by :func:`shard_rows`)."""
    return isinstance(a, jax.Array) and len(a.sharding.device_set) > 1


def _pad_axis(a, axis: int, size: int, pad=np.pad):
    """``a`` with zeros appended along ``axis`` up to ``size``."""
    if a.shape[axis] == size:
        return a
    return pad(a, [(0, size - a.shape[axis] if i == axis else 0) for i in range(a.ndim)])


def place_rows(a, sharding: NamedSharding, row_axis: int, rows: int, dtype=None) -> jax.Array:
    """Put ``a`` on ``sharding``, its row axis zero-padded to ``rows``. A host array (or memory map)
    is cut into device blocks by ``jax.make_array_from_callback``: never copied whole."""
    dtype = np.dtype(a.dtype if dtype is None else dtype)
    shape = (*a.shape[:row_axis], rows, *a.shape[row_axis + 1 :])
    if isinstance(a, jax.Array):
        if a.is_fully_addressable:
            a = _pad_axis(a, row_axis, rows, jnp.pad)
        elif tuple(a.shape) != shape:
            raise ValueError(f"a global array of shape {tuple(a.shape)} cannot be padded to {rows} rows across "
                             "processes: give each process's rows to shard_rows as host arrays, or pad before "
                             "assembling")
        return jax.device_put(a.astype(dtype), sharding)
    m = a.shape[row_axis]

    def block(index: tuple[slice, ...]) -> np.ndarray:
        lo, hi, _ = index[row_axis].indices(rows)
        take = list(index)
        take[row_axis] = slice(min(lo, m), min(hi, m))
        return _pad_axis(np.asarray(a[tuple(take)], dtype), row_axis, hi - lo)

    return jax.make_array_from_callback(shape, sharding, block)


def shard_rows(data: Data, devices: Any = None, *, row_axis: int = 0, dtype=None) -> Data:
    """Split the rows of ``data`` across ``devices`` (as :func:`resolve_devices`) on ``P("rows")``.

    ``data``: host or jax arrays, X (m, n), y (m,) or (m, k), sample_weight (m,) or None; with ``row_axis=1`` each
    has a leading axis of B problems. ``dtype``: cast while placed (None: X's; a 16-bit X keeps its own). The result
    has ``ceil(m / d) * d`` rows: the padding is zeros of weight 0 (``sample_weight`` then present, 1 for unweighted
    rows). Minibatch fits of padded data need ``fit(..., n_rows=m)`` (:func:`gradfit.fit` keeps it itself when it
    pads)."""
    X, y, w = data
    m = X.shape[row_axis]
    if y.shape[row_axis] != m or (w is not None and w.shape[row_axis] != m):
        weights = "" if w is None else f" and sample_weight {w.shape[row_axis]}"
        raise ValueError(f"X has {m} rows but y has {y.shape[row_axis]}{weights}: "
                         "give one target and one weight per row")
    devs = resolve_devices(devices, m)
    rows = padded_rows(m, len(devs))
    dtype = np.dtype(X.dtype if dtype is None else dtype)
    if w is None and rows != m:
        w = np.ones(tuple(y.shape[: row_axis + 1]), dtype)
    sharding = row_sharding(row_mesh(devs), row_axis)
    return Data(place_rows(X, sharding, row_axis, rows, _precision.storage_dtype(X, dtype)),
                place_rows(y, sharding, row_axis, rows, dtype),
                None if w is None else place_rows(w, sharding, row_axis, rows, dtype))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array leaf of ``tree`` copied to all devices of ``mesh`` (each process supplies its own)."""
    sharding = NamedSharding(mesh, P())

    def one(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        if sharding.is_fully_addressable:
            return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree)


def mesh_of(data: Data) -> Mesh | None:
    """The mesh of row-sharded ``data`` (from :func:`shard_rows`), or None if X is on one device."""
    sharding = getattr(data.X, "sharding", None)
    return sharding.mesh if isinstance(sharding, NamedSharding) and len(sharding.device_set) > 1 else None
