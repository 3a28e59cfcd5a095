"""A progress bar for fits and sweeps, updated between compiled chunks (never inside one).

The compiled loop hands control back to Python only at chunk boundaries, so a bar is a
``callback(state, history)`` for the driver (:func:`gradfit._driver.drive`). One :class:`Progress` bar can
follow several runs (the groups of a sweep): each run gets its own callback from
:meth:`Progress.callback`, and the bar shows the mean progress of every member::

    members' progress  p_j = steps_j if member j is still running else max_steps
    bar position       n   = floor(sum_j p_j / members)       (0 <= n <= max_steps)

so a member that converged or diverged early counts as done, and the bar reaches
``max_steps`` exactly when every member has stopped. The bar's text shows the loss (one
member) or how many members are still running and the best finite loss (a sweep).

tqdm is an optional dependency (``pip install 'gradfit[progress]'``); :func:`available`
says whether it is installed. The bar writes to stderr unless given another ``file``.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np


def available() -> bool:
    """True when tqdm, which draws the bar, is installed."""
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


class Progress:
    """One tqdm bar over ``members`` vmapped fits of at most ``max_steps`` steps each.

    Use :meth:`callback` once per driven run (several runs' members may share one bar;
    together they must hold ``members`` members), and :meth:`close` at the end, or use the
    bar as a context manager. Extra keyword arguments go to ``tqdm.tqdm`` (e.g. ``file``,
    ``mininterval``, ``disable``).

    A chunk boundary only keeps a reference to the state (well under a microsecond); the
    states are read and the bar redrawn at most once per ``mininterval`` (tqdm's, 0.1 s by
    default) and at :meth:`close`, so the bar's cost does not grow with the number of chunks.

    Raises:
      ImportError: tqdm is not installed (the message says how to install it).
      ValueError: ``max_steps`` or ``members`` is not a positive integer.
    """

    def __init__(self, max_steps: int, *, members: int = 1, desc: str = "fit", **tqdm_kwargs: Any):
        for name, value in (("max_steps", max_steps), ("members", members)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        try:
            from tqdm.auto import tqdm
        except ImportError:
            raise ImportError(
                "progress bars need tqdm: pip install 'gradfit[progress]' (or tqdm), or pass progress=False"
            ) from None
        self.max_steps = int(max_steps)
        self.members = int(members)
        self._done = 0  # sum over members of p_j, across every run
        self._last: list[int] = []  # each run's share of _done at its last reading
        self._pending: dict[int, Any] = {}  # run -> its newest state not read yet
        self._latest: Any = None  # the newest state of any run (for the text)
        self._shown = -math.inf  # when the bar was last brought up to date
        tqdm_kwargs.setdefault("unit", "step")
        tqdm_kwargs.setdefault("dynamic_ncols", True)
        self.interval = float(tqdm_kwargs.get("mininterval", 0.1))
        self.bar = tqdm(total=self.max_steps, desc=desc, **tqdm_kwargs)

    def callback(self) -> Callable[[Any, np.ndarray], None]:
        """A ``callback(state, history)`` for one run; its members' progress adds to the bar."""
        run = len(self._last)
        self._last.append(0)

        def update(state, history) -> None:
            self._pending[run] = self._latest = state
            now = time.monotonic()
            if now - self._shown >= self.interval:
                self._refresh(now)

        return update

    def _refresh(self, now: float) -> None:
        """Read the pending states, move the bar and set its text."""
        for run, state in self._pending.items():
            step = np.asarray(state.step)
            active = ~np.asarray(state.converged) & ~np.asarray(state.diverged) & (step < self.max_steps)
            done = int(np.sum(np.where(active, np.minimum(step, self.max_steps), self.max_steps)))
            self._done += done - self._last[run]
            self._last[run] = done
        self._pending.clear()
        state = self._latest
        if state is not None:
            loss = np.asarray(state.loss, np.float64)
            if loss.size == 1:
                self.bar.set_postfix_str(f"loss {float(loss.reshape(())):.6g}", refresh=False)
            else:
                active = ~np.asarray(state.converged) & ~np.asarray(state.diverged) & (np.asarray(state.step) < self.max_steps)
                finite = loss[np.isfinite(loss)]
                best = f", best loss {finite.min():.6g}" if finite.size else ""
                self.bar.set_postfix_str(f"{int(active.sum())}/{loss.size} running{best}", refresh=False)
        self.bar.update(min(self._done // self.members, self.max_steps) - self.bar.n)
        self._shown = now

    def __call__(self, state, history) -> None:
        """The callback of a single run (shorthand for ``progress.callback()`` made once)."""
        if not hasattr(self, "_single"):
            self._single = self.callback()
        self._single(state, history)

    def close(self) -> None:
        """Bring the bar up to date with the last states and close it."""
        if self._pending:
            self._refresh(time.monotonic())
        self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MemberBar:
    """One tqdm bar over the step budgets of a sweep's K members, however they are batched.

    ``update(members, steps, active)`` after a chunk: ``members`` the global indices of the
    members that chunk ran, ``steps`` their steps so far, ``active`` whether each still runs;
    a stopped member (converged, diverged or at its budget) counts its whole budget.
    """

    def __init__(self, budgets, *, desc: str = "sweep", **tqdm_kwargs: Any):
        try:
            from tqdm.auto import tqdm
        except ImportError:
            raise ImportError(
                "progress bars need tqdm: pip install 'gradfit[progress]' (or tqdm), or pass progress=False"
            ) from None
        self.budgets = np.asarray(budgets, np.int64)
        self.done = np.zeros_like(self.budgets)
        tqdm_kwargs.setdefault("unit", "step")
        tqdm_kwargs.setdefault("dynamic_ncols", True)
        self.bar = tqdm(total=int(self.budgets.sum()), desc=desc, **tqdm_kwargs)

    def update(self, members, steps, active) -> None:
        members = np.asarray(members)
        budget = self.budgets[members]
        self.done[members] = np.where(active, np.minimum(steps, budget), budget)
        running = int(np.count_nonzero(self.done < self.budgets))
        self.bar.set_postfix_str(f"{running}/{len(self.budgets)} members running", refresh=False)
        self.bar.update(int(self.done.sum()) - self.bar.n)

    def close(self) -> None:
        self.bar.update(int(self.done.sum()) - self.bar.n)
        self.bar.close()

    def __enter__(self) -> "MemberBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def chain(*callbacks: Callable | None) -> Callable | None:
    """One ``callback(state, history)`` calling each given callback in order (None skipped)."""
    given = [c for c in callbacks if c is not None]
    if not given:
        return None
    if len(given) == 1:
        return given[0]

    def call_all(state, history) -> None:
        for c in given:
            c(state, history)

    return call_all

