""":func:`fit` (in memory) and :func:`resume`: every check before any compute, the data placed, the plan's operand
made, the engine run by :mod:`gradfit._runner`, the result checked. :func:`gradfit.sweep` reuses the pieces."""

from __future__ import annotations

import functools
import math
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradfit import _engine, _heldout, _options, _plan, _runner, _stats, _validation, checkpoint, health, sharding
from gradfit._driver import CompiledStepper, RunResult
from gradfit._params import predict
from gradfit._precision import storage_dtype
from gradfit._transfer import aligned_empty, copy_rows, to_device_all
from gradfit._types import Data, Hyper, Level, Params, Program, Scaling, Validated


class FitResult(NamedTuple):
    """What :func:`fit` returns; a diverged fit also warns.

    params: the fitted :class:`Params`. loss: the objective at ``params``. losses: the objective at the start of each
    step (epoch mean with ``batch_size``), (steps,). steps: objective evaluations (epochs). converged: ``G <= tol``
    at ``params``. diverged: the loss became non-finite or exploded (``params``: the last before). status:
    ``"converged"``, ``"diverged"``, ``"stalled"`` (stopped moving, or by ``ftol``), ``"early_stopped"`` (the
    validation loss stopped improving: ``params`` are its best) or ``"max_steps"``. validation_losses: with
    validation, the unpenalised validation loss after each step (``stats``: ``best_step``, ``validation_loss``
    at the best). stats:
    ``compile_seconds``, ``run_seconds`` (includes ``precompute_seconds``), ``backend``, ``plan``, the settings,
    ``grad_norm``, ``condition_number`` (None: not checked), ``separable`` (bce), ``learning_rate`` (with "auto"),
    and when diverged ``diverged_at_step`` (-1: member did not) and ``suggested_learning_rate`` (docs/faults.md).
    Per-output or batched fits give status fields and ``losses`` a leading axis (NaN past each member's steps)."""

    params: Params
    loss: Any
    losses: np.ndarray
    steps: Any
    converged: Any
    diverged: Any
    stats: dict
    status: Any = "max_steps"
    validation_losses: np.ndarray | None = None  # (steps,) the validation loss after each step, with validation

    def predict(self, X) -> jax.Array:
        """``X @ W + b`` (logits for bce; apply ``jax.nn.sigmoid`` for probabilities)."""
        return predict(self.params, jnp.asarray(X))


class Inputs(NamedTuple):
    """Checked data of a fit, not yet placed on a device."""

    X: Any
    y: Any
    sample_weight: Any
    dtype: np.dtype  # the compute dtype
    m: int
    n: int
    k: int | None  # outputs, None for a 1-d y
    batched: bool


def check_data(X, y, sample_weight, c: _options.Checked) -> Inputs:
    """Check X, y and the row weights (shapes, finite values, bce targets): ValueError before compute."""
    batched = c.options.batched
    X, y = _validation.check_xy(X, y, loss=c.options.loss, batched=batched)
    dtype = _validation.float_dtype(X)
    sw = _validation.check_sample_weight(sample_weight, y, batched, dtype)
    return Inputs(X, y, sw, dtype, X.shape[-2], X.shape[-1], y.shape[-1] if y.ndim == X.ndim else None, batched)


class Placed(NamedTuple):
    """``data`` on the device(s), its rows' ``mesh`` (None: one device), the real ``rows`` (None: not padded)."""

    data: Data
    mesh: Any
    rows: int | None


BUCKET_BYTES = 64 << 20  # an X up to this size is padded to a row bucket: its compiled programs serve the bucket


def row_bucket(m: int, nbytes: int = 0) -> int:
    """The rows an X of m rows and ``nbytes`` bytes is padded to (at least 256): every m within a bucket shares one
    program, and every full-batch step reads the padding, so its share falls as X grows. With ``2^(b-1) <= m < 2^b``,
    m is rounded up to a multiple of ``2^(b-3)`` under 1 MiB (at most 25% more rows: 1000 -> 1024, 1100 -> 1280),
    ``2^(b-5)`` under 16 MiB (6.25%), ``2^(b-7)`` above (1.6%: 200000 -> 200704, where a quarter gave 229376 and
    15% longer steps)."""
    shift = 3 if nbytes < 1 << 20 else 5 if nbytes < 16 << 20 else 7
    step = 1 << max(0, m.bit_length() - shift)
    return max(256, -(-m // step) * step)


def _padded(inputs: Inputs, o: _options.FitOptions) -> tuple[Data, int | None]:
    """The data on the device and its real rows: a full-batch fit of an X of at most :data:`BUCKET_BYTES` gets
    weight-0 rows up to :func:`row_bucket` (the rows' weights become explicit); otherwise as given, rows None."""
    X, y, sw, lead = inputs.X, inputs.y, inputs.sample_weight, 1 if inputs.batched else 0
    dtype, m = storage_dtype(X, inputs.dtype), inputs.m
    nbytes = int(np.prod(np.shape(X))) * np.dtype(dtype).itemsize
    pad = row_bucket(m, nbytes) - m
    if o.batch_size is not None or pad == 0 or nbytes > BUCKET_BYTES:
        return Data(*to_device_all((X, y), (dtype, inputs.dtype)), sw), None

    def grow(a, dtype):  # a host copy with the weight-0 rows, aligned: the device aliases it (no second copy)
        a = np.asarray(a)
        out = aligned_empty(a.shape[:lead] + (a.shape[lead] + pad,) + a.shape[lead + 1 :], dtype)
        copy_rows(out[(slice(None),) * lead + (slice(0, a.shape[lead]),)], a)
        out[(slice(None),) * lead + (slice(a.shape[lead], None),)] = 0
        return out

    w = np.ones(np.shape(y)[: lead + 1], inputs.dtype) if sw is None else sw
    dtypes = (dtype, inputs.dtype, inputs.dtype)
    return Data(*to_device_all([grow(a, dt) for a, dt in zip((X, y, w), dtypes)], dtypes)), m


def place(inputs: Inputs, o: _options.FitOptions) -> Placed:
    """Put the data on one device, or split its rows over several (:mod:`gradfit.sharding`)."""
    X, y, sw = inputs.X, inputs.y, inputs.sample_weight
    lead = 1 if inputs.batched else 0
    if not sharding.is_sharded(X):
        if o.n_rows is not None:
            raise ValueError("n_rows is only for X already padded and sharded (by gradfit.shard_rows); leave it unset")
        devs = sharding.resolve_devices(o.devices, inputs.m)
        if len(devs) == 1:
            data, rows = _padded(inputs, o)
            return Placed(jax.device_put(data, devs[0]) if o.devices is not None else data, None, rows)
        data = sharding.shard_rows(Data(X, y, sw), devs, row_axis=lead, dtype=inputs.dtype)
        return Placed(data, sharding.mesh_of(data), None if data.X.shape[lead] == inputs.m else inputs.m)
    if o.devices is not None:
        raise ValueError("X is already sharded across devices: leave devices=None to keep its layout, or pass "
                         "host arrays to let devices= choose one")
    mesh = sharding.mesh_of(Data(X, y, sw))
    if mesh is None:
        raise ValueError("X is sharded without a jax.sharding.NamedSharding: lay it out with gradfit.shard_rows")

    def rows(a):  # y and the weights follow X's row layout (a host array is cut into the same blocks)
        keep = a is None or sharding.is_sharded(a)
        return a if keep else sharding.place_rows(a, sharding.row_sharding(mesh, lead), lead, inputs.m, inputs.dtype)

    data = Data(jnp.asarray(X, storage_dtype(X, inputs.dtype)), jnp.asarray(rows(y), inputs.dtype), rows(sw))
    if o.n_rows is not None:
        if o.n_rows > inputs.m or (o.n_rows < inputs.m and sw is None):
            raise ValueError(f"n_rows={o.n_rows} does not fit X's {inputs.m} rows: give the real rows (<= {inputs.m}); "
                             "padding rows after them need sample_weight 0, as gradfit.shard_rows makes")
        if o.batch_size is not None and o.batch_size > o.n_rows:
            raise ValueError(f"batch_size={o.batch_size} is larger than the {o.n_rows} real rows: "
                             f"use batch_size <= {o.n_rows}")
    return Placed(data, mesh, None if o.n_rows == inputs.m else o.n_rows)


def initial_params(init, seed: int, n: int, out: tuple[int, ...], dtype) -> tuple[Params, jax.Array]:
    """The params before step 0 (``init="normal"``: N(0, 1/n) weights) and the run key, from ``key(seed)``."""
    normal = isinstance(init, str) and init == "normal"  # else "zeros" or given (checked by _options)
    W, b, run_key = _draw(seed, (n, *out), np.dtype(dtype), normal)
    if init is None or isinstance(init, str):
        return Params(W, b), run_key
    W, b = (jnp.asarray(_validation.as_numeric(a, f"init.{name}"), dtype) for a, name in zip(init, "Wb"))
    return Params(W, b), run_key  # finite and in range: _options.check_step


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _draw(seed, shape: tuple[int, ...], dtype, normal: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``key(seed)`` split into the init's key and the run's; W zeros, or N(0, 1/n) from the init key; b zeros: one
    program."""
    init_key, run_key = jax.random.split(jax.random.key(seed))
    W = jax.random.normal(init_key, shape, dtype) / math.sqrt(shape[0]) if normal else jnp.zeros(shape, dtype)
    return W, jnp.zeros(shape[1:], dtype), run_key


class Problem(NamedTuple):
    """A fit ready for the driver; ``params``, ``operand``, ``hyper`` and ``key`` carry the axes of ``levels``."""

    params: Params
    operand: Any  # the placed Data, or its Stats
    hyper: Hyper
    key: jax.Array
    program: Program
    levels: tuple[Level, ...]
    per_output: bool  # output columns are a vmap level: y is (k, m) and W is (k, n) inside
    placed: Placed
    learning_rate: Any  # as resolved (float, (k,) array, or None)
    precompute: tuple[float, float]  # the statistics pass: (compile s, run s)
    check: Any  # (operand, program, levels) of the final check on the data; None: the operand's own


def hyper_axes(hyper: Hyper, axis, scaling=None) -> Hyper:
    """A :class:`Hyper` of vmap axes: ``axis`` for every field that is there (``scaling``: its own)."""
    return Hyper(None if hyper.learning_rate is None else axis, axis, axis, axis, dict.fromkeys(hyper.optimizer, axis),
                 axis, Scaling(*([axis] * 4)) if scaling is None else scaling)


def hyper_arrays(c: _options.Checked, learning_rate, scaling: Scaling, dtype) -> Hyper:
    """Checked host values as the loop's :class:`Hyper` arrays (floats in ``dtype``, steps int32), left on the host:
    a compiled program takes numpy arguments at ~3 us a leaf, ``jax.device_put`` costs ~25 us a leaf (a tenth of
    a small fit's warm call for the ~12 leaves here)."""
    def f(v):
        return None if v is None else jnp.asarray(v, dtype) if isinstance(v, jax.Array) else np.asarray(v, dtype)

    return Hyper(f(learning_rate), f(c.l2), f(c.tol), np.asarray(c.options.steps, np.int32),
                 {k: f(v) for k, v in c.traced.items()}, f(c.ftol), Scaling(*(f(v) for v in scaling)))


def scaling(c: _options.Checked, inputs: Inputs, members=()) -> Scaling:
    """The problem's :class:`Scaling` (:func:`gradfit.health.scaling`; per problem when batched), the learning
    rate of ``c`` and of each of ``members`` checked against its curvature."""
    o = c.options
    per_output = inputs.k is not None and _options.per_output(c)
    one = lambda X, y, w: health.scaling(X, y, w, loss=o.loss, reduction=o.reduction,  # noqa: E731
                                         fit_intercept=o.fit_intercept, per_output=per_output, dtype=inputs.dtype)
    sw = inputs.sample_weight
    if inputs.batched:
        parts = [one(inputs.X[i], inputs.y[i], None if sw is None else sw[i]) for i in range(inputs.X.shape[0])]
        s = Scaling(*(np.stack(field) for field in zip(*parts)))
    else:
        s = one(inputs.X, inputs.y, sw)
    raw = np.max(np.asarray(s.scale, np.float64) ** 2 + np.asarray(s.shift, np.float64) ** 2, initial=1.0)
    for member in (c, *members):
        _options.check_step(member, np.max(s.curvature) * (1.0 if o.standardize else raw), inputs.dtype)
    return s


def _statistics_pass(data: Data) -> _stats.Stats:
    return _stats.sufficient_statistics(data.X, data.y, data.sample_weight)


def operand(placed: Placed, plan: str, batched: bool) -> tuple[Any, float, float]:
    """``(operand, compile s, run s)``: the placed data, or (``"stats"``) their statistics from one compiled pass."""
    data = placed.data
    if plan != "stats":
        return data, 0.0, 0.0
    levels = (Level(Data(0, 0, None if data.sample_weight is None else 0), None, None, None),) if batched else ()
    exe, compile_seconds = _engine.compiled(_statistics_pass, ("data",), None, levels, (data,))
    start = time.perf_counter()
    stats = jax.block_until_ready(exe(data))
    return stats, compile_seconds, time.perf_counter() - start


def auto_step(c: _options.Checked, inputs: Inputs, placed: Placed, op, scale: Scaling) -> float:
    """``learning_rate="auto"``: 1/L in the fit's coordinates, from the statistics or by power iterations on X."""
    o, data = c.options, placed.data
    kwargs = dict(loss=o.loss, reduction=o.reduction, l2=c.l2, fit_intercept=o.fit_intercept,
                  scaling=scale if o.standardize else None)
    L = (health.lipschitz_from_stats(op, **kwargs) if isinstance(op, _stats.Stats) else
         health.lipschitz(data.X, sample_weight=data.sample_weight, batched=inputs.batched, **kwargs))
    if not L > 0:
        raise ValueError("X and the sample weights give zero curvature (every column is 0): there is nothing to fit")
    return 1.0 / L


def _levels(op, inputs: Inputs, hyper: Hyper, per_output: bool, lr) -> tuple[Any, tuple[Level, ...]]:
    """The operand laid out for its vmap levels (problems; then output columns, y (.., k, m)), and the levels."""
    levels = []
    stats = isinstance(op, _stats.Stats)
    if inputs.batched:
        axes = jax.tree.map(lambda _: 0, op) if stats else Data(0, 0, None if op.sample_weight is None else 0)
        levels.append(Level(axes, hyper_axes(hyper, None, Scaling(0, 0, 0, 0)), 0, None))
    if per_output:
        op, axes = _stats.per_output(op) if stats else (op._replace(y=jnp.moveaxis(op.y, -1, -2)), Data(None, 0, None))
        level_hyper = hyper_axes(hyper, None)._replace(learning_rate=None if lr is None else 0, l2=0,
                                                      scaling=Scaling(None, None, None, 0))
        levels.append(Level(axes, level_hyper, 0, None))
    return op, tuple(levels)


def build(c: _options.Checked, inputs: Inputs, placed: Placed, plan: str, scale: Scaling,
          operands: dict | None = None, members: int = 1, validation: Placed | None = None) -> Problem:
    """One fit's :class:`Problem`; ``operands`` caches ``operand()`` by plan, ``members`` (sweep) size the chunks,
    ``validation`` makes the operand :class:`~gradfit._types.Validated` (its statistics with the "stats" plan)."""
    o = c.options
    operands = {} if operands is None else operands
    if plan not in operands:
        operands[plan] = operand(placed, plan, inputs.batched)
    op, pre_compile, pre_run = operands[plan]
    lr = np.asarray(auto_step(c, inputs, placed, op, scale)) if c.auto_step else c.learning_rate
    params, key = initial_params(o.init, o.seed, inputs.n, () if inputs.k is None else (inputs.k,), inputs.dtype)
    hyper = hyper_arrays(c, lr, scale, inputs.dtype)
    per_output = inputs.k is not None and _options.per_output(c)
    problems = members * (inputs.X.shape[0] if inputs.batched else 1) * (inputs.k if per_output else 1)
    chunk = o.chunk_size or _plan.chunk_steps(plan, m=inputs.m, n=inputs.n, itemsize=placed.data.X.dtype.itemsize,
                                              members=problems, line_search=c.line_search)
    rows = placed.rows if o.batch_size is not None else None  # full batches: the weights mask padding (any m)
    program = Program(o.loss, o.reduction, plan, c.optimizer, lr is not None, o.fit_intercept, o.batch_size,
                      chunk, rows, o.shuffle, 1 if placed.mesh is None else placed.mesh.size, o.standardize,
                      0 if validation is None else o.steps, o.n_iter_no_change if o.early_stopping else 0)
    if inputs.batched:
        params = jax.tree.map(lambda a: jnp.broadcast_to(a, (inputs.X.shape[0], *a.shape)), params)
    if per_output:  # columns become problems: W (.., n, k) -> (.., k, n)
        params = Params(jnp.moveaxis(params.W, -1, -2), params.b)
        per_k = lambda a: None if a is None else jnp.broadcast_to(a, (inputs.k,))  # noqa: E731
        hyper = hyper._replace(learning_rate=per_k(hyper.learning_rate), l2=per_k(hyper.l2))
    op, levels = _levels(op, inputs, hyper, per_output, lr)
    if validation is not None:
        if levels:
            raise ValueError("validation takes one problem with shared hyperparameters: give learning_rate and l2 "
                             "as scalars, or fit each output column on its own")
        op = Validated(op, operand(validation, plan, False)[0])
    check = None
    if plan == "stats":  # statistics without the rows' slope (cross-validation folds) are checked on the rows
        data, data_levels = _levels(placed.data, inputs, hyper, per_output, lr)
        check = (data, program._replace(plan=_plan.DIRECT), data_levels)
    if placed.mesh is not None:  # parameters, hyperparameters and the PRNG key on every device
        params, hyper, key = sharding.replicate((params, hyper, key), placed.mesh)
    return Problem(params, op, hyper, key, program, levels, per_output, placed,
                   float(lr) if c.auto_step else o.learning_rate, (pre_compile, pre_run), check)


class Prepared(NamedTuple):
    """A fit that passed every check: ``build(*prepared[:5])`` makes its :class:`Problem`."""

    checked: _options.Checked
    inputs: Inputs
    placed: Placed
    plan: str
    scaling: Scaling
    condition: float  # the health check's estimate (NaN: not estimated), which "auto" planned by
    validation: Placed | None = None  # the validation data placed (fit(validation=...)), or None


def prepare(X, y, *, sample_weight=None, **options) -> Prepared:
    """Every check of :func:`fit` (ValueError naming the problem), and the data placed; nothing computed yet."""
    _options.unknown(options, _options.NAMES)
    c = _options.check(options)
    checkpoint.check_target(c.options.checkpoint, c.options.resume, c.options.overwrite)
    inputs = check_data(X, y, sample_weight, c)
    o = c.options
    inputs, validation = _validation_inputs(inputs, c)
    condition = health.check_conditioning(inputs.X, inputs.dtype, batched=inputs.batched, fit_intercept=o.fit_intercept,
                                          l2=c.l2, loss=o.loss, reduction=o.reduction,
                                          sample_weight=inputs.sample_weight, standardize=o.standardize, stacklevel=3)
    plan = _options.for_data(c, m=inputs.m, n=inputs.n, k=inputs.k, sharded=will_shard(inputs, o),
                             condition=condition if np.isfinite(condition) else None)
    scale = scaling(c, inputs)
    if validation is not None and (will_shard(inputs, o) or will_shard(validation, o)):
        raise ValueError("validation runs on one device: leave devices unset (or 1) with validation data")
    return Prepared(c, inputs, place(inputs, o), plan, scale, condition,
                    None if validation is None else place(validation, o))


def _validation_inputs(inputs: Inputs, c: _options.Checked) -> tuple[Inputs, Inputs | None]:
    """The training rows and the checked validation data: ``validation=`` as given, or ``validation_fraction``'s
    held-out rows (:func:`gradfit._heldout.split_rows`), or None."""
    o = c.options
    if o.validation is not None:
        val = check_data(*o.validation[:2], o.validation[2] if len(o.validation) == 3 else None, c)
        _heldout.check_like(inputs, val)
        return inputs, val
    if o.validation_fraction is None:
        return inputs, None
    stratify = o.loss == "bce" and inputs.k is None
    train, held = _heldout.split_rows(inputs.y, o.validation_fraction, o.seed, stratify)

    def rows(idx):
        part = [_heldout.take(a, idx) for a in (inputs.X, inputs.y, inputs.sample_weight)]
        return inputs._replace(X=part[0], y=part[1], sample_weight=part[2], m=len(idx))

    return rows(train), rows(held)


def will_shard(inputs: Inputs, o: _options.FitOptions) -> bool:
    """Whether the rows will be split over several devices (checks ``devices``; places nothing)."""
    return sharding.is_sharded(inputs.X) or len(sharding.resolve_devices(o.devices, inputs.m)) > 1


_NOT_STORED = ("callback", "progress", "checkpoint", "checkpoint_every", "resume", "overwrite")


def fit(X, y, *, sample_weight=None, **options) -> FitResult:
    """Fit ``yhat = X @ W + b`` by gradient descent, the whole loop compiled.

    Args:
      X: (m, n) features, rows are samples; (B, m, n) with ``batched=True``.
      y: (m,) or (m, k) targets (in [0, 1] for ``loss="bce"``); (B, m[, k]) when batched.
      sample_weight: (m,) non-negative row weights ("mean" divides by their sum).
{options}
    Returns:
      A :class:`FitResult`. A second fit on the same shapes with new hyperparameters compiles nothing. With
      ``checkpoint``, ``stats`` also holds ``checkpoint`` (the path), ``resumed_from_step`` (0 for a fresh
      start), ``checkpoints`` (files written) and ``checkpoint_seconds``.

    Raises:
      ValueError: for bad input, before any compute (docs/faults.md lists every case).

    Warns (docs/faults.md):
      gradfit.health.IllConditionedWarning: the condition number is too large for the dtype; says the remedy.
      gradfit.health.SeparableWarning: bce, ``l2=0``, classes the fit separates: not converged.
      RuntimeWarning: the fit diverged; names the step and suggests a learning rate.
    """
    c, inputs, placed, plan, scale, condition, validation = prepared = prepare(X, y, sample_weight=sample_weight,
                                                                               **options)
    o = c.options
    problem = build(*prepared[:5], validation=validation)
    stepper = CompiledStepper(problem.operand, problem.hyper, problem.program, problem.levels, problem.check)
    meta = fingerprint = None
    if o.checkpoint is not None:  # what the checkpoint records for gradfit.resume
        stored, not_stored = checkpoint.storable_arguments({k: v for k, v in o._asdict().items()
                                                            if k not in _NOT_STORED})
        meta = {"fit": stored, "fit_not_stored": not_stored, "every": list(o.checkpoint_every or ())}
        fingerprint = checkpoint.fingerprint(problem.params, problem.operand, problem.hyper, problem.key,
                                             problem.program, problem.levels)
    members = (inputs.X.shape[0] if inputs.batched else 1) * (inputs.k if problem.per_output else 1)
    run, info = _runner.run(stepper, stepper.init(problem.params, problem.key), problem.hyper,
                            chunk_steps=problem.program.chunk_size, max_steps=o.steps, members=members,
                            callback=o.callback, progress=o.progress, checkpoint=o.checkpoint,
                            every=o.checkpoint_every, resume=o.resume, fingerprint=fingerprint, meta=meta)
    return finish(problem, run, c, inputs, condition, info)


fit = _options.with_options_signature(fit)


def finish(problem: Problem, run: RunResult, c: _options.Checked, inputs: Inputs, condition: float,
           info: dict) -> FitResult:
    """The :class:`FitResult` of a run: params in the caller's layout, status, health after the fit."""
    o, state, per_output = c.options, run.state, problem.per_output
    params = Params(jnp.moveaxis(state.params.W, -2, -1), state.params.b) if per_output else state.params
    final_loss = jnp.sum(run.final_loss, axis=-1) if per_output else run.final_loss  # the joint objective
    converged, data = np.asarray(state.converged), problem.placed.data
    pre_compile, pre_run = problem.precompute
    stats = {
        "compile_seconds": run.compile_seconds + pre_compile, "run_seconds": run.run_seconds + pre_run,
        "precompute_seconds": pre_run, "plan": problem.program.plan, "chunks": run.chunks,
        "backend": jax.default_backend(), "dtype": str(inputs.dtype),
        "devices": 1 if problem.placed.mesh is None else problem.placed.mesh.size,
        "condition_number": condition if np.isfinite(condition) else None,  # None: not checked
        "loss": o.loss, "reduction": o.reduction, "optimizer": c.optimizer.name or type(o.optimizer).__name__,
        "grad": o.grad, "shuffle": o.shuffle if o.batch_size is not None else None,
        "vmapped": [name for name, on in (("problems", inputs.batched), ("outputs", per_output)) if on], **info,
    }
    if c.auto_step:
        stats["learning_rate"] = problem.learning_rate
    if o.loss == "bce" and np.any(c.l2):
        stats["separable"] = False  # with a penalty the minimiser exists
    elif o.loss == "bce":  # no minimiser on classes the fit separates: never converged (health.separated)
        sep = health.separated(params, data.X, data.y, batched=inputs.batched, sample_weight=data.sample_weight)
        sep = sep if per_output or sep.ndim == converged.ndim else sep.any(axis=-1)
        if sep.any():
            converged = converged & ~sep
            warnings.warn(health.separable_message(float(jnp.linalg.norm(params.W))), health.SeparableWarning,
                          stacklevel=3)
        stats["separable"] = sep.tolist()
    # 1/L, the safe step of gradient descent, costs a few dozen passes: only when diverged
    safe = None if c.optimizer.name != "sgd" else lambda: health.safe_learning_rate(
        data.X, loss=o.loss, reduction=o.reduction, l2=c.l2, sample_weight=data.sample_weight,
        fit_intercept=o.fit_intercept, batched=o.batched, scaling=problem.hyper.scaling if o.standardize else None)
    steps, converged, diverged, status = report(run, converged, problem.learning_rate, safe, stats,
                                                scalar=not problem.levels, stacklevel=5)
    monitor, curve = state.monitor, None
    if monitor is not None:
        curve = np.asarray(monitor.history)[: int(steps)].copy()
        stats.update(best_step=int(monitor.best_step), validation_loss=float(monitor.best))
        if status != "diverged" and not converged and bool(_engine.stopped_early(jax.tree.map(np.asarray, monitor))):
            status = "early_stopped"
    return FitResult(params, final_loss, run.history, steps, converged, diverged, stats, status, curve)


def report(run: RunResult, converged, learning_rate, safe_step, stats: dict, *, scalar: bool, stacklevel: int):
    """``(steps, converged, diverged, status)`` of a run (scalars for one problem); sets ``grad_norm`` in ``stats``,
    and when diverged ``diverged_at_step``, ``suggested_learning_rate`` (``safe_step()``, else lr / 10), warns."""
    state = run.state  # converged: the state's, less any health check's veto
    steps, diverged = np.asarray(state.step), np.asarray(state.diverged)
    stalled = np.asarray(state.stalled) & ~converged
    status = np.where(diverged, "diverged", np.where(converged, "converged", np.where(stalled, "stalled", "max_steps")))
    stats["grad_norm"] = np.asarray(state.optimality, np.float64).tolist()
    stats["evaluations"] = np.asarray(state.evaluations).tolist()  # of J and dJ in the loop (an epoch: one)
    if np.any(diverged):  # the first bad objective evaluation: steps when it came after the last step
        bad_at = steps + np.asarray(run.diverged_at_end, int)
        stats["diverged_at_step"] = np.where(diverged, bad_at - 1, -1).tolist()
        lr = None if isinstance(learning_rate, str) or learning_rate is None else learning_rate
        suggestion = safe_step() if safe_step is not None else None if lr is None else float(np.min(lr)) / 10
        stats["suggested_learning_rate"] = suggestion
        warn_divergence(bad_at, diverged, lr, suggestion, stacklevel=stacklevel)
    if scalar:
        return int(steps), bool(converged), bool(diverged), str(status)
    return steps, converged, diverged, status


def warn_divergence(steps, diverged, learning_rate, suggestion=None, stacklevel: int = 3) -> None:
    """Warn that a fit diverged, naming the step (first bad objective evaluation) and ``suggestion``."""
    at = int(np.max(np.where(diverged, steps, 0))) - 1
    hint = ": returning the last params before it"
    if at == 0:
        hint = (": the objective is not finite at the initial params, so the data overflow the dtype; rescale X "
                "and y (standardise) or fit in float64")
    elif suggestion is not None:
        was = "" if learning_rate is None else f" (was {float(np.min(learning_rate)):g})"
        hint += f"; try learning_rate={suggestion:.3g}{was}, or standardise X"
    elif learning_rate is not None:
        hint += "; try a smaller learning_rate, or standardise X"
    grew = f"the loss became non-finite or grew {_engine.DIVERGENCE_FACTOR:g}-fold"
    warnings.warn(f"the fit diverged at step {at} ({grew}){hint}", RuntimeWarning, stacklevel=stacklevel)


def resume(path: str | Path, X, y, *, sample_weight=None, **overrides) -> FitResult:
    """Continue the fit that wrote the checkpoint at ``path`` on the same data with its arguments; pass again any
    it could not store (an optax transformation, Params ``init``, a callback) and any to change (e.g. more
    ``steps``). ValueError: an unreadable or non-fit checkpoint, a missing argument, other data or settings."""
    header = checkpoint.read_header(path)
    if "fit" not in header:
        raise ValueError(f"checkpoint {path} was not written by gradfit.fit (it has no fit arguments): resume it "
                         "with the code that wrote it")
    missing = [name for name in header.get("fit_not_stored", []) if name not in overrides]
    if missing:
        raise ValueError(f"checkpoint {path} could not store the fit arguments {', '.join(missing)} (not JSON): "
                         f"pass them again, e.g. gradfit.resume(path, X, y, {missing[0]}=...)")
    every = header.get("every")
    kwargs = {**header["fit"], "checkpoint_every": checkpoint.Every(*every) if every else None, **overrides}
    kwargs = {k: v for k, v in kwargs.items() if k not in ("checkpoint", "resume", "overwrite")}
    return fit(X, y, sample_weight=sample_weight, checkpoint=path, resume=True, **kwargs)
