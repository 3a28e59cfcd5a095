"""Benchmark sweeps (not a test): vmapped members against sequential fits, and compaction.

    python scripts/bench_sweep.py                      # m=200,000, n=64, K=64 (minutes on a CPU)
    python scripts/bench_sweep.py --m 20000 --k 16     # a quick check

1. **vmapped vs sequential**: K learning rates as one ``gradfit.sweep`` against K separate
   ``gradfit.fit`` calls, same data, same steps (no tolerance, so every member runs them all),
   in the same process. Both are timed after a warm-up run that compiles their programs
   (the compile times are reported separately); X is put on the device once for both.
2. **early finishers**: K members of which K - 4 converge within the first tenth of the
   steps and 4 run to the end. Compares the sweep with compaction, without it
   (``compact=False``), and a sweep of the 4 slow members alone (each run once and
   timed by its ``stats['run_seconds']``: the chunk loops, without compiles and setup).

Prints a table and writes ``--out`` (JSON) atomically.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import gradfit
from gradfit import _io, datasets


def _timed(fn, repeat: int = 1):
    best = float("inf")
    out = None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        jax.block_until_ready(jax.tree.leaves(out))
        best = min(best, time.perf_counter() - start)
    return best, out


def bench_vmapped_vs_sequential(X, y, k: int, steps: int, chunk_size: int, grad: str = "auto") -> dict:
    lrs = np.geomspace(1e-3, 0.5, k).tolist()
    opts = dict(steps=steps, chunk_size=chunk_size, grad=grad)

    def sweep():
        return gradfit.sweep(X, y, grid={"learning_rate": lrs}, **opts)

    def sequential():
        return [gradfit.fit(X, y, learning_rate=lr, **opts).params for lr in lrs]

    first = sweep()  # compiles
    sweep_compile = first.stats["compile_seconds"]
    t_sweep, result = _timed(sweep)
    assert result.stats["compile_seconds"] == 0
    single = gradfit.fit(X, y, learning_rate=lrs[0], **opts)  # compiles the single-fit program
    fit_compile = single.stats["compile_seconds"]
    t_seq, params = _timed(sequential)
    err = max(float(np.max(np.abs(np.asarray(p.W) - result.params.W[i]))) for i, p in enumerate(params))
    return {
        "members": k, "steps": steps, "plan": result.stats["plan"][0], "sweep_seconds": t_sweep, "sequential_seconds": t_seq,
        "speedup": t_seq / t_sweep, "sweep_compile_seconds": sweep_compile, "fit_compile_seconds": fit_compile,
        "sweep_ms_per_member_step": 1e3 * t_sweep / (k * steps),
        "fit_ms_per_step": 1e3 * t_seq / (k * steps),
        "max_abs_W_difference": err,
        # what bounds each: the sweep's two (m, n) x (n, K) products per step are compute
        # (4 m n K flops); a single fit's two matrix-vector products read X twice (8 m n bytes)
        "sweep_gflops": 4 * X.shape[0] * X.shape[1] * k * steps / t_sweep / 1e9,
        "fit_gbytes_per_second": 2 * X.nbytes * k * steps / t_seq / 1e9,
    }


def bench_early_finishers(X, y, k: int, steps: int, chunk_size: int, slow: int = 4, grad: str = "auto") -> dict:
    """K - slow members converge early (large steps, loose tol); ``slow`` members run all steps."""
    fast_lrs = np.geomspace(0.05, 0.5, k - slow).tolist()
    slow_lrs = np.geomspace(1e-5, 1e-4, slow).tolist()
    lrs = fast_lrs + slow_lrs
    opts = dict(steps=steps, tol=1e-6, chunk_size=chunk_size, grad=grad)
    runs = {
        "compact": lambda: gradfit.sweep(X, y, grid={"learning_rate": lrs}, **opts),
        "no_compaction": lambda: gradfit.sweep(X, y, grid={"learning_rate": lrs}, compact=False, **opts),
        "slow_members_alone": lambda: gradfit.sweep(X, y, grid={"learning_rate": slow_lrs}, **opts),
    }
    out = {"members": k, "slow": slow, "steps": steps, "chunk_size": chunk_size}
    for name, fn in runs.items():
        result = fn()
        # the sweep's own run time: its chunk loops, compiles and setup excluded (a warm-up
        # run would double the cost of the slow cases)
        out[f"{name}_seconds"] = result.stats["run_seconds"]
        out[f"{name}_lane_steps"] = result.stats["lane_steps"]
        if name == "compact":
            fast_steps = result.steps[: k - slow]
            out["fast_members_max_steps"] = int(fast_steps.max())
            out["fast_converged"] = int(result.converged[: k - slow].sum())
            out["batch_sizes"] = result.stats["batch_sizes"]
            out["plan"] = result.stats["plan"][0]
    out["compact_over_slow_alone"] = out["compact_seconds"] / out["slow_members_alone_seconds"]
    out["no_compaction_over_slow_alone"] = out["no_compaction_seconds"] / out["slow_members_alone_seconds"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", type=int, default=200_000)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--steps", type=int, default=100, help="steps of the vmapped-vs-sequential comparison")
    p.add_argument("--early-steps", type=int, default=1000, help="step budget of the early-finisher comparison")
    p.add_argument("--chunk-size", type=int, default=50)
    p.add_argument("--skip", choices=["sequential", "early"], action="append", default=[])
    p.add_argument("--grad", default="auto", help="the gradient plan of sweeps and fits (auto: statistics for MSE)")
    p.add_argument("--out", default="runs/bench_sweep.json")
    args = p.parse_args(argv)

    d = datasets.make_regression(args.m, args.n, seed=0)
    X, y = jax.device_put(jnp.asarray(d.X)), jax.device_put(jnp.asarray(d.y))
    env = {
        "backend": jax.default_backend(), "devices": [str(dv) for dv in jax.devices()],
        "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "jax": jax.__version__, "m": args.m, "n": args.n, "dtype": str(X.dtype),
    }
    print(f"m={args.m} n={args.n} K={args.k} {env['dtype']} on {env['backend']} ({env['cpu_count']} CPUs visible)")
    report = {"env": env}
    if "sequential" not in args.skip:
        r = bench_vmapped_vs_sequential(X, y, args.k, args.steps, args.chunk_size, args.grad)
        report["vmapped_vs_sequential"] = r
        print(f"\n1. {args.k} learning rates x {args.steps} steps (plan {r['plan']})")
        print(f"   sweep (one program, vmapped): {r['sweep_seconds']:8.2f} s   ({r['sweep_ms_per_member_step']:.3f} ms per member-step)")
        print(f"   {args.k} sequential fits:           {r['sequential_seconds']:8.2f} s   ({r['fit_ms_per_step']:.3f} ms per step)")
        if r["plan"] != "stats":  # (with statistics, steps read no X: these rates mean nothing)
            print(f"   sweep at {r['sweep_gflops']:.0f} GFLOP/s (compute-bound); fits at {r['fit_gbytes_per_second']:.1f} GB/s "
                  "reading X (memory-bound)")
        print(f"   speedup: {r['speedup']:.1f}x   (compile: sweep {r['sweep_compile_seconds']:.2f} s, fit {r['fit_compile_seconds']:.2f} s; "
              f"max |W_sweep - W_fit| = {r['max_abs_W_difference']:.2e})")
    if "early" not in args.skip:
        r = bench_early_finishers(X, y, args.k, args.early_steps, args.chunk_size, grad=args.grad)
        report["early_finishers"] = r
        print(f"\n2. {args.k} members, {args.k - r['slow']} converge by step {r['fast_members_max_steps']} "
              f"({r['fast_converged']} converged), {r['slow']} run {args.early_steps} steps")
        print(f"   with compaction:      {r['compact_seconds']:8.2f} s  = {r['compact_over_slow_alone']:.2f}x the slow members alone")
        print(f"   without compaction:   {r['no_compaction_seconds']:8.2f} s  = {r['no_compaction_over_slow_alone']:.2f}x")
        print(f"   slow members alone:   {r['slow_members_alone_seconds']:8.2f} s")
        print(f"   batch per chunk (compaction): {r['batch_sizes']}")
    _io.write_json(args.out, report)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
