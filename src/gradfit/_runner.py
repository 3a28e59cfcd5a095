"""A run as a user starts it: the driver with checkpoints, progress and callbacks, observing in that order."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from gradfit import checkpoint as checkpoints
from gradfit import progress as progress_bars
from gradfit._driver import Interrupted, Observer, RunResult, drive
from gradfit._options import Every
from gradfit._types import Hyper, SolverState


def run(stepper, state: SolverState, hyper: Hyper, *, chunk_steps: int, max_steps: int, members: int = 1,
        callback: Observer | None = None, progress: bool = False, desc: str = "fit",
        observers: Sequence[Observer] = (), checkpoint: Path | None = None, every: Every | None = None,
        resume: bool = False, fingerprint: dict[str, str] | None = None,
        meta: dict[str, Any] | None = None) -> tuple[RunResult, dict[str, Any]]:
    """Drive ``stepper`` from ``state``, or from ``checkpoint`` when ``resume`` and it exists (``fingerprint``
    checked; the front door has run :func:`gradfit.checkpoint.check_target`). Returns the run and the checkpoint's
    stats (empty without one)."""
    saver, history, start_step = None, None, 0
    if checkpoint is not None:
        if resume and checkpoint.exists():
            state, history, header = checkpoints.load(checkpoint, state, fingerprint)
            start_step = int(header["step"])
        saver = checkpoints.Checkpointer(checkpoint, hyper, fingerprint, every=every, meta=meta, start_step=start_step)
    bar = progress_bars.Progress(max_steps, members=members, desc=desc, initial=start_step) if progress else None
    try:
        result = drive(stepper, state, hyper, observers=[saver, bar, *observers, callback],
                       history=history, chunk_steps=chunk_steps)
    except Interrupted as stop:  # save where it stopped, whatever the interval: --resume continues from here
        stop.checkpoint = checkpoint
        try:
            if saver is not None:
                saver.save(stop.state, stop.history)
        except OSError as e:
            stop.checkpoint, stop.checkpoint_error = None, e
            stop.args = (f"{stop}; the checkpoint could not be saved ({e}): {checkpoint} keeps the last good one",)
        raise
    finally:
        if bar is not None:
            bar.close()
    if saver is None:
        return result, {}
    saver.save(result.state, result.history, complete=True, warn=True)
    error = {} if saver.error is None else {"checkpoint_error": str(saver.error)}
    return result, {"checkpoint": str(checkpoint), "resumed_from_step": start_step, "checkpoints": saver.count,
                    "checkpoint_seconds": saver.seconds, **error}
