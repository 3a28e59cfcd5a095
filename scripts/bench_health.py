"""What the numerical-health checks cost, against one pass over X and one gradient step.

    python scripts/bench_health.py                      # m in 1e4, 1e5, 1e6; n = 32
    python scripts/bench_health.py --m 100000 --n 256

For each size it times (median of --repeat runs, after one warm-up):
  pass        jnp.sum(X) on the device: one read of X, the floor for anything that reads X;
  step        one full-batch gradient step of a compiled fit (steps=1 fit minus its fixed cost
              is not separable, so this is the run time of a steps=100 fit divided by 100);
  condition   gradfit.health.conditioning: the sampled, host-side estimate run before every fit;
  lipschitz   gradfit.health.lipschitz: the power iterations behind learning_rate="auto"
              (and the suggestion after a divergence).
Prints one table row per size; nothing is written.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import gradfit
from gradfit import health


def _median_seconds(fn, repeat: int) -> float:
    fn()  # warm-up (compilation)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    print(f"backend {jax.default_backend()}, float32, n = {args.n}, median of {args.repeat}")
    print(f"{'m':>9} {'pass ms':>9} {'step ms':>9} {'condition ms':>13} {'(x pass)':>9} {'lipschitz ms':>13} {'(x step)':>9}")
    rng = np.random.default_rng(0)
    for m in args.m:
        X = rng.standard_normal((m, args.n)).astype(np.float32)
        y = (X @ rng.standard_normal(args.n)).astype(np.float32)
        Xd = jnp.asarray(X)
        total = jax.jit(jnp.sum)
        t_pass = _median_seconds(lambda: total(Xd).block_until_ready(), args.repeat)
        fit = gradfit.fit(X, y, learning_rate=0.1, steps=100)  # compile once
        t_step = statistics.median(
            gradfit.fit(X, y, learning_rate=0.1, steps=100).stats["run_seconds"] / 100 for _ in range(args.repeat)
        )
        del fit
        t_cond = _median_seconds(lambda: health.conditioning(X), args.repeat)
        t_lip = _median_seconds(lambda: health.lipschitz(Xd), args.repeat)
        print(f"{m:>9} {1e3 * t_pass:>9.3f} {1e3 * t_step:>9.3f} {1e3 * t_cond:>13.3f} {t_cond / t_pass:>9.2f} "
              f"{1e3 * t_lip:>13.3f} {t_lip / t_step:>9.1f}")


if __name__ == "__main__":
    main()
