"""Several processes or hosts (one each, same script): checked ``jax.distributed`` set-up
(:func:`initialize`; settings from arguments, the ``[distributed]`` config section or :data:`ENV`), then fits on
row-sharded global arrays, each process loading its own rows (:func:`load_rows`). Results are replicated: write from
process 0 only (:func:`is_writer`)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradfit import sharding
from gradfit._types import Data

ENV = {"coordinator_address": "GRADFIT_COORDINATOR_ADDRESS", "num_processes": "GRADFIT_NUM_PROCESSES",
       "process_id": "GRADFIT_PROCESS_ID"}
DEFAULT_TIMEOUT = 60  # seconds for every process to join; JAX's own default is 300


class Settings(NamedTuple):
    """A checked multi-process configuration."""

    coordinator_address: str  # "host:port" of process 0's coordination service
    host: str
    port: int
    num_processes: int
    process_id: int


class Loaded(NamedTuple):
    """Global arrays of ``ceil(m / d) * d`` rows (past ``n_rows``: padding of weight 0), for
    ``fit(data.X, data.y, sample_weight=data.sample_weight, n_rows=n_rows)``."""

    data: Data
    n_rows: int


def _int_setting(value, name: str, source: str) -> int:
    try:
        if not isinstance(value, bool):
            return int(value.strip()) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        pass
    raise ValueError(f"{name} from {source} must be an integer, got {value!r}")


def _split_address(address: str) -> tuple[str, int]:
    address = address.strip()
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port:
        raise ValueError(f"coordinator_address {address!r} must be host:port, "
                         "e.g. 10.0.0.1:12345 or [::1]:12345: the host of process 0 and a free port on it")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"coordinator_address {address!r} has port {port!r}: use a number from 1 to 65535")
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host, int(port)


def settings(coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None,
             *, environ: Mapping[str, str] | None = None) -> Settings | None:
    """Check a multi-process configuration (each value from its argument, else its variable in :data:`ENV`);
    None when nothing is set (a single process). Raises ValueError naming the problem and the fix: some
    but not all values set, a process id outside ``0 .. num_processes - 1``, a bad or unresolvable address."""
    environ = os.environ if environ is None else environ
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
    sources = dict.fromkeys(given, "the argument/config")
    for key, value in given.items():
        if value is None and environ.get(ENV[key], "").strip():
            given[key], sources[key] = environ[ENV[key]], f"${ENV[key]}"
    if all(v is None for v in given.values()):
        return None
    if missing := [k for k, v in given.items() if v is None]:
        raise ValueError(f"a multi-process run needs coordinator_address, num_processes and process_id; "
                         f"{', '.join(missing)} not set: give them in [distributed] or as "
                         + ", ".join(f"${ENV[k]}" for k in missing))
    n = _int_setting(given["num_processes"], "num_processes", sources["num_processes"])
    pid = _int_setting(given["process_id"], "process_id", sources["process_id"])
    if n < 1:
        raise ValueError(f"num_processes from {sources['num_processes']} is {n}: it must be >= 1")
    if not 0 <= pid < n:
        raise ValueError(f"process_id {pid} (from {sources['process_id']}) is out of range for {n} processes: "
                         f"give each process a distinct id from 0 to {n - 1} (e.g. $SLURM_PROCID)")
    address = str(given["coordinator_address"])
    host, port = _split_address(address)
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ValueError(f"coordinator_address {address!r}: host {host!r} cannot be resolved ({e.strerror}); "
                         "use process 0's IP address or a hostname every process can resolve") from None
    return Settings(address.strip(), host, port, n, pid)


def _wait_for_coordinator(s: Settings, timeout: float) -> float:
    """Seconds until process 0's port accepts a TCP connection; TimeoutError after ``timeout`` s."""
    start = time.monotonic()
    while True:
        try:
            with socket.create_connection((s.host, s.port), timeout=min(2.0, max(timeout, 0.1))):
                return time.monotonic() - start
        except OSError as e:
            last = e
        if time.monotonic() >= start + timeout:
            raise TimeoutError(f"process {s.process_id}: the coordinator {s.coordinator_address} did not answer within "
                               f"{timeout:g} s ({last}): start process 0 there, check the address and port, or raise "
                               "initialization_timeout")
        time.sleep(0.2)


def _check_port_free(s: Settings) -> None:
    family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", s.port))
        except OSError as e:
            raise ValueError(f"process 0 cannot serve the coordinator on port {s.port} ({e.strerror}): "
                             f"choose a free port in coordinator_address {s.coordinator_address!r}") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, initialization_timeout: int = DEFAULT_TIMEOUT, local_device_ids: int | Sequence[int] | None = None,
               environ: Mapping[str, str] | None = None) -> Settings | None:
    """Join a multi-process run (call it first in every process): the checks of :func:`settings`, then
    ``jax.distributed.initialize``; None when nothing is set. ``initialization_timeout`` bounds the wait
    (TimeoutError when the coordinator never answers). ValueError for bad settings; RuntimeError when JAX already ran
    or was initialized. ``local_device_ids``: the local devices (None: all)."""
    timeout = initialization_timeout
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1:
        raise ValueError(f"initialization_timeout must be a positive number of seconds, got {timeout!r}")
    s = settings(coordinator_address, num_processes, process_id, environ=environ)
    if s is None:
        return None
    remaining = timeout
    if s.process_id == 0:
        _check_port_free(s)
    else:  # the whole wait, this and JAX's, stays within initialization_timeout
        remaining = max(1, round(timeout - _wait_for_coordinator(s, timeout)))
    try:
        jax.distributed.initialize(s.coordinator_address, s.num_processes, s.process_id,
                                   local_device_ids=local_device_ids, initialization_timeout=remaining)
    except RuntimeError as e:
        raise RuntimeError(f"jax.distributed.initialize failed: {e}. Call gradfit.distributed.initialize once, "
                           "at the start of the program, before any JAX computation") from None
    return s


def initialize_from_config(section: Mapping[str, Any]) -> Settings | None:
    """:func:`initialize` from a ``[distributed]`` config section (keys as its arguments)."""
    return initialize(section.get("coordinator_address"), section.get("num_processes"), section.get("process_id"),
                      initialization_timeout=int(section.get("initialization_timeout") or DEFAULT_TIMEOUT))


def is_writer() -> bool:
    """True in the process that writes outputs: process 0 (or the only process)."""
    return jax.process_index() == 0


def _open_tables(paths: Sequence[Path]) -> list[np.ndarray]:
    tables = []
    for path in paths:
        if path.suffix != ".npy":
            raise ValueError(f"{path}: a multi-process load reads .npy files (memory-mapped); convert it with np.save")
        if not path.is_file():
            raise ValueError(f"data file {str(path)!r} does not exist: check the path on every host")
        try:
            table = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read {path} as a .npy array: {e}") from None
        if table.ndim != 2:
            raise ValueError(f"{path} holds an array of shape {table.shape}: expected (rows, columns)")
        if np.dtype(table.dtype).kind not in "biuf":
            raise ValueError(f"{path} has dtype {table.dtype}: store numbers (e.g. float32)")
        tables.append(table)
    first = tables[0]
    for path, table in zip(paths[1:], tables[1:]):
        if table.shape[1] != first.shape[1] or table.dtype != first.dtype:
            raise ValueError(f"the shard files do not add up: {paths[0]} is {first.shape[1]} columns of {first.dtype} "
                             f"but {path} is {table.shape[1]} columns of {table.dtype}; "
                             "every file must hold the same columns")
    return tables


def _read_rows(tables: list[np.ndarray], lo: int, hi: int) -> np.ndarray:
    """Rows lo..hi-1 of the tables stacked, touching only those rows."""
    pieces, start = [], 0
    for table in tables:
        a, b = max(lo, start), min(hi, start + table.shape[0])
        if a < b:
            pieces.append(np.asarray(table[a - start : b - start]))
        start += table.shape[0]
    if not pieces:
        return np.zeros((0, tables[0].shape[1]), tables[0].dtype)
    return np.concatenate(pieces) if len(pieces) > 1 else pieces[0]


def _process_rows(row_sharding, shape: tuple[int, ...]) -> tuple[int, int]:
    """The contiguous block of global rows held by this process's devices."""
    spans = sorted(idx[0].indices(shape[0])[:2] for idx in row_sharding.addressable_devices_indices_map(shape).values())
    if not spans:  # none of this process's devices takes part
        return 0, 0
    if any(a[1] != b[0] for a, b in zip(spans, spans[1:])):
        raise ValueError("this process's devices do not hold one contiguous block of rows: "
                         "list the devices process by process (as jax.devices() does)")
    return spans[0][0], spans[-1][1]


@jax.jit
def _standardize(X: jax.Array, valid: jax.Array) -> jax.Array:
    """Columns to mean 0, sd 1 over the valid rows (constant columns kept at 0); padding stays 0."""
    w = valid.astype(X.dtype)[:, None]
    count = jnp.sum(w)
    mean = jnp.sum(w * X, axis=0, keepdims=True) / count  # (1, n)
    std = jnp.sqrt(jnp.sum(w * (X - mean) ** 2, axis=0, keepdims=True) / count)
    return w * (X - mean) / jnp.where(std > 0, std, 1)


def _is_column(c, n_cols: int) -> bool:
    return not isinstance(c, bool) and isinstance(c, (int, np.integer)) and -n_cols <= c < n_cols


def load_rows(source: str | Path | Sequence[str | Path], *, target: int | None = None,
              features: Sequence[int] | None = None, dtype=np.float32, standardize: bool = False,
              devices: Any = None) -> Loaded:
    """Load a ``.npy`` table split across processes: each reads only its own devices' rows.

    ``source``: one ``.npy`` file or a list of consecutive row blocks (same columns and dtype), visible to every
    process. The arrays are laid out as :func:`gradfit.shard_rows` would (``data.sample_weight`` None when nothing
    was padded). ``target``: its column (default the last; y is (m,)); ``features``: default all but the target;
    ``dtype``: of X, y, weights; ``standardize``: columns to mean 0, sd 1 over the real rows; ``devices``: as
    :func:`gradfit.sharding.resolve_devices`, None: all."""
    paths = [Path(source)] if isinstance(source, (str, Path)) else [Path(p) for p in source]
    if not paths:
        raise ValueError("source lists no files: give a .npy path or a list of them")
    tables = _open_tables(paths)
    m, n_cols = sum(t.shape[0] for t in tables), tables[0].shape[1]
    if m == 0:
        raise ValueError(f"{', '.join(map(str, paths))} hold no rows: a fit needs at least one")
    columns = f"the table has {n_cols} columns (0..{n_cols - 1})"
    t = n_cols - 1 if target is None else target
    if not _is_column(t, n_cols):
        raise ValueError(f"target column {target!r} is out of range: {columns}")
    t %= n_cols
    if features is None:
        cols = [c for c in range(n_cols) if c != t]
    elif bad := [c for c in features if not _is_column(c, n_cols)]:
        raise ValueError(f"feature columns {bad} are out of range: {columns}")
    else:
        cols = [int(c) % n_cols for c in features]
    if not cols:
        raise ValueError("no feature columns: the table needs at least one column besides the target")
    devs = sharding.resolve_devices(len(jax.devices()) if devices is None else devices, m)
    rows = sharding.padded_rows(m, len(devs))
    row_sharding = sharding.row_sharding(sharding.row_mesh(devs))
    lo, hi = _process_rows(row_sharding, (rows, len(cols)))
    block = _read_rows(tables, min(lo, m), min(hi, m))
    pad = (hi - lo) - block.shape[0]
    local = (np.pad(np.asarray(block[:, cols], dtype), ((0, pad), (0, 0))),  # this process's rows, then padding
             np.pad(np.asarray(block[:, t], dtype), (0, pad)), np.pad(np.ones(block.shape[0], dtype), (0, pad)))
    X, y, w = (jax.make_array_from_process_local_data(row_sharding, a, (rows, *a.shape[1:])) for a in local)
    if standardize:
        X = _standardize(X, w > 0)
    return Loaded(Data(X, y, None if rows == m else w), m)
