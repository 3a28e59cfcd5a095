"""Data bigger than memory: X and y streamed from ``.npy`` files in row chunks.

The data live in two ``.npy`` files (or ``np.memmap`` / ``np.load(mmap_mode="r")`` arrays),
X (m, n) and y (m,) or (m, k). They are read through their memory maps in chunks of
``chunk_rows`` consecutive rows (``chunk_bytes`` of X, 64 MiB by default), copied to host
memory, ``jax.device_put`` and consumed by one small compiled function per chunk. A
background thread reads the next chunk while the device works on the current one (a queue
of ``prefetch`` chunks), and the pages of the map that a chunk read are dropped from the
process (``madvise(MADV_DONTNEED)``; the kernel's page cache keeps them, not the process),
so the host holds about ``prefetch + 3`` chunks (being read, queued, being computed, next
dispatched) whatever the size of the files.

Every chunk has the same shape: the last, short one is padded with zero rows of weight 0,
so nothing recompiles and padded rows add nothing to any sum.

Three plans, one streamed pass each:

- **Sufficient statistics** (mse, full batch; ``method="statistics"``): one pass gathers
  :class:`Statistics` (``X^T X``, ``X^T y``, ``sum ||y_i||^2``, column sums, m); then every
  step costs O(n^2 k), whatever m, with the iterates of full-batch gradient descent
  (:func:`statistics_objective` is the same objective written in the statistics).
- **Full-batch passes** (bce, or mse with ``method="passes"``): each step is one pass that
  sums the ``reduction="sum"`` objective and its gradient over the chunks, then the scale
  (1/m, 1/(2m) or 1), the L2 term and the optax update.
- **Minibatch epochs** (``batch_size``): chunks are visited in a fresh random order each
  epoch (numpy ``default_rng((seed, epoch))``); inside a chunk the valid rows are permuted by
  the reading thread (numpy ``default_rng((seed, epoch, chunk))``, a cheap host gather that
  overlaps the device's work) and cut into batches of ``batch_size`` rows; the short last batch of the short last chunk is kept (its
  padded rows weigh 0), batches of padding only are skipped. Every row is used once per
  epoch; a batch never mixes rows of two chunks (``chunk_rows`` is a multiple of
  ``batch_size``). ``shuffle=False`` visits rows in file order.

The step, the optimizer and the stopping rules are :mod:`gradfit.solver`'s
(:func:`~gradfit.solver.value_and_grad`, :func:`~gradfit.solver.advance`), so a streamed fit
returns the same :class:`~gradfit.FitResult` as :func:`gradfit.fit` with the same iterates,
up to the order of floating-point sums.

NaN or inf in X or y (and bce targets outside [0, 1]) are found on the fly during the first
pass, at no extra read; the fit then raises ``ValueError`` naming the rows, before any update
is applied or anything is written.

For several processes (:func:`row_range`), each reads only its own rows: statistics and
per-pass sums add up across row ranges.
"""

from __future__ import annotations

import math
import mmap
import operator
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradfit import _optim, _validation, losses, solver
from gradfit._params import Params

DEFAULT_CHUNK_BYTES = 64 << 20
DEFAULT_PREFETCH = 2
METHODS = ("auto", "statistics", "passes")


# --------------------------------------------------------------------------- opening files
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _read_header_any(f):
    raise ValueError("unsupported .npy format version (gradfit reads versions 1.0 and 2.0)")


def _npy_header(path: Path, name: str) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """(shape, dtype, fortran_order, data offset) of a .npy file, checked against its size."""
    try:
        with path.open("rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                shape, fortran, dtype = _HEADER_READERS.get(version, _read_header_any)(f)
            except (ValueError, EOFError, SyntaxError) as e:
                raise ValueError(
                    f"{name} file {str(path)!r} is not a valid .npy file ({e}): write it with np.save"
                ) from None
            offset = f.tell()
    except OSError as e:
        raise ValueError(f"cannot read {name} file {str(path)!r}: {e.strerror or e}") from None
    expected = offset + math.prod(shape) * dtype.itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise ValueError(
            f"{name} file {str(path)!r} is truncated: its header promises an array of shape {shape} "
            f"{dtype} ({expected} bytes with the header) but the file holds {actual} bytes; "
            "write it again (np.save, or np.lib.format.open_memmap for files bigger than memory)"
        )
    return shape, dtype, fortran, offset


def open_array(source, name: str) -> np.ndarray:
    """Open ``source`` (a path to a .npy file, or an array such as a memory map) for streaming.

    Paths are opened with ``np.load(mmap_mode="r")``: nothing is read yet. Raises ValueError
    for a missing, corrupt or truncated file, an array in Fortran order, or a dtype that is
    not a float.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"{name} file {str(path)!r} does not exist: check the path")
        if path.suffix != ".npy":
            raise ValueError(f"{name} file {str(path)!r} is not a .npy file: streaming reads .npy files (np.save)")
        _, dtype, fortran, _ = _npy_header(path, name)
        if fortran:
            raise ValueError(
                f"{name} file {str(path)!r} is stored in Fortran (column-major) order, so its rows are not "
                f"contiguous: write it again with np.save(path, np.ascontiguousarray({name}))"
            )
        _check_float_dtype(dtype, name, str(path))
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise ValueError(f"{name} file {str(path)!r} cannot be memory-mapped ({e}): write it again with np.save") from None
    elif isinstance(source, np.ndarray):
        array = source
        _check_float_dtype(array.dtype, name, "the array")
    else:
        raise ValueError(
            f"{name} must be a path to a .npy file or a numpy array / memory map, got {type(source).__name__}"
        )
    return array


def _check_float_dtype(dtype, name: str, where: str) -> None:
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(
            f"{name} in {where} has dtype {dtype}, not a float: streaming reads float32 or float64 data; "
            f"convert it once, e.g. np.save(path, {name}.astype(np.float32)) chunk by chunk"
        )


def row_range(m: int, index: int, count: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of part ``index`` of ``count`` near-equal contiguous parts of m rows.

    The first ``m % count`` parts hold one row more; no row is dropped. For one process of
    several: ``StreamedData(X, y, rows=row_range(m, jax.process_index(), jax.process_count()))``.
    """
    if not 0 <= index < count:
        raise ValueError(f"part index {index} is out of range for {count} parts: use 0 <= index < count")
    base, extra = divmod(m, count)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


# --------------------------------------------------------------------------- the reader
def _page_dropper(array: np.ndarray) -> Callable[[int, int], None] | None:
    """A function dropping rows [a, b) of ``array``'s memory map from the process, or None.

    ``madvise(MADV_DONTNEED)`` on a read-only shared file map unmaps the pages from this
    process only; they stay in the kernel's page cache and are faulted back in if read again.
    """
    mm = getattr(array, "_mmap", None)
    if not isinstance(mm, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED") or array.ndim == 0:
        return None
    try:
        base = np.frombuffer(mm, np.uint8).ctypes.data
    except (TypeError, ValueError):
        return None
    start = array.ctypes.data - base
    row_bytes = array.strides[0]
    page = mmap.PAGESIZE

    def drop(a: int, b: int) -> None:
        lo = start + a * row_bytes
        hi = start + b * row_bytes
        lo -= lo % page
        hi = min(len(mm), hi + (-hi) % page)
        if hi > lo:
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    return drop


@dataclass(frozen=True)
class StreamedData:
    """X and y read in row chunks of fixed shape.

    X: (m, n) and y: (m,) or (m, k) as opened by :func:`open_array`; ``rows`` the range
    ``[start, stop)`` this reader covers (all rows by default); ``chunk_rows`` rows per chunk;
    ``dtype`` the compute dtype chunks are converted to.
    """

    X: np.ndarray
    y: np.ndarray
    start: int
    stop: int
    chunk_rows: int
    dtype: np.dtype

    @classmethod
    def open(
        cls,
        X,
        y,
        *,
        rows: tuple[int, int] | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        batch_size: int | None = None,
        dtype=None,
    ) -> "StreamedData":
        """Open X and y, check them against each other, and plan the chunks (nothing is read).

        ``chunk_rows = max(1, chunk_bytes // bytes per row of X)``, rounded down to a multiple
        of ``batch_size`` when given (at least one batch), and at most the rows to read.
        """
        chunk_bytes = _validation.positive_int(chunk_bytes, "chunk_bytes")
        X = open_array(X, "X")
        y = open_array(y, "y")
        if X.ndim != 2:
            raise ValueError(f"X has shape {X.shape}: expected (m, n), rows of samples")
        if y.ndim not in (1, 2):
            raise ValueError(f"y has shape {y.shape}: expected (m,) for one output or (m, k) for k outputs")
        m, n = X.shape
        if y.shape[0] != m:
            raise ValueError(f"X has {m} rows but y has {y.shape[0]}: give one target per row of X (the files do not match)")
        if m == 0 or n == 0 or (y.ndim == 2 and y.shape[1] == 0):
            raise ValueError(f"X {X.shape} and y {y.shape} are empty: a fit needs at least one row, feature and output")
        start, stop = (0, m) if rows is None else _row_bounds(rows, m)
        if dtype is not None:
            _check_float_dtype(dtype, "dtype", "the dtype option")
        # float64 is kept only with jax_enable_x64, as in the in-memory fit.
        dtype = _validation.float_dtype(X if dtype is None else np.empty(0, dtype))
        chunk_rows = max(1, chunk_bytes // (n * X.dtype.itemsize))
        if batch_size is not None:
            chunk_rows = max(batch_size, chunk_rows - chunk_rows % batch_size)
        chunk_rows = min(chunk_rows, stop - start if batch_size is None else -(-(stop - start) // batch_size) * batch_size)
        return cls(X, y, start, stop, chunk_rows, dtype)

    @property
    def m(self) -> int:
        """Rows this reader covers."""
        return self.stop - self.start

    @property
    def n_chunks(self) -> int:
        return -(-self.m // self.chunk_rows)

    @property
    def bytes_per_pass(self) -> int:
        """Bytes of X and y read by one pass (in the files' dtypes)."""
        return self.m * (self.X.strides[0] + self.y.dtype.itemsize * int(np.prod(self.y.shape[1:])))

    def bounds(self, i: int) -> tuple[int, int]:
        """File rows ``[a, b)`` of chunk i."""
        a = self.start + i * self.chunk_rows
        return a, min(a + self.chunk_rows, self.stop)

    def read(self, i: int, seed: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        """Chunk i on the host: (X (chunk_rows, n), y (chunk_rows[, k]), valid rows), zero-padded.

        With ``seed``, the valid rows come in the order ``np.random.default_rng(seed).permutation``.
        """
        a, b = self.bounds(i)
        order = None if seed is None else np.random.default_rng(seed).permutation(b - a)
        return (
            _read_rows(self.X, a, b, self.chunk_rows, self.dtype, order),
            _read_rows(self.y, a, b, self.chunk_rows, self.dtype, order),
            b - a,
        )


def _aligned_empty(shape: tuple[int, ...], dtype, align: int = 64) -> np.ndarray:
    """An uninitialised array whose data start on an ``align``-byte boundary.

    On the CPU backend ``jax.device_put`` then aliases the buffer instead of copying it
    (XLA needs 64-byte alignment), which halves the memory and time of each chunk's transfer.
    Each chunk gets a fresh buffer, never written after the transfer, so aliasing is safe.
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + align, np.uint8)
    offset = (-raw.ctypes.data) % align
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


def _row_bounds(rows, m: int) -> tuple[int, int]:
    try:
        start, stop = (operator.index(r) for r in rows)
    except (TypeError, ValueError):
        start = stop = -1
    if not 0 <= start < stop <= m:
        raise ValueError(f"rows={rows!r} is not a range of rows of X: use (start, stop) with 0 <= start < stop <= {m}")
    return start, stop


def _read_rows(array: np.ndarray, a: int, b: int, rows: int, dtype, order: np.ndarray | None = None) -> np.ndarray:
    out = _aligned_empty((rows, *array.shape[1:]), dtype)
    if order is None:
        out[: b - a] = array[a:b]
    else:
        block = np.asarray(array[a:b])  # one contiguous read, then the gather in memory
        np.take(block.astype(dtype, copy=False), order, axis=0, out=out[: b - a])
    out[b - a :] = 0
    drop = _page_dropper(array)
    if drop is not None:
        drop(a, b)
    return out


# --------------------------------------------------------------------------- prefetching
class _Failure(NamedTuple):
    error: BaseException


_DONE = object()


class Prefetcher:
    """Iterate over ``produce(i)`` for i in ``order``, computed ``depth`` items ahead on a thread.

    The queue holds at most ``depth`` finished items; the thread waits when it is full. An
    exception in ``produce`` is re-raised in the consumer; leaving the ``with`` block (normally,
    by ``break`` or by an exception) stops the thread and joins it.
    """

    def __init__(self, produce: Callable[[int], Any], order: Iterable[int], depth: int = DEFAULT_PREFETCH):
        self._produce = produce
        self._order = list(order)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="gradfit-prefetch", daemon=True)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for i in self._order:
                if self._stop.is_set() or not self._put(self._produce(i)):
                    return
        except BaseException as e:  # handed to the consumer, raised there
            self._put(_Failure(e))
            return
        self._put(_DONE)

    def __enter__(self) -> "Prefetcher":
        self._start()
        return self

    def _start(self) -> None:
        if self._thread.ident is None:
            self._thread.start()

    def __iter__(self) -> Iterator[Any]:
        self._start()
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def close(self) -> None:
        """Stop the thread and wait for it (it finishes at most the item it is producing)."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


def _chunks(data: StreamedData, order: Iterable[int], depth: int, device=None, seed: tuple[int, ...] | None = None) -> Prefetcher:
    """Prefetched ``(i, X, y, valid)`` device chunks of ``data`` in ``order``; with ``seed``,
    the rows of chunk i are permuted by ``default_rng((*seed, i))``.

    JAX's x64 switch can be set per thread (``with jax.enable_x64(True)``): the reading
    thread uses the caller's setting, so float64 chunks stay float64.
    """
    x64 = bool(jax.config.jax_enable_x64)

    def produce(i):
        X, y, valid = data.read(i, None if seed is None else (*seed, int(i)))
        with jax.enable_x64(x64):
            X, y = jax.device_put((X, y), device)
        return i, X, y, valid

    return Prefetcher(produce, order, depth)


# --------------------------------------------------------------------------- checking chunks
def _chunk_ok(X, y, loss: str) -> jax.Array:
    """True when a chunk is finite (and, for bce, its targets lie in [0, 1]); padding passes."""
    ok = jnp.all(jnp.isfinite(X)) & jnp.all(jnp.isfinite(y))
    if loss == "bce":
        ok &= jnp.all((y >= 0) & (y <= 1))
    return ok


def _raise_bad_chunk(data: StreamedData, oks: list[tuple[int, jax.Array]], loss: str) -> None:
    """Raise ValueError naming the first bad rows, if any chunk failed :func:`_chunk_ok`."""
    if not oks:
        return
    flags = np.asarray(jnp.stack([ok for _, ok in oks]))
    if flags.all():
        return
    i = oks[int(np.argmin(flags))][0]
    a, b = data.bounds(i)
    X, y, valid = data.read(i)
    X, y = X[:valid], y[:valid]
    for name, arr in (("X", X), ("y", y)):
        bad = ~np.isfinite(arr.reshape(valid, -1)).all(axis=1)
        if bad.any():
            row = a + int(np.argmax(bad))
            raise ValueError(
                f"{name} has NaN or inf in rows {a}..{b - 1} (first at row {row}), found while streaming: "
                f"drop or impute those rows in the file first; nothing was fitted or written"
            )
    if loss != "bce":
        raise ValueError(f"rows {a}..{b - 1} failed the finiteness check but read back finite: is the file being written?")
    lo, hi = float(np.min(y)), float(np.max(y))
    raise ValueError(
        f"bce needs targets in [0, 1] but y in rows {a}..{b - 1} spans [{lo:g}, {hi:g}]: encode classes as 0/1"
    )


# --------------------------------------------------------------------------- sufficient statistics
class Statistics(NamedTuple):
    """Sufficient statistics of MSE over m rows (in the compute dtype), about a shift.

    With the shifted rows ``x'_i = x_i - x_shift`` and ``y'_i = y_i - y_shift``:
    XtX: (n, n) ``X'^T X'``. Xty: (n,) or (n, k) ``X'^T y'``. yty: () ``sum_i ||y'_i||^2``.
    x_sum: (n,) ``sum_i x'_i``. y_sum: () or (k,) ``sum_i y'_i``. count: () m.
    x_shift: (n,), y_shift: () or (k,): by default the means of the first chunk's rows when
    some column's mean there exceeds twice its standard deviation, else 0 (no shift, no cost).

    The shift keeps float32 statistics exact enough for columns far from zero: a column of
    mean 1000 and spread 1 loses its spread to rounding in a raw ``X^T X`` (about 5% error in
    W when solved), not in the shifted one. Shifting costs one more write and read of each
    chunk, so centred data skip it. Statistics with the same shift (see
    ``sufficient_statistics(shift=)``) of disjoint row ranges add up field by field, shifts
    excepted. :func:`unshifted` gives the raw moments in float64.
    """

    XtX: jax.Array
    Xty: jax.Array
    yty: jax.Array
    x_sum: jax.Array
    y_sum: jax.Array
    count: jax.Array
    x_shift: jax.Array
    y_shift: jax.Array


def unshifted(stats: Statistics) -> Statistics:
    """The raw moments ``X^T X``, ``X^T y``, ... (shift 0) in float64 numpy, from shifted ones.

    ``X^T X = X'^T X' + x_sum' mu^T + mu x_sum'^T + m mu mu^T`` and likewise for the others
    (mu = x_shift, nu = y_shift).
    """
    s = Statistics(*(np.asarray(a, np.float64) for a in stats))
    mu, nu, m = s.x_shift, s.y_shift, s.count
    outer = np.multiply.outer
    return Statistics(
        XtX=s.XtX + outer(s.x_sum, mu) + outer(mu, s.x_sum) + m * outer(mu, mu),
        Xty=s.Xty + outer(s.x_sum, nu) + outer(mu, s.y_sum) + m * outer(mu, nu),
        yty=s.yty + 2 * np.sum(nu * s.y_sum) + m * np.sum(nu * nu),
        x_sum=s.x_sum + m * mu,
        y_sum=s.y_sum + m * nu,
        count=m,
        x_shift=np.zeros_like(mu),
        y_shift=np.zeros_like(nu),
    )


def _chunk_statistics(X: jax.Array, y: jax.Array, weight: jax.Array, x_shift: jax.Array, y_shift: jax.Array,
                      shifted: bool = True) -> Statistics:
    """The statistics of one chunk about the shift; rows of weight 0 (padding) add nothing.

    ``shifted=False`` ignores the shift (zero) and the weights (padding rows are zeros).
    The shifts are returned as zeros (they are not summed) and count as 0 (counted on the host).
    """
    Xs, ys = X, y
    if shifted:
        Xs = (X - x_shift[None, :]) * weight[:, None]
        ys = (y - y_shift) * weight if y.ndim == 1 else (y - y_shift[None, :]) * weight[:, None]
    return Statistics(
        XtX=jnp.tensordot(Xs, Xs, axes=(0, 0)),
        Xty=jnp.tensordot(Xs, ys, axes=(0, 0)),
        yty=jnp.sum(ys * ys),
        x_sum=jnp.sum(Xs, axis=0),
        y_sum=jnp.sum(ys, axis=0),
        count=jnp.zeros((), X.dtype),
        x_shift=jnp.zeros_like(x_shift),
        y_shift=jnp.zeros_like(y_shift),
    )


def _accumulate_statistics(total: Statistics, compensation: Statistics, X, y, weight, x_shift, y_shift, shifted: bool):
    """Add one chunk's statistics to the running total by Kahan (compensated) summation.

    Returns (total, compensation, chunk_ok): the sum over chunks keeps the error of a
    handful of roundings, not one per chunk.
    """
    part = _chunk_statistics(X, y, weight, x_shift, y_shift, shifted)
    adj = jax.tree.map(jnp.subtract, part, compensation)
    new = jax.tree.map(jnp.add, total, adj)
    compensation = jax.tree.map(lambda t, n, a: (n - t) - a, total, new, adj)
    return new, compensation, _chunk_ok(X, y, "mse")


def sufficient_statistics(
    X,
    y,
    *,
    rows: tuple[int, int] | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    prefetch: int = DEFAULT_PREFETCH,
    dtype=None,
    shift: tuple[Any, Any] | None = None,
) -> Statistics:
    """:class:`Statistics` of X and y (paths to .npy files or arrays) in one streamed pass.

    ``rows=(start, stop)`` reads only those rows (one process's part, :func:`row_range`).
    ``shift=(x_shift (n,), y_shift () or (k,))`` sets the shift (default: see
    :class:`Statistics`); give every process the same one when their statistics are to be added.
    Raises ValueError for unreadable files, mismatched shapes, and NaN/inf (naming the rows).
    """
    data = StreamedData.open(X, y, rows=rows, chunk_bytes=chunk_bytes, dtype=dtype)
    stats, _, _ = _statistics_pass(data, _validation.positive_int(prefetch, "prefetch"), shift)
    return stats


def _default_shift(data: StreamedData) -> tuple[np.ndarray, np.ndarray] | None:
    """The first chunk's column means of X and y (compute dtype) if some column's mean exceeds
    twice its standard deviation there, else None (no shift). Non-finite values count as 0 (the pass
    names the bad rows)."""
    X, y, valid = data.read(0)
    out = []
    far = False
    for a in (X[:valid], y[:valid]):
        a = a.reshape(valid, -1)
        with np.errstate(all="ignore"):
            mean = np.mean(a, axis=0, dtype=np.float64)
            std = np.std(a, axis=0, dtype=np.float64)
        far |= bool(np.any(np.abs(mean) > 2 * std))
        out.append(np.where(np.isfinite(mean), mean, 0).astype(data.dtype))
    if not far:
        return None
    return out[0], out[1].reshape(data.y.shape[1:])


def _statistics_pass(data: StreamedData, prefetch: int, shift=None) -> tuple[Statistics, float, float]:
    """One pass: (statistics, compile seconds, pass seconds)."""
    n = data.X.shape[1]
    out = tuple(data.y.shape[1:])
    dt = data.dtype
    shifted = True
    if shift is None:
        shift = _default_shift(data)
        if shift is None:
            shifted, shift = False, (np.zeros(n, dt), np.zeros(out, dt))
    x_shift, y_shift = (jnp.asarray(a, dt) for a in shift)
    if x_shift.shape != (n,) or y_shift.shape != out:
        raise ValueError(f"shift must be (x_shift {(n,)}, y_shift {out}), got {x_shift.shape} and {y_shift.shape}")
    total = Statistics(
        jnp.zeros((n, n), dt), jnp.zeros((n, *out), dt), jnp.zeros((), dt),
        jnp.zeros((n,), dt), jnp.zeros(out, dt), jnp.zeros((), dt), jnp.zeros((n,), dt), jnp.zeros(out, dt),
    )
    compensation = total
    accumulate, compile_seconds = _compiled(
        _accumulate_statistics, (("shifted", shifted),), (total, compensation, *_chunk_shapes(data), x_shift, y_shift)
    )
    weights = _weight_cache(data)
    oks = []
    pending: list = []
    start = time.perf_counter()
    with _chunks(data, range(data.n_chunks), prefetch) as chunks:
        for i, Xc, yc, valid in chunks:
            total, compensation, ok = accumulate(total, compensation, Xc, yc, weights(valid), x_shift, y_shift)
            oks.append((i, ok))
            _throttle(pending, total.yty)
    _raise_bad_chunk(data, oks, "mse")
    total = total._replace(count=jnp.asarray(data.m, dt), x_shift=x_shift, y_shift=y_shift)
    jax.block_until_ready(total)
    return total, compile_seconds, time.perf_counter() - start


def _chunk_shapes(data: StreamedData) -> tuple[jax.ShapeDtypeStruct, ...]:
    """Shapes of a chunk's X, y and row weights."""
    rows, dt = data.chunk_rows, data.dtype
    return (
        jax.ShapeDtypeStruct((rows, data.X.shape[1]), dt),
        jax.ShapeDtypeStruct((rows, *data.y.shape[1:]), dt),
        jax.ShapeDtypeStruct((rows,), dt),
    )


_EXECUTABLES: dict[tuple, Any] = {}


def _compiled(fn: Callable, static: tuple[tuple[str, Any], ...], args: tuple) -> tuple[Any, float]:
    """``fn`` compiled ahead of time for these argument shapes and static keyword arguments,
    and the seconds compiling took (0 when this process compiled it before)."""
    key = (fn, static, _signature(args))
    if key in _EXECUTABLES:
        return _EXECUTABLES[key], 0.0
    start = time.perf_counter()
    exe = jax.jit(fn, static_argnames=tuple(name for name, _ in static)).lower(*args, **dict(static)).compile()
    seconds = time.perf_counter() - start
    _EXECUTABLES[key] = exe
    return exe, seconds


def _signature(args) -> tuple:
    leaves, tree = jax.tree.flatten(args)
    return tree, tuple((tuple(x.shape), str(x.dtype), bool(getattr(x, "weak_type", False))) for x in leaves)


def _throttle(pending: list, latest: jax.Array, depth: int = 1) -> None:
    """Wait for the result dispatched ``depth`` chunks ago, so at most ``depth`` chunks' device
    buffers are queued behind JAX's asynchronous dispatch."""
    pending.append(latest)
    if len(pending) > depth:
        pending.pop(0).block_until_ready()


def statistics_objective(params: Params, stats: Statistics, l2, reduction: str) -> jax.Array:
    """The mse objective of :func:`gradfit.solver.objective`, written in the statistics.

    In the shifted rows, ``x_i W + b - y_i = x'_i W + b' - y'_i`` with
    ``b' = b + x_shift W - y_shift``, and
    ``sum_i ||y'_i - x'_i W - b'||^2 = yty - 2 <W, X'^T y'> - 2 <b', y_sum> + <W, X'^T X' W>
    + 2 <x_sum W, b'> + m ||b'||^2``, times ``c = 1/m`` ("mean"), ``1/(2m)`` ("half_mean") or 1
    ("sum"), plus ``(l2/2) ||W||^2``. Shapes as :class:`Statistics` and :class:`~gradfit.Params`.
    """
    scale = {"mean": 1 / stats.count, "half_mean": 1 / (2 * stats.count), "sum": 1}[reduction]
    return scale * _squared_error_sum(_shifted_params(params, stats), stats, jnp) + losses.l2_penalty(params, l2)


def _shifted_params(params: Params, s: Statistics) -> Params:
    """``(W, b + x_shift W - y_shift)``: the model in the shifted coordinates."""
    return Params(params.W, params.b + jnp.tensordot(s.x_shift, params.W, axes=(0, 0)) - s.y_shift)


def _squared_error_sum(params: Params, s: Statistics, xp) -> Any:
    """``sum_i ||y'_i - x'_i W - b'||^2`` from the statistics (params in the shifted
    coordinates, ``xp`` numpy or jax.numpy)."""
    W, b = params
    return (
        s.yty
        - 2 * xp.sum(W * s.Xty)
        - 2 * xp.sum(b * s.y_sum)
        + xp.sum(W * xp.tensordot(s.XtX, W, axes=(1, 0)))
        + 2 * xp.sum(xp.tensordot(s.x_sum, W, axes=(0, 0)) * b)
        + s.count * xp.sum(b * b)
    )


def statistics_gradient(params: Params, stats: Statistics, l2, reduction: str) -> Params:
    """The gradient of :func:`statistics_objective`, in closed form.

    In the shifted coordinates (b' as there): ``dW' = 2c (X'^T X' W + x_sum^T b' - X'^T y')``
    (x_sum^T b' the outer product), ``db' = 2c (x_sum W + m b' - y_sum)``: the Q&A seed's
    ``-(2/m) X^T (Y - Yhat)`` expanded. By the chain rule through b',
    ``dW = dW' + x_shift^T db' + l2 W`` and ``db = db'``.
    """
    W, b = _shifted_params(params, stats)
    s = stats
    scale = {"mean": 1 / s.count, "half_mean": 1 / (2 * s.count), "sum": 1}[reduction]

    def outer(u, v):
        return u * v if v.ndim == 0 else jnp.outer(u, v)

    db = 2 * scale * (jnp.tensordot(s.x_sum, W, axes=(0, 0)) + s.count * b - s.y_sum)
    dW = 2 * scale * (jnp.tensordot(s.XtX, W, axes=(1, 0)) + outer(s.x_sum, b) - s.Xty)
    return Params(dW + outer(s.x_shift, db) + l2 * W, db)


def solve_statistics(stats: Statistics, *, reduction: str = "mean", l2: float = 0.0, fit_intercept: bool = True):
    """The exact minimiser of :func:`statistics_objective` in float64 on the host: (Params, J*).

    From the raw moments (:func:`unshifted`), with an intercept the normal equations are solved
    on centred statistics, ``(2c (X^T X - m xbar xbar^T) + l2 I) W = 2c (X^T y - m xbar ybar^T)``,
    ``b = ybar - xbar W`` (without, xbar = ybar = 0 and b = 0).
    """
    s = unshifted(stats)
    c = {"mean": 1 / s.count, "half_mean": 1 / (2 * s.count), "sum": 1.0}[reduction]
    m = s.count
    xbar = s.x_sum / m if fit_intercept else np.zeros_like(s.x_sum)
    ybar = s.y_sum / m if fit_intercept else np.zeros_like(s.y_sum)
    A = 2 * c * (s.XtX - m * np.outer(xbar, xbar)) + l2 * np.eye(len(xbar))
    rhs = 2 * c * (s.Xty - m * (xbar * ybar if np.ndim(ybar) == 0 else np.outer(xbar, ybar)))
    W = np.linalg.lstsq(A, rhs, rcond=None)[0]
    b = ybar - xbar @ W
    params = Params(W, np.asarray(b))
    return params, float(c * _squared_error_sum(params, s, np) + 0.5 * l2 * np.sum(W * W))


def _statistics_chunk(state: solver.SolverState, stats: Statistics, hyper: solver.Hyper, static: solver.Static):
    """Up to ``static.chunk_size`` steps on the statistics in one ``lax.while_loop`` (as
    :func:`gradfit.solver.run_chunk`). Returns the state and the chunk's history (NaN-padded)."""
    history = jnp.full((static.chunk_size,), jnp.nan, stats.yty.dtype)

    def objective(p):
        return statistics_objective(p, stats, hyper.l2, static.reduction)

    def cond(carry):
        i, st, _ = carry
        return (i < static.chunk_size) & solver.is_active(st, hyper)

    def body(carry):
        i, st, hist = carry
        if static.grad == "hand":
            value, g = objective(st.params), statistics_gradient(st.params, stats, hyper.l2, static.reduction)
        else:
            value, g = jax.value_and_grad(objective)(st.params)
        if not static.fit_intercept:
            g = g._replace(b=jnp.zeros_like(g.b))
        opt = solver._optimizer(static, hyper)
        updates, opt_state = opt.update(g, st.opt_state, st.params, value=value, grad=g, value_fn=objective)
        st = solver.advance(st, hyper, value, optax.apply_updates(st.params, updates), opt_state, st.prev_params, st.key)
        return i + 1, st, hist.at[i].set(value)

    _, state, history = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), state, history))
    return state, history


# --------------------------------------------------------------------------- full-batch passes
def _pass_chunk(total: tuple, params: Params, X, y, weight, static: solver.Static):
    """Add one chunk's ``reduction="sum"`` objective (no L2) and gradient to ``total``.

    Returns (total, chunk_ok). The per-row terms are :func:`gradfit.solver.value_and_grad`'s
    (autodiff or hand-derived, as ``static.grad``); padded rows weigh 0.
    """
    zero = jnp.zeros((), X.dtype)
    value, g = solver.value_and_grad(params, solver.Data(X, y, weight), zero, static._replace(reduction="sum"))
    return jax.tree.map(jnp.add, total, (value, g)), _chunk_ok(X, y, static.loss)


def _value_chunk(total, params: Params, X, y, weight, static: solver.Static):
    """Add one chunk's ``reduction="sum"`` objective to ``total`` (no gradient)."""
    zero = jnp.zeros((), X.dtype)
    return total + solver.objective(params, solver.Data(X, y, weight), zero, static._replace(reduction="sum"))


def _scale(reduction: str, count: int) -> float:
    return {"mean": 1 / count, "half_mean": 1 / (2 * count), "sum": 1.0}[reduction]


def _apply_step(state: solver.SolverState, total_value, total_grad: Params, scale, hyper: solver.Hyper, static: solver.Static):
    """J_t = scale * sum + (l2/2)||W||^2 and its gradient, the optax update, and the stopping rules."""
    params = state.params
    value = scale * total_value + losses.l2_penalty(params, hyper.l2)
    g = jax.tree.map(lambda t: scale * t, total_grad)
    g = g._replace(W=g.W + hyper.l2 * params.W)
    opt = solver._optimizer(static, hyper)
    updates, opt_state = opt.update(g, state.opt_state, params, value=value, grad=g)
    return solver.advance(state, hyper, value, optax.apply_updates(params, updates), opt_state, state.prev_params, state.key), value


def _epoch_chunk(carry, X, y, valid, hyper: solver.Hyper, static: solver.Static):
    """Minibatch steps over one chunk: its rows (already shuffled, valid rows first) cut into
    batches of ``static.batch_size``; batches of padding only are skipped.

    ``carry`` is (params, opt_state, sum of batch value * batch rows, rows). Returns (carry, ok).
    """
    params, opt_state, value_sum, count_sum = carry
    rows = X.shape[0]
    bs = static.batch_size
    dtype = X.dtype
    mask = (jnp.arange(rows) < valid).astype(dtype)
    Xb = X.reshape(rows // bs, bs, X.shape[1])
    yb = y.reshape(rows // bs, bs, *y.shape[1:])
    wb = mask.reshape(rows // bs, bs)
    opt = solver._optimizer(static, hyper)

    def one_batch(c, batch):
        p, s = c
        xb, ybb, w = batch
        data = solver.Data(xb, ybb, w)
        value, g = solver.value_and_grad(p, data, hyper.l2, static)
        updates, s_new = opt.update(g, s, p, value=value, grad=g)
        p_new = optax.apply_updates(p, updates)
        count = jnp.sum(w)
        keep = count > 0
        p, s = jax.tree.map(lambda a, b: jnp.where(keep, a, b), (p_new, s_new), (p, s))
        return (p, s), (jnp.where(keep, value, 0), count)

    (params, opt_state), (values, counts) = jax.lax.scan(one_batch, (params, opt_state), (Xb, yb, wb))
    if static.reduction == "sum":
        value_sum = value_sum + jnp.sum(values)
    else:
        value_sum = value_sum + jnp.sum(values * counts)
    return (params, opt_state, value_sum, count_sum + jnp.sum(counts)), _chunk_ok(X, y, static.loss)


# --------------------------------------------------------------------------- fit_streaming
def _check_options(loss, reduction, grad, method, batch_size, optimizer, learning_rate, optimizer_options):
    losses.check_model(loss, reduction, grad, solver.GRAD_MODES)
    if grad == "stats":
        raise ValueError("fit_streaming takes sufficient statistics with method='statistics': leave grad as 'autodiff' or use 'hand'")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(map(repr, METHODS))}")
    if method == "auto":
        method = "statistics" if loss == "mse" and batch_size is None else "passes"
    if method == "statistics" and loss != "mse":
        raise ValueError("method='statistics' is for loss='mse' only: use method='passes' (or 'auto') for bce")
    if method == "statistics" and batch_size is not None:
        raise ValueError("method='statistics' runs full-batch steps: leave batch_size unset, or use method='passes'")
    if learning_rate is None and isinstance(optimizer, str) and optimizer not in _optim.LINE_SEARCH:
        learning_rate = solver.DEFAULT_LEARNING_RATE
    spec, traced = _optim.resolve(optimizer, optimizer_options, learning_rate)
    if method == "passes" and spec.name in _optim.LINE_SEARCH:
        raise ValueError(
            "optimizer 'lbfgs' evaluates the objective inside its line search, which a streamed pass cannot do "
            "within one step: use a first-order optimizer ('sgd', 'adam', ...), or method='statistics' for mse"
        )
    return method, learning_rate, spec, traced


def fit_streaming(
    X,
    y,
    *,
    loss: str = "mse",
    reduction: str = "mean",
    optimizer: Any = "sgd",
    learning_rate: float | None = None,
    steps: int = 1000,
    tol: float | None = None,
    l2: float = 0.0,
    grad: str = "autodiff",
    init: Params | str | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    fit_intercept: bool = True,
    optimizer_options: dict[str, Any] | None = None,
    method: str = "auto",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    prefetch: int = DEFAULT_PREFETCH,
    rows: tuple[int, int] | None = None,
    shuffle: bool = True,
    dtype=None,
    chunk_size: int = solver.DEFAULT_CHUNK_SIZE,
    callback: Callable[[solver.SolverState, np.ndarray], None] | None = None,
) -> solver.FitResult:
    """:func:`gradfit.fit` for data bigger than memory, streamed from ``.npy`` files.

    X and y are paths to ``.npy`` files (or numpy arrays / memory maps), X (m, n) and y (m,)
    or (m, k); the options shared with :func:`gradfit.fit` mean the same (scalar learning
    rate and l2 only; no sample weights or batched problems). ``gradfit.fit`` itself loads
    its arguments into memory: call this function to stream.

    Args:
      method: ``"statistics"`` (mse: one pass for :class:`Statistics`, then every step is
        O(n^2 k)), ``"passes"`` (one streamed pass per full-batch step or minibatch epoch),
        or ``"auto"``: statistics for full-batch mse, passes otherwise.
      chunk_bytes: bytes of X per chunk (rows rounded to a multiple of ``batch_size``).
      prefetch: chunks read ahead by the background thread.
      rows: ``(start, stop)``: fit on those rows of the files only.
      shuffle: with ``batch_size``, shuffle the chunk order and the rows within each chunk
        every epoch (see the module docstring); False keeps file order.
      dtype: compute dtype (default: the file's float dtype, float32 without x64).
      chunk_size: steps per compiled chunk on the statistics.
      callback: ``callback(state, history)`` after every streamed step (between compiled
        chunks on the statistics).

    Returns:
      A :class:`~gradfit.FitResult`; ``stats`` adds ``method``, ``passes`` (streamed passes
      over the files), ``bytes_per_pass``, ``chunk_rows``, ``n_chunks`` and
      ``stream_seconds`` (time in streamed passes), and with the statistics plan
      ``sufficient_statistics`` (the :class:`Statistics`, e.g. for :func:`solve_statistics`). ``loss`` is the objective at ``params``
      (one more pass unless the fit converged, when ``params`` is the point last evaluated).

    Raises:
      ValueError: bad options or files (before any read), and NaN/inf or out-of-range bce
      targets found during the first pass (naming the rows; before any update).
    """
    method, learning_rate, spec, traced = _check_options(
        loss, reduction, grad, method, batch_size, optimizer, learning_rate, optimizer_options
    )
    steps = _validation.positive_int(steps, "steps")
    chunk_size = _validation.positive_int(chunk_size, "chunk_size")
    prefetch = _validation.positive_int(prefetch, "prefetch")
    if batch_size is not None:
        batch_size = _validation.positive_int(batch_size, "batch_size")
    if not isinstance(fit_intercept, bool):
        raise ValueError(f"fit_intercept must be True or False, got {fit_intercept!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    lr = None if learning_rate is None else _validation.hyperparameter(learning_rate, "learning_rate", positive=True)
    l2_arr = _validation.hyperparameter(l2, "l2", positive=False)
    tol_arr = np.asarray(-1.0) if tol is None else _validation.hyperparameter(tol, "tol", positive=False)

    data = StreamedData.open(X, y, rows=rows, chunk_bytes=chunk_bytes, batch_size=batch_size, dtype=dtype)
    if batch_size is not None and batch_size > data.m:
        raise ValueError(f"batch_size={batch_size} is larger than the {data.m} rows: use batch_size <= {data.m} or None")
    dt = data.dtype
    n = data.X.shape[1]
    out = tuple(data.y.shape[1:])
    params, run_key = solver.initial_params(init, seed, n, out, dt)
    hyper = solver.hyper_arrays(lr, l2_arr, tol_arr, steps, traced, dt)
    static = solver.Static(
        loss=loss, reduction=reduction, grad=grad, optimizer=spec, has_learning_rate=lr is not None,
        fit_intercept=fit_intercept, batch_size=batch_size, chunk_size=chunk_size,
    )
    # init_state reads only the dtype of data.X: a row-less stand-in keeps one definition of the state.
    stand_in = solver.Data(jnp.zeros((0, n), dt), jnp.zeros((0, *out), dt))
    init, init_seconds = _compiled(solver.init_state, (("static", static),), (params, stand_in, hyper, run_key))
    state = init(params, stand_in, hyper, run_key)

    runner = {"statistics": _run_statistics, "passes": _run_passes}[method]
    state, history, final_loss, info = runner(state, data, hyper, static, prefetch, shuffle, seed, callback)

    steps_taken, converged, diverged = int(state.step), bool(state.converged), bool(state.diverged)
    stats = {
        "compile_seconds": init_seconds + info["compile_seconds"],
        "run_seconds": info["run_seconds"],
        "stream_seconds": info["stream_seconds"],
        "passes": info["passes"],
        "backend": jax.default_backend(),
        "dtype": str(dt),
        "loss": loss,
        "reduction": reduction,
        "optimizer": spec.name or type(optimizer).__name__,
        "grad": grad,
        "method": method,
        "bytes_per_pass": data.bytes_per_pass,
        "chunk_rows": data.chunk_rows,
        "n_chunks": data.n_chunks,
        "rows": (data.start, data.stop),
        "vmapped": [],
    }
    if "sufficient_statistics" in info:
        stats["sufficient_statistics"] = info["sufficient_statistics"]
    if diverged:
        solver._warn_divergence(steps_taken, diverged, learning_rate)
    return solver.FitResult(state.params, final_loss, history, steps_taken, converged, diverged, stats)


def _run_statistics(state, data: StreamedData, hyper, static, prefetch, shuffle, seed, callback):
    stats, compile_seconds, stream_seconds = _statistics_pass(data, prefetch)
    chunk, seconds = _compiled(_statistics_chunk, (("static", static),), (state, stats, hyper))
    compile_seconds += seconds
    start = time.perf_counter()
    histories = []
    while True:
        state, history = chunk(state, stats, hyper)
        histories.append(np.asarray(history))
        if callback is not None:
            callback(state, np.concatenate(histories))
        if not solver._active_host(state, hyper).any():
            break
    history = np.concatenate(histories)[: int(state.step)]
    final, seconds = _compiled(statistics_objective, (("reduction", static.reduction),), (state.params, stats, hyper.l2))
    compile_seconds += seconds
    final_loss = final(state.params, stats, hyper.l2)
    jax.block_until_ready(final_loss)
    info = dict(compile_seconds=compile_seconds, run_seconds=stream_seconds + time.perf_counter() - start,
                stream_seconds=stream_seconds, passes=1, sufficient_statistics=stats)
    return state, history, final_loss, info


def _run_passes(state, data: StreamedData, hyper, static, prefetch, shuffle, seed, callback):
    dt = data.dtype
    X0, y0, w0 = _chunk_shapes(data)
    zero = jnp.zeros((), dt)
    grad0 = jax.tree.map(jnp.zeros_like, state.params)
    st = (("static", static),)
    value_pass, compile_seconds = _compiled(_value_chunk, st, (zero, state.params, X0, y0, w0))
    if static.batch_size is None:
        grad_pass, seconds = _compiled(_pass_chunk, st, ((zero, grad0), state.params, X0, y0, w0))
        apply, more = _compiled(_apply_step, st, (state, zero, grad0, zero, hyper))
        compile_seconds += seconds + more
    else:
        valid0 = jnp.zeros((), jnp.int32)
        epoch_chunk, seconds = _compiled(
            _epoch_chunk, st, ((state.params, state.opt_state, zero, zero), X0, y0, valid0, hyper),
        )
        end_epoch, more = _compiled(_end_epoch, st, (state, (state.params, state.opt_state, zero, zero), hyper))
        compile_seconds += seconds + more
    finish, seconds = _compiled(_finish_value, (), (zero, state.params, zero, hyper.l2))
    compile_seconds += seconds
    weights = _weight_cache(data)
    scale = jnp.asarray(_scale(static.reduction, data.m), dt)
    history: list[float] = []
    passes = 0
    stream_seconds = 0.0
    start = time.perf_counter()
    while solver._active_host(state, hyper).any():
        t = time.perf_counter()
        check = passes == 0  # the data do not change between passes: check them once
        oks: list = []
        pending: list = []
        if static.batch_size is None:
            total = (zero, grad0)
            with _chunks(data, range(data.n_chunks), prefetch) as chunks:
                for i, Xc, yc, valid in chunks:
                    total, ok = grad_pass(total, state.params, Xc, yc, weights(valid))
                    if check:
                        oks.append((i, ok))
                    _throttle(pending, total[0])
            if check:
                _raise_bad_chunk(data, oks, static.loss)
            state, value = apply(state, total[0], total[1], scale, hyper)
        else:
            epoch = int(state.step)
            order = np.random.default_rng((seed, epoch)).permutation(data.n_chunks) if shuffle else range(data.n_chunks)
            carry = (state.params, state.opt_state, zero, zero)
            with _chunks(data, order, prefetch, seed=(seed, epoch) if shuffle else None) as chunks:
                for i, Xc, yc, valid in chunks:
                    carry, ok = epoch_chunk(carry, Xc, yc, jnp.asarray(valid, jnp.int32), hyper)
                    if check:
                        oks.append((i, ok))
                    _throttle(pending, carry[2])
            if check:
                _raise_bad_chunk(data, oks, static.loss)
            state, value = end_epoch(state, carry, hyper)
        passes += 1
        stream_seconds += time.perf_counter() - t
        history.append(float(value))
        if callback is not None:
            callback(state, np.asarray(history, dt))
    if bool(state.converged) and static.batch_size is None:
        final_loss = state.loss  # the params are p_t, where J_t was evaluated
    else:
        t = time.perf_counter()
        total = zero
        pending = []
        with _chunks(data, range(data.n_chunks), prefetch) as chunks:
            for _, Xc, yc, valid in chunks:
                total = value_pass(total, state.params, Xc, yc, weights(valid))
                _throttle(pending, total)
        final_loss = finish(total, state.params, scale, hyper.l2)
        passes += 1
        stream_seconds += time.perf_counter() - t
    jax.block_until_ready(final_loss)
    info = dict(compile_seconds=compile_seconds, run_seconds=time.perf_counter() - start,
                stream_seconds=stream_seconds, passes=passes)
    return state, np.asarray(history, dt), final_loss, info


def _end_epoch(state: solver.SolverState, carry, hyper: solver.Hyper, static: solver.Static):
    """The epoch's mean minibatch objective (the sum for ``reduction="sum"``), then the stopping rules."""
    params, opt_state, value_sum, count_sum = carry
    value = value_sum if static.reduction == "sum" else value_sum / count_sum
    return solver.advance(state, hyper, value, params, opt_state, state.params, state.key), value


def _finish_value(total, params: Params, scale, l2):
    """``scale * sum + (l2/2) ||W||^2``: the objective from a pass's sum."""
    return scale * total + losses.l2_penalty(params, l2)


def _weight_cache(data: StreamedData) -> Callable[[int], jax.Array]:
    """Row weights of a chunk with ``valid`` rows (1 then 0), made once per distinct count."""
    cache: dict[int, jax.Array] = {}

    def weights(valid: int) -> jax.Array:
        if valid not in cache:
            cache[valid] = jnp.asarray(np.arange(data.chunk_rows) < valid, data.dtype)
        return cache[valid]

    return weights
