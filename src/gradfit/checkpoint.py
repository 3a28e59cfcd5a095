"""Checkpoint and resume: one ``.npz`` with every leaf of the :class:`~gradfit.SolverState`, the history and a JSON
header (version, treedef, leaf specs, the problem's fingerprint), written atomically at chunk boundaries."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import time
import warnings
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
VERSION = 3  # 2: the solver state holds the stalled flag and the optimality; 3: the count of evaluations

_COMPONENTS = {  # what each fingerprint component covers
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


def _sample(a) -> np.ndarray:
    """About 4096 elements of ``a`` on an evenly spaced grid (``4096 ** (1/ndim)`` indices per axis, ends included)."""
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


def fingerprint(params, operand, hyper: Hyper, key, program: Program, levels: tuple[Level, ...] = ()) -> dict[str, Any]:
    """A short hash per part of a problem (``_COMPONENTS``), without ``hyper.max_steps``; optax transforms by type.
    ``"<part> (legacy)"``: digests that earlier versions wrote for the same problem, accepted by :func:`load`."""
    spec = program.optimizer
    if spec.transformation is not None:
        spec = spec._replace(transformation=type(spec.transformation).__qualname__)
    arrays = (operand.X, operand.y, operand.sample_weight) if isinstance(operand, Data) else jax.tree.leaves(operand)
    data = [part for a in arrays for part in ((None,) if a is None else (tuple(a.shape), str(a.dtype), _sample(a)))]
    key = jax.random.key_data(key) if key is not None and _is_key(key) else key
    return {
        "data": _digest(*data),
        "settings": _settings_digest(program, levels),
        "optimizer": _digest(spec),
        "hyperparameters": _digest(hyper.learning_rate, hyper.l2, hyper.tol, hyper.ftol,
                                   *(v for _, v in sorted(hyper.optimizer.items()))),
        "chunk_size": str(program.chunk_size),
        "start": _digest(*jax.tree.leaves(params), key),
        "settings (legacy)": (_settings_digest(program, levels, legacy=True),),  # accepted on load, never saved
    }


def _settings_digest(program: Program, levels: tuple[Level, ...], *, legacy: bool = False) -> str:
    """The "settings" component: the program less its optimizer and chunk size, and whether it validates (not its
    validation history's length, which is the step budget: a resumed run may be given more steps). ``legacy``: the
    digest of checkpoints written before, which hashed that length too."""
    program = program._replace(optimizer=None, chunk_size=None)
    return _digest(program if legacy else program._replace(validation=min(program.validation, 1)), levels)


def _validation_history(state: SolverState) -> int | None:
    """The index among ``state``'s leaves of the validation history (its last axis is the step budget), or None."""
    if state.monitor is None:
        return None
    paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    return next(i for i, path in enumerate(paths) if [getattr(k, "name", None) for k in path] == ["monitor", "history"])


def _fit_budget(arr: np.ndarray, steps: int) -> np.ndarray:
    """A validation history (*levels, budget) cut or NaN-padded to ``steps`` entries (the run's new budget)."""
    out = np.full(arr.shape[:-1] + (steps,), np.nan, arr.dtype)
    keep = min(steps, arr.shape[-1])
    out[..., :keep] = arr[..., :keep]
    return out


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
        arrays[f"leaf_{i:04d}"] = arr = np.asarray(leaf)
        if np.issubdtype(arr.dtype, np.inexact):  # a leaf that turns non-finite on disk is damage, not divergence
            spec["finite"] = bool(np.isfinite(arr).all())
        specs.append(spec)
    header = {
        "format": FORMAT, "version": VERSION, "treedef": str(treedef), "leaves": specs,
        "fingerprint": {name: fingerprint[name] for name in _COMPONENTS}, "step": int(np.asarray(state.step).max()),
        "complete": bool(complete),
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "backend": jax.default_backend(), **(meta or {}),
    }
    return _io.write_npz(path, **arrays, history=np.asarray(history), header=np.asarray(json.dumps(header)))


_READ_ERRORS = (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile)  # JSONDecodeError: ValueError
_HEADER = {"treedef": str, "leaves": list, "fingerprint": dict, "step": int, "complete": bool}


def _damaged(path: Path, detail: str) -> ValueError:
    return ValueError(f"checkpoint {path} is damaged ({detail}): delete it, or pass overwrite=True "
                      "(gradfit fit --restart) to start over")


def _ours(path: Path) -> bool:
    """Whether the file begins as a checkpoint does (a zip whose first member is leaf_0000.npy), readable or not."""
    with contextlib.suppress(OSError), open(path, "rb") as f:
        head = f.read(64)
        return head.startswith(b"PK\x03\x04") and b"leaf_0000.npy" in head
    return False


def _spec_ok(spec) -> bool:
    return (isinstance(spec, dict) and isinstance(spec.get("dtype"), str) and isinstance(spec.get("shape"), list)
            and all(type(d) is int for d in spec["shape"]) and (spec["dtype"] != "key" or "impl" in spec))


def read_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a checkpoint; ValueError for a missing, foreign, other-version or damaged file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist: check the path, or start afresh without resume")
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
        problem = None if isinstance(header, dict) and header.get("format") == FORMAT else f"no {FORMAT!r} header"
    except _READ_ERRORS as e:
        problem = f"{type(e).__name__}: {e}"
    if problem is not None:
        raise _damaged(path, problem) if _ours(path) else ValueError(
            f"{path} is not a gradfit checkpoint: choose another checkpoint path")
    if header.get("version") != VERSION:
        raise ValueError(f"{path} is a version {header.get('version')} checkpoint; this gradfit reads version "
                         f"{VERSION}: resume it with the gradfit that wrote it, or start over with overwrite=True")
    bad = [name for name, kind in _HEADER.items() if not isinstance(header.get(name), kind)]
    bad = bad or [f"leaves[{i}]" for i, spec in enumerate(header["leaves"]) if not _spec_ok(spec)]
    if bad:
        raise _damaged(path, f"its header has a malformed {', '.join(bad)}")
    return header


def check_target(path: str | Path | None, resume: bool, overwrite: bool = False) -> None:
    """Refuse a foreign file, a damaged checkpoint (unless ``overwrite``) or an unfinished run (unless ``resume``)."""
    if resume and overwrite:
        raise ValueError("resume=True continues the checkpoint and overwrite=True starts over: pass one of them")
    if path is None or not Path(path).exists():
        return
    try:
        header = read_header(path)
    except ValueError:
        if overwrite and _ours(Path(path)):
            return
        raise
    if not (resume or overwrite or header["complete"]):
        raise ValueError(f"checkpoint {path} holds an unfinished run (step {header['step']}): pass resume=True "
                         "(gradfit fit --resume) to continue it, or overwrite=True (--restart) to start over")


def _read(z, name: str, path: Path) -> np.ndarray:
    try:
        return z[name]
    except _READ_ERRORS as e:
        raise _damaged(path, f"{name}: {type(e).__name__}: {e}") from None


def load(path: str | Path, template: SolverState, fingerprint: dict[str, str] | None = None
         ) -> tuple[SolverState, np.ndarray, dict[str, Any]]:
    """``(state, history, header)`` of a checkpoint, in the structure and shardings of ``template``."""
    path = Path(path)
    header = read_header(path)
    fresh = "or start afresh (resume=False, or another checkpoint path)"
    saved = header["fingerprint"]
    differ = [] if fingerprint is None else [name for name in _COMPONENTS if saved.get(name) != fingerprint.get(name)
                                             and saved.get(name) not in fingerprint.get(f"{name} (legacy)", ())]
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
    new_leaves, budget = [], _validation_history(template)
    with np.load(path, allow_pickle=False) as z:
        for i, (leaf, spec) in enumerate(zip(leaves, specs)):
            want = "key" if _is_key(leaf) else str(leaf.dtype)
            if i == budget and len(spec["shape"]) == leaf.ndim and spec["shape"][:-1] == list(leaf.shape[:-1]):
                spec = {**spec, "shape": list(leaf.shape)}  # another step budget: the history is cut or padded below
            if spec["dtype"] != want or tuple(spec["shape"]) != tuple(leaf.shape):
                raise ValueError(f"checkpoint {path} leaf {i} is {spec['dtype']} {tuple(spec['shape'])} but this "
                                 f"problem needs {want} {tuple(leaf.shape)} (another dtype, size or number of "
                                 f"members): resume with the settings that wrote it, {fresh}")
            arr = _read(z, f"leaf_{i:04d}", path)
            if spec.get("finite") and not np.isfinite(arr).all():
                raise _damaged(path, f"leaf {i} holds NaN or inf, but was finite when saved")
            if i == budget and arr.ndim == leaf.ndim:
                if np.isfinite(arr[..., leaf.shape[-1]:]).any():
                    raise ValueError(f"checkpoint {path} has run {header['step']} steps with validation, more than "
                                     f"this run's steps={leaf.shape[-1]}: resume with steps >= {header['step']} "
                                     f"(its validation history is kept whole), {fresh}")
                arr = _fit_budget(arr, leaf.shape[-1])
            need = jax.eval_shape(jax.random.key_data, leaf) if want == "key" else leaf
            if arr.shape != need.shape or arr.dtype != need.dtype:
                raise _damaged(path, f"leaf {i} is {arr.dtype} {arr.shape}, the run needs {need.dtype} {need.shape}")
            value = jax.random.wrap_key_data(arr, impl=spec["impl"]) if want == "key" else arr
            new_leaves.append(jax.device_put(value, leaf.sharding))
        history = _read(z, "history", path)
    if history.ndim != 1 + np.ndim(template.step) or history.shape[:-1] != np.shape(template.step):
        raise _damaged(path, f"the history is {history.shape}, the run needs {np.shape(template.step)} + (steps,)")
    return jax.tree.unflatten(treedef, new_leaves), np.asarray(history), header


class Checkpointer:
    """A ``callback(state, history)`` saving the run once ``every.steps`` steps or ``every.seconds`` seconds passed
    since the last save (not after the last chunk); ``count``, ``seconds``, ``error``: saves, their time, a failure."""

    def __init__(self, path: str | Path, hyper: Hyper, fingerprint: dict[str, str], *,
                 every: Every | int | datetime.timedelta | None = None, meta: dict | None = None,
                 start_step: int = 0, clock: Callable[[], float] = time.monotonic):
        self.path, self.hyper, self.fingerprint, self.meta = Path(path), hyper, fingerprint, meta
        self.every, self.clock = parse_every(every), clock
        self.last_step, self.last_time = start_step, clock()
        self.count, self.seconds, self.error = 0, 0.0, None

    def __call__(self, state: SolverState, history: np.ndarray) -> None:
        step = int(np.max(np.asarray(state.step)))
        due = ((self.every.steps is not None and step - self.last_step >= self.every.steps)
               or (self.every.seconds is not None and self.clock() - self.last_time >= self.every.seconds))
        if due and active_host(state, self.hyper).any():  # else the run ends: its final save follows
            self.save(state, history, warn=True)

    def save(self, state: SolverState, history: np.ndarray, *, complete=False, warn=False) -> Path | None:
        """Save now; the path, or None if not written: a failed write raises OSError, or with ``warn`` warns once."""
        start, step = time.perf_counter(), int(np.max(np.asarray(state.step)))
        self.last_step, self.last_time = step, self.clock()  # after a failure too: retried at the next interval
        try:
            save(self.path, state, history[..., :step], fingerprint=self.fingerprint, complete=complete, meta=self.meta)
        except OSError as e:
            if not warn:
                raise
            if self.error is None:
                warnings.warn(f"checkpoint not saved: {e}. The fit goes on; {self.path} keeps the last good "
                              "checkpoint, if any", RuntimeWarning, stacklevel=2)
            self.error = e
            return None
        self.seconds += time.perf_counter() - start
        self.count += 1
        return self.path


def storable_arguments(arguments: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Split a fit's arguments into those that survive JSON unchanged and the names of the rest."""
    values = {name: np.asarray(v).tolist() if isinstance(v, (np.ndarray, jax.Array)) else v
              for name, v in arguments.items()}
    stored = {name: value for name, value in values.items() if _survives_json(value)}
    return stored, [name for name in values if name not in stored]


def _survives_json(value) -> bool:
    """Read back equal, with the same types all the way down (JSON turns tuples into lists)."""
    try:
        return repr(json.loads(json.dumps(value))) == repr(value)
    except (TypeError, ValueError):
        return False
