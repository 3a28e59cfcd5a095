"""How a fit computes its gradient: the plans, their validity, and the ``"auto"`` cost model.

======================  =========================================================  =========
plan (``grad=``)        per step                                                   needs
======================  =========================================================  =========
``"autodiff"``          ``jax.grad`` of the loss: X read twice (z = XW, X^T dz)     -
``"hand"``              the closed forms of :mod:`gradfit.gradients`, X read twice  -
``"onepass"``           the closed forms in row blocks, X read once                 -
``"stats"``             O(n^2 k) from sufficient statistics, after one pass         mse, full batch
======================  =========================================================  =========

``"auto"`` (the default) estimates the cost of a fit, in units of one gemm flop, with two
constants measured on the development machine (2-core AMD EPYC, ~40 GB/s, XLA:CPU): reading
one float32 of X from memory costs ``READ = 10`` flops, and the Gram pass runs near gemm speed:

    direct = evals * (2 * READ * m * n + 4 * m * n * k)          X read twice per evaluation
    stats  = 2 * READ * m * n + 2 * m * p^2 + 10 * q^3 + evals * 4 * q^2 * k
             (mean and residual passes + Gram pass + eigendecomposition + steps),
             p = n + 1 + k, q = n + 1

with ``evals = steps`` (times 2 for a line search, which evaluates the objective again) and
picks ``"stats"`` for a full-batch MSE fit when ``stats < direct`` -- for n = 64 that is any
fit of more than about 4 steps. Otherwise (BCE, minibatches, or few steps) it picks
:func:`direct_default`, the direct plan measured fastest: ``"hand"`` (``docs/benchmarks.md``).
The estimate uses the step budget ``steps``; an early stop by ``tol`` only makes the
precomputation relatively dearer, never wrong.
"""

from __future__ import annotations

GRAD_MODES = ("auto", "autodiff", "hand", "stats", "onepass")

READ = 10.0  # cost of reading one element of X from memory, in gemm flops (measured)
# The direct plan "auto" picks, per backend (measured, docs/benchmarks.md). "hand" reads X
# twice per step, each read a whole-array product that XLA spreads over every core and that
# runs at the one-read floor (X^T s in row blocks: gradients.xt_dot); "onepass" reads X once
# but its block loop runs on one core. On the 2-core development machine (m = 2e6, n = 64,
# float32, inside one fit) the BCE step took 18.5 ms with "hand" against 25.8 ms with
# "onepass", and "hand" gains with every core a machine adds. On a GPU the loop would launch
# a kernel per block. So every backend gets "hand".
DIRECT_DEFAULT: dict[str, str] = {}
DIRECT_FALLBACK = "hand"


def direct_default(backend: str | None = None) -> str:
    """The direct plan "auto" uses on ``backend`` (default: JAX's default backend)."""
    if backend is None:
        import jax

        backend = jax.default_backend()
    return DIRECT_DEFAULT.get(backend, DIRECT_FALLBACK)

def cost_direct(m: int, n: int, k: int, evals: int) -> float:
    """Estimated cost of ``evals`` direct evaluations (X read twice each), in flops."""
    return evals * (2 * READ * m * n + 4.0 * m * n * k)


def cost_stats(m: int, n: int, k: int, evals: int) -> float:
    """Estimated cost of the statistics pass plus ``evals`` O(n^2 k) evaluations, in flops."""
    p, q = n + 1 + k, n + 1
    return 2 * READ * m * n + 2.0 * m * p * p + 10.0 * q**3 + evals * 4.0 * q * q * k


def choose(
    grad: str,
    *,
    loss: str,
    m: int,
    n: int,
    k: int,
    steps: int,
    batch_size: int | None,
    line_search: bool,
    sharded: bool = False,
    statistics: bool = True,
    members: int = 1,
) -> str:
    """Resolve ``grad`` ("auto" or a forced plan) to the plan a fit runs; ValueError if invalid.

    ``sharded``: the rows of X are split over several devices. "stats" and "onepass" walk
    the rows in blocks on one device, so there "auto" is "hand" (whole-array passes, which
    XLA splits over the devices with one all-reduce) and forcing either is an error.
    ``statistics=False``: the caller cannot take a ``Stats`` in place of the data (sweeps);
    "auto" then picks a direct plan and forcing "stats" is an error.
    ``members``: problems vmapped over one shared X (a sweep group's members, per-output
    columns). For more than one, "auto"'s direct plan is "autodiff": its ``X^T S`` over the
    members is one matrix-matrix product, which beats the blocked products of "hand" under
    ``vmap`` (BCE, m = 2e5, n = 64, 16 members x 100 steps: 0.71 s against 1.29 s, and 1.23 s
    for "onepass").
    """
    if grad not in GRAD_MODES:
        raise ValueError(f"unknown grad {grad!r}: use one of {', '.join(map(repr, GRAD_MODES))}")
    if sharded:
        if grad in ("stats", "onepass"):
            raise ValueError(
                f"grad={grad!r} walks the rows in blocks on one device, but X is split over several: "
                "use grad='auto' or 'hand' with devices, or fit on one device (devices=1)"
            )
        return DIRECT_FALLBACK if grad == "auto" else grad
    if grad == "stats":
        if not statistics:
            raise ValueError(
                "grad='stats' is for gradfit.fit; sweeps read X every step: use grad='auto', "
                "'onepass', 'hand' or 'autodiff'"
            )
        if loss != "mse":
            raise ValueError(
                "grad='stats' (sufficient statistics) exists only for loss='mse': "
                "use grad='onepass', 'hand', 'autodiff' or 'auto' for bce"
            )
        if batch_size is not None:
            raise ValueError(
                "grad='stats' replaces full-batch steps and cannot take minibatches: "
                "leave batch_size unset, or use grad='auto', 'onepass', 'hand' or 'autodiff'"
            )
        return grad
    if grad != "auto":
        return grad
    if statistics and loss == "mse" and batch_size is None:
        evals = steps * (2 if line_search else 1)
        if cost_stats(m, n, k, evals) < cost_direct(m, n, k, evals):
            return "stats"
    return "autodiff" if members > 1 else direct_default()
