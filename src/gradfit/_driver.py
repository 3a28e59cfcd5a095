"""The one host driver, :func:`drive`: a *stepper* runs chunks and evaluates the objective; observers run between.
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

from gradfit import _engine, _stats
from gradfit._types import Hyper, Level, Program, SolverState, Validated

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
    if state.monitor is not None:  # early stopping
        stopped = stopped | _engine.stopped_early(jax.tree.map(np.asarray, state.monitor))
    return ~stopped & (step < max_steps)


class History:
    """The objective history (*levels, steps), grown in place by doubling: views of it cost no copy."""

    def __init__(self, levels: tuple[int, ...], prefix: np.ndarray | None = None):
        self.buffer, self.size = np.zeros(levels + (0,)), 0
        if prefix is not None:
            self.append(np.asarray(prefix))

    def append(self, chunk: np.ndarray) -> None:
        need = self.size + chunk.shape[-1]
        if need > self.buffer.shape[-1]:
            grown = np.empty(chunk.shape[:-1] + (max(need, 2 * self.buffer.shape[-1]),), chunk.dtype)
            grown[..., : self.size] = self.buffer[..., : self.size]
            self.buffer = grown
        self.buffer[..., self.size : need] = chunk
        self.size = need

    def view(self) -> np.ndarray:
        """The history so far, (*levels, steps): a view that later appends never change."""
        return self.buffer[..., : self.size]


class CompiledStepper:
    """:func:`gradfit._engine.run_chunk` vmapped over ``levels``; ``check``: (operand, program, levels) to evaluate."""

    def __init__(self, operand, hyper: Hyper, program: Program, levels: tuple[Level, ...] = (), check=None):
        self.operand, self.hyper, self.program, self.levels = operand, hyper, program, levels
        own = check is None or carries_gradient(operand)
        self.check = (operand, program, levels) if own else check
        self.compile_seconds, self.programs = 0.0, 0

    def _compiled(self, fn, roles, args, program=None, levels=None):
        program, levels = program or self.program, self.levels if levels is None else levels
        exe, seconds = _engine.compiled(fn, roles, program, levels, args)
        self.compile_seconds += seconds
        self.programs += seconds > 0
        return exe

    def init(self, params, key) -> SolverState:
        args = (params, self.operand, self.hyper, key)
        return self._compiled(_engine.init_state, ("params", "data", "hyper", "key"), args)(*args)

    def warm(self, previous: SolverState, previous_hyper: Hyper, key) -> SolverState:
        """The state before step 0 at ``previous``'s params, with its L-BFGS curvature pairs corrected for this
        stepper's penalty (:func:`gradfit._engine.warm_start`)."""
        args = (previous, previous_hyper, self.operand, self.hyper, key)
        return self._compiled(_engine.warm_start, ("state", "hyper", "data", "hyper", "key"), args)(*args)

    def chunk(self, state: SolverState, limit: int, hyper: Hyper | None = None):
        args = (state, self.operand, self.hyper if hyper is None else hyper, jnp.asarray(limit, jnp.int32))
        state, history = self._compiled(_engine.run_chunk, ("state", "data", "hyper", None), args)(*args)
        return state, np.asarray(history)[..., :limit]

    def evaluate(self, state: SolverState, hyper: Hyper | None = None):
        """The objective and the optimality at the state's params (:func:`gradfit._engine.final_check`)."""
        operand, program, levels = self.check
        at_loop_point = operand is self.operand and program.batch_size is None
        if at_loop_point and bool(np.all(np.asarray(state.converged) | np.asarray(state.stalled))):
            return state.loss, state.optimality  # every member stopped where the loop evaluated: no pass over X
        args = (state, operand, self.hyper if hyper is None else hyper)
        exe = self._compiled(_engine.final_check, ("state", "data", "hyper"), args, program, levels)
        value, optimality = exe(*args)
        if at_loop_point:  # stopped members sit where the loop evaluated
            value, optimality = _where_stopped(state, value, optimality)
        return value, optimality


def carries_gradient(operand) -> bool:
    """Statistics of full rank with the rows' slope at their solution (:func:`gradfit._stats.exact_rank`) give
    the data's objective and gradient: a run on them is checked on them, with no pass over X."""
    train = operand.train if isinstance(operand, Validated) else operand
    return isinstance(train, _stats.Stats) and _stats.exact_rank(train)


@jax.jit
def _where_stopped(state: SolverState, value, optimality):
    stopped = state.converged | state.stalled
    return jnp.where(stopped, state.loss, value), jnp.where(stopped, state.optimality, optimality)


def bucket(count: int, largest: int) -> int:
    """The smallest batch of members >= count: a power of two below ``largest``, or ``largest``."""
    size = 1 << max(0, (count - 1).bit_length())
    return size if size < largest else largest


class Compacting:
    """A :class:`CompiledStepper` over K members run on the active ones only, gathered into a :func:`bucket`."""

    def __init__(self, stepper: CompiledStepper, hyper_axes: Hyper):
        self.stepper, self.hyper_axes = stepper, hyper_axes
        self.batch_sizes: list[int] = []
        self.compile_seconds = 0.0

    @staticmethod
    def _take(tree, idx):
        return jax.tree.map(lambda a: a[idx], tree)

    @staticmethod
    def _put(tree, part, idx):
        return jax.tree.map(lambda a, b: a.at[idx].set(b), tree, part)

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
        taken = self._mover(self._take, (mapped, rows))
        sub_hyper = jax.tree.map(lambda t, a: a if t is None else t, taken, hyper, is_leaf=lambda x: x is None)
        part, history = self.stepper.chunk(self._mover(self._take, (state, rows)), limit, sub_hyper)
        full = np.full((K, *history.shape[1:]), np.nan, history.dtype)
        full[idx] = history
        return self._mover(self._put, (state, part, rows)), full

    def evaluate(self, state: SolverState):
        return self.stepper.evaluate(state)


CHUNK_SECONDS = 1.0  # a chunk's wall time: an interrupt is answered within about this long


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM at a chunk boundary: ``signum``, ``state`` and ``history`` (to its step)."""

    def __init__(self, signum: int, state: SolverState, history: np.ndarray):
        step = int(np.max(np.asarray(state.step)))
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}")
        self.signum, self.state, self.history = signum, state, history[..., :step].copy()


_CAUGHT: list[list[int]] = []  # the signals caught while runs are driven (the innermost run's last)


def interrupt_requested() -> bool:
    """Whether the run being driven was asked to stop (a stepper may give up its chunk early)."""
    return bool(_CAUGHT and _CAUGHT[-1])


class StopChunk(Exception):
    """Raised by a stepper that gave up its chunk to answer an interrupt (its state unchanged)."""


@contextlib.contextmanager
def _interruptible():
    """In the main thread, SIGINT and SIGTERM stop the run at the next chunk boundary; a second SIGINT at once."""
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
    """Run ``stepper`` from ``state`` (and ``history``) until every member has stopped, then the end-of-run rule,
    calling ``observer(state, history_so_far)`` after every chunk of at most ``chunk_steps`` steps (fewer once one
    took over twice :data:`CHUNK_SECONDS`). SIGINT or SIGTERM raise :class:`Interrupted` at a chunk boundary."""
    observers = [o for o in observers if o is not None]
    histories = History(np.shape(state.step), history)
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
                raise Interrupted(caught[0], state, histories.view()) from None
            chunks += 1
            histories.append(chunk_history)
            active = active_host(state, hyper)
            elapsed = time.perf_counter() - start - (_compile_seconds(stepper) - compile_before)
            finished[~active & np.isnan(finished)] = elapsed
            for observer in observers:
                observer(state, histories.view())
            if caught:
                raise Interrupted(caught[0], state, histories.view())
            took = time.perf_counter() - began - (_compile_seconds(stepper) - compiled)
            if took > 2 * CHUNK_SECONDS:  # steps slower than the chunk size promised: shorter chunks
                limit = max(1, int(limit * CHUNK_SECONDS / took))
    final, optimality = stepper.evaluate(state)
    if final is state.loss and np.all(np.asarray(state.converged)):
        # every member converged where the loop evaluated, which is where it stands: the end-of-run rule would
        # return the state as it is (the same value, the same G, already tested against tol): no program to run
        end = np.zeros(np.shape(state.step), bool)
    else:
        state, end = _finalize(state, final, optimality, hyper)
        end = np.asarray(end)
    if end.any():  # the fallen-back members' objective at their params
        final, optimality = stepper.evaluate(state)
        state = state._replace(optimality=optimality)
    jax.block_until_ready(final)
    run_seconds = time.perf_counter() - start - (_compile_seconds(stepper) - compile_before)
    steps_run = int(np.max(np.asarray(state.step), initial=0))
    return RunResult(state, final, histories.view()[..., :steps_run].copy(), _compile_seconds(stepper), run_seconds,
                     chunks, end, np.where(np.isnan(finished), run_seconds, finished))


_finalize = jax.jit(_engine.finalize)  # one small program, not a dozen eager operations


def _compile_seconds(stepper) -> float:
    return stepper.compile_seconds + getattr(getattr(stepper, "stepper", None), "compile_seconds", 0.0)
