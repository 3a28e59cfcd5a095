"""The nouns every layer shares: ``Params``, ``Data``, ``Hyper``, ``Scaling``, ``Program``,
``SolverState`` and ``Level``. This module imports nothing of gradfit."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax


class Params(NamedTuple):
    """Weights and bias of ``yhat = X @ W + b``, rows of X (m, n) are samples: W (n,), b (), yhat (m,),
    or W (n, k), b (k,), yhat (m, k). The blog seed's ``y = M x + b``, M (k, n): ``W = M.T``; the
    notes seed's samples in columns (X (n, m)): pass its ``X.T``."""

    W: jax.Array  # (n,) or (n, k)
    b: jax.Array  # () or (k,)


class Data(NamedTuple):
    """The arrays a fit reads. X (m, n); y (m,) or (m, k); sample_weight (m,) or None."""

    X: jax.Array
    y: jax.Array
    sample_weight: jax.Array | None = None


class Scaling(NamedTuple):
    """A problem's coordinates and stopping-test scales (:func:`gradfit.health.scaling`; traced)."""

    shift: jax.Array  # (n,) the columns' means mu (0 without an intercept)
    scale: jax.Array  # (n,) their spread sigma about mu (1 for a constant column)
    curvature: jax.Array  # () the loss's curvature along a standardised column: 2 c N (mse), c N / 4 (bce)
    floor: jax.Array  # () eps^(1/4) times the objective of the best constant model


class Hyper(NamedTuple):
    """Hyperparameters as arrays (traced: new values never recompile)."""

    learning_rate: jax.Array | None  # () float; None: the line search picks the step
    l2: jax.Array  # () float, >= 0
    tol: jax.Array  # () float: converged when the optimality G <= tol; < 0: never
    max_steps: jax.Array  # () int32
    optimizer: dict[str, jax.Array]  # the optimizer's float options, () each
    ftol: jax.Array  # () float: stalled when the objective changes by less; < 0: no such test
    scaling: Scaling


class Program(NamedTuple):
    """Everything that shapes the compiled program (hashable): equal programs and shapes share one."""

    loss: str  # "mse" or "bce"
    reduction: str  # "mean", "half_mean" (mse) or "sum"
    plan: str  # how the gradient is computed: "autodiff", "hand", "onepass", "stats", "summed"
    optimizer: Any  # gradfit._optim.OptimizerSpec
    has_learning_rate: bool
    fit_intercept: bool
    batch_size: int | None
    chunk_size: int
    rows: int | None = None  # real rows when X was padded for sharding (the rest have weight 0)
    shuffle: str = "blocks"  # minibatch order: "blocks", "rows" or "none"
    parts: int = 1  # devices the rows are split over (gradients.block_rows keeps blocks whole per device)
    standardize: bool = True  # optimise the coefficients of the centred and scaled columns
    validation: int = 0  # steps of validation history kept (the step budget) when validating, else 0
    patience: int = 0  # early stopping's n_iter_no_change; 0: no early stopping


class SolverState(NamedTuple):
    """The loop's carry; every field has a fixed shape and dtype."""

    params: Params  # p_t, the current iterate
    prev_params: Params  # p_{t-1}, returned if p_t diverged
    opt_state: Any  # the optax state
    step: jax.Array  # () int32, objective evaluations so far
    loss: jax.Array  # () the last objective value J_t
    initial_loss: jax.Array  # () J_0, the reference for divergence
    converged: jax.Array  # () bool
    diverged: jax.Array  # () bool
    key: jax.Array  # () PRNG key, advanced once per minibatch epoch
    stalled: jax.Array  # () bool: stopped moving while not at the optimum
    optimality: jax.Array  # () the scaled gradient norm G at the last evaluation (inf before any)
    evaluations: jax.Array  # () int32, evaluations of J and dJ over all rows (an epoch counts one)
    monitor: Any = None  # a Monitor when validating (fit(validation=...)), else None


class Validated(NamedTuple):
    """A fit's operand with validation data: ``train`` (what the plan reads) and ``val`` (Data or Stats)."""

    train: Any
    val: Any


class Monitor(NamedTuple):
    """The validation record a validated run carries (``fit(validation=...)``)."""

    history: jax.Array  # (steps,) the unpenalised validation loss after each step, NaN past the steps run
    best: jax.Array  # () its lowest value so far (inf before any)
    best_params: Params  # the params it was reached at
    best_step: jax.Array  # () int32, the step after which it was reached
    since_best: jax.Array  # () int32, steps since (reset when it improves)
    patience: jax.Array  # () int32, steps without improvement that stop the run (early stopping); 0: never


class Level(NamedTuple):
    """One ``vmap`` level: for each input, 0 (mapped along its leading axis) or None (shared)."""

    data: Any  # a Data (or a gradfit._stats.Stats) of axes
    hyper: Hyper
    params: int | None
    key: int | None
