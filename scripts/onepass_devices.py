"""An experiment towards one read of X per step at full CPU bandwidth: rows over CPU devices.

On XLA:CPU a loop body runs on one core, so ``grad="onepass"`` reads X once but with one
core's bandwidth, while the two whole-array passes of ``grad="hand"`` use every core. Giving
JAX several CPU devices (``jax_num_cpu_devices``, set before JAX starts: a process-wide
choice a library must not make on import) and splitting the rows of X over them with
``shard_map`` runs one blocked loop per device, in parallel, followed by a ``psum``.

    python scripts/onepass_devices.py [--m 2000000] [--n 64] [--devices 2]

Prints the median BCE value-and-gradient time of: the sharded one-pass loop, the one-device
two-pass closed form (what ``grad="hand"`` computes), and one read of X (the floor).
On the 2-core development machine (quiet; jax 0.10.2) it gave no parallelism: the one-pass
BCE gradient took 22.4 ms over 2 devices against 24.4 ms on one, and a plain blocked read of
X 16.9 ms against 18.2 ms; two jitted calls from two Python threads did not overlap either.
XLA:CPU here runs the devices' programs one after another, so this is not a way to a
one-read step at the bandwidth of all cores.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--m", type=int, default=2_000_000)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--block", type=int, default=4096)
    args = p.parse_args(argv)

    import jax

    jax.config.update("jax_num_cpu_devices", args.devices)
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    m, n, B = args.m - args.m % (args.devices * args.block), args.n, args.block
    rng = np.random.default_rng(0)
    Xn = rng.standard_normal((m, n), dtype=np.float32)
    yn = (rng.random(m) < 0.5).astype(np.float32)
    W = jnp.asarray(rng.standard_normal(n).astype(np.float32) * 0.1)
    mesh = jax.make_mesh((args.devices,), ("rows",))
    rows = NamedSharding(mesh, P("rows"))
    X, y = jax.device_put(Xn, rows), jax.device_put(yn, rows)
    X1, y1 = jax.device_put(Xn, jax.devices()[0]), jax.device_put(yn, jax.devices()[0])

    def median_ms(f, *a, reps=7):
        jax.block_until_ready(f(*a))
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            jax.block_until_ready(f(*a))
            times.append(time.perf_counter() - t)
        return 1e3 * float(np.median(times))

    def local(X, y, W):
        def body(i, c):
            g, v = c
            Xb = jax.lax.dynamic_slice_in_dim(X, i * B, B)
            yb = jax.lax.dynamic_slice_in_dim(y, i * B, B)
            z = Xb @ W
            s = jax.nn.sigmoid(z) - yb
            return g + s @ Xb, v + jnp.sum(jax.nn.softplus(z) - yb * z)

        init = jax.lax.pcast((jnp.zeros(n), jnp.zeros(())), ("rows",), to="varying")
        g, v = jax.lax.fori_loop(0, X.shape[0] // B, body, init)
        return jax.lax.psum(g, "rows"), jax.lax.psum(v, "rows")

    sharded = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("rows"), P("rows"), P()), out_specs=(P(), P())))

    def two_pass(X, y, W):
        z = X @ W
        s = jax.nn.sigmoid(z) - y
        return jnp.sum(X * s[:, None], axis=0), jnp.sum(jax.nn.softplus(z) - y * z)

    a = sharded(X, y, W)
    b = jax.jit(two_pass)(X1, y1, W)
    assert np.allclose(a[0], b[0], rtol=1e-3, atol=1e-2), "the two gradients disagree"
    print(f"X ({m}, {n}) float32, {args.devices} CPU devices, blocks of {B} rows")
    print(f"one pass, rows over {args.devices} devices: {median_ms(sharded, X, y, W):8.2f} ms")
    print(f"two passes, one device (grad='hand'):   {median_ms(jax.jit(two_pass), X1, y1, W):8.2f} ms")
    print(f"one read of X, one device (the floor):  {median_ms(jax.jit(lambda A: A.sum(0)), X1):8.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
