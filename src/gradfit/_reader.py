"""Reading ``.npy`` files in row chunks, for data bigger than memory (:mod:`gradfit.stream`).

X (m, n) and y (m,) or (m, k) are read through their memory maps in chunks of ``chunk_rows``
consecutive rows (``chunk_bytes`` of X, 64 MiB by default), copied to host memory,
``jax.device_put`` and consumed by one small compiled function per chunk. A background thread
reads the next chunk while the device works on the current one (a queue of ``prefetch``
chunks), and the pages of the map that a chunk read are dropped from the process
(``madvise(MADV_DONTNEED)``; the kernel's page cache keeps them, not the process), so the host
holds about ``prefetch + 3`` chunks whatever the size of the files.

Every chunk has the same shape: the last, short one is padded with zero rows of weight 0,
so nothing recompiles and padded rows add nothing to any sum. NaN or inf in X or y (and bce
targets outside [0, 1]) are found on the fly (:func:`chunk_ok`) at no extra read, and
:func:`raise_bad_chunk` names the rows.
"""

from __future__ import annotations

import math
import mmap
import operator
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradfit import _validation

DEFAULT_CHUNK_BYTES = 64 << 20
DEFAULT_PREFETCH = 2


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


def chunks(data: StreamedData, order: Iterable[int], depth: int, device=None, seed: tuple[int, ...] | None = None) -> Prefetcher:
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
def chunk_ok(X, y, loss: str) -> jax.Array:
    """True when a chunk is finite (and, for bce, its targets lie in [0, 1]); padding passes."""
    ok = jnp.all(jnp.isfinite(X)) & jnp.all(jnp.isfinite(y))
    if loss == "bce":
        ok &= jnp.all((y >= 0) & (y <= 1))
    return ok


def raise_bad_chunk(data: StreamedData, oks: list[tuple[int, jax.Array]], loss: str) -> None:
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


def throttle(pending: list, latest: jax.Array, depth: int = 1) -> None:
    """Wait for the result dispatched ``depth`` chunks ago, so at most ``depth`` chunks' device
    buffers are queued behind JAX's asynchronous dispatch."""
    pending.append(latest)
    if len(pending) > depth:
        pending.pop(0).block_until_ready()


def weight_cache(data: StreamedData) -> Callable[[int], jax.Array]:
    """Row weights of a chunk with ``valid`` rows (1 then 0), made once per distinct count."""
    cache: dict[int, jax.Array] = {}

    def weights(valid: int) -> jax.Array:
        if valid not in cache:
            cache[valid] = jnp.asarray(np.arange(data.chunk_rows) < valid, data.dtype)
        return cache[valid]

    return weights


def each_chunk(data: StreamedData, carry, step: Callable, *, prefetch: int, order: Iterable[int] | None = None,
               seed: tuple[int, ...] | None = None, check: str | None = None):
    """One streamed pass: ``carry, ok = step(carry, X, y, weight, i)`` for each chunk i (in
    ``order``, rows permuted by ``seed`` as :func:`chunks` says), at most one chunk queued behind
    the device. With ``check`` (the loss), a chunk with NaN/inf (or bce targets outside [0, 1])
    raises ValueError naming its rows once the pass is over, before anything is used."""
    weights = weight_cache(data)
    oks: list = []
    pending: list = []
    with chunks(data, range(data.n_chunks) if order is None else order, prefetch, seed=seed) as stream:
        for i, X, y, valid in stream:
            carry, ok = step(carry, X, y, weights(valid), i)
            if check is not None:
                oks.append((i, ok))
            throttle(pending, jax.tree.leaves(carry)[0])
    if check is not None:
        raise_bad_chunk(data, oks, check)
    return carry
