"""Overhead of the progress bar and of checkpoints on a fit's run time (compile excluded).

    python scripts/bench_progress.py [--repeats 7] [--json out.json] 2>/dev/null

For each problem, fits run with nothing, with ``progress=True``, and with a checkpoint at
every chunk boundary, interleaved so that machine noise hits all three alike; the table
shows median ``stats["run_seconds"]`` and the overhead against the plain fit. Because a
shared machine makes small differences noisy, the time spent inside the bar's callback
during a fit is also measured (``bar us/chunk``, and ``= share`` of that fit's run time). The bar
writes to stderr (send it to /dev/null to time the bar, not the terminal). Compilation is
cached after the first fit, so no case pays for it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import jax

import gradfit
from gradfit import datasets

# (name, rows, features, steps, chunk_size): the worst case (a tiny problem whose chunks
# take about a millisecond, so each boundary's host work weighs most) and a typical one.
CASES = [
    ("tiny m=1k n=8 chunk=32", 1_000, 8, 8_000, 32),
    ("tiny m=1k n=8 chunk=256", 1_000, 8, 16_000, 256),
    ("m=100k n=32 chunk=256", 100_000, 32, 1_000, 256),
]


def time_in_bar(fit_kwargs: dict, X, y) -> tuple[float, float, int]:
    """(seconds spent inside the bar's callback, run seconds, chunks) for one fit with a bar:
    the bar's own share of a run, measured inside it and so free of machine noise."""
    import os

    from gradfit import progress

    spent = [0.0, 0]
    with open(os.devnull, "w") as sink, progress.Progress(fit_kwargs["steps"], file=sink) as bar:
        cb = bar.callback()

        def timed(state, history):
            start = time.perf_counter()
            cb(state, history)
            spent[0] += time.perf_counter() - start
            spent[1] += 1

        run_seconds = gradfit.fit(X, y, **fit_kwargs, callback=timed).stats["run_seconds"]
    return spent[0], run_seconds, spent[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    rows = []
    print(f"backend {jax.default_backend()}, {args.repeats} repeats, median run seconds")
    print(f"{'problem':<26} {'plain':>9} {'progress':>9} {'overhead':>9} {'bar us/chunk':>13} {'= share':>8} "
          f"{'ckpt/chunk':>11} {'overhead':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, m, n, steps, chunk in CASES:
            d = datasets.make_regression(m, n, seed=0)
            kw = dict(learning_rate=0.01, steps=steps, chunk_size=chunk)
            ckpt = Path(tmp) / "c.npz"
            variants = {
                "plain": {},
                "progress": {"progress": True},
                "checkpoint": {"checkpoint": ckpt, "checkpoint_every": chunk},
            }
            for extra in variants.values():  # compile and warm up
                gradfit.fit(d.X, d.y, **kw, **extra)
            times: dict[str, list[float]] = {v: [] for v in variants}
            for _ in range(args.repeats):
                for v, extra in variants.items():
                    times[v].append(gradfit.fit(d.X, d.y, **kw, **extra).stats["run_seconds"])
            med = {v: statistics.median(t) for v, t in times.items()}
            over = {v: med[v] / med["plain"] - 1 for v in ("progress", "checkpoint")}
            in_bar, run_seconds, chunks = min((time_in_bar(kw, d.X, d.y) for _ in range(3)), key=lambda t: t[0])
            per_call = in_bar / chunks
            share = in_bar / run_seconds
            print(f"{name:<26} {med['plain']:>9.4f} {med['progress']:>9.4f} {over['progress']:>+9.1%} "
                  f"{1e6 * per_call:>13.1f} {share:>8.2%} {med['checkpoint']:>11.4f} {over['checkpoint']:>+9.1%}")
            rows.append({"problem": name, "rows": m, "features": n, "steps": steps, "chunk_size": chunk,
                         "chunks": -(-steps // chunk), "median_run_seconds": med, "overhead": over,
                         "bar_seconds_per_chunk": per_call, "bar_share_of_run": share,
                         "run_seconds": times})
    if args.json:
        Path(args.json).write_text(json.dumps({"backend": jax.default_backend(), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
