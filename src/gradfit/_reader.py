"""Reading ``.npy`` files for :mod:`gradfit.stream` in chunks of ``chunk_rows`` rows, ``prefetch`` chunks ahead on a
thread (the host holds about ``prefetch + 3`` chunks); the last chunk is zero-padded with weight 0, so every chunk has
one shape. A file given by path is read with ``os.preadv`` into the chunk's buffer: a file cut short while the fit
reads it is a ValueError, where touching a memory map's vanished pages would kill the process (SIGBUS). Arrays and
memory maps given as such are read through their memory maps, the pages read dropped from this process."""

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

from gradfit import _validation, data as _data

DEFAULT_CHUNK_BYTES = 64 << 20
DEFAULT_PREFETCH = 2


def open_array(source, name: str) -> np.ndarray:
    """``source``, a .npy path (memory-mapped: nothing read yet) or an array; ValueError for a bad one."""
    if isinstance(source, np.ndarray):
        _check_float_dtype(source.dtype, name, "the array")
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"{name} must be a .npy path or a numpy array / memory map, got {type(source).__name__}")
    path = Path(source)
    where = f"{name} file {str(path)!r}"
    if problem := _data.path_problem(path):
        raise ValueError(f"{where} {problem}")
    if path.suffix != ".npy":
        raise ValueError(f"{where} is not a .npy file: streaming reads .npy files (np.save)")
    try:  # the header: valid, matching the file's size, C order, a float dtype
        with path.open("rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError("unsupported .npy format version (gradfit reads versions 1.0 and 2.0)")
                shape, fortran, dtype = getattr(np.lib.format, "read_array_header_%d_%d" % version)(f)
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
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"{where} cannot be memory-mapped ({e}): write it again with np.save") from None


def _check_float_dtype(dtype, name: str, where: str) -> None:
    if (dtype := np.dtype(dtype)).kind != "f":
        raise ValueError(f"{name} in {where} has dtype {dtype}, not a float: streaming reads float32 or float64 data; "
                         f"convert it once, e.g. np.save(path, {name}.astype(np.float32)) chunk by chunk")


def row_range(m: int, index: int, count: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of part ``index`` of ``count`` contiguous parts of m rows (the first ``m % count`` a
    row longer), e.g. ``rows=row_range(m, jax.process_index(), jax.process_count())`` for one process of several."""
    if not 0 <= index < count:
        raise ValueError(f"part index {index} is out of range for {count} parts: use 0 <= index < count")
    base, extra = divmod(m, count)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def _drop_pages(array: np.ndarray, a: int, b: int) -> None:
    """Drop rows [a, b) of ``array``'s memory map, if any, from this process (``madvise``; the page cache keeps it)."""
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
    """X (m, n) and y (m,) or (m, k) (from :func:`open_array`) read in chunks of ``chunk_rows`` rows of rows
    ``[start, stop)``, converted to the compute ``dtype``; ``stamps``: :func:`_stamp` of X and y, when opened."""

    X: np.ndarray
    y: np.ndarray
    start: int
    stop: int
    chunk_rows: int
    dtype: np.dtype
    stamps: tuple = ()
    files: tuple = (None, None)  # the :class:`_File` of X and of y when given as paths (else None: a memory map)

    @classmethod
    def open(cls, X, y, *, rows: tuple[int, int] | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
             batch_size: int | None = None, dtype=None) -> "StreamedData":
        """Open and check X and y, and plan ``chunk_rows = max(1, chunk_bytes // bytes per row of X)``, rounded down
        to a multiple of ``batch_size`` (at least one batch), at most the rows to read."""
        chunk_bytes = _validation.positive_int(chunk_bytes, "chunk_bytes")
        files = tuple(None if isinstance(a, np.ndarray) else a for a in (X, y))
        X, y = open_array(X, "X"), open_array(y, "y")
        files = tuple(None if f is None else _File(a) for f, a in zip(files, (X, y)))
        if X.ndim != 2:
            raise ValueError(f"X has shape {X.shape}: expected (m, n), rows of samples")
        if y.ndim not in (1, 2):
            raise ValueError(f"y has shape {y.shape}: expected (m,) for one output or (m, k) for k outputs")
        m, n = X.shape
        if y.shape[0] != m:
            raise ValueError(f"X has {m} rows but y has {y.shape[0]}: the files do not match; give one target per row")
        if m == 0 or n == 0 or (y.ndim == 2 and y.shape[1] == 0):
            raise ValueError(f"X {X.shape} and y {y.shape} are empty: a fit needs at least one row, feature and output")
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
        native = np.dtype(X.dtype if dtype is None else dtype).newbyteorder("=")  # big-endian files: native chunks
        dtype = _validation.float_dtype(np.empty(0, native))  # float64 only with jax_enable_x64
        chunk_rows, most = max(1, chunk_bytes // (n * X.dtype.itemsize)), stop - start
        if batch_size is not None:  # whole batches; at most those covering the rows
            chunk_rows = max(batch_size, chunk_rows - chunk_rows % batch_size)
            most = -(-most // batch_size) * batch_size
        return cls(X, y, start, stop, min(chunk_rows, most), dtype, tuple(map(_stamp, (X, y))), files)

    @property
    def m(self) -> int:
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
        """Chunk i on the host, zero-padded, and its valid rows (with ``seed``: in ``default_rng(seed)`` order)."""
        self.check_unchanged()
        a, b = self.bounds(i)
        order = None if seed is None else np.random.default_rng(seed).permutation(b - a)
        X, y = (_read_rows(arr, a, b, self.chunk_rows, self.dtype, order, file, self.check_unchanged)
                for arr, file in zip((self.X, self.y), self.files))
        return X, y, b - a

    def check_unchanged(self) -> None:
        """ValueError if a file changed since :meth:`open` (a shrunk memory map would kill the process: SIGBUS)."""
        for now, seen in zip(map(_stamp, (self.X, self.y)), self.stamps):
            if now != seen:
                raise ValueError(f"{seen[0]} changed while the fit was reading it ({seen[1]} bytes at the start, "
                                 f"{now[1]} now, or rewritten): write the data files before the fit starts, then "
                                 "run it again")


def _stamp(array) -> tuple | None:
    """(file, size, mtime, inode) of a memory map's file; None for an array in memory."""
    if (name := getattr(array, "filename", None)) is None:
        return None
    st = os.stat(name) if os.path.isfile(name) else None
    return (name, "no file", None, None) if st is None else (name, st.st_size, st.st_mtime_ns, st.st_ino)


class _File:
    """An open ``.npy`` file of :func:`open_array`'s memory map ``array``: its descriptor (closed with this object)
    and where its rows start."""

    def __init__(self, array: np.memmap):
        self.path, self.offset, self.row_bytes = str(array.filename), int(array.offset), int(array.strides[0])
        self.fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    def __del__(self):
        with contextlib.suppress(OSError, AttributeError, TypeError):
            os.close(self.fd)

    def read_into(self, buffer: np.ndarray, a: int, changed: Callable[[], None]) -> None:
        """Fill ``buffer`` (C-contiguous) with the bytes of rows ``a, a + 1, ...``; a short read calls ``changed``
        (which raises for a changed file), else raises ValueError itself."""
        view, done, start = memoryview(buffer.reshape(-1).view(np.uint8)), 0, self.offset + a * self.row_bytes
        while done < len(view):
            got = os.preadv(self.fd, [view[done:]], start + done) if hasattr(os, "preadv") else self._pread(
                view[done:], start + done)
            if got == 0:
                changed()
                raise ValueError(f"{self.path} ends {len(view) - done} bytes early, at byte {start + done}, while "
                                 f"the fit reads rows from row {a}: write the data files before the fit starts, "
                                 "then run it again")
            done += got

    def _pread(self, view: memoryview, at: int) -> int:
        data = os.pread(self.fd, len(view), at)
        view[: len(data)] = data
        return len(data)


def _read_rows(array: np.ndarray, a: int, b: int, rows: int, dtype, order: np.ndarray | None = None,
               file: _File | None = None, changed: Callable[[], None] = lambda: None) -> np.ndarray:
    """Rows [a, b) of ``array`` (in ``order``) in a new zero-padded, 64-byte aligned buffer (device_put aliases it):
    read from ``file`` when given (:class:`_File`), else copied from the array or its memory map."""
    dtype, shape = np.dtype(dtype), (rows, *array.shape[1:])
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + 64, np.uint8)
    offset = (-raw.ctypes.data) % 64
    out = raw[offset : offset + nbytes].view(dtype).reshape(shape)
    if file is not None:
        direct = order is None and array.dtype == dtype
        rows_read = out[: b - a] if direct else np.empty((b - a, *array.shape[1:]), array.dtype)
        file.read_into(rows_read, a, changed)
        if not direct:
            out[: b - a] = rows_read if order is None else np.take(rows_read.astype(dtype, copy=False), order, axis=0)
    elif order is None:
        out[: b - a] = array[a:b]
    else:  # one contiguous read, then the gather in memory
        np.take(np.asarray(array[a:b]).astype(dtype, copy=False), order, axis=0, out=out[: b - a])
    out[b - a :] = 0
    if file is None:
        _drop_pages(array, a, b)
    return out


_DONE = object()


class Prefetcher:
    """``produce(i)`` for i in ``order``, at most ``depth`` ahead on a thread (stopped on leaving ``with``)."""

    def __init__(self, produce: Callable[[int], Any], order: Iterable[int], depth: int = DEFAULT_PREFETCH):
        self._produce, self._order = produce, list(order)
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
        raise ValueError(f"rows {a}..{b - 1} failed the finiteness check but read back finite: is it being written?")
    raise ValueError(f"bce needs targets in [0, 1] but y in rows {a}..{b - 1} spans [{float(np.min(y)):g}, "
                     f"{float(np.max(y)):g}]: encode classes as 0/1")


def each_chunk(data: StreamedData, carry, step: Callable, *, prefetch: int, order: Iterable[int] | None = None,
               seed: tuple[int, ...] | None = None, check: str | None = None):
    """One pass: ``carry, ok = step(carry, X, y, weight, i)`` per chunk i in ``order`` (with ``seed``: rows permuted
    by ``default_rng((*seed, i))``); with ``check`` (the loss), a bad chunk raises ValueError after the pass."""
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
