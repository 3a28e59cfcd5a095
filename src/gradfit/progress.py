"""Progress bars for fits and sweeps: a ``callback(state, history)`` for the driver
(:func:`gradfit._driver.drive`), run between compiled chunks. A stopped member counts as done, so a bar ends when
every member has stopped. tqdm is optional (``pip install 'gradfit[progress]'``, :func:`available`); bars write to
stderr unless given another ``file``."""

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


def _steps_done(steps, active, budget) -> np.ndarray:
    """Each member's progress: its steps (at most ``budget``) while active, its whole budget once stopped."""
    return np.where(active, np.minimum(steps, budget), budget)


class _Bar:
    """A tqdm bar of ``total`` steps (``tqdm_kwargs`` passed on), closed on leaving a ``with`` block."""

    def __init__(self, total: int, desc: str, tqdm_kwargs: dict[str, Any]):
        try:
            from tqdm.auto import tqdm
        except ImportError:
            raise ImportError("progress bars need tqdm: "
                              "pip install 'gradfit[progress]' (or tqdm), or pass progress=False") from None
        self.bar = tqdm(total=total, desc=desc, **{"unit": "step", "dynamic_ncols": True, **tqdm_kwargs})

    def _show(self, n: int, text: str | None = None) -> None:
        """Move the bar to ``n`` and set its text."""
        if text is not None:
            self.bar.set_postfix_str(text, refresh=False)
        self.bar.update(n - self.bar.n)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Progress(_Bar):
    """One tqdm bar over ``members`` vmapped fits of at most ``max_steps`` steps each, at the members'
    mean progress; its text: the loss (one member), or the members running and the best finite loss. :meth:`callback`
    once per driven run, then :meth:`close` (or a ``with`` block); redrawn at most once per ``mininterval`` (0.1 s by
    default). Extra keyword arguments go to ``tqdm.tqdm``."""

    def __init__(self, max_steps: int, *, members: int = 1, desc: str = "fit", **tqdm_kwargs: Any):
        for name, value in (("max_steps", max_steps), ("members", members)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.max_steps, self.members = int(max_steps), int(members)
        self._done: list[int] = []  # each run's members' progress, summed, at its last reading
        self._pending: dict[int, Any] = {}  # run -> its newest state not read yet
        self._latest: Any = None  # the newest state of any run (for the text)
        self._shown = -math.inf  # when the bar was last brought up to date
        self.interval = float(tqdm_kwargs.get("mininterval", 0.1))
        super().__init__(self.max_steps, desc, tqdm_kwargs)

    def callback(self) -> Callable[[Any, np.ndarray], None]:
        """A ``callback(state, history)`` for one run; its members' progress adds to the bar."""
        run = len(self._done)
        self._done.append(0)

        def update(state, history) -> None:
            self._pending[run] = self._latest = state
            now = time.monotonic()
            if now - self._shown >= self.interval:
                self._refresh(now)

        return update

    def _active(self, state) -> np.ndarray:
        stopped = np.asarray(state.converged) | np.asarray(state.diverged) | np.asarray(state.stalled)
        return ~stopped & (np.asarray(state.step) < self.max_steps)

    def _refresh(self, now: float) -> None:
        """Read the pending states, move the bar and set its text."""
        for run, state in self._pending.items():
            self._done[run] = int(np.sum(_steps_done(np.asarray(state.step), self._active(state), self.max_steps)))
        self._pending.clear()
        text = None
        if (state := self._latest) is not None:
            loss = np.asarray(state.loss, np.float64)
            finite = loss[np.isfinite(loss)]
            best = f", best loss {finite.min():.6g}" if finite.size else ""
            text = (f"loss {float(loss.reshape(())):.6g}" if loss.size == 1
                    else f"{int(self._active(state).sum())}/{loss.size} running{best}")
        self._show(min(sum(self._done) // self.members, self.max_steps), text)
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
        super().close()


class MemberBar(_Bar):
    """One tqdm bar over the step budgets of a sweep's K members. ``update(members, steps, active)``
    after a chunk: the global indices of its members, their steps, and whether each still runs."""

    def __init__(self, budgets, *, desc: str = "sweep", **tqdm_kwargs: Any):
        self.budgets = np.asarray(budgets, np.int64)
        self.done = np.zeros_like(self.budgets)
        super().__init__(int(self.budgets.sum()), desc, tqdm_kwargs)

    def update(self, members, steps, active) -> None:
        members = np.asarray(members)
        self.done[members] = _steps_done(steps, active, self.budgets[members])
        running = int(np.count_nonzero(self.done < self.budgets))
        self._show(int(self.done.sum()), f"{running}/{len(self.budgets)} members running")

    def close(self) -> None:
        self._show(int(self.done.sum()))
        super().close()


def chain(*callbacks: Callable | None) -> Callable | None:
    """One ``callback(state, history)`` calling each given callback in order (None skipped)."""
    given = [c for c in callbacks if c is not None]
    if len(given) <= 1:
        return given[0] if given else None

    def call_all(state, history) -> None:
        for c in given:
            c(state, history)

    return call_all
