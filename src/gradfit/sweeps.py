"""Hyperparameter sweeps: :func:`gradfit.fit`'s engine ``vmap``-ed over a grid's cartesian product.

Traced keys (:data:`TRACED_KEYS`, the optimizer's float options such as ``momentum``) are array inputs with a leading
member axis K; program keys (:data:`PROGRAM_KEYS`, other optimizer options such as ``nesterov``) split the grid into
groups, one compiled program each."""

from __future__ import annotations

import difflib
import inspect
import itertools
import math
import numbers
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradfit import _cv, _engine, _optim, _options, progress as progress_bars, solver
from gradfit._driver import CompiledStepper, Compacting, RunResult, active_host, bucket, drive
from gradfit._types import Level, Params

TRACED_KEYS = ("learning_rate", "l2", "tol", "ftol", "steps", "seed")  # array inputs: one program for any values
PROGRAM_KEYS = ("optimizer", "loss", "reduction", "grad", "batch_size", "fit_intercept", "init",
                "standardize")  # one program per value
_NOT_SWEPT = ("sample_weight", "optimizer_options", "batched", "chunk_size", "callback", "devices", "n_rows",
              "progress", "checkpoint", "checkpoint_every", "resume", "overwrite", "shuffle")
_HYPER_FIELD = {"learning_rate": "learning_rate", "l2": "l2", "tol": "tol", "ftol": "ftol", "steps": "max_steps"}


def default_memory_budget() -> int:
    """Half the free memory of the default device where it reports it (GPUs), else 2 GiB."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # backends without memory statistics
        stats = {}
    if "bytes_limit" in stats:
        return max(1 << 20, (stats["bytes_limit"] - stats.get("bytes_in_use", 0)) // 2)
    return 2 << 30


class SweepResult(NamedTuple):
    """What :func:`sweep` returns: one entry per member, in the grid's product order (last key fastest).

    configs: each member's grid keys and values. params: W (K, n) or (K, n, k), b (K,) or (K, k).
    losses: (K, T) histories, T the most steps any member ran, NaN past a member's own; (K, k, T)
      per-output. final_loss: (K,) summed over outputs. steps, converged, diverged, status: (K,)
      ((K, k) per-output), as in ``FitResult``. seconds: (K,) from the group's start to the chunk
      boundary the member was seen finished.
    stats: ``compile_seconds``, ``run_seconds``, ``groups``, ``programs``, ``member_chunks``,
      ``lane_steps`` (member-steps paid for, padding included), ``batch_sizes`` (members per
      chunk), ``grad_norm`` (``G`` per member), ``backend``, ``dtype``, ``warm_start`` (members run as l2 paths).
    cv: with ``cv``, the :class:`gradfit._cv.CVScores` (per-member, per-fold validation scores, their mean and
      std over folds); the fields above then hold one lane per fold after the member axis: W (K, F, n[, k]),
      losses (K, F[, k], T), final_loss (K, F), steps etc. (K, F[, k]). refit: with ``refit=True``, the
      ``FitResult`` of :attr:`best` fitted on all the data.
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
    status: np.ndarray | None = None
    cv: _cv.CVScores | None = None
    refit: Any = None

    @property
    def best_index(self) -> int | None:
        """The member with the lowest finite final loss among those that did not diverge; with ``cv``, the lowest
        mean validation loss among those finite in every fold, ties to the stronger l2 (:func:`_cv.best_index`)."""
        if self.cv is not None:
            return _cv.best_index(self.cv)
        ok = np.isfinite(self.final_loss) & ~_per_member(self.diverged, np.any)
        return int(np.argmin(np.where(ok, self.final_loss, np.inf))) if ok.any() else None

    @property
    def best(self) -> dict[str, Any] | None:
        """The config of :attr:`best_index` (None when every member diverged)."""
        return None if self.best_index is None else dict(self.configs[self.best_index])

    def rows(self) -> list[dict[str, Any]]:
        """One dict per member: config, ``final_loss``, ``steps``, ``converged``, ``diverged``, ``status``,
        ``seconds`` (per-output or per-fold: most steps, all converged, any diverged, first non-"converged" status,
        mean final loss over folds); with ``cv`` also ``val_loss``, ``val_loss_std``, ``train_loss`` (means over
        the folds), bce ``val_accuracy``, ``val_accuracy_std``, and ``best``."""
        final = _per_member(self.final_loss, np.mean)
        steps, converged = _per_member(self.steps, np.max), _per_member(self.converged, np.all)
        diverged = _per_member(self.diverged, np.any)
        status = self.status if self.status is not None else np.where(converged, "converged", "max_steps")
        status = [next((s for s in np.ravel(row) if s != "converged"), "converged") for row in status]
        rows = [{**config, "final_loss": float(final[i]), "steps": int(steps[i]),
                 "converged": bool(converged[i]), "diverged": bool(diverged[i]), "status": status[i],
                 "seconds": float(self.seconds[i])} for i, config in enumerate(self.configs)]
        if self.cv is not None:
            mean, std, best = self.cv.mean, self.cv.std, self.best_index
            for i, row in enumerate(rows):
                row.update(val_loss=float(mean["loss"][i]), val_loss_std=float(std["loss"][i]),
                           train_loss=float(mean["train_loss"][i]))
                if "accuracy" in mean:
                    row.update(val_accuracy=float(mean["accuracy"][i]), val_accuracy_std=float(std["accuracy"][i]))
                row["best"] = i == best
        return rows

    def table(self, top: int | None = None) -> str:
        """The rows as aligned text, best first (diverged and non-finite members last)."""
        return format_table(self.rows(), top=top)


def _per_member(a: np.ndarray, reduce) -> np.ndarray:
    a = np.asarray(a)
    return reduce(a.reshape(a.shape[0], -1), axis=1) if a.ndim > 1 else a


def format_table(rows: list[dict[str, Any]], top: int | None = None) -> str:
    """Rows (from :meth:`SweepResult.rows`) as text, sorted by validation loss (else final loss), best first."""

    def rank(r):
        value = r.get("val_loss", r["final_loss"])
        finite = math.isfinite(value)
        return (not r.get("best", True), r["diverged"] or not finite, value if finite else math.inf)

    rows = sorted(rows, key=rank)[:top]
    if not rows:
        return "(no members)"
    keys = list(rows[0])
    cells = [[f"{r[k]:.6g}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in [keys, *cells])


def _check_grid(grid, fit_options: dict) -> tuple[dict[str, list], list[str]]:
    """``{key: list of values}`` and the traced keys (an optimizer option is traced when it is a
    float in every optimizer that has it), raising ValueError for a bad key or value."""
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"grid must be a non-empty dict of key -> list of values, e.g. "
                         f"{{'learning_rate': [0.01, 0.1]}}, got {grid!r}")
    optimizers = list(grid["optimizer"]) if "optimizer" in grid else [fit_options.get("optimizer", "sgd")]
    signatures = [{k: p for k, p in inspect.signature(getattr(optax, o)).parameters.items() if k != "learning_rate"}
                  for o in optimizers if isinstance(o, str) and o in _optim.OPTIMIZERS]
    option_names = sorted({k for s in signatures for k in s})
    known = [*TRACED_KEYS, *PROGRAM_KEYS, *option_names]
    out, traced = {}, []
    for key, values in grid.items():
        if not isinstance(key, str):
            raise ValueError(f"grid keys must be strings, got {key!r}")
        if key in _NOT_SWEPT:
            raise ValueError(f"grid key {key!r} cannot be swept: pass it as a fixed option "
                             "(sweep optimizer options by their own names, e.g. grid={'momentum': [0.0, 0.9]})")
        if key not in known:
            close = difflib.get_close_matches(key, known + list(_NOT_SWEPT), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            extra = f", or an option of the optimizer: {', '.join(option_names)}" if option_names else ""
            raise ValueError(f"unknown grid key {key!r}{hint}: sweep one of {', '.join(TRACED_KEYS)} (traced), "
                             f"{', '.join(PROGRAM_KEYS)} (one compile per value){extra}")
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
        is_option = key in option_names and key not in TRACED_KEYS and key not in PROGRAM_KEYS
        if key in TRACED_KEYS or (is_option and all("float" in str(s[key].annotation) for s in signatures if key in s)):
            values = [_check_number(key, i, v) for i, v in enumerate(values)]  # options are floats
            traced.append(key)
        out[key] = list(values)
    return out, traced


def _check_number(key: str, i: int, v):
    if isinstance(v, (np.ndarray, jax.Array)) and np.ndim(v) == 0:
        v = v.item()
    if np.ndim(v) != 0 or isinstance(v, (list, tuple)):
        raise ValueError(f"grid[{key!r}][{i}] has shape {np.shape(v)}: grid values are scalars "
                         "(per-output arrays go in the fixed options, e.g. l2=np.array([...]))")
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise ValueError(f"grid[{key!r}][{i}] = {v!r} is not a number: give numeric values for {key!r}")
    if key in ("steps", "seed"):
        if not isinstance(v, numbers.Integral):
            raise ValueError(f"grid[{key!r}][{i}] = {v!r} must be an integer")
        return int(v)
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"grid[{key!r}][{i}] = {v!r} must be finite")
    return v


class Group(NamedTuple):
    """Members sharing one compiled program (``fixed``: its program keys' values), by product index."""

    fixed: dict[str, Any]
    members: list[int]


def expand(grid: dict, **fit_options) -> tuple[list[dict[str, Any]], list[Group]]:
    """A checked grid's (:func:`_check_grid`) member configs (product order) and their groups."""
    grid, traced = _check_grid(grid, fit_options)
    configs: list[dict[str, Any]] = []
    groups: dict[tuple, Group] = {}  # by the positions of the program keys' values
    for i, combo in enumerate(itertools.product(*(enumerate(v) for v in grid.values()))):
        configs.append({k: v for k, (_, v) in zip(grid, combo)})
        where = tuple((k, j) for k, (j, _) in zip(grid, combo) if k not in traced)
        groups.setdefault(where, Group({k: configs[-1][k] for k, _ in where}, [])).members.append(i)
    return configs, list(groups.values())


def split_grid(grid: dict, **fit_options) -> list[dict[str, list]]:
    """The grid as one sub-grid per group (program keys pinned): run one by one (e.g. to resume
    group by group), they give the whole grid's members."""
    checked, _ = _check_grid(grid, fit_options)
    groups = expand(grid, **fit_options)[1]
    return [{k: ([g.fixed[k]] if k in g.fixed else v) for k, v in checked.items()} for g in groups]


def member_options(config: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """fit's options for one member: grid keys over the fixed ones, optimizer options into ``optimizer_options``."""
    kwargs = dict(options)
    extra = dict(kwargs.get("optimizer_options") or {})
    for key, value in config.items():
        (kwargs if key in TRACED_KEYS or key in PROGRAM_KEYS else extra)[key] = value
    return {**kwargs, "optimizer_options": extra}


def _stack(problem: solver.Problem, checked: list[_options.Checked], swept: list[str], inputs: solver.Inputs,
           pad: int = 0) -> tuple:
    """``(params, hyper, key, level)`` of K members (the last ``pad`` padding, budget 0): swept
    hyperparameters (and params, keys when ``seed`` is swept) on a leading member axis."""
    K = len(checked)
    hyper, axes = problem.hyper, solver.hyper_axes(problem.hyper, None)

    def stack(field: jax.Array, column: list) -> np.ndarray:  # numpy: the programs take it as an argument
        arr = np.asarray(column, np.dtype(field.dtype)).reshape((K,) + (1,) * field.ndim)
        return np.ascontiguousarray(np.broadcast_to(arr, (K, *field.shape)))

    fields = {_HYPER_FIELD[k]: [c.options.steps if k == "steps" else getattr(c, k) for c in checked]
              for k in swept if k in _HYPER_FIELD}
    if pad:
        fields["max_steps"] = [c.options.steps for c in checked[: K - pad]] + [0] * pad
    optimizer = {k: stack(hyper.optimizer[k], [c.traced[k] for c in checked]) for k in swept if k in hyper.optimizer}
    hyper = hyper._replace(**{f: stack(getattr(hyper, f), column) for f, column in fields.items()},
                           optimizer={**hyper.optimizer, **optimizer})
    axes = axes._replace(**dict.fromkeys(fields, 0), optimizer={**axes.optimizer, **dict.fromkeys(optimizer, 0)})
    if "seed" in swept:
        out = () if inputs.k is None else (inputs.k,)
        inits = [solver.initial_params(c.options.init, c.options.seed, inputs.n, out, inputs.dtype) for c in checked]
        params = jax.tree.map(lambda *a: jnp.stack(a), *[p for p, _ in inits])
        if problem.per_output:
            params = Params(jnp.moveaxis(params.W, -1, -2), params.b)
        params = jax.tree.map(lambda p, like: jnp.broadcast_to(p[:, None], (K, *like.shape)) if p.ndim == like.ndim
                              else p, params, problem.params)  # cross-validated: the same init in every fold
        key, key_axis = jnp.stack([k for _, k in inits]), 0
    else:
        params = jax.tree.map(lambda a: jnp.broadcast_to(a, (K, *a.shape)), problem.params)
        key, key_axis = problem.key, None
    if problem.placed.mesh is not None:  # rows split over devices: members' arrays on every device
        params, hyper, key = solver.sharding.replicate((params, hyper, key), problem.placed.mesh)
    return params, hyper, key, Level(None, axes, 0, key_axis)


def _member_bytes(problem: solver.Problem) -> int:
    """One member's working memory in a chunk, roughly ``itemsize * (4 rows k + 12 n k + chunk_size k
    [+ m + batch_size n])`` bytes: temporaries over the rows a step reads, params and optimizer
    state, the history, with minibatches the permutation and the batch (X is shared). Members run one after
    another (:func:`gradfit._engine.one_by_one`) hold the temporaries one at a time: those are not counted."""
    m, n = problem.placed.data.X.shape[-2:]
    k = int(np.prod(problem.params.b.shape)) or 1
    program = problem.program
    rows = program.batch_size or (n if program.plan == "stats" else m)  # statistics: O(n^2 k) steps
    rows = 0 if _engine.one_by_one(program) else rows
    words = 4 * rows * k + 12 * n * k + program.chunk_size * k
    if program.batch_size is not None:
        words += m + program.batch_size * n  # the permutation and the gathered batch
    return int(words * np.dtype(problem.placed.data.y.dtype).itemsize)


def _member_stepper(problem: solver.Problem, rows: list[_options.Checked], swept: list[str], inputs: solver.Inputs,
                    pad: int = 0) -> tuple:
    """``(params, hyper, key, level, stepper)`` of the members ``rows`` (:func:`_stack`), the stepper over the
    member level and the problem's own levels, its final check laid out the same way."""
    params, hyper, key, level = _stack(problem, rows, swept, inputs, pad)
    check = None if problem.check is None else (*problem.check[:2], (level, *problem.check[2]))
    return params, hyper, key, level, CompiledStepper(problem.operand, hyper, problem.program,
                                                      (level, *problem.levels), check)


def _observer(bar, global_ids, hyper):
    """The progress bar's observer of a run over ``global_ids`` (the first members of its level), or None."""
    if bar is None:
        return None
    count = len(global_ids)

    def observe(state, history):
        bar.update(global_ids, _per_member(state.step, np.max)[:count],
                   _per_member(active_host(state, hyper), np.any)[:count])
    return observe


def _info(stepper: CompiledStepper, run: RunResult, sizes: list[int], problem: solver.Problem, lanes: int) -> dict:
    return {"programs": stepper.programs, "compile_seconds": run.compile_seconds, "batch_sizes": sizes,
            "lane_steps": sum(sizes) * problem.program.chunk_size * lanes, "per_output": problem.per_output}


def paths(configs: list[dict[str, Any]]) -> list[list[int]]:
    """Positions of ``configs`` that differ only in ``l2``, each list ordered by decreasing l2 (a warm-started path
    from the strongest penalty, as scikit-learn's C paths run from the smallest C)."""
    by_rest: dict[tuple, list[int]] = {}
    for i, config in enumerate(configs):
        by_rest.setdefault(tuple((k, repr(v)) for k, v in config.items() if k != "l2"), []).append(i)
    return [sorted(ids, key=lambda i: -configs[i]["l2"]) for ids in by_rest.values()]


def _run_paths(group: Group, configs: list[dict[str, Any]], checked: list[_options.Checked],
               problem: solver.Problem, inputs: solver.Inputs, *, swept: list[str], bar, lanes: int = 1
               ) -> Iterator[tuple[list[int], RunResult, dict]]:
    """Run one group's members along their l2 paths (:func:`paths`), one member at a time, each starting from the
    previous member's solution and curvature pairs (:meth:`CompiledStepper.warm`; a diverged or non-finite one
    passes nothing on). One program of one member serves the whole group; yields each member and its run."""
    for path in paths(configs):
        previous = None
        for i in path:
            params, hyper, key, _, stepper = _member_stepper(problem, [checked[i]], swept, inputs)
            state = stepper.init(params, key) if previous is None else stepper.warm(*previous, key)
            global_ids = [group.members[i]]
            run = drive(stepper, state, hyper, observers=[_observer(bar, global_ids, hyper)],
                        chunk_steps=problem.program.chunk_size)
            good = not np.any(run.state.diverged) and all(np.isfinite(np.asarray(a)).all()
                                                           for a in jax.tree.leaves(run.state.params))
            previous = (run.state, hyper) if good else None
            yield global_ids, run, _info(stepper, run, [1] * run.chunks, problem, lanes)


def _run_group(group: Group, checked: list[_options.Checked], problem: solver.Problem, inputs: solver.Inputs, *,
               swept: list[str], budget: int, compact: bool, bar, lanes: int = 1
               ) -> Iterator[tuple[list[int], RunResult, dict]]:
    """Run one group in member chunks that fit ``budget`` (``lanes`` folds a member); yields each chunk's members
    and run."""
    size = len(group.members)
    per_chunk = max(1, min(size, budget // max(1, lanes * _member_bytes(problem))))
    for lo in range(0, size, per_chunk):
        ids = np.arange(lo, min(lo + per_chunk, size))
        width = per_chunk if len(ids) == per_chunk else bucket(len(ids), per_chunk)
        pad = width - len(ids)
        rows = [checked[i] for i in ids] + [checked[ids[0]]] * pad  # padding: copies of the first member
        params, hyper, key, level, stepper = _member_stepper(problem, rows, swept, inputs, pad)
        compact = compact and not _engine.one_by_one(problem.program)  # one after another: nothing to save
        runner = Compacting(stepper, level.hyper) if compact else stepper
        global_ids = np.asarray(group.members)[ids]
        run = drive(runner, stepper.init(params, key), hyper, observers=[_observer(bar, global_ids, hyper)],
                    chunk_steps=problem.program.chunk_size)
        info = _info(stepper, run, runner.batch_sizes if compact else [width] * run.chunks, problem, lanes)
        run = run._replace(**{f: jax.tree.map(lambda a: a[: len(ids)], getattr(run, f))  # drop the padding members
                              for f in ("state", "final_loss", "history", "finished_seconds", "diverged_at_end")})
        yield list(global_ids), run, info


_FIT_ONLY = ("callback", "batched", "progress", "checkpoint", "checkpoint_every", "resume", "overwrite", "n_rows",
             *_options.VALIDATION)


def _plan_groups(configs, groups: list[Group], options, X, y, sample_weight, cv=None):
    """Check every member, then the data and the folds of ``cv``, before any compute: ``[(group, its members'
    checked options, plan, scaling, per-fold scaling or None)]``, the checked inputs, the placed data, the folds."""
    checked = []
    for group in groups:
        checked.append([])
        for i in group.members:
            try:
                checked[-1].append(_options.check(member_options(configs[i], options)))
            except ValueError as e:
                first = i == group.members[0] and group.fixed  # it speaks for its group's program keys
                where = f"grid group {group.fixed}" if first else f"grid member {configs[i]}"
                raise ValueError(f"{where}: {e}") from None
    strict = next((cs[0] for cs in checked if cs[0].options.loss == "bce"), checked[0][0])
    inputs = solver.check_data(X, y, sample_weight, strict)  # bce targets checked if any group is bce
    sharded = solver.will_shard(inputs, checked[0][0].options)
    folds = None
    if cv is not None:
        if sharded:
            raise ValueError("cv does not run with rows split over several devices yet: use devices=1 (or None), "
                             "or leave cv=None")
        pairs = _cv.split(cv, inputs.X, inputs.y, loss=strict.options.loss)
        folds = _cv.make_folds(pairs, inputs, {c[0].options.loss for c in checked})
    lanes = 1 if folds is None else len(folds.pairs)
    planned = []
    for group, cs in zip(groups, checked):
        most = max(m.options.steps for m in cs)  # "auto" plans for the group's largest step budget
        c = cs[0]._replace(options=cs[0].options._replace(steps=most))
        try:
            plan = _options.for_data(c, m=inputs.m, n=inputs.n, k=inputs.k, sharded=sharded, members=len(cs) * lanes)
            scale = solver.scaling(cs[0], inputs, cs[1:])
            per_fold = None if folds is None else _cv.fold_scaling(cs[0], inputs, cs[1:], folds)
        except ValueError as e:
            raise ValueError(f"grid group {group.fixed or configs[group.members[0]]}: {e}") from None
        planned.append((group, cs, plan, scale, per_fold))
    placed = solver.place(inputs, checked[0][0].options)
    return planned, inputs, placed, None if folds is None else _cv.padded(folds, placed.data.X.shape[0])


def sweep(X, y, *, grid: dict[str, Any], cv=None, refit: bool = False, compact: bool = True,
          warm_start: bool = False, memory_budget: int | None = None,
          callback: Callable[[int, int], None] | None = None, progress: bool = False, sample_weight=None,
          **options) -> SweepResult:
    """Fit every member of ``grid``'s cartesian product, K members per compiled program.

    Args:
      X: (m, n) features; y: (m,) or (m, k) targets; sample_weight: (m,), as for :func:`gradfit.fit`.
      grid: ``{key: [values]}`` of traced and program keys (:mod:`gradfit.sweeps`).
      cv: cross-validate every member (:mod:`gradfit._cv`): an int (``KFold``, ``StratifiedKFold`` for bce with a
        1-d y), a splitter with ``split(X, y)``, or a list of (train_idx, val_idx) pairs. The folds are row-weight
        masks over the one X, ``vmap``-ed with the members in the group's one program; each lane is then scored on
        its held-out rows (``SweepResult.cv``), and :attr:`SweepResult.best` has the lowest mean validation loss.
      refit: with ``cv``, fit :attr:`SweepResult.best` on all the data (``SweepResult.refit``, one more compile).
      compact: between chunks, run only the still-active members (power-of-two batches; not for L-BFGS, whose
        members run one after another, so a finished one costs nothing and another batch size would compile);
        False keeps all K members in every chunk (same results).
      warm_start: run the members that differ only in ``l2`` as a path, from the largest l2 to the smallest, each
        starting from the previous one's solution (and, with L-BFGS, its curvature pairs, corrected exactly for the
        new penalty), as scikit-learn's ``warm_start`` loops and ``LogisticRegressionCV`` do: fewer steps along a
        regularisation path. One member at a time (its folds together); each ends at its own optimum by the same
        test, not bit for bit the cold-started fit. Needs ``l2`` in the grid.
      memory_budget: bytes per member chunk (default :func:`default_memory_budget`); a grid that
        needs more (:func:`_member_bytes`) runs in member chunks, one after another.
      callback: ``callback(members_done, members_total)`` after each member chunk.
      progress: one tqdm bar over every member's step budget (:class:`gradfit.progress.MemberBar`).
      The other options are :func:`gradfit.fit`'s, fixed for every member:
{options}
    Returns:
      A :class:`SweepResult`; member i equals ``gradfit.fit(X, y, **options, **configs[i])`` (to
      rounding). A later sweep of the same size and settings compiles nothing, except a compaction
      batch size (at most log2(K) + 1 per group) not reached before.

    Raises ValueError for a bad grid or bad fit options, before any compute.
    """
    if options.pop("batched", False):
        raise ValueError("sweep fits one problem: drop batched=True and call sweep once per problem")
    options = _options.without_defaults(options, _options.VALIDATION)
    fit_only = sorted(set(options) & set(_FIT_ONLY) - {"callback", "batched", "progress"})  # sweep's own
    if held := sorted(set(options) & set(_options.VALIDATION)):
        raise ValueError(f"sweep does not take {held[0]}= (a gradfit.fit option): validate a sweep with cv= (an int "
                         "of folds, a splitter, or (train_idx, val_idx) pairs; one pair for a single held-out part)")
    if fit_only:
        raise ValueError(f"sweep does not take {fit_only[0]}= (a gradfit.fit option): its callback=(members_done, "
                         "members_total) reports progress, and `gradfit sweep` resumes a killed sweep group by group")
    _options.unknown(options, [n for n in _options.NAMES if n not in _FIT_ONLY], "sweep option")
    if memory_budget is not None and (isinstance(memory_budget, bool) or not isinstance(memory_budget, numbers.Integral)
                                      or memory_budget <= 0):
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    budget = int(memory_budget or default_memory_budget())
    _options.check_callback(callback, "callback(members_done, members_total), called after each member chunk")
    if refit and cv is None:
        raise ValueError("refit=True fits the best cross-validated member on all the data: give cv (e.g. cv=5)")
    if not isinstance(warm_start, bool):
        raise ValueError(f"warm_start must be True or False, got {warm_start!r}")
    if warm_start and "l2" not in grid:
        raise ValueError("warm_start=True runs the members as a path of l2 values, from the largest to the smallest: "
                         "put l2 in the grid (e.g. grid={'l2': [1.0, 0.1, 0.01]}), or leave warm_start False")
    configs, groups = expand(grid, **options)
    planned, inputs, placed, folds = _plan_groups(configs, groups, options, X, y, sample_weight, cv)
    lanes = 1 if folds is None else len(folds.pairs)
    budgets = {i: c.options.steps for g, cs, _, _, _ in planned for i, c in zip(g.members, cs)}  # product order
    bar = progress_bars.MemberBar([budgets[i] for i in range(len(configs))]) if progress else None
    results, operands, plans = [], {}, []
    try:
        for group, checked, plan, scale, per_fold in planned:
            if folds is not None and plan == "stats" and plan not in operands:
                operands[plan] = _cv.fold_statistics(placed.data, folds)
            swept = [k for k in configs[0] if k not in group.fixed]
            auto_l2 = checked[0].auto_step and "l2" in swept  # one 1/L per member: L grows with l2
            first = checked[0]._replace(l2=np.zeros_like(checked[0].l2)) if auto_l2 else checked[0]
            problem = solver.build(first, inputs, placed, plan, scale, operands, members=len(checked) * lanes)
            if folds is not None:
                problem = _cv.with_folds(problem, folds, per_fold)
            if auto_l2:
                checked, swept = _auto_steps(problem, checked), swept + ["learning_rate"]
            plans.append(problem.program.plan)
            runs = (_run_paths(group, [configs[i] for i in group.members], checked, problem, inputs, swept=swept,
                               bar=bar, lanes=lanes) if warm_start else
                    _run_group(group, checked, problem, inputs, swept=swept, budget=budget, compact=compact, bar=bar,
                               lanes=lanes))
            for chunk in runs:
                results.append(chunk)
                if callback is not None:
                    callback(sum(len(ids) for ids, _, _ in results), len(configs))
    finally:
        if bar is not None:
            bar.close()
    result = _assemble(configs, results, inputs, placed, plans, operands, len(groups), compact, folds is not None)
    result.stats["warm_start"] = warm_start
    if folds is None:
        return result
    return _validate(result, planned, placed, folds, options, X, y, sample_weight, refit)


sweep = _options.with_options_signature(sweep, exclude=_FIT_ONLY)


def _auto_steps(problem: solver.Problem, checked: list[_options.Checked]) -> list[_options.Checked]:
    """``learning_rate="auto"`` with l2 swept: member i's step ``1 / (L_0 + l2_i max(1 / sigma^2))``, ``1/L_0`` the
    step without a penalty (``problem``'s) and sigma the column scales in the fit's coordinates: the L of
    :func:`gradfit.health.lipschitz` with the member's own l2 (for the statistics plan an upper bound)."""
    scale = np.asarray(problem.hyper.scaling.scale, np.float64) if problem.program.standardize else np.ones(1)
    L0, per_l2 = 1.0 / float(np.max(problem.learning_rate)), float(np.max(1.0 / scale**2))
    return [c._replace(learning_rate=np.asarray(1.0 / (L0 + float(np.max(c.l2)) * per_l2))) for c in checked]


def _refit_data(placed: solver.Placed, X, y, sample_weight) -> tuple:
    """``(X, y, sample_weight)`` for the refit: the sweep's rows already on the device (padding rows with weight 0,
    which change no sum) when they hold X's own values, so the refit copies nothing; else the caller's arrays."""
    data = placed.data
    if placed.mesh is not None or data.X.dtype != np.result_type(X):
        return X, y, sample_weight
    return data.X, data.y, sample_weight if placed.rows is None else data.sample_weight


def _validate(result: SweepResult, planned, placed, folds, options, X, y, sample_weight, refit) -> SweepResult:
    """Score every (member, fold) lane on its held-out rows (:func:`gradfit._cv.score`, one program per group's
    loss and size), then, with ``refit``, fit the best member on all the data."""
    shape = np.shape(result.final_loss)
    scores: dict[str, np.ndarray] = {}
    for group, cs, *_ in planned:
        ids = np.asarray(group.members)
        params = Params(result.params.W[ids], result.params.b[ids])
        o = cs[0].options  # one program per group: one loss and reduction
        trained = _cv.training_losses(params, result.final_loss[ids], [c.l2 for c in cs], o.reduction, folds)
        part = _cv.score(params, placed.data.X, placed.data.y, folds, o.loss, result.diverged[ids],
                         trained)
        for name, value in part.items():
            scores.setdefault(name, np.full(shape, np.nan))[ids] = value
    cv = _cv.CVScores(folds.pairs, scores, _cv.penalty(result.configs, options))
    result = result._replace(cv=cv)
    if refit and result.best is not None:
        best = member_options(result.best, options)
        X, y, sample_weight = _refit_data(placed, X, y, sample_weight)
        result = result._replace(refit=solver.fit(X, y, sample_weight=sample_weight, **best))
    return result


def _assemble(configs, results, inputs: solver.Inputs, placed, plans, operands, n_groups, compact,
              fold_axis: bool = False) -> SweepResult:
    T = max(run.history.shape[-1] for _, run, _ in results)
    if len({(run.history.shape[1:-1], np.shape(run.state.step)[1:]) for _, run, _ in results}) > 1:
        raise ValueError("grid groups mix per-output and joint hyperparameters: sweep them separately")
    order = np.argsort(np.concatenate([members for members, _, _ in results]))  # back to the product order

    def gather(get) -> np.ndarray:
        return np.concatenate([np.asarray(get(run)) for _, run, _ in results])[order]

    def padded(h: np.ndarray) -> np.ndarray:  # NaN past the member chunk's steps
        return np.concatenate([h, np.full((*h.shape[:-1], T - h.shape[-1]), np.nan, h.dtype)], axis=-1)

    W = gather(lambda r: r.state.params.W)
    if results[0][2]["per_output"]:  # per-output: (K, [F,] k, n) inside the loop -> (K, [F,] n, k)
        W = np.moveaxis(W, -2, -1)
    infos, runs = [info for _, _, info in results], [run for _, run, _ in results]
    stats = {  # "plan": the gradient plan of each group
        "compile_seconds": sum(i["compile_seconds"] for i in infos) + sum(op[1] for op in operands.values()),
        "run_seconds": sum(run.run_seconds for run in runs) + sum(op[2] for op in operands.values()),
        "groups": n_groups, "plan": plans, "programs": sum(i["programs"] for i in infos), "member_chunks": len(results),
        "chunks": sum(run.chunks for run in runs), "lane_steps": sum(i["lane_steps"] for i in infos),
        "batch_sizes": [s for i in infos for s in i["batch_sizes"]], "backend": jax.default_backend(),
        "dtype": str(inputs.dtype), "devices": 1 if placed.mesh is None else placed.mesh.size, "compact": compact,
        "grad_norm": gather(lambda r: r.state.optimality).astype(np.float64),
    }
    converged, diverged = gather(lambda r: r.state.converged), gather(lambda r: r.state.diverged)
    stalled = gather(lambda r: r.state.stalled)
    status = np.where(diverged, "diverged", np.where(converged, "converged", np.where(stalled, "stalled", "max_steps")))
    return SweepResult(configs, Params(W, gather(lambda r: r.state.params.b)), gather(lambda r: padded(r.history)),
                       gather(lambda r: np.sum(np.reshape(r.final_loss, (*np.shape(r.final_loss)[:1 + fold_axis], -1)),
                                               axis=-1)),  # per-output: the joint objective
                       gather(lambda r: r.state.step).astype(np.int64), converged, diverged,
                       gather(lambda r: _per_member(r.finished_seconds, np.max)), stats, status)
