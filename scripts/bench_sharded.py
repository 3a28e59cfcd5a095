"""The same fit on 1 device and on d devices: time per step, compile time, agreement.

    python scripts/bench_sharded.py                       # CPU: 1 vs 4 forced host devices
    python scripts/bench_sharded.py --devices 1,2,4 --m 2000000 --n 64 --out runs/bench_sharded.json
    python scripts/bench_sharded.py --platform gpu        # the GPUs present (1 vs all)

On the CPU the d devices are forced with ``XLA_FLAGS=--xla_force_host_platform_device_count``
(set here before JAX starts): they are slices of the same cores, so this measures that the
sharded program works and what its partitioning and all-reduce cost, not a speed-up.
Speed-ups need devices with their own compute and memory bandwidth (several GPUs).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", default="1,4", help="device counts to compare, e.g. 1,2,4")
    p.add_argument("--platform", default="cpu", choices=["cpu", "gpu"], help="cpu forces host devices")
    p.add_argument("--m", type=int, default=1_000_003, help="rows (odd on purpose: the padded case)")
    p.add_argument("--n", type=int, default=32, help="features")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    counts = [int(c) for c in args.devices.split(",")]
    if args.platform == "cpu":
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={max(counts)}"
        ).strip()
        os.environ["JAX_PLATFORMS"] = "cpu"

    import jax
    import numpy as np

    import gradfit
    from gradfit import _io, datasets

    if max(counts) > jax.device_count():
        print(f"only {jax.device_count()} {jax.default_backend()} device(s): drop counts above that", file=sys.stderr)
        return 2
    reg = datasets.make_regression(args.m, args.n, seed=0)
    cls = datasets.make_classification(args.m, args.n, seed=0)
    problems = {"mse": (reg, 0.1), "bce": (cls, 0.5)}
    rows = []
    print(f"{jax.default_backend()} x{jax.device_count()} ({jax.devices()[0].device_kind}); "
          f"m={args.m} n={args.n} float32, {args.steps} full-batch sgd steps, best of {args.repeats}")
    print(f"{'loss':5} {'devices':>7} {'compile s':>10} {'ms/step':>9} {'GB/s (X once/step)':>19} {'max |W - W_1|':>14}")
    for loss, (d, lr) in problems.items():
        reference = None
        for count in counts:
            kw = dict(loss=loss, steps=args.steps, devices=count)
            first = gradfit.fit(d.X, d.y, learning_rate=lr, **kw)  # compiles
            best = min(
                gradfit.fit(d.X, d.y, learning_rate=lr * (1 - 1e-3 * (r + 1)), **kw).stats["run_seconds"]
                for r in range(args.repeats)
            )
            W = np.asarray(first.params.W)
            reference = W if reference is None else reference
            ms = 1e3 * best / args.steps
            gbps = d.X.nbytes / (best / args.steps) / 1e9
            diff = float(np.max(np.abs(W - reference)))
            rows.append(dict(loss=loss, devices=count, compile_seconds=first.stats["compile_seconds"],
                             ms_per_step=ms, gb_per_s=gbps, max_abs_diff_to_one_device=diff))
            print(f"{loss:5} {count:7d} {first.stats['compile_seconds']:10.3f} {ms:9.3f} {gbps:19.2f} {diff:14.2e}")
    if args.out:
        _io.write_json(args.out, {
            "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
            "cpu_count": os.cpu_count(), "m": args.m, "n": args.n, "steps": args.steps,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows,
        })
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
