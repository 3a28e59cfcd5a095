"""The gradient step, the compiled training loop, and :func:`fit`.

One step evaluates the objective ``J(p) = loss(p; X, y) + (l2/2) ||W||^2`` and its gradient,
applies an optax update, and decides from data alone whether to go on:

- **converged** when ``|J_{t-1} - J_t| <= tol * max(|J_{t-1}|, |J_t|, 1)`` (scipy's
  ``ftol`` test; a tol below the dtype's resolution, about 1e-7 for float32, is met only by
  a loss that repeats exactly); the params ``p_t`` are kept;
- **diverged** when ``J_t`` is not finite or exceeds ``1e6 * max(J_0, eps)``; the last
  params whose objective passed that test, ``p_{t-1}``, are kept.

Steps run inside ``lax.while_loop`` in chunks of ``chunk_size``; the whole chunk is one XLA
program compiled ahead of time, and Python sees the state only between chunks (progress,
early exit, checkpoints). Hyperparameters (learning rate, l2, tol, the step budget and the
optimizer's float options) are array inputs, so new values never recompile, and the same
chunk program is ``vmap``-ed over output columns, batches of problems, or sweep members:
a member that stops is frozen by the loop's own masking while the others go on.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradfit import _onepass, _optim, _plan, _precision, _stats, _validation, gradients, health, losses
from gradfit._params import Params, predict

DIVERGENCE_FACTOR = 1e6
DEFAULT_LEARNING_RATE = 0.01
DEFAULT_CHUNK_SIZE = 256
GRAD_MODES = _plan.GRAD_MODES  # "auto", "autodiff", "hand", "stats", "onepass"


# --------------------------------------------------------------------------- data types
class Data(NamedTuple):
    """The arrays a fit reads. X (m, n); y (m,) or (m, k); sample_weight (m,) or None."""

    X: jax.Array
    y: jax.Array
    sample_weight: jax.Array | None = None


class Hyper(NamedTuple):
    """Hyperparameters as arrays (traced: new values never recompile)."""

    learning_rate: jax.Array | None  # () float; None: the line search picks the step
    l2: jax.Array  # () float, >= 0
    tol: jax.Array  # () float; < 0 means no tolerance test
    max_steps: jax.Array  # () int32
    optimizer: dict[str, jax.Array]  # the optimizer's float options, () each


class SolverState(NamedTuple):
    """The loop's carry; every field has a fixed shape and dtype."""

    params: Params  # p_t, the current iterate
    prev_params: Params  # p_{t-1}, returned if p_t diverged
    opt_state: Any  # the optax state
    step: jax.Array  # () int32, objective evaluations so far
    loss: jax.Array  # () the last objective value J_t
    initial_loss: jax.Array  # () J_0, the reference for divergence
    converged: jax.Array  # () bool
    diverged: jax.Array  # () bool
    key: jax.Array  # () PRNG key, advanced once per minibatch epoch


class Static(NamedTuple):
    """Everything that shapes the compiled program (hashable)."""

    loss: str
    reduction: str
    grad: str
    optimizer: _optim.OptimizerSpec
    has_learning_rate: bool
    fit_intercept: bool
    batch_size: int | None
    chunk_size: int
    rows: int | None = None  # real rows when X was padded for sharding (the rest have weight 0)
    shuffle: str = "rows"  # minibatch sampling: "rows" (permutation) or "blocks" (contiguous; fit's default)
    parts: int = 1  # devices the rows are split over (gradients.block_rows keeps blocks whole per device)


class Level(NamedTuple):
    """One ``vmap`` level: for each input, 0 (mapped along its leading axis) or None (shared)."""

    data: Data
    hyper: Hyper
    params: int | None
    key: int | None


class FitResult(NamedTuple):
    """What :func:`fit` returns. Status is data; a diverged fit also warns.

    params: the fitted :class:`Params`. loss: the objective at ``params``. losses: the
    objective evaluated at the start of each step (with ``batch_size``, the mean minibatch
    objective of each epoch), shape (steps,). steps: objective evaluations (epochs with
    ``batch_size``). converged: the ``tol`` test passed. diverged: the loss became non-finite
    or exploded; ``params`` are the last ones before that. stats: timings
    (``compile_seconds``, ``run_seconds``), ``backend``, the settings used, and numerical
    health (:mod:`gradfit.health`, docs/faults.md): ``condition_number`` (estimated before the
    fit; None for rows spread over several processes), ``separable`` (bce: the fit separates
    the classes and l2 = 0, so no minimiser exists), ``learning_rate`` (with "auto"), and for
    a diverged fit ``diverged_at_step`` (-1 for members that did not) and
    ``suggested_learning_rate``. ``precompute_seconds``, the
    sufficient-statistics pass of ``plan="stats"``, is part of ``run_seconds``; ``plan`` is
    how the gradient was computed (:mod:`gradfit._plan`).

    With per-output hyperparameters or a batch of problems, status fields and ``losses`` gain
    a leading axis (k or B) and ``losses`` is padded with NaN past each member's ``steps``.
    """

    params: Params
    loss: Any
    losses: np.ndarray
    steps: Any
    converged: Any
    diverged: Any
    stats: dict

    def predict(self, X) -> jax.Array:
        """``X @ W + b`` (logits for bce; apply ``jax.nn.sigmoid`` for probabilities)."""
        return predict(self.params, jnp.asarray(X))


# --------------------------------------------------------------------------- the objective
def objective(params: Params, data: Data, l2, static: Static) -> jax.Array:
    """``J(p) = loss(p; X, y, reduction) + (l2/2) ||W||^2``, a scalar.

    With ``grad="stats"`` the data is a :class:`gradfit._stats.Stats` and the MSE comes from it.
    """
    if static.grad == "stats":
        return _stats.loss(params, data, reduction=static.reduction) + losses.l2_penalty(params, l2)
    loss_fn = losses.LOSSES[static.loss]
    value = loss_fn(params, data.X, data.y, reduction=static.reduction, sample_weight=data.sample_weight)
    return value + losses.l2_penalty(params, l2)


def value_and_grad(params: Params, data: Data, l2, static: Static) -> tuple[jax.Array, Params]:
    """``(J(p), dJ/dp)`` by the plan ``static.grad``.

    "autodiff": ``jax.grad``; "hand": the closed forms of :mod:`gradfit.gradients`;
    "onepass": the same closed forms reading X once in row blocks (:mod:`gradfit._onepass`);
    "stats": the MSE from sufficient statistics, O(n^2 k) (:mod:`gradfit._stats`; ``data``
    is then a ``Stats``).
    """
    if static.grad in ("stats", "onepass", "hand"):
        if static.grad == "stats":
            value, g = _stats.value_and_grad(params, data, reduction=static.reduction)
        elif static.grad == "onepass":
            value, g = _onepass.value_and_grad(
                params, data.X, data.y, loss=static.loss, reduction=static.reduction,
                sample_weight=data.sample_weight,
            )
        else:
            value, g = gradients.VALUE_AND_GRADIENTS[static.loss](
                params, data.X, data.y, reduction=static.reduction, sample_weight=data.sample_weight,
                parts=static.parts,
            )
        value = value + losses.l2_penalty(params, l2)
        g = jax.tree.map(jnp.add, g, gradients.l2_penalty(params, l2))
    else:
        value, g = jax.value_and_grad(objective)(params, data, l2, static)
    if not static.fit_intercept:
        g = g._replace(b=jnp.zeros_like(g.b))
    return value, g


def _data_dtype(data) -> np.dtype:
    """The compute dtype of the data a step reads (a :class:`Data` or a ``Stats``)."""
    return data.y.dtype if isinstance(data, Data) else data.dtype  # X may be stored in 16 bits


# --------------------------------------------------------------------------- one step
def _optimizer(static: Static, hyper: Hyper):
    lr = hyper.learning_rate if static.has_learning_rate else None
    return _optim.build(static.optimizer, lr, hyper.optimizer)


def _full_batch_update(state: SolverState, data: Data, hyper: Hyper, static: Static):
    """Evaluate J and dJ at p_t and propose p_{t+1}. Returns (J_t, p_{t+1}, opt_state, fallback)."""
    opt = _optimizer(static, hyper)
    value, g = value_and_grad(state.params, data, hyper.l2, static)
    updates, opt_state = opt.update(
        g, state.opt_state, state.params, value=value, grad=g,
        value_fn=lambda p: objective(p, data, hyper.l2, static),
    )
    return value, optax.apply_updates(state.params, updates), opt_state, state.prev_params, state.key


def _minibatch_plan(m: int, batch_size: int) -> tuple[int, int]:
    n_batches = -(-m // batch_size)
    return n_batches, n_batches * batch_size - m


def _epoch_update(state: SolverState, data: Data, hyper: Hyper, static: Static):
    """One epoch of minibatch steps; which rows form a batch depends on ``static.shuffle``.

    ``"rows"``: a fresh on-device permutation of all rows each epoch; each batch gathers its
    rows from anywhere in X (exact uniform sampling without replacement; a random-access read).
    ``"blocks"``: the rows are cut once into contiguous batches ``[j*B, (j+1)*B)``, visited in
    a fresh random order each epoch; a batch is a slice of X, read sequentially, so an epoch
    costs one streaming read of X. The batch *contents* are fixed, so rows should be in
    random order to begin with (shuffle X once beforehand if it is sorted, e.g. by label).

    Batches have a fixed shape (batch_size rows); the short last batch is padded with
    zero-weight rows ("blocks": the last batch is the slice ``[m - B, m)`` with the rows of
    the previous batch weighted 0), so every row is used once per epoch and nothing
    recompiles. Returns the epoch's mean objective (weighted by rows) and the params after it.
    """
    opt = _optimizer(static, hyper)
    m = data.X.shape[0] if static.rows is None else static.rows  # padding rows are never drawn
    bs = static.batch_size
    n_batches, pad = _minibatch_plan(m, bs)
    key, sub = jax.random.split(state.key)
    dtype = data.y.dtype
    if static.shuffle == "blocks":
        batches = jax.random.permutation(sub, n_batches)

        def fetch(j):
            start = jnp.minimum(j * bs, m - bs)
            mask = ((start + jnp.arange(bs)) >= j * bs).astype(dtype)
            rows = lambda a: jax.lax.dynamic_slice_in_dim(a, start, bs)  # noqa: E731
            weight = mask if data.sample_weight is None else mask * rows(data.sample_weight)
            return Data(rows(data.X), rows(data.y), weight)
    else:
        perm = jax.random.permutation(sub, m)
        index = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(n_batches, bs)
        valid = jnp.concatenate([jnp.ones((m,), dtype), jnp.zeros((pad,), dtype)]).reshape(n_batches, -1)
        batches = (index, valid)

        def fetch(batch):
            rows, mask = batch
            weight = mask if data.sample_weight is None else mask * data.sample_weight[rows]
            return Data(data.X[rows], data.y[rows], weight)

    def one_batch(carry, batch):
        params, opt_state = carry
        sub_data = fetch(batch)
        weight = sub_data.sample_weight
        value, g = value_and_grad(params, sub_data, hyper.l2, static)
        updates, opt_state = opt.update(
            g, opt_state, params, value=value, grad=g,
            value_fn=lambda p: objective(p, sub_data, hyper.l2, static),
        )
        return (optax.apply_updates(params, updates), opt_state), (value, jnp.sum(weight))

    (params, opt_state), (values, counts) = jax.lax.scan(one_batch, (state.params, state.opt_state), batches)
    if static.reduction == "sum":
        epoch_value = jnp.sum(values)
    else:
        epoch_value = jnp.sum(values * counts) / jnp.sum(counts)
    return epoch_value, params, opt_state, state.params, key


def step(state: SolverState, data: Data, hyper: Hyper, static: Static) -> tuple[SolverState, jax.Array]:
    """One step (one epoch with minibatches); a finished state is returned unchanged.

    Returns the new state and the objective value recorded for this step.
    """
    update = _full_batch_update if static.batch_size is None else _epoch_update
    value, candidate, opt_state, fallback, key = update(state, data, hyper, static)
    return advance(state, hyper, value, candidate, opt_state, fallback, key), value


def advance(
    state: SolverState, hyper: Hyper, value: jax.Array, candidate: Params, opt_state, fallback: Params, key: jax.Array
) -> SolverState:
    """Apply the stopping rules to one evaluated step; the rule every data plan shares.

    ``value`` is J_t, evaluated at ``state.params``; ``candidate`` the proposed p_{t+1};
    ``fallback`` the params kept if J_t is bad. Used by :func:`step` and by the plans that
    compute J_t elsewhere (e.g. streamed from disk, :mod:`gradfit.stream`). A finished state
    is returned unchanged.
    """
    first = state.step == 0
    initial = jnp.where(first, value, state.initial_loss)
    eps = jnp.finfo(value.dtype).eps
    bad = ~jnp.isfinite(value) | (value > DIVERGENCE_FACTOR * jnp.maximum(initial, eps))
    scale = jnp.maximum(jnp.maximum(jnp.abs(state.loss), jnp.abs(value)), 1)
    converged = ~first & ~bad & (jnp.abs(state.loss - value) <= hyper.tol * scale)
    params = jax.tree.map(
        lambda fb, cur, new: jnp.where(bad, fb, jnp.where(converged, cur, new)),
        fallback, state.params, candidate,
    )
    new = SolverState(
        params=params,
        prev_params=state.params,
        opt_state=opt_state,
        step=state.step + 1,
        loss=value,
        initial_loss=initial,
        converged=converged,
        diverged=bad,
        key=key,
    )
    active = is_active(state, hyper)
    return jax.tree.map(lambda a, b: jnp.where(active, a, b), new, state)


def is_active(state: SolverState, hyper: Hyper) -> jax.Array:
    """True while a state still has steps to run: not converged, not diverged, within budget."""
    return ~state.converged & ~state.diverged & (state.step < hyper.max_steps)


def init_state(params: Params, data: Data, hyper: Hyper, key: jax.Array, static: Static) -> SolverState:
    """The state before step 0 (params as given, optimizer state fresh)."""
    dtype = _data_dtype(data)
    opt_state = _optimizer(static, hyper).init(params)
    zero = jnp.zeros((), dtype)
    false = jnp.zeros((), bool)
    return SolverState(params, params, opt_state, jnp.zeros((), jnp.int32), zero, zero, false, false, key)


def run_chunk(state: SolverState, data: Data, hyper: Hyper, static: Static) -> tuple[SolverState, jax.Array]:
    """Run up to ``static.chunk_size`` steps in one ``lax.while_loop``.

    Returns the state and the chunk's objective history, shape (chunk_size,), NaN past the
    steps this chunk ran.
    """
    history = jnp.full((static.chunk_size,), jnp.nan, _data_dtype(data))

    def cond(carry):
        i, st, _ = carry
        return (i < static.chunk_size) & is_active(st, hyper)

    def body(carry):
        i, st, hist = carry
        st, value = step(st, data, hyper, static)
        return i + 1, st, hist.at[i].set(value)

    _, state, history = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), state, history))
    return state, history


def final_objective(state: SolverState, data: Data, hyper: Hyper, static: Static) -> jax.Array:
    """The objective at the state's params (one more pass over the data)."""
    return objective(state.params, data, hyper.l2, static)


# --------------------------------------------------------------------------- compiling
def _vectorize(fn: Callable, levels: tuple[Level, ...], arg_axes: Callable[[Level], tuple]) -> Callable:
    for level in reversed(levels):
        fn = jax.vmap(fn, in_axes=arg_axes(level))
    return fn


def _signature(args) -> tuple:
    leaves, tree = jax.tree.flatten(args, is_leaf=lambda x: x is None or isinstance(x, int))
    return tree, tuple(
        x if x is None or isinstance(x, int) else
        (tuple(x.shape), str(x.dtype), bool(getattr(x, "weak_type", False)), getattr(x, "sharding", None))
        for x in leaves
    )


_EXECUTABLES: dict[tuple, Any] = {}


def compiled(name: str, static: Static, levels: tuple[Level, ...], args: tuple) -> tuple[Any, float]:
    """The ahead-of-time compiled program ``name`` for these arguments, and its compile time.

    Programs are cached by (name, static settings, vmap levels, argument shapes and dtypes);
    a cache hit costs 0 seconds, and values of hyperparameters never enter the key.
    """
    key = (name, static, _signature(levels), _signature(args))
    if key in _EXECUTABLES:
        return _EXECUTABLES[key], 0.0
    if name == "init":
        fn = _vectorize(
            lambda p, d, h, k: init_state(p, d, h, k, static), levels,
            lambda lv: (lv.params, lv.data, lv.hyper, lv.key),
        )
    else:
        body = {"chunk": run_chunk, "final": final_objective}[name]
        fn = _vectorize(
            lambda s, d, h: body(s, d, h, static), levels,
            lambda lv: (0, lv.data, lv.hyper),
        )
    start = time.perf_counter()
    exe = jax.jit(fn).lower(*args).compile(compiler_options=_precision.compiler_options(args))
    seconds = time.perf_counter() - start
    _EXECUTABLES[key] = exe
    return exe, seconds


# --------------------------------------------------------------------------- the driver
class RunResult(NamedTuple):
    """The raw outcome of :func:`run` (arrays carry the vmap levels' leading axes)."""

    state: SolverState
    final_loss: jax.Array
    history: np.ndarray  # (*batch, steps_run)
    compile_seconds: float
    run_seconds: float
    chunks: int
    diverged_at_end: Any = None  # (*batch) bool: the objective after the last step was bad


def run(
    params: Params,
    data: Data,
    hyper: Hyper,
    key: jax.Array,
    static: Static,
    levels: tuple[Level, ...] = (),
    callback: Callable[[SolverState, np.ndarray], None] | None = None,
    *,
    state: SolverState | None = None,
    history: np.ndarray | None = None,
) -> RunResult:
    """Run the compiled loop to the end: chunk after chunk until every member has stopped.

    ``callback(state, history_so_far)`` is called between chunks, never inside one.
    ``state`` and ``history`` continue an earlier run from a chunk boundary (see
    :mod:`gradfit.checkpoint`): ``state`` replaces the initial state built from ``params`` and
    ``key``, and ``history`` (*batch, steps_so_far) is prepended to this run's history.
    """
    compile_seconds = 0.0
    if state is None:
        init, t = compiled("init", static, levels, (params, data, hyper, key))
        compile_seconds += t
        state = _strongly_typed(init(params, data, hyper, key))
    chunk, t = compiled("chunk", static, levels, (state, data, hyper))
    compile_seconds += t
    final, t = compiled("final", static, levels, (state, data, hyper))
    compile_seconds += t

    histories = _History(history)
    chunks = 0
    start = time.perf_counter()
    while True:
        state, history = chunk(state, data, hyper)
        chunks += 1
        history = np.asarray(history)
        histories.append(history)
        active = _active_host(state, hyper)
        if callback is not None:
            callback(state, histories.view())
        if not active.any():
            break
    final_loss = final(state, data, hyper)
    # The loop evaluates J before each update, so the last update is checked here, by the same
    # rule: a bad final objective falls back to the params before it and reports divergence.
    end = _diverged_at_end(state, final_loss)
    if end.any():
        state = _fall_back(state, jnp.asarray(end))
        final_loss = final(state, data, hyper)
    jax.block_until_ready(final_loss)
    run_seconds = time.perf_counter() - start
    steps_run = int(np.max(np.asarray(state.step)))
    history = histories.view()[..., :steps_run].copy()
    return RunResult(state, final_loss, history, compile_seconds, run_seconds, chunks, end)


def _diverged_at_end(state: SolverState, final_loss) -> np.ndarray:
    """Members not yet stopped by divergence whose final objective is non-finite or exceeds
    ``DIVERGENCE_FACTOR * J_0`` (the rule of :func:`step`)."""
    f = np.asarray(final_loss)
    j0 = np.asarray(state.initial_loss)
    with np.errstate(invalid="ignore", over="ignore"):
        bad = ~np.isfinite(f) | (f > DIVERGENCE_FACTOR * np.maximum(j0, np.finfo(f.dtype).eps))
    return ~np.asarray(state.diverged) & bad


def _fall_back(state: SolverState, bad: jax.Array) -> SolverState:
    """For members where ``bad``: params <- prev_params, diverged, not converged."""

    def pick(fallback, current):
        mask = bad.reshape(bad.shape + (1,) * (current.ndim - bad.ndim))
        return jnp.where(mask, fallback, current)

    return state._replace(
        params=jax.tree.map(pick, state.prev_params, state.params),
        diverged=state.diverged | bad,
        converged=state.converged & ~bad,
    )


def _strongly_typed(state: SolverState) -> SolverState:
    """The state with no weakly typed leaves (some optax states start with them), so the chunk
    program is compiled for the types every chunk returns, and a state loaded from a
    checkpoint (always strongly typed) finds the same program."""
    return jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype) if getattr(x, "weak_type", False) else x, state)


class _History:
    """The objective history of a run, grown in place (amortised doubling along the step axis)
    so that handing the history so far to a callback at every chunk costs no copy."""

    def __init__(self, prefix: np.ndarray | None = None):
        self.buffer: np.ndarray | None = None
        self.size = 0
        if prefix is not None:
            self.append(np.asarray(prefix))

    def append(self, chunk: np.ndarray) -> None:
        need = self.size + chunk.shape[-1]
        if self.buffer is None or need > self.buffer.shape[-1] or self.buffer.shape[:-1] != chunk.shape[:-1]:
            capacity = max(need, 2 * (0 if self.buffer is None else self.buffer.shape[-1]))
            grown = np.empty(chunk.shape[:-1] + (capacity,), chunk.dtype)
            if self.buffer is not None:
                grown[..., : self.size] = self.buffer[..., : self.size]
            self.buffer = grown
        self.buffer[..., self.size : need] = chunk
        self.size = need

    def view(self) -> np.ndarray:
        """The history so far, (*batch, steps): a view that later appends never change."""
        return self.buffer[..., : self.size]


def _active_host(state: SolverState, hyper: Hyper) -> np.ndarray:
    """:func:`is_active` on the host, for every member at once (max_steps broadcast)."""
    step = np.asarray(state.step)
    max_steps = np.asarray(hyper.max_steps)
    max_steps = max_steps.reshape(max_steps.shape + (1,) * (step.ndim - max_steps.ndim))
    return ~np.asarray(state.converged) & ~np.asarray(state.diverged) & (step < max_steps)


# --------------------------------------------------------------------------- fit
def _hyper_array(value: np.ndarray, dtype) -> jax.Array:
    return jnp.asarray(value, dtype)


def _check_init(init, n: int, out: tuple[int, ...], dtype, key) -> Params:
    if init is None or (isinstance(init, str) and init == "zeros"):
        return Params(jnp.zeros((n, *out), dtype), jnp.zeros(out, dtype))
    if isinstance(init, str):
        if init != "normal":
            raise ValueError(f"unknown init {init!r}: use None or 'zeros', 'normal', or a gradfit.Params")
        W = jax.random.normal(key, (n, *out), dtype) / math.sqrt(n)
        return Params(W, jnp.zeros(out, dtype))
    if not isinstance(init, Params):
        if isinstance(init, tuple) and len(init) == 2:
            init = Params(*init)
        else:
            raise ValueError(f"init must be None, 'zeros', 'normal' or gradfit.Params(W, b), got {type(init).__name__}")
    W = _validation.as_numeric(init.W, "init.W")
    b = _validation.as_numeric(init.b, "init.b")
    if tuple(W.shape) != (n, *out) or tuple(b.shape) != out:
        raise ValueError(
            f"init has W {tuple(W.shape)} and b {tuple(b.shape)} but this problem needs W {(n, *out)} "
            f"and b {out}: W is (n_features,) or (n_features, k), b is () or (k,)"
        )
    _validation.check_finite(W, "init.W")
    _validation.check_finite(b, "init.b")
    return Params(jnp.asarray(W, dtype), jnp.asarray(b, dtype))


class Problem(NamedTuple):
    """A checked fit, ready for :func:`run`: what :func:`prepare` returns.

    ``params``, ``data``, ``hyper`` and ``key`` carry the leading axes of ``levels`` (a batch
    of problems, then output columns when hyperparameters are per-output).
    """

    params: Params
    data: Data
    hyper: Hyper
    key: jax.Array
    static: Static
    levels: tuple[Level, ...]
    per_output: bool  # output columns are a vmap level: y is (k, m) and W is (k, n) inside
    batched: bool
    dtype: np.dtype
    learning_rate: Any  # the learning rate as resolved (float, (k,) array or None)
    init: Any  # the ``init`` argument, for :func:`initial_params`
    mesh: Any  # the device mesh the rows are split over, or None (one device)
    condition: float = float("nan")  # estimated condition number (gradfit.health); NaN: not checked
    auto_step: bool = False  # learning_rate="auto" was resolved to 1/L
    curvature: dict | None = None  # arguments of gradfit.health.safe_learning_rate for this problem
    source: Data | None = None  # with plan "stats": the Data that ``data`` (a Stats) summarises
    precompute: tuple[float, float] = (0.0, 0.0)  # the statistics pass: (compile s, run s)


class HyperValues(NamedTuple):
    """Checked hyperparameter values on the host (float64 numpy; ``steps`` and ``seed`` ints)."""

    learning_rate: np.ndarray | None
    l2: np.ndarray
    tol: np.ndarray  # -1 for tol=None (no tolerance test)
    steps: int
    seed: int


def check_hyperparameters(*, learning_rate, l2, tol, steps, seed, k: int | None = None) -> HyperValues:
    """Check the traced hyperparameters of one fit; raise ``ValueError`` naming the bad one.

    ``learning_rate`` (> 0) and ``l2`` (>= 0) are scalars, or (k,) per-output arrays when y
    has k columns; ``tol`` is None or a scalar >= 0; ``steps`` a positive int; ``seed`` an int.
    """
    steps = _validation.positive_int(steps, "steps")
    per_output_shapes = ((), (k,)) if k is not None else ((),)
    lr = None if learning_rate is None else _validation.hyperparameter(learning_rate, "learning_rate", positive=True, allowed_shapes=per_output_shapes)
    l2_arr = _validation.hyperparameter(l2, "l2", positive=False, allowed_shapes=per_output_shapes)
    tol_arr = np.asarray(-1.0) if tol is None else _validation.hyperparameter(tol, "tol", positive=False)
    return HyperValues(lr, l2_arr, tol_arr, steps, _validation.seed(seed))


def hyper_arrays(learning_rate, l2, tol, steps: int, optimizer_options: dict[str, Any], dtype) -> Hyper:
    """Checked host values as the loop's :class:`Hyper` arrays (floats in ``dtype``, steps int32)."""
    return Hyper(
        learning_rate=None if learning_rate is None else jnp.asarray(learning_rate, dtype),
        l2=jnp.asarray(l2, dtype),
        tol=jnp.asarray(tol, dtype),
        max_steps=jnp.asarray(steps, jnp.int32),
        optimizer={name: jnp.asarray(v, dtype) for name, v in optimizer_options.items()},
    )


def initial_params(init, seed: int, n: int, out: tuple[int, ...], dtype, *, per_output: bool = False) -> tuple[Params, jax.Array]:
    """The params before step 0 and the loop's PRNG key, both from ``seed``.

    ``jax.random.key(seed)`` is split into an init key (``init="normal"``) and a run key
    (minibatch permutations). With ``per_output`` the weights are laid out (k, n).
    """
    key = jax.random.key(seed)
    init_key, run_key = jax.random.split(key)
    params = _check_init(init, n, out, dtype, init_key)
    if per_output:
        params = Params(jnp.moveaxis(params.W, -1, -2), params.b)
    return params, run_key


def prepare(
    X,
    y,
    *,
    loss: str = "mse",
    reduction: str = "mean",
    optimizer: Any = "sgd",
    learning_rate: float | Any | None = None,
    steps: int = 1000,
    tol: float | None = None,
    l2: float | Any = 0.0,
    grad: str = "auto",
    init: Params | str | None = None,
    batch_size: int | None = None,
    shuffle: str = "blocks",
    seed: int = 0,
    fit_intercept: bool = True,
    sample_weight=None,
    optimizer_options: dict[str, Any] | None = None,
    batched: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    devices: Any = None,
    n_rows: int | None = None,
    statistics: bool = False,
    members: int = 1,
) -> Problem:
    """Check the arguments of :func:`fit` and build its :class:`Problem`; no compute runs.

    Takes :func:`fit`'s arguments (less ``callback``) and raises the same ``ValueError`` s.
    :func:`gradfit.sweep` builds one per group of its grid and stacks members on top.
    ``statistics=True`` (what :func:`fit` passes) lets the plan be ``"stats"``: ``data`` is
    then a :class:`gradfit._stats.Stats`, computed here, and ``source`` the Data it summarises.
    Without it (sweeps, whose member levels map Data) "auto" picks a direct plan.
    ``members``: how many vmapped members will share X (a sweep group's size), for the plan.
    """
    losses.check_model(loss, reduction, grad, GRAD_MODES)
    X, y = _validation.check_xy(X, y, loss=loss, batched=batched)
    steps = _validation.positive_int(steps, "steps")
    chunk_size = _validation.positive_int(chunk_size, "chunk_size")
    lead = 1 if batched else 0
    m, n = X.shape[lead], X.shape[lead + 1]
    k = y.shape[-1] if y.ndim == 2 + lead else None
    out = () if k is None else (k,)
    if batch_size is not None:
        batch_size = _validation.positive_int(batch_size, "batch_size")
        if batch_size > m:
            raise ValueError(f"batch_size={batch_size} is larger than the {m} rows of X: use batch_size <= {m} or None for full batches")
    if shuffle not in ("rows", "blocks"):
        raise ValueError(f"unknown shuffle {shuffle!r}: use 'rows' (a permutation per epoch) or 'blocks' (contiguous batches in random order)")
    if not isinstance(fit_intercept, bool):
        raise ValueError(f"fit_intercept must be True or False, got {fit_intercept!r}")

    auto_step = health.wants_auto_step(learning_rate, optimizer)
    if auto_step:
        learning_rate = 1.0  # a placeholder for the checks below; 1/L replaces it once the data pass
    if learning_rate is None and isinstance(optimizer, str) and optimizer not in _optim.LINE_SEARCH:
        learning_rate = DEFAULT_LEARNING_RATE
    spec, traced_options = _optim.resolve(optimizer, optimizer_options, learning_rate)
    if batch_size is not None and spec.name in _optim.LINE_SEARCH:
        raise ValueError("optimizer 'lbfgs' needs full batches: leave batch_size unset, or use 'sgd'/'adam' for minibatches")
    values = check_hyperparameters(learning_rate=learning_rate, l2=l2, tol=tol, steps=steps, seed=seed, k=k)
    lr, l2_arr, tol_arr = values.learning_rate, values.l2, values.tol

    dtype = _validation.float_dtype(X)
    sw = None
    if sample_weight is not None:
        sw = _validation.as_numeric(sample_weight, "sample_weight")
        if tuple(sw.shape) != tuple(y.shape[: lead + 1]):
            raise ValueError(f"sample_weight has shape {tuple(sw.shape)}: expected {tuple(y.shape[: lead + 1])}, one weight per row")
        _validation.check_finite(sw, "sample_weight")
        sw_check = sw if isinstance(sw, jax.Array) else np.asarray(sw)  # a global array stays on device
        if bool((sw_check < 0).any()) or not bool((sw_check.sum(axis=-1) > 0).all()):
            raise ValueError("sample_weight must be >= 0 with a positive sum")
        sw = jnp.asarray(sw, dtype)
    condition = health.check_conditioning(
        X, dtype, batched=batched, fit_intercept=fit_intercept, l2=l2_arr, loss=loss, reduction=reduction,
        sample_weight=sw, stacklevel=3,
    )
    params, run_key = initial_params(init, values.seed, n, out, dtype)

    per_output = k is not None and ((lr is not None and lr.ndim == 1) or l2_arr.ndim == 1)
    data, mesh, rows = _layout(X, y, sw, dtype, devices, n_rows, lead, batch_size)
    curvature = dict(loss=loss, reduction=reduction, l2=l2_arr, sample_weight=data.sample_weight,
                     fit_intercept=fit_intercept, batched=batched)
    if auto_step:  # on the placed (possibly sharded) data; padding rows have weight 0
        lr = np.asarray(health.safe_learning_rate(data.X, **curvature))
        learning_rate = float(lr)
    hyper = hyper_arrays(lr, l2_arr, tol_arr, steps, traced_options, dtype)
    plan = _plan.choose(
        grad, loss=loss, m=m, n=n, k=k or 1, steps=steps, batch_size=batch_size,
        line_search=spec.name in _optim.LINE_SEARCH, sharded=mesh is not None, statistics=statistics,
        members=members * (k if per_output else 1),
    )
    static = Static(loss, reduction, plan, spec, lr is not None, fit_intercept, batch_size, chunk_size, rows, shuffle,
                    1 if mesh is None else mesh.size)
    precompute_seconds, precompute_compile, source = 0.0, 0.0, None
    if plan == "stats":
        source = data
        data, precompute_compile, precompute_seconds = _sufficient_statistics(data, batched)

    levels: list[Level] = []
    if batched:
        B = X.shape[0]
        params = jax.tree.map(lambda a: jnp.broadcast_to(a, (B, *a.shape)), params)
        # (the layout may have added weight-0 padding rows: map the weights that are there)
        data_axes = Data(0, 0, None if data.sample_weight is None else 0) if plan != "stats" else jax.tree.map(lambda _: 0, data)
        levels.append(Level(data_axes, _hyper_axes(hyper, None), 0, None))
    if per_output:
        # Columns become independent problems: y (.., m, k) -> (.., k, m), W (.., n, k) -> (.., k, n).
        # X and the row weights are shared by the columns (inside a batch level, per problem).
        if plan == "stats":
            data, data_axes = _stats.per_output(data)
        else:
            data = data._replace(y=jnp.moveaxis(data.y, -1, -2))
            data_axes = Data(None, 0, None)
        params = Params(jnp.moveaxis(params.W, -1, -2), params.b)
        hyper = hyper._replace(
            learning_rate=hyper.learning_rate if hyper.learning_rate is None else jnp.broadcast_to(hyper.learning_rate, (k,)),
            l2=jnp.broadcast_to(hyper.l2, (k,)),
        )
        hyper_axes = _hyper_axes(hyper, None)._replace(learning_rate=None if hyper.learning_rate is None else 0, l2=0)
        levels.append(Level(data_axes, hyper_axes, 0, None))
    if mesh is not None:  # parameters, hyperparameters and the PRNG key on every device
        from gradfit import sharding

        params, hyper, run_key = sharding.replicate((params, hyper, run_key), mesh)

    return Problem(
        params, data, hyper, run_key, static, tuple(levels), per_output, batched, dtype, learning_rate, init, mesh,
        condition, auto_step, curvature, source, (precompute_compile, precompute_seconds),
    )


def fit(
    X,
    y,
    *,
    loss: str = "mse",
    reduction: str = "mean",
    optimizer: Any = "sgd",
    learning_rate: float | Any | None = None,
    steps: int = 1000,
    tol: float | None = None,
    l2: float | Any = 0.0,
    grad: str = "auto",
    init: Params | str | None = None,
    batch_size: int | None = None,
    shuffle: str = "blocks",
    seed: int = 0,
    fit_intercept: bool = True,
    sample_weight=None,
    optimizer_options: dict[str, Any] | None = None,
    batched: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    callback: Callable[[SolverState, np.ndarray], None] | None = None,
    devices: Any = None,
    n_rows: int | None = None,
    progress: bool = False,
    checkpoint: Any = None,
    checkpoint_every: Any = None,
    resume: bool = False,
) -> FitResult:
    """Fit ``yhat = X @ W + b`` by gradient descent, the whole loop compiled.

    Args:
      X: (m, n) features, rows are samples; (B, m, n) with ``batched=True``.
      y: (m,) or (m, k) targets (in [0, 1] for ``loss="bce"``); (B, m[, k]) when batched.
      loss: ``"mse"`` or ``"bce"`` (logistic regression, from logits).
      reduction: ``"mean"`` (1/m), ``"half_mean"`` (1/(2m), mse only) or ``"sum"``.
      optimizer: an optax alias name (``"sgd"``, ``"adam"``, ``"lbfgs"``, ...) or any
        ``optax.GradientTransformation`` (then leave ``learning_rate`` unset).
      learning_rate: step size; default 0.01 (for ``"lbfgs"``: None, the line search's).
        A (k,) array gives each output column its own rate (the columns are vmapped).
        ``"auto"`` (with ``optimizer="sgd"``): ``1/L`` from a few power iterations on the data,
        see :func:`gradfit.health.safe_learning_rate`.
      steps: most steps to run (epochs with ``batch_size``).
      tol: stop when ``|J_{t-1} - J_t| <= tol * max(|J_{t-1}|, |J_t|, 1)``; None never stops early.
      l2: penalty ``(l2/2) ||W||^2``; bias not penalised. (k,) for per-output values.
        See :func:`gradfit.losses.l2_penalty` for the mapping to scikit-learn's alpha and C.
      grad: the plan (:mod:`gradfit._plan`): ``"auto"`` (default: ``"stats"`` for a
        full-batch MSE fit when its cost model says it is cheaper, else the fastest direct
        plan), ``"autodiff"`` (``jax.grad``), ``"hand"`` (:mod:`gradfit.gradients`),
        ``"onepass"`` (closed forms, X read once per step in row blocks) or ``"stats"``
        (MSE by sufficient statistics: one pass over X, then O(n^2 k) per step, same
        iterates). The plan used is ``stats["plan"]``.
      init: None/``"zeros"``, ``"normal"`` (N(0, 1/n) weights from ``seed``) or ``Params``.
      batch_size: minibatch SGD, batches drawn on device as ``shuffle`` says; the short last
        batch is kept (padded with zero-weight rows), so no row is dropped.
      shuffle: minibatch sampling. ``"blocks"`` (default): fixed contiguous batches visited
        in a fresh random order every epoch, so an epoch is one sequential read of X (shuffle
        the rows of X once beforehand if they are ordered, e.g. sorted by label). ``"rows"``:
        a fresh permutation of all rows every epoch, each batch gathered from anywhere in X
        (exact sampling without replacement; on CPU ~25-70x slower per epoch, measured in
        ``docs/benchmarks.md``).
      seed: seeds the minibatch permutations and ``init="normal"``.
      fit_intercept: False fixes b at its initial value (0).
      sample_weight: (m,) non-negative row weights ("mean" divides by their sum).
      optimizer_options: extra options of the optax alias, e.g. ``{"momentum": 0.9}``;
        float values are traced (new values do not recompile).
      batched: X has a leading axis of B independent problems, fitted under ``vmap``.
      chunk_size: steps per compiled chunk; Python runs only between chunks.
      callback: ``callback(state, history)`` between chunks.
      devices: split the rows across devices (:mod:`gradfit.sharding`): None uses every
        device once m >= ``gradfit.sharding.AUTO_MIN_ROWS`` (one device below that, or when
        there is only one), an int d the first d devices (1 forces one), or a list of jax
        devices or ids. Rows that do not divide evenly are padded with weight-0 rows.
        Leave None when X, y are already sharded jax arrays (kept as they are).
      n_rows: for X, y already padded and sharded (e.g. by :func:`gradfit.shard_rows` or
        :func:`gradfit.distributed.load_rows`), the number of real rows, which come first;
        minibatches are drawn from them only. Not needed for full batches.
      progress: show a tqdm bar (updated between chunks; needs ``gradfit[progress]``).
      checkpoint: a file path: save the run there atomically at chunk boundaries and at the
        end (see :mod:`gradfit.checkpoint`).
      checkpoint_every: an int (steps), a ``datetime.timedelta``, or
        ``gradfit.checkpoint.Every(steps, seconds)``; default every 60 seconds.
      resume: continue from ``checkpoint`` if that file exists (same data and settings, else
        ValueError); start afresh if it does not. The result has the same bits as a run that
        never stopped (on the CPU).

    Returns:
      A :class:`FitResult`. Hyperparameters are arrays inside the program: a second fit on
      the same shapes with new values compiles nothing (``stats["compile_seconds"] == 0``).
      With ``checkpoint``, ``stats`` also holds ``checkpoint`` (the path),
      ``resumed_from_step`` (0 for a fresh start), ``checkpoints`` (files written) and
      ``checkpoint_seconds`` (time spent writing them).

    Raises:
      ValueError: for bad input, before any compute (docs/faults.md lists every case).

    Warns:
      gradfit.health.IllConditionedWarning: the data's condition number is too large for
        the dtype (estimated from a sample of rows before the fit; see
        :func:`gradfit.health.check_conditioning`), with the remedy.
      gradfit.health.SeparableWarning: bce with ``l2=0`` on classes the fit separates; no
        minimiser exists, so the fit is reported as not converged.
      RuntimeWarning: the fit diverged; names the step and suggests a learning rate.
    """
    fit_arguments = dict(
        loss=loss, reduction=reduction, optimizer=optimizer, learning_rate=learning_rate, steps=steps,
        tol=tol, l2=l2, grad=grad, init=init, batch_size=batch_size, seed=seed, fit_intercept=fit_intercept,
        optimizer_options=optimizer_options, batched=batched, chunk_size=chunk_size, devices=devices, n_rows=n_rows,
    )
    if not isinstance(progress, bool):
        raise ValueError(f"progress must be True or False, got {progress!r}")
    if checkpoint is not None:
        from gradfit import checkpoint as _checkpoint

        checkpoint = _checkpoint.check_path(checkpoint, resume=resume)
        checkpoint_every = _checkpoint.parse_every(checkpoint_every)
    elif resume is not False or checkpoint_every is not None:
        raise ValueError("resume and checkpoint_every need checkpoint=PATH, the checkpoint file to write and resume from")
    problem = prepare(
        X, y, loss=loss, reduction=reduction, optimizer=optimizer, learning_rate=learning_rate,
        steps=steps, tol=tol, l2=l2, grad=grad, init=init, batch_size=batch_size, seed=seed,
        fit_intercept=fit_intercept, sample_weight=sample_weight, optimizer_options=optimizer_options,
        batched=batched, chunk_size=chunk_size, devices=devices, n_rows=n_rows, shuffle=shuffle,
        statistics=True,
    )
    plan = problem.static.grad
    precompute_compile, precompute_seconds = problem.precompute
    static, levels_t, per_output, dtype = problem.static, problem.levels, problem.per_output, problem.dtype
    spec, learning_rate, mesh = static.optimizer, problem.learning_rate, problem.mesh
    members = (np.shape(X)[0] if problem.batched else 1) * (np.shape(y)[-1] if per_output else 1)
    result, resumed = _run_long(
        problem.params, problem.data, problem.hyper, problem.key, static, levels_t, callback, progress=progress,
        members=members, checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume,
        fit_arguments=fit_arguments,
    )
    state = result.state
    out_params = state.params
    if per_output:
        out_params = Params(jnp.moveaxis(out_params.W, -2, -1), out_params.b)
    steps_taken = np.asarray(state.step)
    converged = np.asarray(state.converged)
    diverged = np.asarray(state.diverged)
    history = result.history
    final_loss = result.final_loss
    if per_output:
        final_loss = jnp.sum(final_loss, axis=-1)  # the joint objective sums over outputs
    stats = {
        "compile_seconds": result.compile_seconds + precompute_compile,
        "run_seconds": result.run_seconds + precompute_seconds,
        "precompute_seconds": precompute_seconds,
        "plan": plan,
        "chunks": result.chunks,
        "backend": jax.default_backend(),
        "dtype": str(dtype),
        "loss": loss,
        "reduction": reduction,
        "optimizer": spec.name or type(optimizer).__name__,
        "grad": grad,
        "shuffle": shuffle if batch_size is not None else None,
        "vmapped": [name for name, on in (("problems", problem.batched), ("outputs", per_output)) if on],
        "devices": 1 if mesh is None else mesh.size,
        **resumed,
    }
    data = problem.data if problem.source is None else problem.source  # X itself, for the checks below
    condition, curvature = problem.condition, problem.curvature
    stats["condition_number"] = condition if np.isfinite(condition) else None  # None: not checked
    if problem.auto_step:
        stats["learning_rate"] = learning_rate
    if loss == "bce" and not np.any(curvature["l2"]):
        # No minimiser exists on separable classes: never report such a fit as converged.
        y_rows = jnp.moveaxis(data.y, -2, -1) if per_output else data.y
        sep = health.separated(out_params, data.X, y_rows, batched=problem.batched, sample_weight=data.sample_weight)
        sep = sep if per_output or sep.ndim == converged.ndim else sep.any(axis=-1)
        if sep.any():
            converged = converged & ~sep
            warnings.warn(health.separable_message(float(jnp.linalg.norm(out_params.W))), health.SeparableWarning, stacklevel=2)
        stats["separable"] = sep.tolist()
    elif loss == "bce":
        stats["separable"] = False  # with a penalty the minimiser exists
    if not levels_t:
        steps_taken, converged, diverged = int(steps_taken), bool(converged), bool(diverged)
    if np.any(diverged):
        # The index of the first bad objective evaluation (steps_taken when it came after the last step).
        bad_at = np.asarray(steps_taken) + np.asarray(result.diverged_at_end, int)
        stats["diverged_at_step"] = np.where(diverged, bad_at - 1, -1).tolist()
        suggestion = None
        if spec.name == "sgd":  # 1/L, the safe step of gradient descent, costs a few dozen passes
            suggestion = health.safe_learning_rate(data.X, **curvature)
        elif learning_rate is not None:
            suggestion = float(np.min(learning_rate)) / 10
        stats["suggested_learning_rate"] = suggestion
        _warn_divergence(bad_at, diverged, learning_rate, suggestion)
    return FitResult(out_params, final_loss, history, steps_taken, converged, diverged, stats)


def _sufficient_statistics(data: Data, batched: bool):
    """Replace ``data`` by its :class:`~gradfit._stats.Stats` (vmapped over problems when batched).

    Returns (stats, compile_seconds, run_seconds); the pass is compiled ahead of time and
    cached like the loop's programs, and its run time counts as the fit's run time.
    """
    fn = lambda X, y, w: _stats.sufficient_statistics(X, y, w)  # noqa: E731
    if batched:
        fn = jax.vmap(fn, in_axes=(0, 0, None if data.sample_weight is None else 0))
    key = ("stats", batched, _signature(tuple(data)))
    compile_seconds = 0.0
    if key not in _EXECUTABLES:
        start = time.perf_counter()
        _EXECUTABLES[key] = jax.jit(fn).lower(*data).compile(compiler_options=_precision.compiler_options(data))
        compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    stats = jax.block_until_ready(_EXECUTABLES[key](*data))
    return stats, compile_seconds, time.perf_counter() - start


def _layout(X, y, sw, dtype, devices, n_rows, row_axis: int, batch_size):
    """Place the data: on one device, or rows split over a mesh (:mod:`gradfit.sharding`).

    Returns ``(Data, mesh or None, real rows if padded else None)``.
    """
    from gradfit import sharding  # imports Data from this module

    m = X.shape[row_axis]
    if sharding.is_sharded(X):
        if devices is not None:
            raise ValueError(
                "X is already sharded across devices: leave devices=None to keep its layout, or pass "
                "host arrays to let devices= choose one"
            )
        mesh = sharding.mesh_of(Data(X, y, sw))
        if mesh is None:
            raise ValueError("X is sharded without a jax.sharding.NamedSharding: lay it out with gradfit.shard_rows")
        # y and the weights follow X's row layout (a host array is cut into the same blocks).
        def place(a):
            if a is None or sharding.is_sharded(a):
                return a
            return sharding.place_rows(a, sharding.row_sharding(mesh, row_axis), row_axis, m, dtype)

        data = Data(jnp.asarray(X, _precision.storage_dtype(X, dtype)), jnp.asarray(place(y), dtype), place(sw))
        if n_rows is not None:
            n_rows = _validation.positive_int(n_rows, "n_rows")
            if n_rows > m or (n_rows < m and sw is None):
                raise ValueError(
                    f"n_rows={n_rows} does not fit X's {m} rows: give the real rows (<= {m}); padding rows "
                    "after them need sample_weight 0, as gradfit.shard_rows makes"
                )
            if batch_size is not None and batch_size > n_rows:
                raise ValueError(f"batch_size={batch_size} is larger than the {n_rows} real rows: use batch_size <= {n_rows}")
        return data, mesh, None if n_rows == m else n_rows
    if n_rows is not None:
        raise ValueError("n_rows is only for X already padded and sharded (by gradfit.shard_rows); leave it unset")
    devs = sharding.resolve_devices(devices, m)
    if len(devs) == 1:
        data = Data(jnp.asarray(X, _precision.storage_dtype(X, dtype)), jnp.asarray(y, dtype), sw)
        if devices is not None:
            data = jax.device_put(data, devs[0])
        return data, None, None
    data = sharding.shard_rows(Data(X, y, sw), devs, row_axis=row_axis, dtype=dtype)
    padded = data.X.shape[row_axis]
    return data, sharding.mesh_of(data), None if padded == m else m
def _run_long(params, data, hyper, key, static, levels, callback, *, progress, members, checkpoint,
              checkpoint_every, resume, fit_arguments) -> tuple[RunResult, dict]:
    """:func:`run`, with a progress bar and checkpoints when asked; returns the run and stats."""
    bar = None
    if progress:
        from gradfit import progress as _progress

        bar = _progress.Progress(int(hyper.max_steps), members=members, desc="fit")
        callback = _progress.chain(bar, callback)
    try:
        if checkpoint is None:
            return run(params, data, hyper, key, static, levels, callback), {}
        from gradfit import checkpoint as _checkpoint

        stored, not_stored = _checkpoint.storable_arguments(fit_arguments)
        meta = {"fit": stored, "fit_not_stored": not_stored, "every": list(checkpoint_every)}
        result, info = _checkpoint.run(
            checkpoint, params, data, hyper, key, static, levels,
            every=checkpoint_every, resume=resume, callback=callback, meta=meta,
        )
        return result, {"checkpoint": str(checkpoint), **info._asdict()}
    finally:
        if bar is not None:
            bar.close()


def _hyper_axes(hyper: Hyper, axis) -> Hyper:
    return Hyper(
        learning_rate=None if hyper.learning_rate is None else axis,
        l2=axis,
        tol=axis,
        max_steps=axis,
        optimizer={name: axis for name in hyper.optimizer},
    )


def _warn_divergence(steps, diverged, learning_rate, suggestion=None) -> None:
    """Warn that a fit diverged, naming the step (the first bad objective evaluation, counted
    from 0) and a step size to try (``suggestion``: 1/L for sgd, else a tenth of the rate)."""
    at = int(np.max(np.where(diverged, steps, 0))) - 1
    if at == 0:
        hint = (
            ": the objective is not finite at the initial params, so the data overflow "
            "the dtype; rescale X and y (standardise) or fit in float64"
        )
    else:
        hint = ": returning the last params before it"
        if suggestion is not None:
            hint += f"; try learning_rate={suggestion:.3g}"
            if learning_rate is not None:
                hint += f" (was {float(np.min(learning_rate)):g})"
            hint += ", or standardise X"
        elif learning_rate is not None:
            hint += "; try a smaller learning_rate, or standardise X"
    warnings.warn(
        f"the fit diverged at step {at} (the loss became non-finite or grew {DIVERGENCE_FACTOR:g}-fold){hint}",
        RuntimeWarning,
        stacklevel=3,
    )
