"""The one host driver: chunk after chunk until every member has stopped.

A *stepper* runs one chunk of a fit and evaluates the objective and its optimality at given params:

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

import contextlib
import signal
import sys
import threading
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
    stopped = np.asarray(state.converged) | np.asarray(state.diverged) | np.asarray(state.stalled)
    return ~stopped & (step < max_steps)


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
    statistics), compiled once per shape and ``vmap``-ed over ``levels``.

    ``check``: ``(operand, program, levels)`` of the final evaluation when it must read other
    data than the steps (the statistics plan checks the returned params on the data themselves).
    """

    def __init__(self, operand, hyper: Hyper, program: Program, levels: tuple[Level, ...] = (), check=None):
        self.operand, self.hyper, self.program, self.levels = operand, hyper, program, levels
        self.check = (operand, program, levels) if check is None else check
        self.compile_seconds = 0.0
        self.programs = 0

    def _compiled(self, fn, roles, args, program=None, levels=None):
        program, levels = program or self.program, self.levels if levels is None else levels
        exe, seconds = _engine.compiled(fn, roles, program, levels, args)
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

    def evaluate(self, state: SolverState, hyper: Hyper | None = None):
        """The objective and the optimality at the state's params (:func:`gradfit._engine.final_check`)."""
        operand, program, levels = self.check
        args = (state, operand, self.hyper if hyper is None else hyper)
        value, optimality = self._compiled(_engine.final_check, ("state", "data", "hyper"), args, program, levels)(*args)
        if operand is self.operand and program.batch_size is None:  # stopped members sit where the loop evaluated
            stopped = state.converged | state.stalled
            value, optimality = jnp.where(stopped, state.loss, value), jnp.where(stopped, state.optimality, optimality)
        return value, optimality


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


CHUNK_SECONDS = 1.0  # a chunk's wall time: an interrupt is answered within about this long


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM at a chunk boundary: ``signum``, and the ``state`` and
    ``history`` it stopped at (a checkpoint of them resumes to the same bits)."""

    def __init__(self, signum: int, state: SolverState, history: np.ndarray):
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {int(np.max(state.step))}")
        self.signum, self.state, self.history = signum, state, history


_CAUGHT: list[list[int]] = []  # the signals caught while runs are driven (the innermost run's last)


def interrupt_requested() -> bool:
    """Whether the run being driven was asked to stop (a stepper may give up its chunk early)."""
    return bool(_CAUGHT and _CAUGHT[-1])


class StopChunk(Exception):
    """Raised by a stepper that gave up its chunk to answer an interrupt (its state unchanged)."""


@contextlib.contextmanager
def _interruptible():
    """While a run is driven from the main thread, SIGINT and SIGTERM ask it to stop at the next
    chunk boundary (said at once on stderr); a second SIGINT stops it at once. Restored after."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def ask(signum, frame):
        if caught and signum == signal.SIGINT:
            raise KeyboardInterrupt
        caught.append(signum)
        print(f"gradfit: {signal.Signals(signum).name}: stopping at the end of this chunk (press Ctrl-C again "
              "to stop at once)", file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, ask) for s in (signal.SIGINT, signal.SIGTERM)}
    _CAUGHT.append(caught)
    try:
        yield caught
    finally:
        _CAUGHT.pop()
        for s, handler in previous.items():
            signal.signal(s, handler)


def drive(stepper, state: SolverState, hyper: Hyper, *, observers: Sequence[Observer | None] = (),
          history: np.ndarray | None = None, chunk_steps: int) -> RunResult:
    """Run ``stepper`` chunk after chunk from ``state`` until every member has stopped, then
    apply the end-of-run rule.

    ``observers`` are called as ``observer(state, history_so_far)`` after every chunk, in
    order. ``history`` (*levels, steps_so_far) continues an earlier run (a checkpoint). A chunk
    runs at most ``chunk_steps`` steps (chosen to last about :data:`CHUNK_SECONDS`,
    :func:`gradfit._plan.chunk_steps`), fewer once a chunk took over twice that (the same compiled
    program: the result has the same bits). SIGINT or SIGTERM raise :class:`Interrupted` at the
    next chunk boundary, after the observers.
    """
    observers = [o for o in observers if o is not None]
    histories = History(history)
    finished = np.full(np.shape(state.step), np.nan)
    compile_before = _compile_seconds(stepper)
    chunks, limit = 0, chunk_steps
    start = time.perf_counter()
    active = active_host(state, hyper)
    with _interruptible() as caught:
        while active.any():
            began, compiled = time.perf_counter(), _compile_seconds(stepper)
            try:
                state, chunk_history = stepper.chunk(state, limit)
            except StopChunk:  # the stepper gave the chunk up: stop at the state before it
                steps = int(np.max(np.asarray(state.step)))
                raise Interrupted(caught[0], state, histories.view()[..., :steps].copy()) from None
            chunks += 1
            histories.append(chunk_history)
            active = active_host(state, hyper)
            elapsed = time.perf_counter() - start - (_compile_seconds(stepper) - compile_before)
            finished[~active & np.isnan(finished)] = elapsed
            for observer in observers:
                observer(state, histories.view())
            if caught:
                steps = int(np.max(np.asarray(state.step)))
                raise Interrupted(caught[0], state, histories.view()[..., :steps].copy())
            took = time.perf_counter() - began - (_compile_seconds(stepper) - compiled)
            if took > 2 * CHUNK_SECONDS:  # steps slower than the chunk size promised: shorter chunks
                limit = max(1, int(limit * CHUNK_SECONDS / took))
    final, optimality = stepper.evaluate(state)
    state, end = _engine.finalize(state, final, optimality, hyper)
    end = np.asarray(end)
    if end.any():  # the fallen-back members' objective at their params
        final, optimality = stepper.evaluate(state)
        state = state._replace(optimality=optimality)
    jax.block_until_ready(final)
    run_seconds = time.perf_counter() - start - (_compile_seconds(stepper) - compile_before)
    steps_run = int(np.max(np.asarray(state.step), initial=0))
    out = histories.view()[..., :steps_run].copy() if histories.buffer is not None else np.zeros(np.shape(state.step) + (0,))
    return RunResult(state, final, out, _compile_seconds(stepper), run_seconds, chunks, end,
                     np.where(np.isnan(finished), run_seconds, finished))


def _compile_seconds(stepper) -> float:
    inner = getattr(stepper, "stepper", None)
    return stepper.compile_seconds + (0.0 if inner is None else inner.compile_seconds)
