"""The engine: one step, one stopping rule, one end-of-run rule, and the compiled chunk.

Every entry point (``fit``, ``sweep``, ``solve``, streamed fits, a resumed checkpoint) runs these:

- :func:`update`, the step: ``J(p) = loss(p) + (l2/2) ||W||^2`` and its gradient at ``p_t`` by
  the plan (:mod:`gradfit._plan`), one optax update (none when they already end the run), then :func:`advance`.
  With ``batch_size`` a step is one epoch of :func:`minibatch_step` updates, its objective the epoch's mean.
- :func:`advance`, the stopping rule (``G`` = :func:`optimality` at ``p_t``): **converged** when
  ``G <= tol``; **stalled** when ``G > tol`` and the step left the params unchanged or
  ``|J_{t-1} - J_t| <= ftol * max(|J_{t-1}|, |J_t|, floor)``; **diverged** when ``J_t`` is not
  finite or exceeds ``1e6 * max(J_0, eps)`` (the last params that passed are kept).
- :func:`finalize`, the end-of-run rule: one more evaluation (:func:`final_check`) at the params
  returned; a bad objective falls back to the params before (diverged), else ``converged`` is its test.

The optimizer works in the fit's coordinates (:func:`to_fit`), ``W' = W sigma``, ``b' = b + mu W``
(:class:`~gradfit._types.Scaling`), unless ``program.standardize=False``. :func:`compiled` compiles every program
ahead of time, ``vmap``-ed over the :class:`~gradfit._types.Level` s."""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from gradfit import _optim, _plan, _precision, gradients, losses
from gradfit._types import Data, Hyper, Level, Monitor, Params, Program, Scaling, SolverState, Validated

DIVERGENCE_FACTOR = 1e6


def objective(params: Params, operand, l2, program: Program) -> jax.Array:
    """``J(p) = loss(p; operand) + (l2/2) ||W||^2``, a scalar (the plan reads the operand)."""
    return _plan.PLANS[program.plan].value(params, operand, program) + losses.l2_penalty(params, l2)


def value_and_grad(params: Params, operand, l2, program: Program) -> tuple[jax.Array, Params]:
    """``(J(p), dJ/dp)`` by the plan, the L2 term in closed form; db = 0 without ``fit_intercept``."""
    value, g = _plan.PLANS[program.plan].value_and_grad(params, operand, program)
    value = value + losses.l2_penalty(params, l2)
    g = jax.tree.map(jnp.add, g, gradients.l2_penalty(params, l2))
    if not program.fit_intercept:
        g = g._replace(b=jnp.zeros_like(g.b))
    return value, g


def _col(v: jax.Array, like: jax.Array) -> jax.Array:
    """A per-feature vector (n,) laid out to broadcast against W (n,) or (n, k)."""
    return v if like.ndim == 1 else v[:, None]


def to_fit(params: Params, s: Scaling) -> Params:
    """``(W sigma, b + mu W)``: the coefficients of the columns ``(x_j - mu_j) / sigma_j``."""
    return Params(params.W * _col(s.scale, params.W), params.b + s.shift @ params.W)


def to_model(theta: Params, s: Scaling) -> Params:
    """The inverse of :func:`to_fit`: ``W = W' / sigma``, ``b = b' - mu W``."""
    W = theta.W / _col(s.scale, theta.W)
    return Params(W, theta.b - s.shift @ W)


def in_fit(g: Params, s: Scaling) -> Params:
    """A gradient in the fit's coordinates, by the chain rule through :func:`to_model`:
    ``dJ/dW'_j = (dJ/dW_j - mu_j dJ/db) / sigma_j``, ``dJ/db' = dJ/db``."""
    outer = s.shift * g.b if g.b.ndim == 0 else s.shift[:, None] * g.b[None, :]
    return Params((g.W - outer) / _col(s.scale, g.W), g.b)


def optimality(value: jax.Array, g: Params, hyper: Hyper) -> jax.Array:
    """``G``, the scaled gradient norm the stopping test compares with ``tol``:

        G^2 = [ sum_j ||g'_Wj||^2 / (h + l2 / sigma_j^2) + ||g'_b||^2 / h ] / (2 max(|J|, floor))

    ``g'`` the penalised gradient in the fit's coordinates (:func:`in_fit`), ``h`` the loss's curvature along each
    (``2 c N`` mse, ``c N / 4`` bce; N the sum of the row weights, c the reduction's scale). The numerator is twice
    the decrease of a diagonal Newton step, so ``G^2`` estimates ``(J - J*) / J``, free of the units of X and y;
    ``floor`` (``eps^(1/4)`` times the best constant model's objective) makes the test absolute for a near-perfect
    fit. Outputs sharing hyperparameters share one test; per-output hyperparameters give each its own."""
    s = hyper.scaling
    gs = in_fit(g, s)
    h_W = s.curvature + hyper.l2 / (s.scale * s.scale)
    decrease = jnp.sum(gs.W * gs.W / _col(h_W, gs.W)) + jnp.sum(gs.b * gs.b) / s.curvature
    return jnp.sqrt(decrease / (2 * jnp.maximum(jnp.abs(value), s.floor)))


def optimizer(program: Program, hyper: Hyper):
    """The optax transformation, built inside the traced program from array hyperparameters."""
    return _optim.build(program.optimizer, hyper.learning_rate if program.has_learning_rate else None,
                        hyper.optimizer)


def _coordinates(program: Program, hyper: Hyper):
    """``(to fit, to model, gradient into fit)`` maps (identities without ``standardize``)."""
    s = hyper.scaling
    if not program.standardize:
        return (lambda p: p,) * 3
    return (lambda p: to_fit(p, s)), (lambda t: to_model(t, s)), (lambda g: in_fit(g, s))


def out_of_fit(gs: Params, s: Scaling) -> Params:
    """The inverse of :func:`in_fit`: ``dJ/dW_j = sigma_j dJ/dW'_j + mu_j dJ/db``, ``dJ/db = dJ/db'``."""
    outer = s.shift * gs.b if gs.b.ndim == 0 else s.shift[:, None] * gs.b[None, :]
    return Params(gs.W * _col(s.scale, gs.W) + outer, gs.b)


def reuses_line_search(program: Program, opt_state) -> bool:
    """Whether a step takes J and dJ at ``p_t`` from the optimizer state, where a line search left them
    (optax's ``value``, ``grad``: the accepted point's) instead of evaluating them again: full batches only."""
    return (program.batch_size is None and _plan.PLANS[program.plan].value is not None
            and optax.tree.get(opt_state, "value", None) is not None)


def line_objective(operand, hyper: Hyper, program: Program) -> Callable[[Params], jax.Array]:
    """``theta -> J(model(theta))`` for a line search, its gradient by the plan (a custom VJP: the hand-derived
    or one-pass closed forms, not autodiff through X), in the fit's coordinates, ``db' = 0`` without an intercept."""
    _, model, gradient = _coordinates(program, hyper)

    @jax.custom_vjp
    def J(theta):
        return objective(model(theta), operand, hyper.l2, program)

    def forward(theta):
        value, g = value_and_grad(model(theta), operand, hyper.l2, program)
        return value, gradient(g)

    J.defvjp(forward, lambda g_fit, ct: (jax.tree.map(lambda a: ct * a, g_fit),))
    return J


def _seed_line_search(params: Params, opt_state, operand, hyper: Hyper, program: Program):
    """A line search's state holding J and dJ at ``params`` (one evaluation), for :func:`reuses_line_search`,
    and the evaluations made (1)."""
    value, g = value_and_grad(params, operand, hyper.l2, program)
    return optax.tree.set(opt_state, value=value, grad=_coordinates(program, hyper)[2](g)), jnp.ones((), jnp.int32)


def current(params: Params, opt_state, operand, hyper: Hyper, program: Program):
    """``(J, dJ/dp, dJ/dtheta)`` at ``params`` (model and fit coordinates): from the optimizer state where a
    line search left them (:func:`reuses_line_search`), else one evaluation by the plan."""
    gradient = _coordinates(program, hyper)[2]
    if reuses_line_search(program, opt_state):
        value, g_fit = optax.tree.get(opt_state, "value"), optax.tree.get(opt_state, "grad")
        return value, (out_of_fit(g_fit, hyper.scaling) if program.standardize else g_fit), g_fit
    value, g = value_and_grad(params, operand, hyper.l2, program)
    return value, g, gradient(g)


def move(params: Params, opt_state, value, g_fit: Params, operand, hyper: Hyper, program: Program):
    """One optimizer update from ``params`` given J and dJ/dtheta there: ``(new params, new optimizer state,
    evaluations of J made)``. A line search evaluates J and dJ at trial points through the plan
    (:func:`line_objective`) and, full-batch, leaves them for the next step."""
    fit, model, _ = _coordinates(program, hyper)
    value_fn = None if _plan.PLANS[program.plan].value is None else line_objective(operand, hyper, program)
    theta = fit(params)
    updates, opt_state = optimizer(program, hyper).update(g_fit, opt_state, theta, value=value, grad=g_fit,
                                                          value_fn=value_fn)
    searched = optax.tree.get(opt_state, "num_linesearch_steps", None)
    evaluations = jnp.zeros((), jnp.int32) if searched is None else searched.astype(jnp.int32)
    still = jnp.all(jnp.stack([jnp.all(u == 0) for u in jax.tree.leaves(updates)]))
    new = model(optax.apply_updates(theta, updates))  # not exactly params when still: round-off
    return jax.tree.map(lambda p, q: jnp.where(still, p, q), params, new), opt_state, evaluations


def minibatch_step(carry, batch: Data, hyper: Hyper, program: Program):
    """One minibatch update. ``carry``: ``(params, opt_state, sum of J_batch * batch weight, sum of
    batch weights, sum of dJ_batch * batch weight)`` (plain sums for "sum"). An all-zero-weight
    batch (padding only) changes nothing."""
    params, opt_state, value_sum, count_sum, grad_sum = carry
    value, g, g_fit = current(params, opt_state, batch, hyper, program)
    new_params, new_state, _ = move(params, opt_state, value, g_fit, batch, hyper, program)
    count = jnp.sum(batch.sample_weight)
    keep = count > 0
    params, opt_state = jax.tree.map(lambda a, b: jnp.where(keep, a, b), (new_params, new_state), (params, opt_state))
    weight = jnp.where(keep, 1 if program.reduction == "sum" else count, 0)
    def add(total, term):  # a batch made only of padding has value 0/0: mask, don't multiply by zero
        return total + jnp.where(keep, weight * term, 0)

    grad_sum = jax.tree.map(add, grad_sum, g)
    return params, opt_state, add(value_sum, value), count_sum + count, grad_sum


def epoch_value(value_sum, count_sum, program: Program) -> jax.Array:
    """An epoch's objective (or gradient): the batches' sum ("sum") or weighted mean."""
    return value_sum if program.reduction == "sum" else value_sum / count_sum


def _batches(data: Data, key: jax.Array, program: Program):
    """The epoch's batches as ``(fetch, xs)`` for a ``lax.scan`` over ``xs``: ``"rows"``, a fresh
    permutation of the rows; ``"blocks"``, contiguous batches ``[j*B, (j+1)*B)`` in a fresh order;
    ``"none"``, those in order. The short last batch is padded with zero-weight rows (for blocks,
    the slice ``[m - B, m)`` with the previous batch's rows weighted 0): each row used once an epoch."""
    m = data.X.shape[0] if program.rows is None else program.rows  # padding rows are never drawn
    bs = program.batch_size
    n_batches = -(-m // bs)
    dtype = data.y.dtype
    weights = lambda mask, rows: mask if data.sample_weight is None else mask * rows(data.sample_weight)  # noqa: E731
    if program.shuffle == "rows":
        pad = n_batches * bs - m
        perm = jax.random.permutation(key, m)
        index = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(n_batches, bs)
        valid = (jnp.arange(n_batches * bs) < m).astype(dtype).reshape(n_batches, bs)

        def fetch(batch):
            rows, mask = batch
            return Data(data.X[rows], data.y[rows], weights(mask, lambda a: a[rows]))

        return fetch, (index, valid)

    def fetch_block(j):
        start = jnp.minimum(j * bs, m - bs)
        mask = ((start + jnp.arange(bs)) >= j * bs).astype(dtype)
        rows = lambda a: jax.lax.dynamic_slice_in_dim(a, start, bs)  # noqa: E731
        return Data(rows(data.X), rows(data.y), weights(mask, rows))

    order = jnp.arange(n_batches) if program.shuffle == "none" else jax.random.permutation(key, n_batches)
    return fetch_block, order


def epoch_start(state: SolverState):
    """The carry of :func:`minibatch_step` at the start of an epoch."""
    zero = jnp.zeros((), state.loss.dtype)
    return state.params, state.opt_state, zero, zero, jax.tree.map(jnp.zeros_like, state.params)


def end_epoch(state: SolverState, carry, key, hyper: Hyper, program: Program) -> tuple[SolverState, jax.Array]:
    """Close an epoch: objective and gradient are the batches' means (the test is confirmed on
    all rows by :func:`finalize`); a bad objective falls back to the params at the epoch's start."""
    params, opt_state, value_sum, count_sum, grad_sum = carry
    value = epoch_value(value_sum, count_sum, program)
    g = jax.tree.map(lambda total: epoch_value(total, count_sum, program), grad_sum)
    return advance(state, hyper, value, g, params, opt_state, state.params, key, 1), value


def update(state: SolverState, operand, hyper: Hyper, program: Program) -> tuple[SolverState, jax.Array]:
    """The step (one epoch with minibatches): the new state (unchanged once finished) and the
    objective recorded for the step. A full-batch step whose J and dJ at ``p_t`` already end the run
    (converged or diverged, :func:`verdict`) makes no update: a line search there would be discarded."""
    if program.batch_size is None:
        value, g, g_fit = current(state.params, state.opt_state, operand, hyper, program)
        evaluations = jnp.asarray(0 if reuses_line_search(program, state.opt_state) else 1, jnp.int32)
        _, bad, _, converged = verdict(state, hyper, value, g)
        candidate, opt_state, searched = jax.lax.cond(
            bad | converged, lambda: (state.params, state.opt_state, jnp.zeros((), jnp.int32)),
            lambda: move(state.params, state.opt_state, value, g_fit, operand, hyper, program))
        return advance(state, hyper, value, g, candidate, opt_state, state.prev_params, state.key,
                       evaluations + searched), value
    key, sub = jax.random.split(state.key)
    fetch, xs = _batches(operand, sub, program)
    carry, _ = jax.lax.scan(lambda c, x: (minibatch_step(c, fetch(x), hyper, program), None), epoch_start(state), xs)
    return end_epoch(state, carry, key, hyper, program)


def _is_bad(value: jax.Array, initial: jax.Array) -> jax.Array:
    eps = jnp.finfo(value.dtype).eps
    return ~jnp.isfinite(value) | (value > DIVERGENCE_FACTOR * jnp.maximum(initial, eps))


def verdict(state: SolverState, hyper: Hyper, value, g: Params):
    """The stopping rule's tests of J_t and dJ/dp at ``state.params``: ``(J_0, bad, G, converged)``."""
    initial = jnp.where(state.step == 0, value, state.initial_loss)
    bad = _is_bad(value, initial)
    G = optimality(value, g, hyper)
    return initial, bad, G, ~bad & (G <= hyper.tol)


def advance(state: SolverState, hyper: Hyper, value, g: Params, candidate: Params, opt_state, fallback: Params,
            key, evaluations) -> SolverState:
    """The stopping rule (module docstring) for one evaluated step: ``value``, ``g`` are J_t and
    dJ/dp at ``state.params`` (or the epoch's means), ``candidate`` p_{t+1}, ``fallback`` the params
    kept if J_t is bad, ``evaluations`` those the step made. A finished state is returned unchanged."""
    first = state.step == 0
    initial, bad, G, converged = verdict(state, hyper, value, g)
    changes = [jnp.any(new != old) for new, old in zip(jax.tree.leaves(candidate), jax.tree.leaves(state.params))]
    moved = jnp.any(jnp.stack(changes))
    scale = jnp.maximum(jnp.maximum(jnp.abs(state.loss), jnp.abs(value)), hyper.scaling.floor)
    flat = ~first & (jnp.abs(state.loss - value) <= hyper.ftol * scale)
    stalled = ~bad & ~converged & (~moved | flat)
    params = jax.tree.map(lambda fb, cur, new: jnp.where(bad, fb, jnp.where(converged | stalled, cur, new)),
                          fallback, state.params, candidate)
    new = SolverState(params, state.params, opt_state, state.step + 1, value, initial, converged, bad, key, stalled,
                      G.astype(value.dtype), state.evaluations + evaluations, state.monitor)
    active = is_active(state, hyper)
    return jax.tree.map(lambda a, b: jnp.where(active, a, b), new, state)


def is_active(state: SolverState, hyper: Hyper) -> jax.Array:
    """True while a state still has steps to run: not stopped by a rule (or early stopping), within budget."""
    running = ~state.converged & ~state.diverged & ~state.stalled & (state.step < hyper.max_steps)
    return running if state.monitor is None else running & ~stopped_early(state.monitor)


def stopped_early(monitor: Monitor) -> jax.Array:
    """Early stopping's rule: ``patience`` (> 0) steps in a row without a lower validation loss (on device arrays,
    or numpy ones on the host)."""
    return (monitor.patience > 0) & (monitor.since_best >= monitor.patience)


def _split(operand):
    """``(what the plan reads, validation data or None)``."""
    return (operand.train, operand.val) if isinstance(operand, Validated) else (operand, None)


def validation_loss(params: Params, val, program: Program) -> jax.Array:
    """The unpenalised loss on the validation data (Data, or their Stats with the "stats" plan)."""
    return _plan.PLANS["stats" if program.plan == "stats" else "autodiff"].value(params, val, program)


def watch(before: SolverState, after: SolverState, val, program: Program) -> SolverState:
    """Record the validation loss of the params a step produced; early stopping puts the best ones back."""
    m = after.monitor
    value = validation_loss(after.params, val, program)
    ran = after.step > before.step
    better = ran & (value < m.best)
    since = jnp.where(better, 0, m.since_best + ran.astype(jnp.int32))
    history = jnp.where(ran, m.history.at[after.step - 1].set(value), m.history)
    best_params = jax.tree.map(lambda b, p: jnp.where(better, p, b), m.best_params, after.params)
    m = Monitor(history, jnp.where(better, value, m.best), best_params, jnp.where(better, after.step, m.best_step),
                since, m.patience)
    done = stopped_early(m) & ~after.converged & ~after.diverged
    params = jax.tree.map(lambda b, p: jnp.where(done, b, p), m.best_params, after.params)
    return after._replace(params=params, monitor=m)


def _lead(a, like) -> jax.Array:
    """``a`` (its axes leading ``like``'s) with trailing axes to broadcast against ``like``."""
    a = jnp.asarray(a)
    return jnp.reshape(a, a.shape + (1,) * (jnp.ndim(like) - a.ndim))


def finalize(state: SolverState, final_value: jax.Array, final_g: jax.Array, hyper: Hyper):
    """The end-of-run rule (module docstring) from :func:`final_check`'s ``final_value`` and ``final_g``;
    a run stopped early that fails the test is ``stalled``. Returns the state and the mask of members
    diverged at the end; leading member axes broadcast; jittable."""
    end = ~state.diverged & (state.step > 0) & _is_bad(final_value, state.initial_loss)
    params = jax.tree.map(lambda fb, cur: jnp.where(_lead(end, cur), fb, cur), state.prev_params, state.params)
    diverged = state.diverged | end
    converged = ~diverged & (final_g <= _lead(hyper.tol, final_g))
    stalled = (state.converged | state.stalled) & ~converged & ~diverged
    state = state._replace(params=params, diverged=diverged, converged=converged, stalled=stalled,
                           optimality=final_g.astype(state.loss.dtype))
    return state, end


def init_state(params: Params, operand, hyper: Hyper, key: jax.Array, program: Program, seed=_seed_line_search
               ) -> SolverState:
    """The state before step 0, without weakly typed leaves (every chunk reuses one program); a line search
    that hands J and dJ on (:func:`reuses_line_search`) starts with them at ``params`` (``seed``: one evaluation)."""
    opt_state = optimizer(program, hyper).init(_coordinates(program, hyper)[0](params))
    opt_state = jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype), opt_state)
    train, val = _split(operand)
    evaluations = jnp.zeros((), jnp.int32)
    if reuses_line_search(program, opt_state):
        opt_state, evaluations = seed(params, opt_state, train, hyper, program)
    zero = jnp.zeros((), params.W.dtype)
    false = jnp.zeros((), bool)
    monitor = None if val is None else Monitor(
        jnp.full((program.validation,), jnp.nan, zero.dtype), jnp.full((), jnp.inf, zero.dtype), params,
        jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), jnp.asarray(program.patience, jnp.int32))
    return SolverState(params, params, opt_state, jnp.zeros((), jnp.int32), zero, zero, false, false, key, false,
                       jnp.full((), jnp.inf, params.W.dtype), evaluations, monitor)


def warm_start(previous: SolverState, previous_hyper: Hyper, operand, hyper: Hyper, key: jax.Array,
               program: Program) -> SolverState:
    """The state before step 0 at ``previous.params`` for ``hyper``'s penalty (:func:`init_state`) with the L-BFGS
    curvature pairs of ``previous``, a run of the same problem with penalty ``previous_hyper.l2``, carried over (a
    path of penalties). The penalty's Hessian is constant, so each pair ``(s, y)`` becomes exactly the new objective's:
    ``y + dl2 P s`` (``P`` the penalty's Hessian in the fit's coordinates: ``diag(1 / sigma^2)`` on W, 0 on b), its
    weight ``1 / (y^T s)`` again. The last pair is put back as the one the first update forms (optax's ``count``
    one lower, its last point ``theta_0 - s`` with gradient ``g_0 - y``), so the first step is a quasi-Newton step
    with its scale ``s^T y / y^T y``. Without L-BFGS state, or with fewer than one pair: the state as initialised.
    J and dJ at the start need no pass over X when ``previous`` converged: its line search left them at its params
    (:func:`update` makes no update once converged), and the penalty's change adds ``(dl2/2) ||W||^2`` and
    ``dl2 W`` exactly."""
    def seed(params, opt_state, train, hyper, program):
        if optax.tree.get(previous.opt_state, "value", None) is None:
            return _seed_line_search(params, opt_state, train, hyper, program)
        dl2 = hyper.l2 - previous_hyper.l2

        def carried():
            value = optax.tree.get(previous.opt_state, "value") + losses.l2_penalty(params, dl2)
            g = jax.tree.map(jnp.add, optax.tree.get(previous.opt_state, "grad"),
                             _coordinates(program, hyper)[2](gradients.l2_penalty(params, dl2)))
            return optax.tree.set(opt_state, value=value, grad=g), jnp.zeros((), jnp.int32)

        return jax.lax.cond(previous.converged, carried,
                            lambda: _seed_line_search(params, opt_state, train, hyper, program))

    fresh = init_state(previous.params, operand, hyper, key, program, seed)
    is_lbfgs = lambda x: isinstance(x, optax.ScaleByLBFGSState)  # noqa: E731
    old = [x for x in jax.tree.leaves(previous.opt_state, is_leaf=is_lbfgs) if is_lbfgs(x)]
    if not old or not reuses_line_search(program, fresh.opt_state):
        return fresh
    old = old[0]
    fit, model, gradient = _coordinates(program, hyper)
    added = lambda s: gradient(gradients.l2_penalty(model(s), hyper.l2 - previous_hyper.l2))  # noqa: E731
    ys = jax.tree.map(jnp.add, old.diff_updates_memory, jax.vmap(added)(old.diff_params_memory))
    sy = sum(jnp.sum((a * b).reshape(a.shape[0], -1), axis=1)
             for a, b in zip(jax.tree.leaves(ys), jax.tree.leaves(old.diff_params_memory)))
    weights = jnp.where((old.weights_memory != 0) & (sy > 0), 1 / jnp.where(sy > 0, sy, 1), 0).astype(
        old.weights_memory.dtype)
    memory = old.weights_memory.shape[0]
    last = (old.count - 2) % memory
    s_last, y_last = (jax.tree.map(lambda a: a[last], t) for t in (old.diff_params_memory, ys))
    theta, g = fit(fresh.params), optax.tree.get(fresh.opt_state, "grad")
    carried = old._replace(count=old.count - 1, params=jax.tree.map(jnp.subtract, theta, s_last),
                           updates=jax.tree.map(jnp.subtract, g, y_last), diff_updates_memory=ys,
                           weights_memory=weights)
    usable = (old.count >= 2) & (weights[last] > 0) & jnp.isfinite(weights[last])
    opt_state = jax.tree.map(lambda x: carried if is_lbfgs(x) else x, fresh.opt_state, is_leaf=is_lbfgs)
    return fresh._replace(opt_state=jax.tree.map(lambda a, b: jnp.where(usable, a, b), opt_state, fresh.opt_state))


def run_chunk(state: SolverState, operand, hyper: Hyper, limit: jax.Array, program: Program):
    """Up to ``limit`` (<= ``program.chunk_size``) steps in one ``lax.while_loop``: the state and
    the objective history (chunk_size,), NaN past the steps run."""
    history = jnp.full((program.chunk_size,), jnp.nan, state.loss.dtype)

    def cond(carry):
        i, st, _ = carry
        return (i < limit) & is_active(st, hyper)

    train, val = _split(operand)

    def body(carry):
        i, st, hist = carry
        new, value = update(st, train, hyper, program)
        new = new if val is None else watch(st, new, val, program)
        return i + 1, new, hist.at[i].set(value)

    _, state, history = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), state, history))
    return state, history


def final_check(state: SolverState, operand, hyper: Hyper, program: Program) -> tuple[jax.Array, jax.Array]:
    """The objective and the optimality ``G`` at the state's params, for :func:`finalize`."""
    value, g = value_and_grad(state.params, _split(operand)[0], hyper.l2, program)
    return value, optimality(value, g, hyper)


def _axis(role: str | None, level: Level):
    """The vmap axis at ``level`` of an argument of ``role``: a state carries every level's; None is shared."""
    return 0 if role == "state" else None if role is None else getattr(level, role)


def signature(args) -> tuple:
    """What a compiled program depends on besides its settings: the tree structure and each
    leaf's shape, dtype, weak type and multi-device sharding (ints and None as they are)."""
    leaves, tree = jax.tree.flatten(args, is_leaf=lambda x: x is None or isinstance(x, int))
    return tree, tuple(x if x is None or isinstance(x, int) else (
        tuple(x.shape), x.dtype, getattr(x, "weak_type", False), _multi_device(getattr(x, "sharding", None)))
        for x in leaves)


def _multi_device(sharding):
    """A sharding over several devices (part of a program's key), else None (cheap: called on every leaf)."""
    if sharding is None or isinstance(sharding, jax.sharding.SingleDeviceSharding):
        return None
    return sharding if len(sharding.device_set) > 1 else None


_EXECUTABLES: dict[tuple, Any] = {}


def _one_by_one(f: Callable, in_axes: tuple) -> Callable:
    """``jax.vmap(f, in_axes)``'s result computed member after member (``lax.map``), for line searches: vmapped,
    a line search's while loop runs every member as long as the slowest, and its branches both ways (measured:
    16 L-BFGS members 4-7x slower per member than one fit; one after another, each runs its own)."""
    none = lambda x: x is None  # noqa: E731

    def mapped(*args):
        split = [(jax.tree.map(lambda ax, a: a if ax == 0 else None, axes, arg, is_leaf=none),
                  jax.tree.map(lambda ax, a: None if ax == 0 else a, axes, arg, is_leaf=none))
                 for axes, arg in zip(in_axes, args)]

        def one(members):
            return f(*(jax.tree.map(lambda ax, m, sh: m if ax == 0 else sh, axes, m, sh, is_leaf=none)
                       for axes, m, (_, sh) in zip(in_axes, members, split)))

        return jax.lax.map(one, [m for m, _ in split])

    return mapped


def one_by_one(program: Program | None) -> bool:
    """Whether :func:`compiled` runs the members of ``program`` one after another (:func:`_one_by_one`): a line
    search's. A finished member then costs nothing, so compacting them (:class:`gradfit._driver.Compacting`) only
    compiles the program again for every batch size."""
    return isinstance(program, Program) and program.optimizer.name in _optim.LINE_SEARCH


def compiled(fn: Callable, roles: tuple, program: Program | None, levels: tuple[Level, ...], args: tuple):
    """``fn(*args, program)`` compiled ahead of time, ``vmap``-ed over ``levels`` (each argument
    mapped as its role says), and its compile time (0 from the cache). gradfit's one compile cache, keyed by
    function, settings, levels and :func:`signature`, never by hyperparameter values (on disk, JAX's, after
    :func:`gradfit.enable_compilation_cache`)."""
    key = (fn, roles, program, signature(levels), signature(args))
    if key in _EXECUTABLES:
        return _EXECUTABLES[key], 0.0
    f = fn if program is None else (lambda *a: fn(*a, program))
    mapped = one_by_one(program)
    for level in reversed(levels):
        axes = tuple(_axis(role, level) for role in roles)
        f = _one_by_one(f, axes) if mapped else jax.vmap(f, in_axes=axes)
    start = time.perf_counter()
    exe = jax.jit(f).lower(*args).compile(compiler_options=_precision.compiler_options(args))
    _EXECUTABLES[key] = exe
    return exe, time.perf_counter() - start
