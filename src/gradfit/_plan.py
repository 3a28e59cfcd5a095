"""How a fit computes its objective and gradient: the plans, their validity, and ``"auto"``.

A :class:`Plan` computes the unpenalised loss and its gradient from its *operand*; the engine adds the L2 term,
the optimizer and the stopping rule. ``"autodiff"``: ``jax.grad``, X read twice. ``"hand"``: the closed forms of
:mod:`gradfit.gradients`, X read twice. ``"onepass"``: the closed forms in row blocks, X read once. ``"stats"``:
O(n^2 k) per step from sufficient statistics (:class:`gradfit._stats.Stats`), after one pass. ``"summed"``
(internal): a streamed pass's sums (:class:`Sums`), scaled.

``"auto"`` estimates costs in gemm flops, reading one element of X costing ``READ = 10`` (measured, XLA:CPU):

    direct = evals * (2 * READ * m * n + 4 * m * n * k)
    stats  = 2 * READ * m * n + 2 * m * p^2 + 10 * q^3 + evals * 4 * q^2 * k,   p = n + 1 + k, q = n + 1

with ``evals`` the evaluations expected to reach ``tol`` (:func:`expected_evaluations`, from the condition number
the health check estimates; else the step budget), and picks ``"stats"`` for a full-batch MSE fit when cheaper.
Otherwise ``"hand"``, the fastest direct plan measured (whole-array products spread over every core, where
``"onepass"``'s block loop uses one; ``docs/benchmarks.md``), or ``"autodiff"`` for problems vmapped over one shared
X (a sweep group, per-output columns): its ``X^T S`` over the members is one matrix-matrix product (line-search
members run one after another, each on ``"hand"``)."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax

from gradfit import _onepass, _stats, gradients, losses
from gradfit._types import Params, Program

GRAD_MODES = ("auto", "autodiff", "hand", "stats", "onepass")
READ = 10.0  # cost of reading one element of X from memory, in gemm flops (measured)
DIRECT = "hand"  # the direct plan "auto" picks for one problem (see the module docstring)
MEMBERS_DIRECT = "autodiff"  # ... and for members vmapped over one X


class Sums(NamedTuple):
    """A streamed pass's ``reduction="sum"`` loss and gradient over all rows, for the ``"summed"`` plan."""

    value: jax.Array  # ()
    grad: Params  # like the params
    count: jax.Array  # () sum of the row weights


class Plan(NamedTuple):
    """``value_and_grad(params, operand, program) -> (J, dJ/dp)`` and ``value(...) -> J`` (None where the operand
    cannot be evaluated at other params: a streamed pass's sums, no line search)."""

    name: str
    value_and_grad: Callable[[Params, Any, Program], tuple[jax.Array, Params]]
    value: Callable[[Params, Any, Program], jax.Array] | None


def _loss(params, data, program):
    return losses.LOSSES[program.loss](params, data.X, data.y, reduction=program.reduction,
                                       sample_weight=data.sample_weight)


def _autodiff(params, data, program):
    return jax.value_and_grad(_loss)(params, data, program)


def _hand(params, data, program):
    fn = gradients.VALUE_AND_GRADIENTS[program.loss]
    return fn(params, data.X, data.y, reduction=program.reduction, sample_weight=data.sample_weight,
              parts=program.parts)


def _onepass_plan(params, data, program):
    return _onepass.value_and_grad(params, data.X, data.y, loss=program.loss, reduction=program.reduction,
                                   sample_weight=data.sample_weight)


def _summed(params, sums: Sums, program):
    scale = losses.reduction_scale(program.reduction, sums.count)
    return scale * sums.value, jax.tree.map(lambda g: scale * g, sums.grad)


PLANS: dict[str, Plan] = {
    "autodiff": Plan("autodiff", _autodiff, _loss),
    "hand": Plan("hand", _hand, _loss),
    "onepass": Plan("onepass", _onepass_plan, _loss),
    "stats": Plan("stats", lambda p, s, program: _stats.value_and_grad(p, s, reduction=program.reduction),
                  lambda p, s, program: _stats.loss(p, s, reduction=program.reduction)),
    "summed": Plan("summed", _summed, None),
}


def cost_direct(m: int, n: int, k: int, evals: int) -> float:
    """Estimated cost of ``evals`` direct evaluations (X read twice each), in flops."""
    return evals * (2 * READ * m * n + 4.0 * m * n * k)


def cost_stats(m: int, n: int, k: int, evals: int) -> float:
    """Estimated cost of the statistics pass plus ``evals`` O(n^2 k) evaluations, in flops."""
    p, q = n + 1 + k, n + 1
    return 2 * READ * m * n + 2.0 * m * p * p + 10.0 * q**3 + evals * 4.0 * q * q * k


def expected_evaluations(*, steps: int, condition: float | None, tol: float, line_search: bool, steepest: bool) -> int:
    """Evaluations of J a full-batch fit is expected to need to reach the optimality ``tol``, at most ``steps``:
    gradient descent at 1/L (``steepest``) ``kappa ln(1/tol^2)``, a line search (L-BFGS, one evaluation a step
    when it hands J on) ``sqrt(kappa) ln(1/tol^2) / 4 + 2`` (superlinear: measured 5-7 on kappa ~ 2). Anything else,
    or no ``condition`` (kappa, in the fit's coordinates) or ``tol``: the budget."""
    if condition is None or not math.isfinite(condition) or tol <= 0 or not (line_search or steepest):
        return steps
    decades = math.log(1 / tol**2)
    guess = math.sqrt(condition) * decades / 4 + 2 if line_search else condition * decades
    return int(min(steps, math.ceil(guess)))


def check(grad: str, *, loss: str, batch_size: int | None, line_search: bool) -> None:
    """Raise ValueError for a plan that cannot serve this fit, whatever the data."""
    if grad not in GRAD_MODES:
        raise ValueError(f"unknown grad {grad!r}: use one of {', '.join(map(repr, GRAD_MODES))}")
    if grad != "stats":
        return
    if loss != "mse":
        raise ValueError("grad='stats' (sufficient statistics) exists only for loss='mse': "
                         "use grad='onepass', 'hand', 'autodiff' or 'auto' for bce")
    if batch_size is not None:
        raise ValueError("grad='stats' replaces full-batch steps and cannot take minibatches: "
                         "leave batch_size unset, or use grad='auto', 'onepass', 'hand' or 'autodiff'")


def choose(grad: str, *, loss: str, m: int, n: int, k: int, steps: int, batch_size: int | None, line_search: bool,
           sharded: bool = False, members: int = 1, evals: int | None = None) -> str:
    """Resolve ``grad`` ("auto" or a forced plan) to the plan a fit runs; ValueError if invalid. ``sharded``
    (rows over several devices): "auto" is "hand", and the block-walking "stats"/"onepass" are errors.
    ``members`` > 1 (problems vmapped over one X): "auto"'s direct plan is "autodiff", unless a line search runs
    them one after another (:func:`gradfit._engine.compiled`), each reading X alone. ``evals``: the
    evaluations expected (:func:`expected_evaluations`; default ``steps``, doubled by a line search)."""
    check(grad, loss=loss, batch_size=batch_size, line_search=line_search)
    if sharded:
        if grad in ("stats", "onepass"):
            raise ValueError(f"grad={grad!r} walks the rows in blocks on one device, but X is split over several: "
                             "use grad='auto' or 'hand' with devices, or fit on one device (devices=1)")
        return DIRECT if grad == "auto" else grad
    if grad != "auto":
        return grad
    evals = steps * (2 if line_search else 1) if evals is None else evals
    if loss == "mse" and batch_size is None and cost_stats(m, n, k, evals) < cost_direct(m, n, k, evals):
        return "stats"
    return MEMBERS_DIRECT if members > 1 and not line_search else DIRECT


CHUNK_SECONDS = 1.0  # the wall time a compiled chunk of steps should take (an interrupt waits for it)
BYTES_PER_SECOND = 1e10  # a conservative read rate of X, to size chunks (the development machine: ~7e10)
MAX_CHUNK = 256


def chunk_steps(plan: str, *, m: int, n: int, itemsize: int, members: int = 1, line_search: bool = False) -> int:
    """Default steps per compiled chunk: about :data:`CHUNK_SECONDS` of reads of X at :data:`BYTES_PER_SECOND`
    (per plan, line search and member), in [1, :data:`MAX_CHUNK`]."""
    reads = {"stats": 0.0, "onepass": 1.0}.get(plan, 2.0) * (2 if line_search else 1) * members
    seconds = reads * m * n * itemsize / BYTES_PER_SECOND
    return int(max(1, min(MAX_CHUNK, CHUNK_SECONDS // seconds if seconds > 0 else MAX_CHUNK)))
