"""Data bigger than memory: :func:`fit_streaming`, X and y streamed from ``.npy`` files in row chunks. The plan:

- ``grad="stats"`` (``"auto"`` for full-batch mse): one pass gathers the centred Gram matrix about the first
  chunk's means, a second the residual (:class:`gradfit._stats.Stats`); then a step costs O(n^2 k), whatever m.
- full-batch (bce, or ``grad="hand"``, ``"autodiff"``, ``"onepass"``): a step is one pass summing the
  ``reduction="sum"`` loss and gradient over the chunks (the ``"summed"`` plan).
- ``batch_size``: a step is an epoch of minibatch updates. ``shuffle="blocks"`` orders the chunks by
  ``default_rng((seed, epoch))`` and each chunk's batches by ``((seed, epoch, chunk))``; ``"rows"`` also permutes
  each chunk's rows; ``"none"``: file order.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from gradfit import _engine, _options, _plan, _runner, _stats, _validation, checkpoint, health, solver
from gradfit._driver import CompiledStepper, StopChunk, interrupt_requested
from gradfit._reader import (  # noqa: F401 (public here)
    DEFAULT_CHUNK_BYTES, DEFAULT_PREFETCH, Prefetcher, StreamedData, chunk_ok, each_chunk, open_array, row_range,
)
from gradfit._types import Data, Hyper, Params, Program, SolverState


def _gram_chunk(carry, X, y, weight, shift):  # y as (rows, k) for the statistics
    return _stats.kahan_add(carry, _stats.gram_block(X, y.reshape(len(y), -1), weight, *shift)), chunk_ok(X, y, "mse")


def _residual_chunk(total, X, y, weight, stats):
    return total + _stats.residual_block(X, y.reshape(len(y), -1), weight, stats), jnp.ones((), bool)


def _first_chunk(data: StreamedData) -> tuple:  # X, y, weights: the arguments a chunk's program is compiled for
    X, y, _ = data.read(0)
    return X, y, jnp.ones(data.chunk_rows, data.dtype)


def _statistics(data: StreamedData, prefetch: int, shift=None) -> tuple[_stats.Stats, float]:
    """:func:`sufficient_statistics` of opened data, and the compile time. The default shift is the first chunk's
    column means (non-finite ones as 0): any shift is exact; a near-mean one keeps float32 accurate."""
    n, k, dt = data.X.shape[1], int(np.prod(data.y.shape[1:])), data.dtype
    if shift is None:
        X, y, valid = data.read(0)
        with np.errstate(all="ignore"):
            shift = [np.mean(a[:valid].reshape(valid, -1), axis=0, dtype=np.float64) for a in (X, y)]
        shift = [np.where(np.isfinite(mean), mean, 0) for mean in shift]
    x_shift, y_shift = jnp.asarray(shift[0], dt), jnp.asarray(shift[1], dt).reshape(k)
    if x_shift.shape != (n,):
        raise ValueError(f"shift must be (x_shift ({n},), y_shift ({k},)), got {x_shift.shape} and {y_shift.shape}")
    compile_seconds = []

    def compiled(fn, *args, program=None):
        exe, seconds = _engine.compiled(fn, (), program, (), args)
        compile_seconds.append(seconds)
        return exe
    zero = jnp.zeros((n + 1 + k,) * 2, dt)
    first = _first_chunk(data)
    gram_step = compiled(_gram_chunk, (zero, zero), *first, (x_shift, y_shift))
    gram, _ = each_chunk(data, (zero, zero), lambda c, X, y, w, i: gram_step(c, X, y, w, (x_shift, y_shift)),
                         prefetch=prefetch, check="mse")
    args = (gram, x_shift, y_shift, jnp.asarray(data.m, dt))
    stats = compiled(_stats.factor, *args, program=data.y.ndim == 1)(*args)  # program: whether y is 1-d
    residual_step = compiled(_residual_chunk, jnp.zeros(k, dt), *first, stats)
    rss = each_chunk(data, jnp.zeros(k, dt), lambda c, X, y, w, i: residual_step(c, X, y, w, stats), prefetch=prefetch)
    return stats._replace(rss=rss[0] if data.y.ndim == 1 else rss), sum(compile_seconds)


def sufficient_statistics(X, y, *, rows: tuple[int, int] | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                          prefetch: int = DEFAULT_PREFETCH, dtype=None, shift=None) -> _stats.Stats:
    """The :class:`gradfit._stats.Stats` of X and y (.npy paths or arrays) in two streamed passes, of ``rows``
    only if given; ``shift=(x_shift (n,), y_shift (k,))``: the point the Gram is taken about."""
    data = StreamedData.open(X, y, rows=rows, chunk_bytes=chunk_bytes, dtype=dtype)
    return _statistics(data, _validation.positive_int(prefetch, "prefetch"), shift)[0]


least_squares = _stats.least_squares  # the exact penalised least-squares answer from the statistics


def _pass_chunk(total: _plan.Sums, params: Params, X, y, weight, program: Program):
    """Add one chunk's ``reduction="sum"`` loss and gradient (by the plan) to ``total``."""
    value, g = _plan.PLANS[program.plan].value_and_grad(params, Data(X, y, weight), program._replace(reduction="sum"))
    total = _plan.Sums(total.value + value, jax.tree.map(jnp.add, total.grad, g), total.count + jnp.sum(weight))
    return total, chunk_ok(X, y, program.loss)


def _epoch_chunk(carry, X, y, weight, order, hyper: Hyper, program: Program):
    """The engine's minibatch updates over one chunk's batches, in ``order``."""
    def one(c, j):
        rows = lambda a: jax.lax.dynamic_slice_in_dim(a, j * program.batch_size, program.batch_size)  # noqa: E731
        return _engine.minibatch_step(c, Data(rows(X), rows(y), rows(weight)), hyper, program), None
    carry, _ = jax.lax.scan(one, carry, order)
    return carry, chunk_ok(X, y, program.loss)


class PassStepper:
    """One streamed pass per step: a full-batch step (``batch_size`` None) or an epoch."""

    def __init__(self, data: StreamedData, hyper: Hyper, program: Program, *, prefetch: int, seed: int):
        self.data, self.hyper, self.program, self.prefetch, self.seed = data, hyper, program, prefetch, seed
        self.summed = program._replace(plan="summed")
        self.compile_seconds, self.passes, self.stream_seconds = 0.0, 0, 0.0

    def _compiled(self, fn, program, *args):
        exe, seconds = _engine.compiled(fn, (), program, (), args)
        self.compile_seconds += seconds
        return exe

    def _each(self, carry, step, **kwargs):
        """One streamed pass of ``step`` over the chunks; an interrupt gives the pass up between chunks."""

        def interruptible(*args):
            if interrupt_requested():
                raise StopChunk
            return step(*args)
        start = time.perf_counter()
        check = None if self.passes else self.program.loss  # the data do not change between passes: check once
        carry = each_chunk(self.data, carry, interruptible, prefetch=self.prefetch, check=check, **kwargs)
        self.passes += 1
        self.stream_seconds += time.perf_counter() - start
        return carry

    def _sums(self, fn, params: Params) -> _plan.Sums:
        """One pass adding each chunk's ``fn(total, params, X, y, weight)`` into :class:`~gradfit._plan.Sums`."""
        zero = jnp.zeros((), self.data.dtype)
        total = _plan.Sums(zero, jax.tree.map(jnp.zeros_like, params), zero)
        step = self._compiled(fn, self.program, total, params, *_first_chunk(self.data))
        return self._each(total, lambda c, X, y, w, i: step(c, params, X, y, w))

    def chunk(self, state: SolverState, limit: int):
        if self.program.batch_size is None:
            args = (state, self._sums(_pass_chunk, state.params), self.hyper)
            state, value = self._compiled(_engine.update, self.summed, *args)(*args)
        else:
            state, value = self._epoch(state)
        return state, np.asarray(value)[None]

    def _epoch(self, state: SolverState):
        data, shuffle, epoch = self.data, self.program.shuffle, int(state.step)
        per_chunk = data.chunk_rows // self.program.batch_size
        rng = lambda *key: np.random.default_rng((self.seed, epoch, *key))  # noqa: E731
        order = range(data.n_chunks) if shuffle == "none" else rng().permutation(data.n_chunks)
        batches = lambda i: jnp.asarray(  # noqa: E731
            np.arange(per_chunk) if shuffle == "none" else rng(int(i), 1).permutation(per_chunk), jnp.int32)
        carry = _engine.epoch_start(state)
        step = self._compiled(_epoch_chunk, self.program, carry, *_first_chunk(self.data), batches(0), self.hyper)
        carry = self._each(carry, lambda c, X, y, w, i: step(c, X, y, w, batches(i), self.hyper), order=order,
                           seed=(self.seed, epoch) if shuffle == "rows" else None)
        args = (state, carry, state.key, self.hyper)
        return self._compiled(_engine.end_epoch, self.program, *args)(*args)

    def init(self, params: Params, key) -> SolverState:
        args = (params, None, self.hyper, key)  # a streamed pass's sums: no line search to seed
        return self._compiled(_engine.init_state, self.program, *args)(*args)

    def evaluate(self, state: SolverState):
        stopped = np.asarray(state.converged) | np.asarray(state.stalled)
        if self.program.batch_size is None and bool(np.all(stopped)):
            return state.loss, state.optimality  # the params are p_t, where J_t and G_t were evaluated
        return self.check(state)

    def check(self, state: SolverState):
        """The objective and the optimality at the state's params, from one streamed pass."""
        args = (state, self._sums(_pass_chunk, state.params), self.hyper)
        return self._compiled(_engine.final_check, self.summed, *args)(*args)


class _StatisticsStepper(CompiledStepper):
    """Steps on the statistics in memory; the returned params are checked on the files (one pass)."""

    def __init__(self, stats, hyper: Hyper, program: Program, reader: PassStepper):
        super().__init__(stats, hyper, program)
        self.stepper = reader  # (the driver counts its compile time too)

    def evaluate(self, state: SolverState):
        return self.stepper.check(state)


_NOT_STREAMED = ("batched", "devices", "n_rows", *_options.VALIDATION)


def fit_streaming(X, y, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES, prefetch: int = DEFAULT_PREFETCH,
                  rows: tuple[int, int] | None = None, dtype=None, **options) -> solver.FitResult:
    """:func:`gradfit.fit` for data bigger than memory: X (m, n) and y (m,) or (m, k) are paths to ``.npy``
    files (or numpy arrays / memory maps). The options are :func:`gradfit.fit`'s (scalar learning rate and l2;
    no sample weights, batched problems or devices); ``grad`` picks how the data are read (:mod:`gradfit.stream`).

    Args:
      chunk_bytes: bytes of X per chunk (rows rounded to a multiple of ``batch_size``).
      prefetch: chunks read ahead by the background thread.
      rows: ``(start, stop)``: fit on those rows of the files only (one process's part, :func:`row_range`).
      dtype: compute dtype (default: the file's float dtype, float32 without x64).
{options}
    Returns:
      A :class:`~gradfit.FitResult`; ``stats`` adds ``passes``, ``bytes_per_pass``, ``chunk_rows``, ``n_chunks``,
      ``rows``, ``stream_seconds``, and with grad "stats" ``sufficient_statistics`` (for :func:`least_squares`).

    Raises:
      ValueError: bad options or files; NaN or inf in X or y, or bce targets outside [0, 1] (before any update).
    """
    options = _options.without_defaults(options, _options.VALIDATION)  # a config spells them out
    _options.unknown(options, [n for n in _options.NAMES if n not in _NOT_STREAMED] + list(_NOT_STREAMED))
    if given := sorted(set(options) & set(_NOT_STREAMED)):
        why = ("validation in the loop needs the rows in memory: fit in memory with gradfit.fit, or score held-out "
               "rows after the fit" if given[0] in _NOT_STREAMED[3:] else
               "a streamed fit runs one problem in one process on one device")
        raise ValueError(f"fit_streaming does not take {given[0]}=: {why}")
    c = _options.check(options)
    checkpoint.check_target(c.options.checkpoint, c.options.resume, c.options.overwrite)
    if c.l2.ndim or (c.learning_rate is not None and c.learning_rate.ndim):
        raise ValueError("fit_streaming takes a scalar learning_rate and l2: fit per-output values in memory with "
                         "gradfit.fit")
    o, prefetch = c.options, _validation.positive_int(prefetch, "prefetch")
    data = StreamedData.open(X, y, rows=rows, chunk_bytes=chunk_bytes, batch_size=o.batch_size, dtype=dtype)
    plan = _options.for_data(c, m=data.m, n=data.X.shape[1], k=None if data.y.ndim == 1 else data.y.shape[1])
    if plan != "stats":
        if c.line_search:
            raise ValueError("optimizer 'lbfgs' evaluates the objective inside its line search, which a streamed pass "
                             "cannot do within one step: use a first-order optimizer ('sgd', 'adam', ...), or "
                             "grad='stats' for mse")
        if c.auto_step:
            raise ValueError("learning_rate='auto' needs the statistics of the data (grad='stats', mse): give a number")
        plan = "hand" if o.grad == "auto" else o.grad
    params, key = solver.initial_params(o.init, o.seed, data.X.shape[1], tuple(data.y.shape[1:]), data.dtype)
    scale = health.scaling(data.X[data.start:data.stop], data.y[data.start:data.stop], loss=o.loss,
                           reduction=o.reduction, fit_intercept=o.fit_intercept, dtype=data.dtype)
    raw = np.max(np.asarray(scale.scale, np.float64) ** 2 + np.asarray(scale.shift, np.float64) ** 2, initial=1.0)
    _options.check_step(c, float(scale.curvature) * (1.0 if o.standardize else raw), data.dtype)
    lr, extra, pre = c.learning_rate, {}, (0.0, 0.0, 0)  # pre: the statistics passes' (compile s, run s, passes)
    lipschitz = lambda: health.lipschitz_from_stats(  # noqa: E731
        operand, loss=o.loss, reduction=o.reduction, l2=c.l2, fit_intercept=o.fit_intercept,
        scaling=scale if o.standardize else None)
    if plan == "stats":
        start = time.perf_counter()
        operand, pre_compile = _statistics(data, prefetch)
        if c.auto_step:
            lr = np.asarray(1.0 / lipschitz())
            extra["learning_rate"] = float(lr)
        extra["sufficient_statistics"] = operand
        pre = (pre_compile, time.perf_counter() - start - pre_compile, 2)
    else:
        operand = Data(data.X[data.start:data.stop], data.y[data.start:data.stop])
    hyper = solver.hyper_arrays(c, lr, scale, data.dtype)
    program = Program(o.loss, o.reduction, plan, c.optimizer, lr is not None, o.fit_intercept, o.batch_size,
                      o.chunk_size or (_plan.MAX_CHUNK if plan == "stats" else 1), None, o.shuffle,
                      standardize=o.standardize)
    stepper = PassStepper(data, hyper, program._replace(plan=_plan.DIRECT if plan == "stats" else plan),
                          prefetch=prefetch, seed=o.seed % 2**64)  # numpy seeds are >= 0
    if plan == "stats":
        stepper = _StatisticsStepper(operand, hyper, program, stepper)
    fingerprint = None if o.checkpoint is None else checkpoint.fingerprint(params, operand, hyper, key, program)
    if fingerprint is not None:  # the chunks' rows decide sums and batches: a resume needs the same
        fingerprint["chunk_size"] += f", chunk_rows={data.chunk_rows}"
    passes = stepper.stepper if plan == "stats" else stepper
    run, info = _runner.run(stepper, stepper.init(params, key), hyper, chunk_steps=program.chunk_size,
                            max_steps=o.steps, callback=o.callback, progress=o.progress, desc="fit (streamed)",
                            checkpoint=o.checkpoint, every=o.checkpoint_every, resume=o.resume,
                            fingerprint=fingerprint, meta={"fit_streaming": True})
    stats = {
        "compile_seconds": run.compile_seconds + pre[0], "run_seconds": run.run_seconds + pre[1],
        "stream_seconds": passes.stream_seconds + pre[1], "passes": passes.passes + pre[2], "plan": plan,
        "chunks": run.chunks, "backend": jax.default_backend(), "dtype": str(data.dtype), "devices": 1,
        "loss": o.loss, "reduction": o.reduction, "optimizer": c.optimizer.name or type(o.optimizer).__name__,
        "grad": o.grad, "shuffle": o.shuffle if o.batch_size is not None else None, "vmapped": [],
        "bytes_per_pass": data.bytes_per_pass, "chunk_rows": data.chunk_rows, "n_chunks": data.n_chunks,
        "rows": (data.start, data.stop), **extra, **info,
    }
    safe = (lambda: 1.0 / lipschitz()) if plan == "stats" and c.optimizer.name == "sgd" else None  # 1/L exactly
    steps, converged, diverged, status = solver.report(run, np.asarray(run.state.converged),
                                                       extra.get("learning_rate", o.learning_rate), safe, stats,
                                                       scalar=True, stacklevel=4)
    return solver.FitResult(run.state.params, run.final_loss, run.history, steps, converged, diverged, stats, status)


fit_streaming = _options.with_options_signature(fit_streaming, exclude=_NOT_STREAMED)
