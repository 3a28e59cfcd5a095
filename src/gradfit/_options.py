"""fit's options: one spec (:class:`FitOptions`), checked once here before any compute by every front door
(:func:`check`: ``ValueError`` naming the option and the fix; :func:`for_data`: the checks that need the shapes)."""

from __future__ import annotations

import datetime
import inspect
import numbers
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from gradfit import _io, _optim, _plan, _validation, losses
from gradfit._types import Params

DEFAULT_LEARNING_RATE = 0.01
DEFAULT_TOL = 1e-4  # G^2 ~ (J - J*)/J = 1e-8: below float32's resolution of J
SHUFFLES = ("blocks", "rows", "none")
AUTO = "auto"


class FitOptions(NamedTuple):
    """Every option of :func:`gradfit.fit` with its default (documented in :data:`DOCS`)."""

    loss: str = "mse"
    reduction: str = "mean"
    optimizer: Any = "sgd"
    learning_rate: Any = None
    steps: int = 1000
    tol: float | None = DEFAULT_TOL
    ftol: float | None = None
    l2: Any = 0.0
    grad: str = "auto"
    init: Any = None
    batch_size: int | None = None
    shuffle: str = "blocks"
    seed: int = 0
    fit_intercept: bool = True
    standardize: bool = True
    optimizer_options: dict | None = None
    batched: bool = False
    chunk_size: int | None = None
    devices: Any = None
    n_rows: int | None = None
    callback: Any = None
    progress: bool = False
    checkpoint: Any = None
    checkpoint_every: Any = None
    resume: bool = False
    overwrite: bool = False
    validation: Any = None
    validation_fraction: float | None = None
    early_stopping: bool = False
    n_iter_no_change: int = 5


DOCS = """\
      loss: ``"mse"`` or ``"bce"`` (logistic regression, from logits).
      reduction: ``"mean"`` (1/m), ``"half_mean"`` (1/(2m), mse only) or ``"sum"``.
      optimizer: an optax alias name (``"sgd"``, ``"adam"``, ``"lbfgs"``, ...) or any ``optax.GradientTransformation``
        (then leave ``learning_rate`` unset).
      learning_rate: step size; default 0.01 (for ``"lbfgs"``: None, the line search's). A (k,) array gives each
        output column its own rate (vmapped). ``"auto"`` (with ``optimizer="sgd"``): ``1/L``, see
        :func:`gradfit.health.safe_learning_rate` (exact from the statistics with plan "stats").
      steps: most steps to run (epochs with ``batch_size``).
      tol: converged, and stop, when the scaled gradient norm ``G <= tol`` (default 1e-4; ``stats["grad_norm"]``):
        ``G^2`` estimates ``(J - J*) / J`` in any units (:func:`gradfit._engine.optimality`). G rounds at ~1e-6 in
        float32, so a smaller ``tol`` needs float64. None: no test, run every step.
      ftol: also stop, as "stalled" unless the ``tol`` test passes, when the objective changes by at most
        ``ftol * max(|J_{t-1}|, |J_t|)`` in a step (scipy's ``ftol``); None (default): no such test.
      l2: penalty ``(l2/2) ||W||^2``, bias not penalised; (k,) for per-output values. See
        :func:`gradfit.losses.l2_penalty` for the mapping to scikit-learn's alpha and C.
      grad: the plan (:mod:`gradfit._plan`; ``stats["plan"]``): ``"auto"`` (default: by a cost model),
        ``"autodiff"`` (``jax.grad``), ``"hand"`` (:mod:`gradfit.gradients`), ``"onepass"`` (X read once per step)
        or ``"stats"`` (MSE by sufficient statistics: one pass over X, then O(n^2 k) per step, same iterates).
      init: None/``"zeros"``, ``"normal"`` (N(0, 1/n) weights from ``seed``) or ``Params``.
      batch_size: minibatch SGD, batches drawn on device as ``shuffle`` says; the short last batch is kept
        (padded with zero-weight rows), so no row is dropped.
      shuffle: minibatch order. ``"blocks"`` (default): fixed contiguous batches in a fresh random order every
        epoch (shuffle rows sorted e.g. by label once beforehand). ``"rows"``: a fresh permutation of all rows
        every epoch (exact, much slower on CPU). ``"none"``: the blocks in order.
      seed: seeds the minibatch order and ``init="normal"``.
      fit_intercept: False fixes b at its initial value (0).
      standardize: optimise in the coordinates of the centred and scaled columns (``W' = W sigma``, ``b' = b +
        mu W``) and map back exactly (default): same objective and answer. False: optimise ``(W, b)`` directly.
      optimizer_options: extra options of the optax alias, e.g. ``{"momentum": 0.9}``, each checked against its
        range; float values are traced (new values do not recompile).
      batched: X has a leading axis of B independent problems, fitted under ``vmap``.
      chunk_size: steps per compiled chunk (at most ``steps`` without a checkpoint); Python runs only between
        chunks (progress, checkpoints, an interrupt). None: about a second's worth by the size of X, <= 256.
      callback: ``callback(state, history)``, called between chunks.
      devices: split the rows across devices (:mod:`gradfit.sharding`): None uses every device once m >=
        ``gradfit.sharding.AUTO_MIN_ROWS`` (else one), an int d the first d devices, or a list of jax devices or
        ids; uneven rows are padded with weight-0 rows. Leave None for already sharded X, y (kept as is).
      n_rows: for X, y already padded and sharded (:func:`gradfit.shard_rows`, :func:`gradfit.distributed.load_rows`),
        the real rows, which come first: minibatches draw only them.
      progress: show a tqdm bar (updated between chunks; needs ``gradfit[progress]``).
      checkpoint: a file path: save the run there atomically between chunks and at the end (:mod:`gradfit.checkpoint`).
      checkpoint_every: an int (steps), a ``datetime.timedelta``, or ``gradfit.checkpoint.Every(steps, seconds)``;
        default every 60 seconds.
      resume: continue from ``checkpoint`` if it exists (same data and settings, else ValueError), bit for bit.
      overwrite: start over at ``checkpoint`` even if it holds an unfinished or damaged run (a file that is
        not a gradfit checkpoint is still refused).
      validation: ``(X_val, y_val)`` or ``(X_val, y_val, sample_weight_val)``: the unpenalised loss on them is
        computed inside the compiled loop after every step (``FitResult.validation_losses``).
      validation_fraction: hold out this fraction of the rows instead (seeded by ``seed``; stratified by class
        for bce with a 1-d y) and fit the rest.
      early_stopping: stop once the validation loss has not improved for ``n_iter_no_change`` steps and return
        the params of the best one (status ``"early_stopped"``); without ``validation``, holds out 10%.
      n_iter_no_change: steps without a lower validation loss that end an early-stopped fit (default 5).

"""

NAMES = FitOptions._fields


class Checked(NamedTuple):
    """Options that passed :func:`check`, with what they resolve to."""

    options: FitOptions
    optimizer: _optim.OptimizerSpec
    traced: dict[str, float]  # the optimizer's float options (array inputs of the program)
    learning_rate: np.ndarray | None  # float64; None: the line search's step; 1.0 for "auto"
    auto_step: bool  # learning_rate="auto": 1/L replaces it once the data are placed
    l2: np.ndarray
    tol: np.ndarray  # -1 for tol=None (no optimality test)
    ftol: np.ndarray  # -1 for ftol=None

    @property
    def line_search(self) -> bool:
        return self.optimizer.name in _optim.LINE_SEARCH


def unknown(names, allowed, what: str = "fit option") -> None:
    """Raise ValueError for the first name not in ``allowed``, with a suggestion."""
    for name in names:
        if name not in allowed:
            raise ValueError(f"unknown {what} {name!r}{_validation.suggest(name, allowed)}: "
                             f"the options are {', '.join(allowed)}")


def _check_learning_rate(o: FitOptions) -> tuple[Any, bool]:
    """The learning rate to check (1.0 stands in for "auto"), and whether it is "auto"."""
    lr = o.learning_rate
    if isinstance(lr, str):
        if lr != AUTO:
            raise ValueError(f"learning_rate must be a positive number or 'auto', got {lr!r}")
        if o.optimizer != "sgd":
            raise ValueError(f"learning_rate='auto' is 1/L, the safe step of plain gradient descent, so it needs "
                             f"optimizer='sgd' (got {o.optimizer!r}): give {o.optimizer!r} a number, "
                             "e.g. learning_rate=1e-3")
        return 1.0, True
    if lr is None and isinstance(o.optimizer, str) and o.optimizer not in _optim.LINE_SEARCH:
        return DEFAULT_LEARNING_RATE, False
    return lr, False


def check_callback(callback, call: str, name: str = "callback") -> None:
    """ValueError unless ``callback`` is None or callable (``call`` says how it is called)."""
    if callback is not None and not callable(callback):
        raise ValueError(f"{name} must be a function, {call}, or None; got {type(callback).__name__} {callback!r}")


VALIDATION = ("validation", "validation_fraction", "early_stopping", "n_iter_no_change")


def without_defaults(options: dict, names) -> dict:
    """``options`` less those of ``names`` that hold their defaults (a config spells every option out)."""
    default = FitOptions()
    return {k: v for k, v in options.items() if k not in names or not _same(v, getattr(default, k))}


def _same(value, default) -> bool:
    return value is default or (type(value) is type(default) and value == default)


def _check_validation(o: FitOptions) -> FitOptions:
    """The validation options, resolved: early stopping without validation data holds out 10% (scikit-learn's)."""
    if not _validation.is_bool(o.early_stopping):
        raise ValueError(f"early_stopping must be True or False, got {o.early_stopping!r}")
    patience = _validation.positive_int(o.n_iter_no_change, "n_iter_no_change")
    fraction = o.validation_fraction
    if fraction is not None and (_validation.is_bool(fraction) or not isinstance(fraction, numbers.Real)
                                 or not 0 < fraction < 1):
        raise ValueError(f"validation_fraction must be a number in (0, 1), e.g. 0.1, got {fraction!r}")
    if o.validation is not None:
        if fraction is not None:
            raise ValueError("give validation=(X_val, y_val) or validation_fraction, not both")
        if not isinstance(o.validation, (tuple, list)) or len(o.validation) not in (2, 3):
            raise ValueError("validation must be a pair (X_val, y_val) or a triple (X_val, y_val, sample_weight_val)")
    elif fraction is None and o.early_stopping:
        fraction = 0.1
    if (o.validation is not None or fraction is not None) and o.batched:
        raise ValueError("validation takes one problem: fit batched problems without it, or one by one")
    return o._replace(validation_fraction=None if fraction is None else float(fraction), n_iter_no_change=patience,
                      early_stopping=bool(o.early_stopping))


def _check_long_run(o: FitOptions) -> FitOptions:
    if not _validation.is_bool(o.progress):
        raise ValueError(f"progress must be True or False, got {o.progress!r}")
    check_callback(o.callback, "callback(state, history), called between chunks")
    if o.checkpoint is None:
        if o.resume is not False or o.overwrite is not False or o.checkpoint_every is not None:
            raise ValueError("resume, overwrite and checkpoint_every need checkpoint=PATH, the checkpoint file to "
                             "write and resume from")
        return o
    if not isinstance(o.checkpoint, (str, os.PathLike)):
        raise ValueError(f"checkpoint must be a file path (str or pathlib.Path), got {type(o.checkpoint).__name__}")
    for name in ("resume", "overwrite"):
        if not _validation.is_bool(getattr(o, name)):
            raise ValueError(f"{name} must be True or False, got {getattr(o, name)!r}")
    path = Path(o.checkpoint)
    if path.is_dir():
        raise ValueError(f"checkpoint {str(path)!r} is a folder: give a file path, "
                         f"e.g. {str(path / 'checkpoint.npz')!r}")
    try:
        _io.check_writable(path.parent, "checkpoint folder")
    except OSError as e:
        raise ValueError(str(e)) from None
    return o._replace(checkpoint=path, checkpoint_every=parse_every(o.checkpoint_every))


class Every(NamedTuple):
    """Checkpoint (between chunks) after ``steps`` more steps or ``seconds`` more seconds (None: not by that)."""

    steps: int | None = None
    seconds: float | None = None


DEFAULT_EVERY_SECONDS = 60.0


def parse_every(value) -> Every:
    """Normalise ``checkpoint_every``: None (60 s), an int (steps), a ``timedelta`` or :class:`Every`."""
    if value is None:
        return Every(seconds=DEFAULT_EVERY_SECONDS)
    if isinstance(value, datetime.timedelta):
        value = Every(seconds=value.total_seconds())
    elif _validation.is_int(value):
        value = Every(steps=int(value))
    if not isinstance(value, Every):
        raise ValueError(f"checkpoint_every must be a number of steps (int), a datetime.timedelta, or "
                         f"gradfit.checkpoint.Every(steps=..., seconds=...), got {value!r}")
    steps, seconds = value
    if steps is not None and (not _validation.is_int(steps) or steps <= 0):
        raise ValueError(f"checkpoint_every steps must be a positive integer, got {steps!r}")
    if seconds is not None and (_validation.is_bool(seconds) or not isinstance(seconds, numbers.Real)
                                or not seconds > 0):
        raise ValueError(f"checkpoint_every seconds must be a positive number, got {seconds!r}")
    if steps is None and seconds is None:
        raise ValueError("checkpoint_every=Every() sets neither steps nor seconds: give at least one")
    return Every(None if steps is None else int(steps), None if seconds is None else float(seconds))


def check_program(loss: str, reduction: str, grad: str, spec: _optim.OptimizerSpec, batch_size: int | None) -> None:
    """The rules on which loss, reduction, plan, optimizer and batching go together."""
    losses.check_model(loss, reduction, grad, _plan.GRAD_MODES)
    if batch_size is not None and spec.name in _optim.LINE_SEARCH:
        raise ValueError("optimizer 'lbfgs' needs full batches: leave batch_size unset, or use 'sgd'/'adam' for "
                         "minibatches")
    _plan.check(grad, loss=loss, batch_size=batch_size, line_search=spec.name in _optim.LINE_SEARCH)


def check(options: FitOptions | dict) -> Checked:
    """Check every option that does not depend on the data; ValueError names the bad one."""
    o = FitOptions(**options) if isinstance(options, dict) else options
    steps = _validation.positive_int(o.steps, "steps")
    chunk_size = None if o.chunk_size is None else _validation.positive_int(o.chunk_size, "chunk_size")
    if chunk_size is not None and o.checkpoint is None:  # a chunk's history is chunk_size long: no longer than the run
        chunk_size = min(chunk_size, steps)  # (a checkpoint keeps it: resuming with more steps needs the same chunks)
    batch_size = None if o.batch_size is None else _validation.positive_int(o.batch_size, "batch_size")
    n_rows = None if o.n_rows is None else _validation.positive_int(o.n_rows, "n_rows")
    if o.shuffle not in SHUFFLES:
        raise ValueError(f"unknown shuffle {o.shuffle!r}: use 'blocks' (contiguous batches in random order), "
                         "'rows' (a permutation of the rows per epoch) or 'none' (batches in order)")
    for name in ("fit_intercept", "batched", "standardize"):
        if not _validation.is_bool(getattr(o, name)):
            raise ValueError(f"{name} must be True or False, got {getattr(o, name)!r}")
    if isinstance(o.init, str) and o.init not in ("zeros", "normal"):
        raise ValueError(f"unknown init {o.init!r}: use None or 'zeros', 'normal', or a gradfit.Params")
    if not (o.init is None or isinstance(o.init, (str, Params)) or (isinstance(o.init, tuple) and len(o.init) == 2)):
        raise ValueError(f"init must be None, 'zeros', 'normal' or gradfit.Params(W, b), got {type(o.init).__name__}")
    seed = _validation.seed(o.seed)
    o = _check_validation(o)
    lr, auto_step = _check_learning_rate(o)
    spec, traced = _optim.resolve(o.optimizer, o.optimizer_options, lr)
    check_program(o.loss, o.reduction, o.grad, spec, batch_size)
    lr_arr = None if lr is None else _validation.hyperparameter(lr, "learning_rate", positive=True,
                                                                allowed_ndims=(0, 1))
    l2 = _validation.hyperparameter(o.l2, "l2", positive=False, allowed_ndims=(0, 1))
    tol, ftol = (np.asarray(-1.0) if v is None else _validation.hyperparameter(v, name, positive=False)
                 for name, v in (("tol", o.tol), ("ftol", o.ftol)))
    o = _check_long_run(o)._replace(steps=steps, chunk_size=chunk_size, batch_size=batch_size, n_rows=n_rows,
                                    seed=seed, fit_intercept=bool(o.fit_intercept), batched=bool(o.batched),
                                    standardize=bool(o.standardize))
    return Checked(o, spec, traced, lr_arr, auto_step, l2, tol, ftol)


def check_step(c: Checked, curvature: float, dtype) -> None:
    """Refuse values that overflow ``dtype`` (hyperparameters, ``init``), and a learning rate that rounds to 0 or
    (sgd) whose step ``lr * curvature`` along a standardised column is below its resolution."""
    finfo = np.finfo(dtype)
    big = float(finfo.max)
    values = {"learning_rate": c.learning_rate, "l2": c.l2, "tol": c.tol, "ftol": c.ftol, **c.traced}
    for name, value in values.items():
        if value is not None and np.max(np.abs(value)) > big:
            raise ValueError(f"{name} = {np.max(np.abs(value)):g} overflows {np.dtype(dtype)} (largest {big:.3g}), "
                             f"where it would be inf: use a smaller {name}, or fit in float64 (jax_enable_x64)")
    if isinstance(c.options.init, tuple):
        for name, a in zip(("W", "b"), c.options.init):
            a = _validation.as_numeric(a, f"init.{name}")
            _validation.check_finite(a, f"init.{name}")
            if np.size(a) and float(np.max(np.abs(a))) > big:
                raise ValueError(f"init {name} holds values up to {float(np.max(np.abs(a))):g}, which overflow "
                                 f"{np.dtype(dtype)} (largest {big:.3g}): start from smaller params, or fit in float64")
    if c.learning_rate is None or c.auto_step:
        return
    lr = float(np.min(c.learning_rate))
    if lr < float(finfo.tiny) or (c.optimizer.name == "sgd" and lr * float(curvature) < float(finfo.eps)):
        raise ValueError(f"learning_rate={lr:g} is below {np.dtype(dtype)}'s resolution for this problem: a step "
                         f"would move the parameters by less than one part in {1 / float(finfo.eps):.0e} of the "
                         f"optimal step (1/curvature = {1 / float(curvature):.3g}); use a larger learning_rate, or "
                         "learning_rate='auto'")


def for_data(c: Checked, *, m: int, n: int, k: int | None, sharded: bool = False, members: int = 1,
             condition: float | None = None) -> str:
    """The checks that need the shape (m, n, k or None); returns the plan (:func:`gradfit._plan.choose`), for
    ``"auto"`` by the evaluations expected at the estimated ``condition`` number (None: by the step budget)."""
    o = c.options
    if o.batch_size is not None and o.batch_size > m:
        raise ValueError(f"batch_size={o.batch_size} is larger than the {m} rows of X: use batch_size <= {m} or None "
                         "for full batches")
    for name, value in (("learning_rate", c.learning_rate), ("l2", c.l2)):
        if value is not None and value.ndim == 1 and (k is None or value.shape != (k,)):
            expected = "()" if k is None else f"() or ({k},)"
            raise ValueError(f"{name} has shape {value.shape}: expected {expected}, one value per output column")
    if isinstance(o.init, tuple):  # Params included
        W, b = (np.shape(a) for a in o.init)
        out = () if k is None else (k,)
        if tuple(W) != (n, *out) or tuple(b) != out:
            raise ValueError(f"init has W {tuple(W)} and b {tuple(b)} but this problem needs W {(n, *out)} "
                             f"and b {out}: W is (n_features,) or (n_features, k), b is () or (k,)")
    steepest = c.auto_step and c.optimizer.name == "sgd" and not o.optimizer_options
    evals = _plan.expected_evaluations(steps=o.steps, condition=condition, tol=float(np.max(c.tol)),
                                       line_search=c.line_search, steepest=steepest)
    return _plan.choose(o.grad, loss=o.loss, m=m, n=n, k=k or 1, steps=o.steps, batch_size=o.batch_size,
                        line_search=c.line_search, sharded=sharded,
                        members=members * (k if k is not None and per_output(c) else 1),
                        evals=None if condition is None else evals)


def per_output(c: Checked) -> bool:
    """Whether the output columns are independent problems (a (k,) learning_rate or l2)."""
    return (c.learning_rate is not None and c.learning_rate.ndim == 1) or c.l2.ndim == 1


def with_options_signature(fn, *, exclude=()):
    """Give ``fn(X, y, *, ..., **options)`` a signature listing every fit option with its default, and their
    :data:`DOCS` where its docstring says ``{options}``."""
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
    have = {p.name for p in params}
    names = [n for n in NAMES if n not in have and n not in exclude]
    params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=getattr(FitOptions(), n)) for n in names]
    fn.__signature__ = sig.replace(parameters=params)
    # DOCS, one entry per option (an entry starts at a line "      name:")
    docs = {e.split(":", 1)[0].strip(): e for e in re.split(r"^(?=      \w+:)", DOCS, flags=re.MULTILINE) if e}
    fn.__doc__ = (fn.__doc__ or "").replace("{options}\n", "".join(docs[n] for n in names))
    return fn
