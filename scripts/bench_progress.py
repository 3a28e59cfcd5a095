"""Overhead of the progress bar and of checkpoints on a fit's run time (compile excluded).

    python scripts/bench_progress.py [--repeats 7] [--json out.json] 2>/dev/null

For each problem, fits run with nothing, with ``progress=True``, and with a checkpoint at
every chunk boundary, interleaved so that machine noise hits all three alike; the table
shows median ``stats["run_seconds"]`` and the overhead against the plain fit. Because a
shared machine makes small differences noisy, the time spent inside the bar's callback
during a fit is also measured (``in bar ms``, and its ``share`` of that fit's run time; the
least of 3 fits). A chunk boundary only stores the state; the bar reads it and redraws at
most every 0.1 s (about a millisecond each), so the share is largest for the shortest fits. The bar
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

# (name, rows, features, steps, chunk_size): tiny problems whose chunks take about a
# millisecond (each boundary's host work weighs most), a typical one, and a longer fit with
# many chunks (the steady state).
CASES = [
    ("tiny m=1k n=8 chunk=32", 1_000, 8, 8_000, 32),
    ("tiny m=1k n=8 chunk=256", 1_000, 8, 16_000, 256),
    ("m=100k n=32 chunk=256", 100_000, 32, 1_000, 256),
    ("longer m=10k n=16 chunk=32", 10_000, 16, 8_000, 32),
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
    print(f"backend {jax.default_backend()}, {args.repeats} repeats; run seconds: median (and overhead "
          "of the median / of the best)")
    print(f"{'problem':<28} {'plain':>8} {'progress':>8} {'overhead':>15} {'in bar ms':>10} {'share':>7} "
          f"{'ckpt/chunk':>10} {'overhead':>9}")
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
            best = {v: min(t) for v, t in times.items()}
            over = {v: med[v] / med["plain"] - 1 for v in ("progress", "checkpoint")}
            over_best = best["progress"] / best["plain"] - 1
            in_bar, run_seconds, chunks = min((time_in_bar(kw, d.X, d.y) for _ in range(3)), key=lambda t: t[0])
            share = in_bar / run_seconds
            print(f"{name:<28} {med['plain']:>8.4f} {med['progress']:>8.4f} "
                  f"{over['progress']:>+7.1%} /{over_best:>+6.1%} {1e3 * in_bar:>10.2f} {share:>7.2%} "
                  f"{med['checkpoint']:>10.4f} {over['checkpoint']:>+9.1%}")
            rows.append({"problem": name, "rows": m, "features": n, "steps": steps, "chunk_size": chunk,
                         "chunks": -(-steps // chunk), "median_run_seconds": med, "best_run_seconds": best, "overhead": over,
                         "progress_overhead_of_best": over_best,
                         "seconds_in_bar": in_bar, "bar_share_of_run": share,
                         "run_seconds": times})
    if args.json:
        Path(args.json).write_text(json.dumps({"backend": jax.default_backend(), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
