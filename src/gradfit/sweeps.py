"""Hyperparameter sweeps: the compiled fit, ``vmap``-ed over the members of a grid.

A sweep runs the cartesian product of a grid, e.g. ``{"learning_rate": [...], "l2": [...]}``.
It is :func:`gradfit.fit`'s own engine and driver (the compiled chunk under one more ``vmap``
level), not a second loop:

- **traced keys** (``learning_rate``, ``l2``, ``tol``, ``steps``, ``seed`` and the optimizer's
  float options such as ``momentum``, ``b1``, ``b2``, ``eps``) become arrays with a leading
  member axis K, so K members share one compiled program, and a second sweep of the same
  size over new values compiles nothing. ``seed`` gives every member its own PRNG key
  (``init="normal"`` weights and minibatch permutations), exactly as ``fit(seed=...)``.
- **program keys** (``optimizer``, ``loss``, ``reduction``, ``grad``, ``batch_size``,
  ``fit_intercept``, ``init`` and non-float optimizer options such as ``nesterov``) split
  the grid into groups, one compiled program each.

Members are independent: each stops (converged, diverged or out of steps) by the loop's own
masking, keeps its own params, and equals a separate ``fit`` with its config. The data are
checked and placed on the device once for every group. Between chunks of ``chunk_size`` steps
the driver runs only the still-active members (:class:`gradfit._driver.Compacting`), so a grid
whose members mostly finish early costs about what its slow members cost. A grid whose members
do not fit the memory budget runs in member chunks, one after another.
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import math
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradfit import _optim, _options, progress as progress_bars, solver
from gradfit._driver import CompiledStepper, Compacting, RunResult, active_host, bucket, drive
from gradfit._types import Hyper, Level, Params

# Grid keys that are array inputs of the compiled loop (one program for any values).
TRACED_KEYS = ("learning_rate", "l2", "tol", "steps", "seed")
# Grid keys that change the compiled program (each combination is a group).
PROGRAM_KEYS = ("optimizer", "loss", "reduction", "grad", "batch_size", "fit_intercept", "init")
# fit options that cannot be swept.
_NOT_SWEPT = ("sample_weight", "optimizer_options", "batched", "chunk_size", "callback", "devices", "n_rows",
              "progress", "checkpoint", "checkpoint_every", "resume", "shuffle")
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
def member_options(config: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """fit's options for one member: grid keys over the fixed ones, an optimizer's own keys
    into ``optimizer_options``."""
    kwargs = dict(options)
    extra = dict(kwargs.get("optimizer_options") or {})
    for key, value in config.items():
        if key in TRACED_KEYS or key in PROGRAM_KEYS:
            kwargs[key] = value
        else:
            extra[key] = value
    kwargs["optimizer_options"] = extra
    return kwargs


class _Group(NamedTuple):
    fixed: dict[str, Any]
    indices: list[int]  # the members' places in the product order
    checked: list[_options.Checked]  # one per member
    plan: str


class _Stacked(NamedTuple):
    params: Params
    hyper: Hyper
    key: jax.Array
    level: Level


def _stack(problem: solver.Problem, checked: list[_options.Checked], swept: list[str], inputs: solver.Inputs) -> _Stacked:
    """The members' hyperparameters on a leading member axis K (the swept fields only; the rest
    stay shared), and their params and PRNG keys (per member when ``seed`` is swept)."""
    K = len(checked)
    base, dtype = problem.hyper, inputs.dtype

    def stack(field: jax.Array, column: list) -> jax.Array:
        arr = np.asarray(column, np.dtype(field.dtype)).reshape((K,) + (1,) * field.ndim)
        return jnp.asarray(np.broadcast_to(arr, (K, *field.shape)))

    hyper, axes = base, solver.hyper_axes(base, None)
    columns = {"learning_rate": [c.learning_rate for c in checked], "l2": [c.l2 for c in checked],
               "tol": [c.tol for c in checked], "max_steps": [c.options.steps for c in checked]}
    for key in swept:
        field = "max_steps" if key == "steps" else key
        if field in columns:
            hyper = hyper._replace(**{field: stack(getattr(base, field), columns[field])})
            axes = axes._replace(**{field: 0})
        elif key in base.optimizer:
            hyper = hyper._replace(optimizer={**hyper.optimizer, key: stack(base.optimizer[key], [c.traced[key] for c in checked])})
            axes = axes._replace(optimizer={**axes.optimizer, key: 0})
    if "seed" in swept:
        out = () if inputs.k is None else (inputs.k,)
        inits = [solver.initial_params(c.options.init, c.options.seed, inputs.n, out, dtype) for c in checked]
        params = jax.tree.map(lambda *a: jnp.stack(a), *[p for p, _ in inits])
        if problem.per_output:
            params = Params(jnp.moveaxis(params.W, -1, -2), params.b)
        key, key_axis = jnp.stack([k for _, k in inits]), 0
    else:
        params = jax.tree.map(lambda a: jnp.broadcast_to(a, (K, *a.shape)), problem.params)
        key, key_axis = problem.key, None
    if problem.placed.mesh is not None:  # rows split over devices: members' arrays on every device
        params, hyper, key = solver.sharding.replicate((params, hyper, key), problem.placed.mesh)
    return _Stacked(params, hyper, key, Level(None, axes, 0, key_axis))  # the data are shared


def _member_bytes(problem: solver.Problem) -> int:
    """A rough estimate of one member's working memory inside a chunk, in bytes:

    ``itemsize * (4 rows k + 12 n k + chunk_size k [+ m + batch_size n])``: predictions,
    residuals and their temporaries over the rows a step reads (``rows`` = m, or
    ``batch_size``); params, previous params, gradient and optimizer state; the chunk's
    history; with minibatches, the permutation and the gathered batch. X itself is shared.
    """
    X = problem.placed.data.X
    m, n = X.shape[-2], X.shape[-1]
    k = int(np.prod(problem.params.b.shape)) or 1
    program = problem.program
    rows = program.batch_size or (n if program.plan == "stats" else m)  # statistics: O(n^2 k) steps
    words = 4 * rows * k + 12 * n * k + program.chunk_size * k
    if program.batch_size is not None:
        words += m + program.batch_size * n  # the permutation and the gathered batch
    return int(words * np.dtype(problem.placed.data.y.dtype).itemsize)


def _take_members(stacked: _Stacked, rows: np.ndarray, pad: int) -> tuple[Any, Hyper, Any, tuple]:
    """Members ``rows`` of the stack (the last ``pad`` of them padding, which never run)."""
    take = lambda a: a[jnp.asarray(rows)]  # noqa: E731
    params = jax.tree.map(take, stacked.params)
    key = stacked.key if stacked.level.key is None else take(stacked.key)
    hyper = jax.tree.map(lambda a, ax: take(a) if ax == 0 else a, stacked.hyper, stacked.level.hyper,
                         is_leaf=lambda x: x is None)
    level = stacked.level
    if pad:  # padding members never run: their step budget is 0
        width = len(rows)
        hyper = hyper._replace(max_steps=jnp.broadcast_to(hyper.max_steps, (width,)).at[width - pad:].set(0))
        level = level._replace(hyper=level.hyper._replace(max_steps=0))
    return params, hyper, key, level


def _run_group(group: _Group, problem: solver.Problem, stacked: _Stacked, *, budget: int, compact: bool,
               bar, on_chunk: Callable[[int], None]) -> list[tuple[list[int], RunResult, dict]]:
    """Run one group in member chunks that fit ``budget``; returns each chunk's members and run."""
    size = len(group.indices)
    per_chunk = max(1, min(size, budget // max(1, _member_bytes(problem))))
    out = []
    for lo in range(0, size, per_chunk):
        ids = np.arange(lo, min(lo + per_chunk, size))
        width = per_chunk if len(ids) == per_chunk else bucket(len(ids), per_chunk)
        pad = width - len(ids)
        params, hyper, key, level = _take_members(stacked, np.concatenate([ids, np.full(pad, ids[0])]), pad)
        stepper = CompiledStepper(problem.operand, hyper, problem.program, (level, *problem.levels))
        runner = Compacting(stepper, level.hyper) if compact else stepper
        global_ids = np.asarray(group.indices)[ids]

        def observe(state, history, global_ids=global_ids):
            steps = np.asarray(state.step).reshape(width, -1).max(axis=1)[: len(global_ids)]
            bar.update(global_ids, steps, _active(state, hyper)[: len(global_ids)])

        run = drive(runner, stepper.init(params, key), hyper, observers=[observe if bar else None],
                    chunk_steps=problem.program.chunk_size)
        sizes = runner.batch_sizes if compact else [width] * run.chunks
        info = {"programs": stepper.programs, "compile_seconds": run.compile_seconds, "batch_sizes": sizes,
                "lane_steps": sum(sizes) * problem.program.chunk_size}
        out.append((list(global_ids), _trim(run, len(ids)), info))
        on_chunk(len(ids))
    return out


def _active(state, hyper) -> np.ndarray:
    a = active_host(state, hyper)
    return a.reshape(a.shape[0], -1).any(axis=1)


def _trim(run: RunResult, count: int) -> RunResult:
    """Drop padding members (they sit at the end)."""
    cut = lambda a: a[:count]  # noqa: E731
    return run._replace(state=jax.tree.map(cut, run.state), final_loss=cut(run.final_loss), history=cut(run.history),
                        finished_seconds=cut(run.finished_seconds), diverged_at_end=cut(run.diverged_at_end))


# --------------------------------------------------------------------------- the sweep
_FIT_ONLY = ("callback", "batched", "progress", "checkpoint", "checkpoint_every", "resume", "n_rows")


def _check_sweep_options(options: dict, memory_budget) -> int:
    if options.pop("batched", False):
        raise ValueError("sweep fits one problem: drop batched=True and call sweep once per problem")
    fit_only = sorted(set(options) & {"checkpoint", "checkpoint_every", "resume", "n_rows"})
    if fit_only:
        raise ValueError(
            f"sweep does not take {fit_only[0]}= (a gradfit.fit option): its callback=(members_done, "
            "members_total) reports progress, and `gradfit sweep` resumes a killed sweep group by group"
        )
    choices = [n for n in _options.NAMES if n not in _FIT_ONLY]
    _options.unknown(options, choices, "sweep option")
    if memory_budget is not None and (isinstance(memory_budget, bool) or not isinstance(memory_budget, numbers.Integral)
                                      or memory_budget <= 0):
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    return int(memory_budget or default_memory_budget())


def _plan_groups(configs, groups, options, X, y, sample_weight):
    """Check every member of every group, then the data once: all before any compute."""
    planned: list[_Group] = []
    for group in groups:
        members = [configs[i] for i in group.members]
        checked = []
        for i, config in enumerate(members):
            try:
                checked.append(_options.check(member_options(config, options)))
            except ValueError as e:  # the first member speaks for its group's program keys
                where = f"grid group {group.fixed}" if i == 0 and group.fixed else f"grid member {config}"
                raise ValueError(f"{where}: {e}") from None
        planned.append(_Group(group.fixed, group.members, checked, ""))
    strict = next((g.checked[0] for g in planned if g.checked[0].options.loss == "bce"), planned[0].checked[0])
    inputs = solver.check_data(X, y, sample_weight, strict)  # bce targets checked if any group is bce
    sharded = solver.will_shard(inputs, planned[0].checked[0].options)
    for i, g in enumerate(planned):
        # "auto" chooses the plan for the group's largest step budget
        c = g.checked[0]._replace(options=g.checked[0].options._replace(steps=max(m.options.steps for m in g.checked)))
        try:
            plan = _options.for_data(c, m=inputs.m, n=inputs.n, k=inputs.k, sharded=sharded, members=len(g.indices))
        except ValueError as e:
            raise ValueError(f"grid group {g.fixed or configs[g.indices[0]]}: {e}") from None
        planned[i] = g._replace(plan=plan)
    return planned, inputs, solver.place(inputs, planned[0].checked[0].options)


def sweep(X, y, *, grid: dict[str, Any], compact: bool = True, memory_budget: int | None = None,
          callback: Callable[[int, int], None] | None = None, progress: bool = False, sample_weight=None,
          **options) -> SweepResult:
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
      sample_weight: (m,) row weights, shared by every member.
      The other options are :func:`gradfit.fit`'s, fixed for every member:
{options}
    Returns:
      A :class:`SweepResult`; member i equals ``gradfit.fit(X, y, **options, **configs[i])``
      (to floating-point rounding of the batched matrix products). Programs are cached by
      shape: a later sweep of the same size and settings compiles nothing, except a compaction
      batch size (a power of two below K) that no earlier sweep of that size reached; there
      are at most log2(K) + 1 of them per group.

    Raises:
      ValueError: for a bad grid (unknown key, empty list, non-numeric or non-scalar values,
        a key also given as a fixed option) or bad fit options, before any compute.
    """
    budget = _check_sweep_options(options, memory_budget)
    configs, groups = expand(grid, **options)
    swept = list(configs[0])
    planned, inputs, placed = _plan_groups(configs, groups, options, X, y, sample_weight)
    bar = progress_bars.MemberBar([c.options.steps for g in planned for c in g.checked]) if progress else None
    done, results, operands, plans = [0], [], {}, []
    programs = 0

    def on_chunk(count: int) -> None:
        done[0] += count
        if callback is not None:
            callback(done[0], len(configs))

    try:
        for g in planned:
            problem = solver.build(g.checked[0], inputs, placed, g.plan, operands)
            plans.append(problem.program.plan)
            traced = [k for k in swept if k not in g.fixed]
            stacked = _stack(problem, g.checked, traced, inputs)
            for ids, run, info in _run_group(g, problem, stacked, budget=budget, compact=compact, bar=bar,
                                             on_chunk=on_chunk):
                results.append((ids, run, info))
                programs += info["programs"]
    finally:
        if bar is not None:
            bar.close()
    return _assemble(configs, results, inputs, placed, plans, operands, len(groups), compact)


sweep = _options.with_options_signature(sweep, exclude=_FIT_ONLY)


def _assemble(configs, results, inputs: solver.Inputs, placed, plans, operands, n_groups, compact) -> SweepResult:
    K = len(configs)
    T = max(run.history.shape[-1] for _, run, _ in results)
    first = results[0][1]
    inner = first.history.shape[1:-1]
    status_shape = np.asarray(first.state.step).shape[1:]
    W0, b0 = (np.asarray(a) for a in first.state.params)
    losses = np.full((K, *inner, T), np.nan, first.history.dtype)
    W, b = np.zeros((K, *W0.shape[1:]), W0.dtype), np.zeros((K, *b0.shape[1:]), b0.dtype)
    final = np.zeros(K, np.asarray(first.final_loss).dtype)
    steps = np.zeros((K, *status_shape), np.int64)
    converged, diverged = np.zeros((K, *status_shape), bool), np.zeros((K, *status_shape), bool)
    seconds = np.zeros(K)
    for members, run, _ in results:
        if run.history.shape[1:-1] != inner or np.asarray(run.state.step).shape[1:] != status_shape:
            raise ValueError("grid groups mix per-output and joint hyperparameters: sweep them separately")
        losses[members, ..., : run.history.shape[-1]] = run.history
        W[members], b[members] = (np.asarray(a) for a in run.state.params)
        final[members] = np.asarray(run.final_loss).reshape(len(members), -1).sum(axis=1)  # per-output: the joint objective
        steps[members] = np.asarray(run.state.step)
        converged[members] = np.asarray(run.state.converged)
        diverged[members] = np.asarray(run.state.diverged)
        seconds[members] = run.finished_seconds.reshape(len(members), -1).max(axis=1)
    if inner:  # per-output: (K, k, n) inside the loop -> (K, n, k)
        W = np.moveaxis(W, -2, -1)
    infos = [info for _, _, info in results]
    stats = {
        "compile_seconds": sum(i["compile_seconds"] for i in infos) + sum(op[1] for op in operands.values()),
        "run_seconds": sum(run.run_seconds for _, run, _ in results) + sum(op[2] for op in operands.values()),
        "groups": n_groups,
        "plan": plans,  # the gradient plan of each group
        "programs": sum(i["programs"] for i in infos),
        "member_chunks": len(results),
        "chunks": sum(run.chunks for _, run, _ in results),
        "lane_steps": sum(i["lane_steps"] for i in infos),
        "batch_sizes": [s for i in infos for s in i["batch_sizes"]],
        "backend": jax.default_backend(),
        "dtype": str(inputs.dtype),
        "devices": 1 if placed.mesh is None else placed.mesh.size,
        "compact": compact,
    }
    return SweepResult(configs, Params(W, b), losses, final, steps, converged, diverged, seconds, stats)
