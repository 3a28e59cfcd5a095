"""Hyperparameter sweeps: the compiled fit, ``vmap``-ed over the members of a grid.

A sweep runs the cartesian product of a grid, e.g. ``{"learning_rate": [...], "l2": [...]}``.
It is :func:`gradfit.fit`'s own loop (:func:`gradfit.solver.run_chunk` under one more
``vmap`` level), not a second loop:

- **traced keys** (``learning_rate``, ``l2``, ``tol``, ``steps``, ``seed`` and the optimizer's
  float options such as ``momentum``, ``b1``, ``b2``, ``eps``) become arrays with a leading
  member axis K, so K members share one compiled program, and a second sweep of the same
  size over new values compiles nothing. ``seed`` gives every member its own PRNG key
  (``init="normal"`` weights and minibatch permutations), exactly as ``fit(seed=...)``.
- **program keys** (``optimizer``, ``loss``, ``reduction``, ``grad``, ``batch_size``,
  ``fit_intercept``, ``init`` and non-float optimizer options such as ``nesterov``) split
  the grid into groups, one compiled program each.

Members are independent: each stops (converged, diverged or out of steps) by the loop's own
masking, keeps its own params, and equals a separate ``fit`` with its config. Between
chunks of ``chunk_size`` steps the driver drops finished members: the still-active ones are
gathered into a smaller batch (power-of-two sizes, so at most ``log2(K) + 1`` chunk
programs per group) and scattered back, so a grid whose members mostly finish early costs
about what its slow members cost. A grid whose members do not fit the memory budget runs
in member chunks, one after another.
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import math
import numbers
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradfit import _optim, solver
from gradfit._params import Params

# Grid keys that are array inputs of the compiled loop (one program for any values).
TRACED_KEYS = ("learning_rate", "l2", "tol", "steps", "seed")
# Grid keys that change the compiled program (each combination is a group).
PROGRAM_KEYS = ("optimizer", "loss", "reduction", "grad", "batch_size", "fit_intercept", "init")
# fit options that cannot be swept.
_NOT_SWEPT = ("sample_weight", "optimizer_options", "batched", "chunk_size", "callback")
_INT_KEYS = ("steps", "seed")
_HYPER_FIELD = {"learning_rate": "learning_rate", "l2": "l2", "tol": "tol", "steps": "max_steps"}

DEFAULT_MEMORY_BUDGET = 2 << 30  # bytes for one member chunk when the device does not say


def default_memory_budget() -> int:
    """Half the free memory of the default device where it reports it (GPUs), else 2 GiB."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # backends without memory statistics
        stats = {}
    if "bytes_limit" in stats:
        return max(1 << 20, (stats["bytes_limit"] - stats.get("bytes_in_use", 0)) // 2)
    return DEFAULT_MEMORY_BUDGET


class SweepResult(NamedTuple):
    """What :func:`sweep` returns: one entry per member, in the grid's product order.

    configs: one dict per member, the grid keys and this member's values (the last key of
      the grid varies fastest, as in ``itertools.product``).
    params: :class:`~gradfit.Params` stacked on a leading member axis: W (K, n) or
      (K, n, k), b (K,) or (K, k).
    losses: (K, T) objective histories (``FitResult.losses`` of each member), T the most
      steps any member ran; NaN past each member's own ``steps``. (K, k, T) when
      hyperparameters are per-output (a (k,) array in the fit options).
    final_loss: (K,) the objective at each member's params (summed over outputs).
    steps, converged, diverged: (K,) status per member ((K, k) when per-output).
    seconds: (K,) run time from the start of the member's group until the chunk boundary at
      which the member was seen finished (members of a group run together).
    stats: ``compile_seconds``, ``run_seconds``, ``groups``, ``programs``, ``member_chunks``,
      ``lane_steps`` (member-steps paid for, padding and finished lanes included),
      ``batch_sizes`` (the batch of members run in each chunk), ``backend``, ``dtype``.
    """

    configs: list[dict[str, Any]]
    params: Params
    losses: np.ndarray
    final_loss: np.ndarray
    steps: np.ndarray
    converged: np.ndarray
    diverged: np.ndarray
    seconds: np.ndarray
    stats: dict

    @property
    def best_index(self) -> int | None:
        """The member with the lowest finite final loss among those that did not diverge."""
        ok = np.isfinite(self.final_loss) & ~_per_member(self.diverged, np.any)
        if not ok.any():
            return None
        return int(np.argmin(np.where(ok, self.final_loss, np.inf)))

    @property
    def best(self) -> dict[str, Any] | None:
        """The config of :attr:`best_index` (None when every member diverged)."""
        i = self.best_index
        return None if i is None else dict(self.configs[i])

    def rows(self) -> list[dict[str, Any]]:
        """One dict per member: its config, then ``final_loss``, ``steps``, ``converged``,
        ``diverged`` and ``seconds`` (per-output status is summarised: most steps, all
        converged, any diverged)."""
        steps = _per_member(self.steps, np.max)
        converged = _per_member(self.converged, np.all)
        diverged = _per_member(self.diverged, np.any)
        return [
            {
                **config,
                "final_loss": float(self.final_loss[i]),
                "steps": int(steps[i]),
                "converged": bool(converged[i]),
                "diverged": bool(diverged[i]),
                "seconds": float(self.seconds[i]),
            }
            for i, config in enumerate(self.configs)
        ]

    def table(self, top: int | None = None) -> str:
        """The rows as aligned text, best first (diverged and non-finite members last)."""
        return format_table(self.rows(), top=top)


def _per_member(a: np.ndarray, reduce) -> np.ndarray:
    a = np.asarray(a)
    return reduce(a.reshape(a.shape[0], -1), axis=1) if a.ndim > 1 else a


def format_table(rows: list[dict[str, Any]], top: int | None = None) -> str:
    """Rows (from :meth:`SweepResult.rows`) as text, sorted by final loss, best first."""

    def rank(r):
        bad = r["diverged"] or not math.isfinite(r["final_loss"])
        return (bad, r["final_loss"] if math.isfinite(r["final_loss"]) else math.inf)

    rows = sorted(rows, key=rank)[:top]
    if not rows:
        return "(no members)"
    keys = list(rows[0])
    cells = [[_cell(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.rjust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


# --------------------------------------------------------------------------- the grid
def _optimizer_options(name: str) -> dict[str, inspect.Parameter]:
    params = inspect.signature(getattr(optax, name)).parameters
    return {k: p for k, p in params.items() if k != "learning_rate"}


def _is_float_option(optimizer: str, key: str) -> bool:
    """Float options are traced; ints, bools and others change the program."""
    param = _optimizer_options(optimizer)[key]
    return "float" in str(param.annotation)


def _group_optimizers(grid: dict, fit_options: dict) -> list:
    return list(grid["optimizer"]) if "optimizer" in grid else [fit_options.get("optimizer", "sgd")]


def _check_grid(grid, fit_options: dict) -> tuple[dict[str, list], list[str]]:
    """Check the grid's keys and values; return ``{key: list of values}`` and the traced keys."""
    if not isinstance(grid, dict) or not grid:
        raise ValueError(
            f"grid must be a non-empty dict of key -> list of values, e.g. "
            f"{{'learning_rate': [0.01, 0.1]}}, got {grid!r}"
        )
    optimizers = [o for o in _group_optimizers(grid, fit_options) if isinstance(o, str) and o in _optim.OPTIMIZERS]
    option_names = sorted({k for o in optimizers for k in _optimizer_options(o)})
    known = [*TRACED_KEYS, *PROGRAM_KEYS, *option_names]
    out: dict[str, list] = {}
    traced: list[str] = []
    for key, values in grid.items():
        if not isinstance(key, str):
            raise ValueError(f"grid keys must be strings, got {key!r}")
        if key in _NOT_SWEPT:
            raise ValueError(
                f"grid key {key!r} cannot be swept: pass it as a fixed option "
                "(sweep optimizer options by their own names, e.g. grid={'momentum': [0.0, 0.9]})"
            )
        if key not in known:
            close = difflib.get_close_matches(key, known + list(_NOT_SWEPT), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"unknown grid key {key!r}{hint}: sweep one of {', '.join(TRACED_KEYS)} (traced), "
                f"{', '.join(PROGRAM_KEYS)} (one compile per value)"
                + (f", or an option of the optimizer: {', '.join(option_names)}" if option_names else "")
            )
        if key in fit_options:
            raise ValueError(f"{key!r} is given both in the grid and as a fixed option: give it in one place")
        if isinstance(values, np.ndarray):
            if values.ndim != 1:
                raise ValueError(f"grid[{key!r}] has shape {values.shape}: give a 1-d list of scalar values")
            values = values.tolist()
        if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
            raise ValueError(f"grid[{key!r}] must be a list of values, e.g. [{values!r}], got {type(values).__name__}")
        if not values:
            raise ValueError(f"grid[{key!r}] is an empty list: give at least one value, or drop the key")
        values = list(values)
        is_option = key in option_names and key not in TRACED_KEYS and key not in PROGRAM_KEYS
        if key in TRACED_KEYS or (is_option and all(_is_float_option(o, key) for o in optimizers if key in _optimizer_options(o))):
            values = [_check_number(key, i, v) for i, v in enumerate(values)]
            if is_option:
                values = [float(v) for v in values]
            traced.append(key)
        out[key] = values
    return out, traced


def _check_number(key: str, i: int, v):
    if isinstance(v, (np.ndarray, jax.Array)) and np.ndim(v) == 0:
        v = v.item()
    if np.ndim(v) != 0 or isinstance(v, (list, tuple)):
        raise ValueError(
            f"grid[{key!r}][{i}] has shape {np.shape(v)}: grid values are scalars "
            "(per-output arrays go in the fixed options, e.g. l2=np.array([...]))"
        )
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise ValueError(f"grid[{key!r}][{i}] = {v!r} is not a number: give numeric values for {key!r}")
    if key in _INT_KEYS:
        if not isinstance(v, numbers.Integral):
            raise ValueError(f"grid[{key!r}][{i}] = {v!r} must be an integer")
        return int(v)
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"grid[{key!r}][{i}] = {v!r} must be finite")
    return v


class Group(NamedTuple):
    """Members that share one compiled program: their indices in the product order."""

    fixed: dict[str, Any]  # the program keys' values of this group
    members: list[int]


def expand(grid: dict, **fit_options) -> tuple[list[dict[str, Any]], list[Group]]:
    """Check a grid and return its members' configs (product order) and their groups.

    Raises ``ValueError`` for unknown keys (with a suggestion), empty lists, non-numeric or
    non-scalar values of traced keys, and keys also given as fixed options.
    """
    grid, traced = _check_grid(grid, fit_options)
    keys = list(grid)
    configs = [dict(zip(keys, combo)) for combo in itertools.product(*grid.values())]
    program = [k for k in keys if k not in traced]
    positions = [dict(zip(keys, combo)) for combo in itertools.product(*(range(len(v)) for v in grid.values()))]
    by_key: dict[tuple, Group] = {}
    for i, (config, pos) in enumerate(zip(configs, positions)):
        gkey = tuple(pos[k] for k in program)
        if gkey not in by_key:
            by_key[gkey] = Group({k: config[k] for k in program}, [])
        by_key[gkey].members.append(i)
    return configs, list(by_key.values())


def split_grid(grid: dict, **fit_options) -> list[dict[str, list]]:
    """The grid as one sub-grid per group (program keys pinned to one value each).

    Running the sub-grids one by one (e.g. to resume an interrupted sweep group by group)
    gives the same members as the whole grid.
    """
    checked, _ = _check_grid(grid, fit_options)
    _, groups = expand(grid, **fit_options)
    return [{k: ([g.fixed[k]] if k in g.fixed else v) for k, v in checked.items()} for g in groups]


# --------------------------------------------------------------------------- one group
def _fit_arguments(config: dict[str, Any], fit_options: dict[str, Any]) -> dict[str, Any]:
    """fit's keyword arguments for one member: optimizer options go into optimizer_options."""
    kwargs = dict(fit_options)
    options = dict(kwargs.get("optimizer_options") or {})
    for key, value in config.items():
        if key in TRACED_KEYS or key in PROGRAM_KEYS:
            kwargs[key] = value
        else:
            options[key] = value
    kwargs["optimizer_options"] = options
    return kwargs


_FIT_DEFAULTS = {
    name: p.default for name, p in inspect.signature(solver.prepare).parameters.items() if p.default is not inspect.Parameter.empty
}


class _Stacked(NamedTuple):
    params: Params
    hyper: solver.Hyper
    key: jax.Array
    level: solver.Level


def _stack_members(problem: solver.Problem, members: list[dict[str, Any]], fit_options: dict, swept: list[str]) -> _Stacked:
    """Checked per-member hyperparameters, stacked on a leading member axis (host first)."""
    K = len(members)
    values, options = [], []
    out = tuple(problem.params.b.shape)
    for config in members:
        kw = {**_FIT_DEFAULTS, **_fit_arguments(config, fit_options)}
        lr = kw["learning_rate"]
        if lr is None and isinstance(kw["optimizer"], str) and kw["optimizer"] not in _optim.LINE_SEARCH:
            lr = solver.DEFAULT_LEARNING_RATE  # as prepare() resolves it
        try:
            values.append(solver.check_hyperparameters(
                learning_rate=lr, l2=kw["l2"], tol=kw["tol"], steps=kw["steps"], seed=kw["seed"],
                k=out[0] if out else None,
            ))
            options.append(_optim.resolve(kw["optimizer"], kw["optimizer_options"], lr)[1])
        except ValueError as e:
            raise ValueError(f"grid member {config}: {e}") from None

    base = problem.hyper
    dtype = problem.dtype

    def stack(field: jax.Array, column: list) -> jax.Array:
        arr = np.asarray(column, np.dtype(field.dtype)).reshape((K,) + (1,) * field.ndim)
        return jnp.asarray(np.broadcast_to(arr, (K, *field.shape)))

    hyper, axes = base, solver._hyper_axes(base, None)
    for key in swept:
        if key in _HYPER_FIELD:
            name = _HYPER_FIELD[key]
            column = [v.steps if key == "steps" else getattr(v, name) for v in values]
            hyper = hyper._replace(**{name: stack(getattr(base, name), column)})
            axes = axes._replace(**{name: 0})
        elif key in base.optimizer:
            hyper = hyper._replace(optimizer={**hyper.optimizer, key: stack(base.optimizer[key], [o[key] for o in options])})
            axes = axes._replace(optimizer={**axes.optimizer, key: 0})

    n = problem.params.W.shape[-1] if problem.per_output else problem.params.W.shape[int(problem.batched)]
    if "seed" in swept:
        inits = [solver.initial_params(problem.init, v.seed, n, out, dtype, per_output=problem.per_output) for v in values]
        params = jax.tree.map(lambda *a: jnp.stack(a), *[p for p, _ in inits])
        key = jnp.stack([k for _, k in inits])
        key_axis = 0
    else:
        params = jax.tree.map(lambda a: jnp.broadcast_to(a, (K, *a.shape)), problem.params)
        key, key_axis = problem.key, None
    if problem.mesh is not None:  # rows split over devices: members' arrays on every device
        from gradfit import sharding

        params, hyper, key = sharding.replicate((params, hyper, key), problem.mesh)
    level = solver.Level(None, axes, 0, key_axis)  # the data (rows, or their statistics) is shared
    return _Stacked(params, hyper, key, level)


def _member_bytes(problem: solver.Problem) -> int:
    """A rough estimate of one member's working memory inside a chunk, in bytes:

    ``itemsize * (4 rows k + 12 n k + chunk_size k [+ m + batch_size n])``: predictions,
    residuals and their temporaries over the rows a step reads (``rows`` = m, or
    ``batch_size``); params, previous params, gradient and optimizer state; the chunk's
    history; with minibatches, the permutation and the gathered batch. X itself is shared.
    """
    X = (problem.source or problem.data).X
    m, n = X.shape[-2], X.shape[-1]
    k = int(np.prod(problem.params.b.shape)) or 1
    static = problem.static
    rows = static.batch_size or (n if static.grad == "stats" else m)  # statistics: O(n^2 k) steps
    words = 4 * rows * k + 12 * n * k + static.chunk_size * k
    if static.batch_size is not None:
        words += m + static.batch_size * n  # the permutation and the gathered batch
    return int(words * np.dtype(problem.dtype).itemsize)


def _bucket(count: int, largest: int) -> int:
    """The smallest allowed batch size >= count: a power of two below ``largest``, or ``largest``."""
    size = 1 << max(0, (count - 1).bit_length())
    return size if size < largest else largest


def _take_fn(tree, idx):
    return jax.tree.map(lambda a: a[idx], tree)


def _put_fn(tree, part, idx):
    return jax.tree.map(lambda a, b: a.at[idx].set(b), tree, part)


_MOVERS: dict[tuple, Any] = {}


def _mover(name: str, args: tuple) -> tuple[Any, float]:
    """The compiled gather (``"take"``) or scatter (``"put"``) of member rows for these
    argument shapes, and its compile time (0 when cached): one per batch size."""
    key = (name, solver._signature(args))
    if key in _MOVERS:
        return _MOVERS[key], 0.0
    start = time.perf_counter()
    exe = jax.jit({"take": _take_fn, "put": _put_fn}[name]).lower(*args).compile()
    _MOVERS[key] = exe
    return exe, time.perf_counter() - start


def _take(tree, idx) -> tuple[Any, float]:
    exe, seconds = _mover("take", (tree, idx))
    return exe(tree, idx), seconds


def _put(tree, part, idx) -> tuple[Any, float]:
    exe, seconds = _mover("put", (tree, part, idx))
    return exe(tree, part, idx), seconds


def _take_hyper(hyper: solver.Hyper, axes: solver.Hyper, idx) -> tuple[solver.Hyper, float]:
    """The member-mapped fields of ``hyper`` at rows ``idx``; shared fields as they are."""
    mapped = jax.tree.map(lambda a, ax: a if ax == 0 else None, hyper, axes, is_leaf=lambda x: x is None)
    taken, seconds = _take(mapped, idx)
    return jax.tree.map(lambda t, a: a if t is None else t, taken, hyper, is_leaf=lambda x: x is None), seconds


class _ChunkRun(NamedTuple):
    state: solver.SolverState
    final_loss: jax.Array
    history: np.ndarray  # (K, *inner, steps)
    seconds: np.ndarray  # (K,)
    compile_seconds: float
    programs: int
    batch_sizes: list[int]
    lane_steps: int


def _run_members(
    params, data, hyper, key, static: solver.Static, levels: tuple[solver.Level, ...], *, compact: bool,
    on_chunk: Callable[[np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> _ChunkRun:
    """Run K stacked members to the end, dropping finished members between chunks.

    Every chunk runs ``solver.compiled("chunk", ...)`` on the still-active members, gathered
    into a batch whose size is a power of two (or K); results are scattered back. Finished
    members are frozen by the loop's masking, so gathering them or not gives the same bits.
    """
    compile_seconds, programs = 0.0, 0

    def program(name, args):
        nonlocal compile_seconds, programs
        exe, t = solver.compiled(name, static, levels, args)
        compile_seconds += t
        programs += t > 0
        return exe

    K = jax.tree.leaves(params)[0].shape[0]
    axes = levels[0].hyper
    state = program("init", (params, data, hyper, key))(params, data, hyper, key)
    idx = np.arange(K)
    cur_state, cur_hyper = state, hyper
    chunks: list[tuple[np.ndarray, np.ndarray]] = []
    seconds = np.full(K, np.nan)
    batch_sizes: list[int] = []
    start, compile_before = time.perf_counter(), compile_seconds
    while True:
        cur_state, history = program("chunk", (cur_state, data, cur_hyper))(cur_state, data, cur_hyper)
        batch_sizes.append(len(idx))
        chunks.append((idx, np.asarray(history)))
        active = solver._active_host(cur_state, cur_hyper)
        active = active.reshape(len(idx), -1).any(axis=1)
        if on_chunk is not None:  # (the members this chunk ran, their steps, still running)
            on_chunk(idx, np.asarray(cur_state.step).reshape(len(idx), -1).max(axis=1), active)
        now = time.perf_counter() - start - (compile_seconds - compile_before)
        seconds[idx[~active & np.isnan(seconds[idx])]] = now
        n_active = int(active.sum())
        size = _bucket(n_active, K) if compact else len(idx)
        if n_active == 0 or size < len(idx):
            if len(idx) == K:
                state = cur_state
            else:
                state, t = _put(state, cur_state, jnp.asarray(idx))
                compile_seconds += t
            if n_active == 0:
                break
            idx = np.concatenate([idx[active], idx[~active][: size - n_active]])
            cur_state, t1 = _take(state, jnp.asarray(idx))
            cur_hyper, t2 = _take_hyper(hyper, axes, jnp.asarray(idx))
            compile_seconds += t1 + t2
    final_loss = program("final", (state, data, hyper))(state, data, hyper)
    jax.block_until_ready(final_loss)

    steps = np.asarray(state.step)
    total = int(steps.max())
    inner = chunks[0][1].shape[1:-1]
    history = np.full((K, *inner, len(chunks) * static.chunk_size), np.nan, chunks[0][1].dtype)
    for c, (members, h) in enumerate(chunks):
        history[members, ..., c * static.chunk_size : (c + 1) * static.chunk_size] = h
    lane_steps = sum(b * static.chunk_size for b in batch_sizes)
    return _ChunkRun(state, final_loss, history[..., :total], seconds, compile_seconds, programs, batch_sizes, lane_steps)


# --------------------------------------------------------------------------- the sweep
def sweep(
    X,
    y,
    *,
    grid: dict[str, Any],
    compact: bool = True,
    memory_budget: int | None = None,
    callback: Callable[[int, int], None] | None = None,
    progress: bool = False,
    **fit_options,
) -> SweepResult:
    """Fit every member of ``grid``'s cartesian product, K members per compiled program.

    Args:
      X: (m, n) features; y: (m,) or (m, k) targets, as for :func:`gradfit.fit`.
      grid: ``{key: [values]}``. Traced keys (one program for any values): ``learning_rate``,
        ``l2``, ``tol``, ``steps``, ``seed`` and the optimizer's float options (``momentum``,
        ``b1``, ``b2``, ``eps``, ...). Program keys (one program per value): ``optimizer``,
        ``loss``, ``reduction``, ``grad``, ``batch_size``, ``fit_intercept``, ``init`` and
        non-float optimizer options. Values of traced keys are scalars.
      compact: between chunks, run only the still-active members (power-of-two batches);
        False keeps all K members in every chunk (same results, for comparison).
      memory_budget: bytes for one member chunk's working memory (default: half the free
        memory of a device that reports it, else 2 GiB); a grid that needs more runs in
        member chunks, one after another (see :func:`_member_bytes` for the estimate).
      callback: ``callback(members_done, members_total)`` after each member chunk (not
        :func:`gradfit.fit`'s per-chunk callback).
      progress: one tqdm bar over every member's step budget, updated between compiled
        chunks (:class:`gradfit.progress.MemberBar`; needs tqdm).
      **fit_options: any other :func:`gradfit.fit` keyword (fixed for every member), e.g.
        ``steps``, ``tol``, ``optimizer``, ``chunk_size``, ``optimizer_options``, ``l2``
        (a (k,) per-output array is allowed here).

    Returns:
      A :class:`SweepResult`; member i equals ``gradfit.fit(X, y, **fit_options,
      **configs[i])`` (to floating-point rounding of the batched matrix products).
      Programs are cached by shape: a later sweep of the same size and settings compiles
      nothing, except a compaction batch size (a power of two below K) that no earlier
      sweep of that size reached; there are at most log2(K) + 1 of them per group.

    Raises:
      ValueError: for a bad grid (unknown key, empty list, non-numeric or non-scalar values,
        a key also given as a fixed option) or bad fit options, before any compute.
    """
    if fit_options.pop("batched", False):
        raise ValueError("sweep fits one problem: drop batched=True and call sweep once per problem")
    fit_only = sorted(set(fit_options) & {"checkpoint", "checkpoint_every", "resume"})
    if fit_only:
        raise ValueError(
            f"sweep does not take {fit_only[0]}= (a gradfit.fit option): its callback=(members_done, "
            "members_total) reports progress, and `gradfit sweep` resumes a killed sweep group by group"
        )
    unknown = set(fit_options) - set(inspect.signature(solver.fit).parameters) - {"X", "y"}
    if unknown:
        name = sorted(unknown)[0]
        choices = [p for p in inspect.signature(solver.fit).parameters if p not in (
            "X", "y", "callback", "batched", "progress", "checkpoint", "checkpoint_every", "resume")]
        close = difflib.get_close_matches(name, choices, n=1)
        raise ValueError(
            f"unknown sweep option {name!r}{f' (did you mean {close[0]!r}?)' if close else ''}: "
            f"sweep takes grid=, compact=, memory_budget=, callback= and gradfit.fit's options: {', '.join(choices)}"
        )
    if memory_budget is not None and (isinstance(memory_budget, bool) or not isinstance(memory_budget, numbers.Integral) or memory_budget <= 0):
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    budget = int(memory_budget or default_memory_budget())
    configs, groups = expand(grid, **fit_options)
    swept = list(configs[0])

    # Check everything (data, every group, every member) before any compute.
    plans = []
    for group in groups:
        members = [configs[i] for i in group.members]
        try:
            arguments = _fit_arguments(members[0], fit_options)
            if "steps" in swept:  # "auto" chooses the plan for the group's largest step budget
                arguments["steps"] = max(_fit_arguments(c, fit_options).get("steps", 1000) for c in members)
            problem = solver.prepare(X, y, statistics=True, members=len(members), **arguments)
        except ValueError as e:
            raise ValueError(f"grid group {group.fixed or members[0]}: {e}") from None
        traced = [k for k in swept if k not in group.fixed]
        plans.append((group, problem, _stack_members(problem, members, fit_options, traced)))

    K = len(configs)
    first_problem = plans[0][1]
    per_output = any(p.per_output for _, p, _ in plans)
    results: list[tuple[list[int], Any, _ChunkRun]] = []
    compile_seconds = run_seconds = 0.0
    programs = member_chunks = lane_steps = 0
    batch_sizes: list[int] = []
    done = 0
    bar = None
    if progress:
        from gradfit import progress as progress_bars

        default_steps = fit_options.get("steps", inspect.signature(solver.fit).parameters["steps"].default)
        bar = progress_bars.MemberBar([c.get("steps", default_steps) for c in configs])
    try:
        for group, problem, stacked in plans:
            size = len(group.members)
            per_chunk = max(1, min(size, budget // max(1, _member_bytes(problem))))
            levels = (stacked.level, *problem.levels)
            for lo in range(0, size, per_chunk):
                ids = np.arange(lo, min(lo + per_chunk, size))
                width = per_chunk if len(ids) == per_chunk else _bucket(len(ids), per_chunk)
                pad = width - len(ids)
                take = np.concatenate([ids, np.full(pad, ids[0])])
                rows = jnp.asarray(take)
                (params, key), t_rows = _take((stacked.params, stacked.key if stacked.level.key == 0 else None), rows)
                key = stacked.key if stacked.level.key is None else key
                hyper, t_take = _take_hyper(stacked.hyper, stacked.level.hyper, rows)
                t_take += t_rows
                levels_c = levels
                if pad:  # padding members never run: their step budget is 0
                    max_steps = jnp.broadcast_to(hyper.max_steps, (width,)).at[len(ids):].set(0)
                    hyper = hyper._replace(max_steps=max_steps)
                    levels_c = (stacked.level._replace(hyper=stacked.level.hyper._replace(max_steps=0)), *problem.levels)
                on_chunk = None
                if bar is not None:  # chunk lanes -> the sweep's member indices (padding lanes left out)
                    global_ids = np.asarray([group.members[i] for i in ids])

                    def on_chunk(lanes, steps, active, global_ids=global_ids):
                        real = lanes < len(global_ids)
                        bar.update(global_ids[lanes[real]], steps[real], active[real])

                t0 = time.perf_counter()
                run = _run_members(
                    params, problem.data, hyper, key, problem.static, levels_c, compact=compact, on_chunk=on_chunk
                )
                run_seconds += time.perf_counter() - t0 - run.compile_seconds
                compile_seconds += run.compile_seconds + t_take
                programs += run.programs
                member_chunks += 1
                lane_steps += run.lane_steps
                batch_sizes += run.batch_sizes
                members = [group.members[i] for i in ids]
                results.append((members, problem, _trim(run, len(ids))))
                done += len(ids)
                if callback is not None:
                    callback(done, K)

    finally:
        if bar is not None:
            bar.close()

    return _assemble(configs, results, per_output, first_problem, {
        "compile_seconds": compile_seconds,
        "run_seconds": run_seconds,
        "groups": len(groups),
        "plans": [problem.static.grad for _, problem, _ in plans],  # the gradient plan of each group
        "programs": programs,
        "member_chunks": member_chunks,
        "lane_steps": lane_steps,
        "batch_sizes": batch_sizes,
        "backend": jax.default_backend(),
        "dtype": str(first_problem.dtype),
        "compact": compact,
    })


def _trim(run: _ChunkRun, count: int) -> _ChunkRun:
    """Drop padding members (they sit at the end)."""
    cut = lambda a: a[:count]  # noqa: E731
    return run._replace(
        state=jax.tree.map(cut, run.state), final_loss=cut(run.final_loss), history=cut(run.history), seconds=cut(run.seconds)
    )


def _assemble(configs, results, per_output: bool, problem: solver.Problem, stats: dict) -> SweepResult:
    K = len(configs)
    T = max(r.history.shape[-1] for _, _, r in results)
    first = results[0][2]
    inner = first.history.shape[1:-1]
    W0 = np.asarray(first.state.params.W)
    b0 = np.asarray(first.state.params.b)
    status_shape = np.asarray(first.state.step).shape[1:]
    losses = np.full((K, *inner, T), np.nan, first.history.dtype)
    W = np.zeros((K, *W0.shape[1:]), W0.dtype)
    b = np.zeros((K, *b0.shape[1:]), b0.dtype)
    final = np.zeros(K, np.asarray(first.final_loss).dtype)
    steps = np.zeros((K, *status_shape), np.int64)
    converged = np.zeros((K, *status_shape), bool)
    diverged = np.zeros((K, *status_shape), bool)
    seconds = np.zeros(K)
    for members, prob, run in results:
        if run.history.shape[1:-1] != inner or np.asarray(run.state.step).shape[1:] != status_shape:
            raise ValueError("grid groups mix per-output and joint hyperparameters: sweep them separately")
        h = run.history
        losses[members, ..., : h.shape[-1]] = h
        W[members] = np.asarray(run.state.params.W)
        b[members] = np.asarray(run.state.params.b)
        fl = np.asarray(run.final_loss)
        final[members] = fl.reshape(len(members), -1).sum(axis=1)  # per-output: the joint objective
        steps[members] = np.asarray(run.state.step)
        converged[members] = np.asarray(run.state.converged)
        diverged[members] = np.asarray(run.state.diverged)
        seconds[members] = run.seconds
    if per_output:
        W = np.moveaxis(W, -2, -1)  # (K, k, n) inside the loop -> (K, n, k)
    return SweepResult(configs, Params(W, b), losses, final, steps, converged, diverged, seconds, stats)
