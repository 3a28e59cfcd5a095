"""Reading ``.npy`` files in row chunks, for data bigger than memory (:mod:`gradfit.stream`).

X (m, n) and y (m,) or (m, k) are read through their memory maps in chunks of ``chunk_rows``
consecutive rows (``chunk_bytes`` of X, 64 MiB by default), copied to host memory and
``jax.device_put``, one small compiled function per chunk. A thread reads ``prefetch`` chunks
ahead and the pages read are dropped from the process (``madvise``; the page cache keeps them),
so the host holds about ``prefetch + 3`` chunks whatever the size of the files. Every chunk has
the same shape: the last is padded with zero rows of weight 0 (nothing recompiles, padding adds
nothing to any sum). NaN/inf (and bce targets outside [0, 1]) are found on the fly (:func:`chunk_ok`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import mmap
import operator
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from gradfit import _validation

DEFAULT_CHUNK_BYTES = 64 << 20
DEFAULT_PREFETCH = 2


# --------------------------------------------------------------------------- opening files
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _check_header(path: Path, name: str, where: str) -> None:
    """Check a .npy file's header: valid, matching the file's size, C order, a float dtype."""
    try:
        with path.open("rb") as f:
            try:
                read_header = _HEADER_READERS.get(np.lib.format.read_magic(f))
                if read_header is None:
                    raise ValueError("unsupported .npy format version (gradfit reads versions 1.0 and 2.0)")
                shape, fortran, dtype = read_header(f)
            except (ValueError, EOFError, SyntaxError) as e:
                raise ValueError(f"{where} is not a valid .npy file ({e}): write it with np.save") from None
            expected = f.tell() + math.prod(shape) * dtype.itemsize
    except OSError as e:
        raise ValueError(f"cannot read {where}: {e.strerror or e}") from None
    if (actual := path.stat().st_size) < expected:
        raise ValueError(f"{where} is truncated: its header promises an array of shape {shape} {dtype} ({expected} "
                         f"bytes with the header) but the file holds {actual} bytes; write it again (np.save, or "
                         "np.lib.format.open_memmap for files bigger than memory)")
    if fortran:
        raise ValueError(f"{where} is stored in Fortran (column-major) order, so its rows are not contiguous: "
                         f"write it again with np.save(path, np.ascontiguousarray({name}))")
    _check_float_dtype(dtype, name, str(path))


def open_array(source, name: str) -> np.ndarray:
    """``source`` (a .npy path, opened with ``np.load(mmap_mode="r")`` so nothing is read yet, or an
    array such as a memory map); ValueError for a missing, corrupt, truncated, Fortran-order or non-float one."""
    if isinstance(source, np.ndarray):
        _check_float_dtype(source.dtype, name, "the array")
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"{name} must be a path to a .npy file or a numpy array / memory map, "
                         f"got {type(source).__name__}")
    path = Path(source)
    where = f"{name} file {str(path)!r}"
    if not path.is_file():
        raise ValueError(f"{where} does not exist: check the path")
    if path.suffix != ".npy":
        raise ValueError(f"{where} is not a .npy file: streaming reads .npy files (np.save)")
    _check_header(path, name, where)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"{where} cannot be memory-mapped ({e}): write it again with np.save") from None


def _check_float_dtype(dtype, name: str, where: str) -> None:
    if (dtype := np.dtype(dtype)).kind != "f":
        raise ValueError(f"{name} in {where} has dtype {dtype}, not a float: streaming reads float32 or float64 data; "
                         f"convert it once, e.g. np.save(path, {name}.astype(np.float32)) chunk by chunk")


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
def _drop_pages(array: np.ndarray, a: int, b: int) -> None:
    """Drop rows [a, b) of ``array``'s memory map (if it is one) from this process only:
    ``madvise(MADV_DONTNEED)``; the page cache keeps them, and they fault back in if read again."""
    mm = getattr(array, "_mmap", None)
    if not isinstance(mm, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED") or array.ndim == 0:
        return
    try:
        start = array.ctypes.data - np.frombuffer(mm, np.uint8).ctypes.data
    except (TypeError, ValueError):
        return
    lo, hi = start + a * array.strides[0], start + b * array.strides[0]
    lo -= lo % mmap.PAGESIZE
    hi = min(len(mm), hi + (-hi) % mmap.PAGESIZE)
    if hi > lo:
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


@dataclass(frozen=True)
class StreamedData:
    """X (m, n) and y (m,) or (m, k) (from :func:`open_array`) read in chunks of ``chunk_rows`` rows
    of rows ``[start, stop)``, converted to the compute ``dtype``."""

    X: np.ndarray
    y: np.ndarray
    start: int
    stop: int
    chunk_rows: int
    dtype: np.dtype

    @classmethod
    def open(cls, X, y, *, rows: tuple[int, int] | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
             batch_size: int | None = None, dtype=None) -> "StreamedData":
        """Open X and y, check them against each other, and plan the chunks (nothing is read):
        ``chunk_rows = max(1, chunk_bytes // bytes per row of X)``, rounded down to a multiple
        of ``batch_size`` when given (at least one batch), and at most the rows to read."""
        chunk_bytes = _validation.positive_int(chunk_bytes, "chunk_bytes")
        X, y = open_array(X, "X"), open_array(y, "y")
        if X.ndim != 2:
            raise ValueError(f"X has shape {X.shape}: expected (m, n), rows of samples")
        if y.ndim not in (1, 2):
            raise ValueError(f"y has shape {y.shape}: expected (m,) for one output or (m, k) for k outputs")
        m, n = X.shape
        if y.shape[0] != m:
            raise ValueError(f"X has {m} rows but y has {y.shape[0]}: "
                             "give one target per row of X (the files do not match)")
        if m == 0 or n == 0 or (y.ndim == 2 and y.shape[1] == 0):
            raise ValueError(f"X {X.shape} and y {y.shape} are empty: "
                             "a fit needs at least one row, feature and output")
        start, stop = 0, m
        if rows is not None:
            try:
                start, stop = (operator.index(r) for r in rows)
            except (TypeError, ValueError):
                start = stop = -1
            if not 0 <= start < stop <= m:
                raise ValueError(f"rows={rows!r} is not a range of rows of X: "
                                 f"use (start, stop) with 0 <= start < stop <= {m}")
        if dtype is not None:
            _check_float_dtype(dtype, "dtype", "the dtype option")
        dtype = _validation.float_dtype(X if dtype is None else np.empty(0, dtype))  # float64 only with jax_enable_x64
        chunk_rows, most = max(1, chunk_bytes // (n * X.dtype.itemsize)), stop - start
        if batch_size is not None:  # whole batches; at most those covering the rows
            chunk_rows = max(batch_size, chunk_rows - chunk_rows % batch_size)
            most = -(-most // batch_size) * batch_size
        return cls(X, y, start, stop, min(chunk_rows, most), dtype)

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
        """Chunk i on the host, zero-padded: (X (chunk_rows, n), y (chunk_rows[, k]), valid rows);
        with ``seed``, the valid rows come in the order ``np.random.default_rng(seed).permutation``."""
        a, b = self.bounds(i)
        order = None if seed is None else np.random.default_rng(seed).permutation(b - a)
        X, y = (_read_rows(arr, a, b, self.chunk_rows, self.dtype, order) for arr in (self.X, self.y))
        return X, y, b - a


def _read_rows(array: np.ndarray, a: int, b: int, rows: int, dtype, order: np.ndarray | None = None) -> np.ndarray:
    """Rows [a, b) of ``array`` (gathered in ``order``) in a fresh zero-padded buffer of ``rows`` rows,
    64-byte aligned so that on CPU ``jax.device_put`` aliases it instead of copying (never written after)."""
    dtype = np.dtype(dtype)
    shape = (rows, *array.shape[1:])
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + 64, np.uint8)
    offset = (-raw.ctypes.data) % 64
    out = raw[offset : offset + nbytes].view(dtype).reshape(shape)
    if order is None:
        out[: b - a] = array[a:b]
    else:  # one contiguous read, then the gather in memory
        np.take(np.asarray(array[a:b]).astype(dtype, copy=False), order, axis=0, out=out[: b - a])
    out[b - a :] = 0
    _drop_pages(array, a, b)
    return out


# --------------------------------------------------------------------------- prefetching
_DONE = object()


class Prefetcher:
    """Iterate over ``produce(i)`` for i in ``order``, computed at most ``depth`` items ahead on a thread.

    An exception in ``produce`` is re-raised in the consumer; leaving the ``with`` block (normally,
    by ``break`` or by an exception) stops the thread and joins it.
    """

    def __init__(self, produce: Callable[[int], Any], order: Iterable[int], depth: int = DEFAULT_PREFETCH):
        self._produce = produce
        self._order = list(order)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="gradfit-prefetch", daemon=True)
        self._error: BaseException | None = None  # from produce, raised in the consumer

    def _put(self, item) -> bool:
        """Queue ``item``, waiting while the queue is full; False if stopped first."""
        while not self._stop.is_set():
            with contextlib.suppress(queue.Full):
                self._queue.put(item, timeout=0.05)
                return True
        return False

    def _work(self) -> None:
        try:
            for i in self._order:
                if self._stop.is_set() or not self._put(self._produce(i)):
                    return
        except BaseException as e:
            self._error = e
        self._put(_DONE)

    def __enter__(self) -> "Prefetcher":
        self._start()
        return self

    def _start(self) -> None:
        if self._thread.ident is None:
            self._thread.start()

    def __iter__(self) -> Iterator[Any]:
        self._start()
        while (item := self._queue.get()) is not _DONE:
            yield item
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Stop the thread and wait for it (it finishes at most the item it is producing)."""
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                while True:
                    self._queue.get_nowait()
            self._thread.join(timeout=0.05)

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


# --------------------------------------------------------------------------- one pass
def chunk_ok(X, y, loss: str) -> jax.Array:
    """True when a chunk is finite (and, for bce, its targets lie in [0, 1]); padding passes."""
    ok = jnp.all(jnp.isfinite(X)) & jnp.all(jnp.isfinite(y))
    if loss == "bce":
        ok &= jnp.all((y >= 0) & (y <= 1))
    return ok


def raise_bad_chunk(data: StreamedData, oks: list[tuple[int, jax.Array]], loss: str) -> None:
    """Raise ValueError naming the first bad rows, if any chunk failed :func:`chunk_ok`."""
    if not oks or (flags := np.asarray(jnp.stack([ok for _, ok in oks]))).all():
        return
    i = oks[int(np.argmin(flags))][0]
    a, b = data.bounds(i)
    X, y, valid = data.read(i)
    X, y = X[:valid], y[:valid]
    for name, arr in (("X", X), ("y", y)):
        bad = ~np.isfinite(arr.reshape(valid, -1)).all(axis=1)
        if bad.any():
            raise ValueError(f"{name} has NaN or inf in rows {a}..{b - 1} (first at row {a + int(np.argmax(bad))}), "
                             "found while streaming: drop or impute those rows in the file first; nothing was fitted "
                             "or written")
    if loss != "bce":
        raise ValueError(f"rows {a}..{b - 1} failed the finiteness check but read back finite: "
                         "is the file being written?")
    raise ValueError(f"bce needs targets in [0, 1] but y in rows {a}..{b - 1} spans [{float(np.min(y)):g}, "
                     f"{float(np.max(y)):g}]: encode classes as 0/1")


def each_chunk(data: StreamedData, carry, step: Callable, *, prefetch: int, order: Iterable[int] | None = None,
               seed: tuple[int, ...] | None = None, check: str | None = None):
    """One streamed pass: ``carry, ok = step(carry, X, y, weight, i)`` for each device chunk i.

    Chunks come in ``order``, read ``prefetch`` ahead on a thread (which uses the caller's x64
    setting); with ``seed``, chunk i's rows are permuted by ``default_rng((*seed, i))``; at most
    one chunk waits behind JAX's asynchronous dispatch. ``weight`` is 1 on valid rows, 0 on
    padding. With ``check`` (the loss), a bad chunk (:func:`chunk_ok`) raises ValueError naming
    its rows once the pass is over, before anything is used.
    """
    x64 = bool(jax.config.jax_enable_x64)
    weight = functools.cache(lambda valid: jnp.asarray(np.arange(data.chunk_rows) < valid, data.dtype))

    def produce(i):
        X, y, valid = data.read(i, None if seed is None else (*seed, int(i)))
        with jax.enable_x64(x64):
            return i, *jax.device_put((X, y)), valid

    oks, last = [], None
    with Prefetcher(produce, range(data.n_chunks) if order is None else order, prefetch) as stream:
        for i, X, y, valid in stream:
            carry, ok = step(carry, X, y, weight(valid), i)
            if check is not None:
                oks.append((i, ok))
            if last is not None:  # wait for the previous chunk's result
                last.block_until_ready()
            last = jax.tree.leaves(carry)[0]
    if check is not None:
        raise_bad_chunk(data, oks, check)
    return carry
