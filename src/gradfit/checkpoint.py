"""Checkpoint and resume: a run's whole state, saved atomically at chunk boundaries.

A checkpoint is one ``.npz`` file written by :mod:`gradfit._io` (temporary file, flush, rename:
the previous checkpoint or the new one, never half of one): every leaf of the
:class:`~gradfit.SolverState` pytree (the PRNG key as ``jax.random.key_data`` and its impl's name;
with minibatches a step is an epoch and the key advances once per epoch, so step and key are the
data position), the objective history (*members, steps), and a JSON header (format version,
treedef, leaf shapes and dtypes, and a fingerprint of the problem so that it is never resumed
into another problem).

**Same bits.** CPU steps are deterministic and the chunk program is the same in every process;
checkpoints fall between chunks and ``chunk_size`` is in the fingerprint, so a resumed run has
the same chunk boundaries and ends with the same bits as one that never stopped. Raising
``steps`` on a finished checkpoint continues it. Used by ``fit(..., checkpoint=path,
checkpoint_every=..., resume=True)``, ``fit_streaming`` and :func:`gradfit.resume`, through
:mod:`gradfit._runner`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from gradfit import _io
from gradfit._driver import active_host
from gradfit._options import DEFAULT_EVERY_SECONDS, Every, parse_every  # noqa: F401 (public here)
from gradfit._types import Data, Hyper, Level, Program, SolverState

FORMAT = "gradfit-checkpoint"
VERSION = 2  # 2: the solver state holds the stalled flag and the optimality

# What each fingerprint component covers, and how to make a resume match it.
_COMPONENTS = {
    "data": "the data (shapes, dtypes and a sample of the values of X, y and sample_weight)",
    "settings": "loss, reduction, grad, fit_intercept, batch_size or the vmapped levels",
    "optimizer": "the optimizer or its static options",
    "hyperparameters": "learning_rate, l2, tol or the optimizer's float options",
    "chunk_size": "chunk_size, or for streamed data the rows per chunk (chunk_bytes): resumed runs need the same "
                  "chunk boundaries to give the same bits",
    "start": "the starting point (init or seed)",
}


def _is_key(a) -> bool:
    return jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)


# --------------------------------------------------------------------------- fingerprint
def _sample(a) -> np.ndarray:
    """About 4096 elements of ``a`` on an evenly spaced grid (``4096 ** (1/ndim)`` indices per
    axis, first and last included): cheap for any size, on any device, no flat index overflow."""
    per_axis = max(2, int(round(4096 ** (1 / max(a.ndim, 1)))))
    for axis, size in enumerate(a.shape):
        if size > per_axis:
            index = np.unique(np.linspace(0, size - 1, per_axis).astype(np.int64))
            a = (np.take(a, index, axis=axis) if isinstance(a, np.ndarray)
                 else jnp.take(a, jnp.asarray(index, jnp.int32), axis=axis))
    return np.asarray(a)


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, (np.ndarray, jax.Array)):
            arr = np.ascontiguousarray(np.asarray(part))
            h.update(f"{arr.shape}{arr.dtype};".encode() + arr.tobytes())
        else:  # None, a number, a tuple of settings: by its repr
            h.update(repr(part).encode() + b";")
    return h.hexdigest()[:16]


def fingerprint(params, operand, hyper: Hyper, key, program: Program,
                levels: tuple[Level, ...] = ()) -> dict[str, str]:
    """A short hash per part of a problem (``_COMPONENTS``); equal dicts, same problem. Leaves out
    ``hyper.max_steps`` (a finished run may resume with more steps); a user's own
    ``optax.GradientTransformation`` is known by its type only."""
    spec = program.optimizer
    if spec.transformation is not None:
        spec = spec._replace(transformation=type(spec.transformation).__qualname__)
    # The operand: the data, or the statistics of a plan-"stats" fit (a gradfit._stats.Stats).
    arrays = (operand.X, operand.y, operand.sample_weight) if isinstance(operand, Data) else jax.tree.leaves(operand)
    data = [part for a in arrays for part in ((None,) if a is None else (tuple(a.shape), str(a.dtype), _sample(a)))]
    key = jax.random.key_data(key) if key is not None and _is_key(key) else key
    return {
        "data": _digest(*data),
        "settings": _digest(program._replace(optimizer=None, chunk_size=None), levels),
        "optimizer": _digest(spec),
        "hyperparameters": _digest(hyper.learning_rate, hyper.l2, hyper.tol, hyper.ftol,
                                   *(v for _, v in sorted(hyper.optimizer.items()))),
        "chunk_size": str(program.chunk_size),
        "start": _digest(*jax.tree.leaves(params), key),
    }


# --------------------------------------------------------------------------- save / load
def save(path: str | Path, state: SolverState, history: np.ndarray, *,
         fingerprint: dict[str, str], complete: bool = False, meta: dict | None = None) -> Path:
    """Write ``state``, ``history`` and ``meta`` (JSON-able, e.g. the fit's arguments) to ``path`` atomically."""
    leaves, treedef = jax.tree.flatten(state)
    arrays, specs = {}, []
    for i, leaf in enumerate(leaves):
        spec = {"shape": list(leaf.shape), "dtype": str(leaf.dtype)}
        if _is_key(leaf):
            spec.update(dtype="key", impl=str(jax.random.key_impl(leaf)))
            leaf = jax.random.key_data(leaf)
        specs.append(spec)
        arrays[f"leaf_{i:04d}"] = np.asarray(leaf)
    header = {
        "format": FORMAT, "version": VERSION, "treedef": str(treedef), "leaves": specs,
        "fingerprint": fingerprint, "step": int(np.asarray(state.step).max()), "complete": bool(complete),
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "backend": jax.default_backend(), **(meta or {}),
    }
    return _io.write_npz(path, **arrays, history=np.asarray(history), header=np.asarray(json.dumps(header)))


def read_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a checkpoint. Raises ValueError for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist: check the path, or start afresh without resume")
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable gradfit checkpoint ({type(e).__name__}: {e}): "
                         "point at another file, or delete it to start afresh") from None
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} is not a gradfit checkpoint (no {FORMAT!r} header): point at another file")
    if header.get("version") != VERSION:
        raise ValueError(f"{path} is a version {header.get('version')} checkpoint; this gradfit reads version "
                         f"{VERSION}: resume it with the gradfit that wrote it, or start afresh")
    return header


def load(path: str | Path, template: SolverState, fingerprint: dict[str, str] | None = None
         ) -> tuple[SolverState, np.ndarray, dict[str, Any]]:
    """Read a checkpoint into the structure of ``template`` (a state of the problem resumed, placed
    with its shardings): ``(state, history, header)``. ValueError, naming what differs and the way
    out, for a missing or unreadable file, or another treedef, leaf shape or dtype, or fingerprint."""
    path = Path(path)
    header = read_header(path)
    fresh = "or start afresh (resume=False, or another checkpoint path)"
    saved = header.get("fingerprint", {})
    differ = [] if fingerprint is None else [name for name in _COMPONENTS if saved.get(name) != fingerprint.get(name)]
    if differ:
        detail = "; ".join(f"{name}: {_COMPONENTS[name]}" for name in differ)
        if "chunk_size" in differ:
            detail += f"; the checkpoint used chunk_size={saved.get('chunk_size')}"
        raise ValueError(f"checkpoint {path} was written by a different problem or config. What differs: {detail}. "
                         f"Resume with the data and settings that wrote it, {fresh}")
    leaves, treedef = jax.tree.flatten(template)
    specs = header["leaves"]
    if header["treedef"] != str(treedef) or len(specs) != len(leaves):
        raise ValueError(f"checkpoint {path} holds a different solver state (another optimizer, loss or output "
                         f"shape): resume with the settings that wrote it, {fresh}")
    new_leaves = []
    with np.load(path, allow_pickle=False) as z:
        for i, (leaf, spec) in enumerate(zip(leaves, specs)):
            arr = z[f"leaf_{i:04d}"]
            want = "key" if _is_key(leaf) else str(leaf.dtype)
            if spec["dtype"] != want or tuple(spec["shape"]) != tuple(leaf.shape):
                raise ValueError(f"checkpoint {path} leaf {i} is {spec['dtype']} {tuple(spec['shape'])} but this "
                                 f"problem needs {want} {tuple(leaf.shape)} (another dtype, size or number of "
                                 f"members): resume with the settings that wrote it, {fresh}")
            value = jax.random.wrap_key_data(arr, impl=spec["impl"]) if want == "key" else np.asarray(arr, leaf.dtype)
            new_leaves.append(jax.device_put(value, leaf.sharding))
        history = np.asarray(z["history"])
    return jax.tree.unflatten(treedef, new_leaves), history, header


# --------------------------------------------------------------------------- during a run
class Checkpointer:
    """A ``callback(state, history)`` that saves the run at chunk boundaries when ``every.steps``
    steps (the most any member has run) or ``every.seconds`` seconds have passed since the last
    save. It skips a run's last chunk (:meth:`finish` saves the final state). ``count`` and
    ``seconds``: checkpoints written and the time spent writing them."""

    def __init__(self, path: str | Path, hyper: Hyper, fingerprint: dict[str, str], *,
                 every: Every | int | datetime.timedelta | None = None, meta: dict | None = None,
                 start_step: int = 0, clock: Callable[[], float] = time.monotonic):
        self.path, self.hyper, self.fingerprint, self.meta = Path(path), hyper, fingerprint, meta
        self.every, self.clock = parse_every(every), clock
        self.last_step, self.last_time = start_step, clock()
        self.count, self.seconds = 0, 0.0

    def __call__(self, state: SolverState, history: np.ndarray) -> None:
        if not active_host(state, self.hyper).any():
            return  # the run ends after this chunk: finish() writes the final state
        step = int(np.max(np.asarray(state.step)))
        due_steps = self.every.steps is not None and step - self.last_step >= self.every.steps
        due_time = self.every.seconds is not None and self.clock() - self.last_time >= self.every.seconds
        if due_steps or due_time:
            self.save(state, history)

    def save(self, state: SolverState, history: np.ndarray, *, complete: bool = False) -> Path:
        start = time.perf_counter()
        step = int(np.max(np.asarray(state.step)))
        save(self.path, state, history[..., :step], fingerprint=self.fingerprint, complete=complete, meta=self.meta)
        self.seconds += time.perf_counter() - start
        self.count += 1
        self.last_step, self.last_time = step, self.clock()
        return self.path

    def finish(self, state: SolverState, history: np.ndarray) -> Path:
        """Save the final state of a finished run (marked complete)."""
        return self.save(state, history, complete=True)


def storable_arguments(arguments: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Split a fit's arguments into those that survive JSON unchanged and the names of the rest."""
    values = {name: np.asarray(v).tolist() if isinstance(v, (np.ndarray, jax.Array)) else v
              for name, v in arguments.items()}
    stored = {name: value for name, value in values.items() if _survives_json(value)}
    return stored, [name for name in values if name not in stored]


def _survives_json(value) -> bool:
    try:
        return _same(json.loads(json.dumps(value)), value)
    except (TypeError, ValueError):
        return False


def _same(a, b) -> bool:
    """Equal, with the same types all the way down (JSON turns tuples into lists)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)
