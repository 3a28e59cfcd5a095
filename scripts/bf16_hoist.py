"""Why gradfit has no bfloat16 storage of X yet: XLA hoists the upcast out of the block loop.

The plan was X stored as bfloat16 (half the bytes per step) and each row block upcast to
float32 in cache inside the one-pass loop. This script compiles three ways of writing that
upcast inside a ``fori_loop`` over row blocks and reports whether the compiled program holds a
full-size float32 (or uint32) copy of X, which would cost more memory and bandwidth than
storing X in float32 in the first place.

    python scripts/bf16_hoist.py

With jax/jaxlib 0.10.2 on CPU all three variants are rewritten to ``convert(X)`` ahead of the
loop (XLA sinks the ``dynamic_slice`` below the elementwise upcast and then hoists the
loop-invariant convert; it recognises the bit-level variants as converts too).
"""

from __future__ import annotations

import re
import sys

import jax
import jax.numpy as jnp
import numpy as np


def plain(block):
    return block.astype(jnp.float32)


def shift(block):
    bits = jax.lax.bitcast_convert_type(block, jnp.uint16).astype(jnp.uint32) << 16
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def pair(block):
    hi = jax.lax.bitcast_convert_type(block, jnp.uint16)
    return jax.lax.bitcast_convert_type(jnp.stack([jnp.zeros_like(hi), hi], axis=-1), jnp.float32)


def main() -> int:
    m, n, block = 8192, 16, 1024
    X = jnp.asarray(np.random.default_rng(0).standard_normal((m, n)), jnp.bfloat16)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}")
    for name, up in (("astype", plain), ("shift", shift), ("pair+bitcast", pair)):
        def f(X, up=up):
            body = lambda i, c: c + up(jax.lax.dynamic_slice_in_dim(X, i * block, block)).sum(0)  # noqa: E731
            return jax.lax.fori_loop(0, m // block, body, jnp.zeros(n, jnp.float32))

        hlo = jax.jit(f).lower(X).compile().as_text()
        full = bool(re.search(rf"(f32|u32)\[{m},{n}\]", hlo))
        print(f"{name:>14}: full-size 32-bit copy of X in the program: {'YES' if full else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
