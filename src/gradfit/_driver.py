"""The one host driver: chunk after chunk until every member has stopped.

A *stepper* runs one chunk of a fit and evaluates the objective at given params:

- :class:`CompiledStepper`: up to ``chunk_size`` steps of :func:`gradfit._engine.run_chunk`
  in one compiled program, over data in memory (or their sufficient statistics);
- :class:`Compacting`: the same over a sweep group's K members, running only the members still
  active, gathered into a batch of a power-of-two size (a scheduling policy, not a loop);
- the streamed steppers of :mod:`gradfit.stream`: one streamed pass (a full-batch step) or one
  streamed epoch per chunk.

:func:`drive` runs a stepper to the end. Between chunks, and never inside one, it keeps the
objective history and the timings and calls the observers ``observer(state, history)``
(progress bars, checkpoints, user callbacks). At the end it applies the end-of-run rule,
:func:`gradfit._engine.finalize`, the same for every entry point.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gradfit import _engine
from gradfit._types import Hyper, Level, Program, SolverState

Observer = Callable[[SolverState, np.ndarray], None]


class RunResult(NamedTuple):
    """What :func:`drive` returns (arrays carry the vmap levels' leading axes)."""

    state: SolverState
    final_loss: Any  # the objective at state.params
    history: np.ndarray  # (*levels, steps_run), NaN past each member's steps
    compile_seconds: float  # everything the stepper compiled, its init included
    run_seconds: float  # wall time of the run, less the compiles inside it
    chunks: int
    diverged_at_end: np.ndarray  # (*levels) bool: the objective after the last update was bad
    finished_seconds: np.ndarray  # (*levels) run time until the chunk after which each member stopped


def active_host(state: SolverState, hyper: Hyper) -> np.ndarray:
    """:func:`gradfit._engine.is_active` on the host, for every member at once."""
    step = np.asarray(state.step)
    max_steps = np.asarray(hyper.max_steps)
    max_steps = max_steps.reshape(max_steps.shape + (1,) * (step.ndim - max_steps.ndim))
    return ~np.asarray(state.converged) & ~np.asarray(state.diverged) & (step < max_steps)


class History:
    """The objective history of a run, grown in place (amortised doubling along the step axis)
    so that handing the history so far to an observer at every chunk costs no copy."""

    def __init__(self, prefix: np.ndarray | None = None):
        self.buffer: np.ndarray | None = None
        self.size = 0
        if prefix is not None:
            self.append(np.asarray(prefix))

    def append(self, chunk: np.ndarray) -> None:
        need = self.size + chunk.shape[-1]
        if self.buffer is None or need > self.buffer.shape[-1]:
            capacity = max(need, 2 * (0 if self.buffer is None else self.buffer.shape[-1]))
            grown = np.empty(chunk.shape[:-1] + (capacity,), chunk.dtype)
            if self.buffer is not None:
                grown[..., : self.size] = self.buffer[..., : self.size]
            self.buffer = grown
        self.buffer[..., self.size : need] = chunk
        self.size = need

    def view(self) -> np.ndarray:
        """The history so far, (*levels, steps): a view that later appends never change."""
        return self.buffer[..., : self.size]


class CompiledStepper:
    """Chunks of :func:`gradfit._engine.run_chunk` over one operand (data in memory, or their
    statistics), compiled once per shape and ``vmap``-ed over ``levels``."""

    def __init__(self, operand, hyper: Hyper, program: Program, levels: tuple[Level, ...] = ()):
        self.operand, self.hyper, self.program, self.levels = operand, hyper, program, levels
        self.compile_seconds = 0.0
        self.programs = 0

    def _compiled(self, fn, roles, args):
        exe, seconds = _engine.compiled(fn, roles, self.program, self.levels, args)
        self.compile_seconds += seconds
        self.programs += seconds > 0
        return exe

    def init(self, params, key) -> SolverState:
        args = (params, self.hyper, key)
        return self._compiled(_engine.init_state, ("params", "hyper", "key"), args)(*args)

    def chunk(self, state: SolverState, limit: int, hyper: Hyper | None = None):
        args = (state, self.operand, self.hyper if hyper is None else hyper, jnp.asarray(limit, jnp.int32))
        state, history = self._compiled(_engine.run_chunk, ("state", "data", "hyper", None), args)(*args)
        return state, np.asarray(history)[..., :limit]

    def evaluate(self, state: SolverState):
        args = (state, self.operand, self.hyper)
        return self._compiled(_engine.final_objective, ("state", "data", "hyper"), args)(*args)


def _take(tree, idx):
    return jax.tree.map(lambda a: a[idx], tree)


def _put(tree, part, idx):
    return jax.tree.map(lambda a, b: a.at[idx].set(b), tree, part)


def bucket(count: int, largest: int) -> int:
    """The smallest batch of members >= count: a power of two below ``largest``, or ``largest``."""
    size = 1 << max(0, (count - 1).bit_length())
    return size if size < largest else largest


class Compacting:
    """Run a :class:`CompiledStepper` over K members (its first level) on the still-active
    members only: between chunks they are gathered into a batch whose size is a power of two
    (at most ``log2(K) + 1`` chunk programs) and scattered back. Finished members are frozen
    by the loop's masking, so gathering them or not gives the same bits."""

    def __init__(self, stepper: CompiledStepper, hyper_axes: Hyper):
        self.stepper = stepper
        self.hyper_axes = hyper_axes
        self.batch_sizes: list[int] = []
        self.compile_seconds = 0.0

    def _mover(self, fn, args):
        exe, seconds = _engine.compiled(fn, (), None, (), args)
        self.compile_seconds += seconds
        return exe(*args)

    def chunk(self, state: SolverState, limit: int):
        hyper = self.stepper.hyper
        K = state.step.shape[0]
        active = active_host(state, hyper).reshape(K, -1).any(axis=1)
        size = bucket(int(active.sum()), K)
        self.batch_sizes.append(size)
        if size == K:
            return self.stepper.chunk(state, limit)
        idx = np.concatenate([np.flatnonzero(active), np.flatnonzero(~active)])[:size]
        rows = jnp.asarray(idx)
        mapped = jax.tree.map(lambda a, ax: a if ax == 0 else None, hyper, self.hyper_axes, is_leaf=lambda x: x is None)
        taken = self._mover(_take, (mapped, rows))
        sub_hyper = jax.tree.map(lambda t, a: a if t is None else t, taken, hyper, is_leaf=lambda x: x is None)
        part, history = self.stepper.chunk(self._mover(_take, (state, rows)), limit, sub_hyper)
        full = np.full((K, *history.shape[1:]), np.nan, history.dtype)
        full[idx] = history
        return self._mover(_put, (state, part, rows)), full

    def evaluate(self, state: SolverState):
        return self.stepper.evaluate(state)


def drive(stepper, state: SolverState, hyper: Hyper, *, observers: Sequence[Observer | None] = (),
          history: np.ndarray | None = None, chunk_steps: int) -> RunResult:
    """Run ``stepper`` chunk after chunk from ``state`` until every member has stopped, then
    apply the end-of-run rule.

    ``observers`` are called as ``observer(state, history_so_far)`` after every chunk, in
    order. ``history`` (*levels, steps_so_far) continues an earlier run (a checkpoint); each
    chunk runs at most ``chunk_steps`` steps.
    """
    observers = [o for o in observers if o is not None]
    histories = History(history)
    finished = np.full(np.shape(state.step), np.nan)
    compile_before = _compile_seconds(stepper)
    chunks = 0
    start = time.perf_counter()
    active = active_host(state, hyper)
    while active.any():
        state, chunk_history = stepper.chunk(state, chunk_steps)
        chunks += 1
        histories.append(chunk_history)
        active = active_host(state, hyper)
        elapsed = time.perf_counter() - start - (_compile_seconds(stepper) - compile_before)
        finished[~active & np.isnan(finished)] = elapsed
        for observer in observers:
            observer(state, histories.view())
    final = stepper.evaluate(state)
    state, end = _engine.finalize(state, final)
    end = np.asarray(end)
    if end.any():  # the fallen-back members' objective at their params
        final = stepper.evaluate(state)
    jax.block_until_ready(final)
    run_seconds = time.perf_counter() - start - (_compile_seconds(stepper) - compile_before)
    steps_run = int(np.max(np.asarray(state.step), initial=0))
    out = histories.view()[..., :steps_run].copy() if histories.buffer is not None else np.zeros(np.shape(state.step) + (0,))
    return RunResult(state, final, out, _compile_seconds(stepper), run_seconds, chunks, end,
                     np.where(np.isnan(finished), run_seconds, finished))


def _compile_seconds(stepper) -> float:
    inner = getattr(stepper, "stepper", None)
    return stepper.compile_seconds + (0.0 if inner is None else inner.compile_seconds)
