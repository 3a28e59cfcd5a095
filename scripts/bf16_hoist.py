"""Why gradfit compiles programs that read a bfloat16 X with one XLA pass turned off.

X stored as bfloat16 halves the bytes per step only if every read upcasts X where it is used
(per row block, or inside the fused multiply-reduce that consumes it). XLA's while-loop
invariant code motion sees that X does not change between steps or blocks and moves
``convert(X)`` ahead of the loop: one full-size float32 copy of X, more memory and traffic
than storing float32 in the first place. This script compiles a loop over row blocks with
three ways of writing the upcast, and a loop of gradient steps by gradfit's closed forms
(fused multiply-reduces, :mod:`gradfit.gradients`), plainly and with
``gradfit._precision.compiler_options`` (``xla_disable_hlo_passes=
while-loop-invariant-code-motion``, passed per compilation: no global flag), and reports the
compiled program's temporaries against the size of a float32 copy of X.

    python scripts/bf16_hoist.py

With jax/jaxlib 0.10.2 on CPU every plain compilation holds the copy (XLA also recognises the
bit-level variants as converts); with the option none does:

      loop        upcast  plain (MB)  with option (MB)      (a float32 copy of X: 8.0 MB)
    blocks        astype         8.5               0.5
    blocks         shift         8.5               0.5
    blocks  pair+bitcast         8.5               0.5
     steps       gradfit         8.3               0.3
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

from gradfit import _precision, gradients
from gradfit._params import Params


def plain(block):
    return block.astype(jnp.float32)


def shift(block):
    bits = jax.lax.bitcast_convert_type(block, jnp.uint16).astype(jnp.uint32) << 16
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def pair(block):
    hi = jax.lax.bitcast_convert_type(block, jnp.uint16)
    return jax.lax.bitcast_convert_type(jnp.stack([jnp.zeros_like(hi), hi], axis=-1), jnp.float32)


def main() -> int:
    m, n, block = 65536, 32, 4096
    X = jnp.asarray(np.random.default_rng(0).standard_normal((m, n)), jnp.bfloat16)
    copy_mb = m * n * 4 / 2**20
    print(f"jax {jax.__version__}, backend {jax.default_backend()}; a float32 copy of X is {copy_mb:.1f} MB")
    print(f"{'loop':>6} {'upcast':>13} {'plain (MB)':>11} {'with option (MB)':>17}")
    y = jnp.zeros(m, jnp.float32)
    variants = [("blocks", name, up) for name, up in (("astype", plain), ("shift", shift), ("pair+bitcast", pair))]
    for loop, name, up in variants + [("steps", "gradfit", None)]:
        def f(X, up=up, loop=loop):
            if loop == "blocks":  # one pass over X in row blocks (grad="onepass", the statistics pass)
                body = lambda i, c: c + up(jax.lax.dynamic_slice_in_dim(X, i * block, block)).sum(0)  # noqa: E731
                return jax.lax.fori_loop(0, m // block, body, jnp.zeros(n, jnp.float32))
            # gradient steps reading all of X (grad="hand": gradfit._params.matmul, gradients.xt_dot)
            body = lambda i, p: jax.tree.map(lambda a, g: a - 0.1 * g, p, gradients.bce(p, X, y))  # noqa: E731
            return jax.lax.fori_loop(0, 5, body, Params(jnp.zeros(n, jnp.float32), jnp.zeros((), jnp.float32)))

        lowered = jax.jit(f).lower(X)
        sizes = [lowered.compile(compiler_options=o).memory_analysis().temp_size_in_bytes / 2**20
                 for o in ({}, _precision.compiler_options(X))]
        print(f"{loop:>6} {name:>13} {sizes[0]:>11.1f} {sizes[1]:>17.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
