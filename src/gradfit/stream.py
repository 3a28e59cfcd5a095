"""Data bigger than memory: :func:`fit_streaming`, X and y streamed from ``.npy`` files.

The files are read in row chunks by :mod:`gradfit._reader` (a prefetching thread, pages dropped
after use, the last chunk padded with weight-0 rows). The fit itself is the engine's, driven by
the one driver, so a streamed fit has the same stopping and end-of-run rules, progress bar,
checkpoints and ``resume`` as :func:`gradfit.fit`. The plan decides how the data are read:

- **Sufficient statistics** (``grad="stats"``; ``"auto"`` for full-batch mse): one pass gathers
  the centred Gram matrix about the first chunk's means, a second the residual at the
  least-squares solution: the same :class:`gradfit._stats.Stats` the in-memory plan makes.
  Then the fit *is* an in-memory fit on the statistics: every step costs O(n^2 k), whatever m.
- **Full-batch passes** (bce, or mse with ``grad="hand"``, ``"autodiff"`` or ``"onepass"``):
  each step is one pass that sums the ``reduction="sum"`` loss and gradient over the chunks
  (:class:`gradfit._plan.Sums`); the engine's step then scales them (the ``"summed"`` plan),
  adds the L2 term and applies the optax update.
- **Minibatch epochs** (``batch_size``): each step is one pass in which every chunk runs the
  engine's minibatch updates over its batches; ``chunk_rows`` is a multiple of ``batch_size``,
  so a batch never mixes chunks, and batches of padding only change nothing. ``shuffle``:
  ``"blocks"`` visits the chunks, and the batches inside each, in a fresh random order every
  epoch (numpy ``default_rng((seed, epoch))`` and ``((seed, epoch, chunk))``); ``"rows"``
  also permutes the rows inside each chunk (a host gather on the reading thread, overlapping
  the device's work); ``"none"`` keeps file order.

NaN or inf in X or y (and bce targets outside [0, 1]) are found during the first pass, at no
extra read; the fit then raises ``ValueError`` naming the rows, before any update is applied
or anything is written. For several processes (:func:`row_range`), each reads only its own
rows: statistics and per-pass sums add up across row ranges.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradfit import _engine, _options, _plan, _runner, _stats, _validation, checkpoint, health, solver
from gradfit._driver import CompiledStepper
from gradfit._reader import (  # noqa: F401 (public here)
    DEFAULT_CHUNK_BYTES, DEFAULT_PREFETCH, Prefetcher, StreamedData, chunk_ok, each_chunk, open_array, row_range,
)
from gradfit._types import Data, Hyper, Params, Program, SolverState


# --------------------------------------------------------------------------- sufficient statistics
def _gram_chunk(carry, X, y, weight, shift):
    Y = y[:, None] if y.ndim == 1 else y
    return _stats.kahan_add(carry, _stats.gram_block(X, Y, weight, *shift)), chunk_ok(X, y, "mse")


def _residual_chunk(total, X, y, weight, stats):
    Y = y[:, None] if y.ndim == 1 else y
    return total + _stats.residual_block(X, Y, weight, stats), jnp.ones((), bool)


def _default_shift(data: StreamedData) -> tuple[np.ndarray, np.ndarray]:
    """The first chunk's column means of X and y (compute dtype; non-finite values count as 0,
    the pass names the bad rows): the shift the Gram is taken about (any shift is exact, a
    near-mean one keeps float32 accurate for columns far from zero)."""
    X, y, valid = data.read(0)
    out = []
    for a in (X[:valid], y[:valid]):
        with np.errstate(all="ignore"):
            mean = np.mean(a.reshape(valid, -1), axis=0, dtype=np.float64)
        out.append(np.where(np.isfinite(mean), mean, 0).astype(data.dtype))
    return out[0], out[1]


def _statistics(data: StreamedData, prefetch: int, shift=None) -> tuple[_stats.Stats, float]:
    """Two streamed passes: the Gram about ``shift`` (default the first chunk's means), then the
    residual at the solution. Returns the :class:`~gradfit._stats.Stats` and the compile time."""
    n, k, dt = data.X.shape[1], int(np.prod(data.y.shape[1:])), data.dtype
    x_shift, y_shift = _default_shift(data) if shift is None else shift
    x_shift, y_shift = jnp.asarray(x_shift, dt), jnp.asarray(y_shift, dt).reshape(k)
    if x_shift.shape != (n,):
        raise ValueError(f"shift must be (x_shift ({n},), y_shift ({k},)), got {x_shift.shape} and {y_shift.shape}")
    compile_seconds = 0.0

    def compiled(fn, *args):
        nonlocal compile_seconds
        exe, seconds = _engine.compiled(fn, (), None, (), args)
        compile_seconds += seconds
        return exe

    zero = jnp.zeros((n + 1 + k,) * 2, dt)
    X0, y0, _ = data.read(0)
    w0 = jnp.ones(data.chunk_rows, dt)
    gram_step = compiled(_gram_chunk, (zero, zero), X0, y0, w0, (x_shift, y_shift))
    gram, _ = each_chunk(data, (zero, zero), lambda c, X, y, w, i: gram_step(c, X, y, w, (x_shift, y_shift)),
                         prefetch=prefetch, check="mse")
    count = jnp.asarray(data.m, dt)
    exe, seconds = _engine.compiled(_stats.factor, (), data.y.ndim == 1, (), (gram, x_shift, y_shift, count))
    compile_seconds += seconds
    stats = exe(gram, x_shift, y_shift, count)
    residual_step = compiled(_residual_chunk, jnp.zeros(k, dt), X0, y0, w0, stats)
    rss = each_chunk(data, jnp.zeros(k, dt), lambda c, X, y, w, i: residual_step(c, X, y, w, stats), prefetch=prefetch)
    return stats._replace(rss=rss[0] if data.y.ndim == 1 else rss), compile_seconds


def sufficient_statistics(X, y, *, rows: tuple[int, int] | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                          prefetch: int = DEFAULT_PREFETCH, dtype=None, shift=None) -> _stats.Stats:
    """The :class:`gradfit._stats.Stats` of X and y (paths to .npy files or arrays) in two
    streamed passes; ``rows=(start, stop)`` reads only those rows (one process's part,
    :func:`row_range`). ``shift=(x_shift (n,), y_shift (k,))`` sets the point the Gram is taken
    about (default: the first chunk's means). Raises ValueError for unreadable files,
    mismatched shapes, and NaN/inf (naming the rows)."""
    data = StreamedData.open(X, y, rows=rows, chunk_bytes=chunk_bytes, dtype=dtype)
    return _statistics(data, _validation.positive_int(prefetch, "prefetch"), shift)[0]


least_squares = _stats.least_squares  # the exact penalised least-squares answer from the statistics


# --------------------------------------------------------------------------- streamed steppers
def _pass_chunk(total: _plan.Sums, params: Params, X, y, weight, program: Program):
    """Add one chunk's ``reduction="sum"`` loss and gradient (by the plan) to ``total``."""
    value, g = _plan.PLANS[program.plan].value_and_grad(params, Data(X, y, weight), program._replace(reduction="sum"))
    total = _plan.Sums(total.value + value, jax.tree.map(jnp.add, total.grad, g), total.count + jnp.sum(weight))
    return total, chunk_ok(X, y, program.loss)


def _value_chunk(total: _plan.Sums, params: Params, X, y, weight, program: Program):
    value = _plan.PLANS[program.plan].value(params, Data(X, y, weight), program._replace(reduction="sum"))
    return total._replace(value=total.value + value, count=total.count + jnp.sum(weight)), jnp.ones((), bool)


def _finish_value(sums: _plan.Sums, params: Params, hyper: Hyper, program: Program):
    """The objective from a value pass's sums: scale, plus the L2 term."""
    return _engine.value_and_grad(params, sums, hyper.l2, program)[0]


def _epoch_chunk(carry, X, y, weight, order, hyper: Hyper, program: Program):
    """The engine's minibatch updates over one chunk's batches, in ``order``."""
    bs = program.batch_size

    def one(c, j):
        rows = lambda a: jax.lax.dynamic_slice_in_dim(a, j * bs, bs)  # noqa: E731
        return _engine.minibatch_step(c, Data(rows(X), rows(y), rows(weight)), hyper, program), None

    carry, _ = jax.lax.scan(one, carry, order)
    return carry, chunk_ok(X, y, program.loss)


def _end_epoch(state: SolverState, carry, hyper: Hyper, program: Program):
    return _engine.end_epoch(state, carry, state.key, hyper, program)


class PassStepper:
    """One streamed pass per step: a full-batch step (``batch_size`` None) or an epoch."""

    def __init__(self, data: StreamedData, hyper: Hyper, program: Program, *, prefetch: int, seed: int):
        self.data, self.hyper, self.program, self.prefetch, self.seed = data, hyper, program, prefetch, seed
        self.summed = program._replace(plan="summed")
        self.compile_seconds, self.passes, self.stream_seconds = 0.0, 0, 0.0
        self.first = True

    def _compiled(self, fn, program, *args):
        exe, seconds = _engine.compiled(fn, (), program, (), args)
        self.compile_seconds += seconds
        return exe

    def _sums0(self, params: Params) -> _plan.Sums:
        zero = jnp.zeros((), self.data.dtype)
        return _plan.Sums(zero, jax.tree.map(jnp.zeros_like, params), zero)

    def _each(self, carry, step, **kwargs):
        start = time.perf_counter()
        check = self.program.loss if self.first else None  # the data do not change between passes: check once
        carry = each_chunk(self.data, carry, step, prefetch=self.prefetch, check=check, **kwargs)
        self.first = False
        self.passes += 1
        self.stream_seconds += time.perf_counter() - start
        return carry

    def _chunk_args(self):
        X, y, _ = self.data.read(0)
        return X, y, jnp.ones(self.data.chunk_rows, self.data.dtype)

    def chunk(self, state: SolverState, limit: int):
        if self.program.batch_size is None:
            total = self._sums0(state.params)
            step = self._compiled(_pass_chunk, self.program, total, state.params, *self._chunk_args())
            total = self._each(total, lambda c, X, y, w, i: step(c, state.params, X, y, w))
            update = self._compiled(_engine.update, self.summed, state, total, self.hyper)
            state, value = update(state, total, self.hyper)
        else:
            state, value = self._epoch(state)
        return state, np.asarray(value)[None]

    def _epoch(self, state: SolverState):
        data, shuffle = self.data, self.program.shuffle
        epoch = int(state.step)
        per_chunk = data.chunk_rows // self.program.batch_size
        rng = lambda *key: np.random.default_rng((self.seed, epoch, *key))  # noqa: E731
        order = range(data.n_chunks) if shuffle == "none" else rng().permutation(data.n_chunks)
        batches = lambda i: jnp.asarray(  # noqa: E731
            np.arange(per_chunk) if shuffle == "none" else rng(int(i), 1).permutation(per_chunk), jnp.int32)
        carry = _engine.epoch_start(state)
        step = self._compiled(_epoch_chunk, self.program, carry, *self._chunk_args(), batches(0), self.hyper)
        carry = self._each(carry, lambda c, X, y, w, i: step(c, X, y, w, batches(i), self.hyper), order=order,
                           seed=(self.seed, epoch) if shuffle == "rows" else None)
        return self._compiled(_end_epoch, self.program, state, carry, self.hyper)(state, carry, self.hyper)

    def init(self, params: Params, key) -> SolverState:
        return self._compiled(_engine.init_state, self.program, params, self.hyper, key)(params, self.hyper, key)

    def evaluate(self, state: SolverState):
        if self.program.batch_size is None and bool(np.all(np.asarray(state.converged))):
            return state.loss  # the params are p_t, where J_t was evaluated
        total = self._sums0(state.params)
        step = self._compiled(_value_chunk, self.program, total, state.params, *self._chunk_args())
        total = self._each(total, lambda c, X, y, w, i: step(c, state.params, X, y, w))
        return self._compiled(_finish_value, self.summed, total, state.params, self.hyper)(total, state.params, self.hyper)


# --------------------------------------------------------------------------- fit_streaming
_NOT_STREAMED = ("batched", "devices", "n_rows")


def _check(options: dict, prefetch) -> tuple[_options.Checked, int]:
    _options.unknown(options, [n for n in _options.NAMES if n not in _NOT_STREAMED] + list(_NOT_STREAMED))
    given = sorted(set(options) & set(_NOT_STREAMED))
    if given:
        raise ValueError(f"fit_streaming does not take {given[0]}=: a streamed fit runs one problem in one process on one device")
    c = _options.check(options)
    if c.l2.ndim or (c.learning_rate is not None and c.learning_rate.ndim):
        raise ValueError("fit_streaming takes a scalar learning_rate and l2: fit per-output values in memory with gradfit.fit")
    return c, _validation.positive_int(prefetch, "prefetch")


def _streamed_plan(c: _options.Checked, data: StreamedData) -> str:
    o = c.options
    plan = _options.for_data(c, m=data.m, n=data.X.shape[1], k=None if data.y.ndim == 1 else data.y.shape[1])
    if plan != "stats":
        plan = "hand" if o.grad == "auto" else o.grad
        if c.line_search:
            raise ValueError(
                "optimizer 'lbfgs' evaluates the objective inside its line search, which a streamed pass cannot do "
                "within one step: use a first-order optimizer ('sgd', 'adam', ...), or grad='stats' for mse"
            )
        if c.auto_step:
            raise ValueError("learning_rate='auto' needs the statistics of the data (grad='stats', mse): give a number")
    return plan


def fit_streaming(X, y, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES, prefetch: int = DEFAULT_PREFETCH,
                  rows: tuple[int, int] | None = None, dtype=None, **options) -> solver.FitResult:
    """:func:`gradfit.fit` for data bigger than memory, streamed from ``.npy`` files.

    X and y are paths to ``.npy`` files (or numpy arrays / memory maps), X (m, n) and y (m,)
    or (m, k). The options are :func:`gradfit.fit`'s and mean the same (scalar learning rate
    and l2; no sample weights, batched problems or devices), ``progress``, ``checkpoint`` and
    ``resume`` included. ``grad`` picks how the data are read (module docstring).

    Args:
      chunk_bytes: bytes of X per chunk (rows rounded to a multiple of ``batch_size``).
      prefetch: chunks read ahead by the background thread.
      rows: ``(start, stop)``: fit on those rows of the files only.
      dtype: compute dtype (default: the file's float dtype, float32 without x64).
{options}
    Returns:
      A :class:`~gradfit.FitResult`; ``stats`` adds ``passes`` (streamed passes over the
      files), ``bytes_per_pass``, ``chunk_rows``, ``n_chunks``, ``rows`` and ``stream_seconds``,
      and with the statistics plan ``sufficient_statistics`` (the
      :class:`~gradfit._stats.Stats`, e.g. for :func:`least_squares`).

    Raises:
      ValueError: bad options or files (before any read), and NaN/inf or out-of-range bce
      targets found during the first pass (naming the rows; before any update).
    """
    c, prefetch = _check(options, prefetch)
    o = c.options
    data = StreamedData.open(X, y, rows=rows, chunk_bytes=chunk_bytes, batch_size=o.batch_size, dtype=dtype)
    plan = _streamed_plan(c, data)
    out = tuple(data.y.shape[1:])
    params, key = solver.initial_params(o.init, o.seed, data.X.shape[1], out, data.dtype)
    program = Program(o.loss, o.reduction, plan, c.optimizer, True, o.fit_intercept, o.batch_size, o.chunk_size,
                      None, o.shuffle)
    extra: dict[str, Any] = {}
    if plan == "stats":
        start = time.perf_counter()
        stats, pre_compile = _statistics(data, prefetch)
        lr = c.learning_rate
        if c.auto_step:
            lr = np.asarray(1.0 / health.lipschitz_from_stats(stats, loss=o.loss, reduction=o.reduction, l2=c.l2,
                                                               fit_intercept=o.fit_intercept))
            extra["learning_rate"] = float(lr)
        hyper = solver.hyper_arrays(lr, c.l2, c.tol, o.steps, c.traced, data.dtype)
        stepper = CompiledStepper(stats, hyper, program._replace(has_learning_rate=lr is not None))
        operand, extra["sufficient_statistics"] = stats, stats
        pre = (pre_compile, time.perf_counter() - start - pre_compile, 2)
    else:
        hyper = solver.hyper_arrays(c.learning_rate, c.l2, c.tol, o.steps, c.traced, data.dtype)
        program = program._replace(has_learning_rate=c.learning_rate is not None)
        stepper = PassStepper(data, hyper, program, prefetch=prefetch, seed=o.seed)
        operand, pre = Data(data.X[data.start:data.stop], data.y[data.start:data.stop]), (0.0, 0.0, 0)
    state = stepper.init(params, key)
    fingerprint = None
    if o.checkpoint is not None:  # the chunks' rows decide sums and batches: a resume needs the same
        fingerprint = checkpoint.fingerprint(params, operand, hyper, key, stepper.program)
        fingerprint["chunk_size"] += f", chunk_rows={data.chunk_rows}"
    run, info = _runner.run(
        stepper, state, hyper, chunk_steps=o.chunk_size, max_steps=o.steps, callback=o.callback, progress=o.progress,
        desc="fit (streamed)", checkpoint=o.checkpoint, every=o.checkpoint_every, resume=o.resume,
        fingerprint=fingerprint, meta={"fit_streaming": True},
    )
    return _result(run, stepper, data, c, pre, {**extra, **info})


def _result(run, stepper, data: StreamedData, c: _options.Checked, pre: tuple, extra: dict) -> solver.FitResult:
    """The :class:`FitResult`; ``pre`` is the statistics passes' (compile s, run s, passes)."""
    o, state = c.options, run.state
    steps, converged, diverged = int(state.step), bool(state.converged), bool(state.diverged)
    stats = {
        "compile_seconds": run.compile_seconds + pre[0], "run_seconds": run.run_seconds + pre[1],
        "stream_seconds": getattr(stepper, "stream_seconds", 0.0) + pre[1],
        "passes": getattr(stepper, "passes", 0) + pre[2], "plan": stepper.program.plan,
        "chunks": run.chunks, "backend": jax.default_backend(), "dtype": str(data.dtype), "devices": 1,
        "loss": o.loss, "reduction": o.reduction, "optimizer": c.optimizer.name or type(o.optimizer).__name__,
        "grad": o.grad, "shuffle": o.shuffle if o.batch_size is not None else None, "vmapped": [],
        "bytes_per_pass": data.bytes_per_pass, "chunk_rows": data.chunk_rows, "n_chunks": data.n_chunks,
        "rows": (data.start, data.stop), **extra,
    }
    if diverged:
        solver.warn_divergence(steps + int(np.asarray(run.diverged_at_end)), diverged, c.learning_rate, stacklevel=4)
    return solver.FitResult(state.params, run.final_loss, run.history, steps, converged, diverged, stats)


fit_streaming = _options.with_options_signature(fit_streaming, exclude=_NOT_STREAMED)
