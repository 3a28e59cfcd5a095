"""Optimizers: optax aliases by name (or any ``optax.GradientTransformation``), built *inside* the traced program
with float hyperparameters as arrays (a new value recompiles nothing, a grid vmaps); other options are static."""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradfit._validation import suggest

# optax aliases that take a learning rate and need only gradients (lbfgs: also the objective, which is passed)
OPTIMIZERS = ("sgd", "adam", "adamw", "adamax", "adamaxw", "amsgrad", "adabelief", "adadelta", "adafactor", "adagrad",
              "adan", "fromage", "lamb", "lars", "lbfgs", "lion", "nadam", "nadamw", "novograd", "radam", "rmsprop",
              "rprop", "sign_sgd", "signum", "sm3", "yogi")
LINE_SEARCH = ("lbfgs",)  # the learning rate is optional: None lets the line search choose


class OptimizerSpec(NamedTuple):
    """The optimizer as the program sees it (hashable): an alias ``name`` or a ``transformation``; ``traced``
    names the float options passed as arrays, ``static`` holds the rest as ``(name, value)`` pairs."""

    name: str | None
    transformation: Any
    traced: tuple[str, ...]
    static: tuple[tuple[str, Any], ...]


def resolve(optimizer, options: dict[str, Any] | None, learning_rate) -> tuple[OptimizerSpec, dict[str, float]]:
    """Check an optimizer choice (ValueError: unknown name or option, out of range, a transformation given
    ``learning_rate`` or options); return its spec and the float options to pass as arrays."""
    options = dict(options or {})
    if isinstance(optimizer, (optax.GradientTransformation, optax.GradientTransformationExtraArgs)):
        if options or learning_rate is not None:
            raise ValueError("optimizer is an optax.GradientTransformation, which carries its own learning rate and "
                             "options: leave learning_rate and optimizer_options unset, or pass the optimizer by name "
                             "(e.g. optimizer='adam', learning_rate=1e-3)")
        return OptimizerSpec(None, optimizer, (), ()), {}
    if not isinstance(optimizer, str):
        raise ValueError(f"optimizer must be an optax alias name or an optax.GradientTransformation, "
                         f"got {type(optimizer).__name__}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}{suggest(optimizer, OPTIMIZERS)}: use one of "
                         f"{', '.join(OPTIMIZERS)} or pass an optax.GradientTransformation")
    if learning_rate is None and optimizer not in LINE_SEARCH:
        raise ValueError(f"optimizer {optimizer!r} needs a learning_rate (a positive float)")
    allowed = [p for p in inspect.signature(getattr(optax, optimizer)).parameters if p != "learning_rate"]
    for key, value in sorted(options.items()):
        if key not in allowed:
            raise ValueError(f"unknown option {key!r} for optimizer {optimizer!r}{suggest(key, allowed)}: "
                             f"its options are {', '.join(allowed)}")
        _check_range(optimizer, key, value)
    traced = {key: value for key, value in sorted(options.items()) if isinstance(value, float)}
    static = tuple((key, value) for key, value in sorted(options.items()) if key not in traced)
    spec = OptimizerSpec(optimizer, None, tuple(traced), static)
    if not options:  # the alias's defaults build
        return spec, traced
    try:
        _check_builds(spec)
    except TypeError:  # an unhashable static option: check it without the cache
        _check_builds.__wrapped__(spec)
    return spec, traced


_NONNEGATIVE = ("eps_root", "weight_decay", "weight_decay_rate", "initial_accumulator_value", "initial_scale",
                "trust_coefficient", "min_norm", "min_step_size", "clipping_threshold")
# option -> (low, high, whether low is allowed (also where it is the alias's default), what it is); high never is
_RANGES = {
    **dict.fromkeys(("b1", "b2", "b3", "beta", "decay", "rho", "momentum"), (
        0.0, 1.0, True, "a decay rate: 1 or more never forgets a gradient and the steps grow without bound")),
    **dict.fromkeys(_NONNEGATIVE, (0.0, math.inf, True, "a non-negative amount")),
    "eps": (0.0, math.inf, False, "a denominator's guard: 0 divides by zero"),
    "eta_minus": (0.0, 1.0, False, "the factor that shrinks a step"),
    "eta_plus": (1.0, math.inf, False, "the factor that grows a step"),
    "max_step_size": (0.0, math.inf, False, "a step size"),
    "memory_size": (1, math.inf, True, "the number of past gradients kept"),
}


def _check_range(optimizer: str, key: str, value) -> None:
    """ValueError for a number option that is NaN, inf or outside its range (:data:`_RANGES`)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return  # None, booleans and other types: optax's own check (_check_builds)
    if not math.isfinite(value):
        raise ValueError(f"optimizer_options {key}={value!r} for {optimizer!r} must be a finite number")
    lo, hi, closed, what = _RANGES.get(key, (-math.inf, math.inf, False, ""))
    closed = closed or inspect.signature(getattr(optax, optimizer)).parameters[key].default == lo
    if not (lo <= value < hi) or (value == lo and not closed):
        raise ValueError(f"optimizer_options {key}={value!r} for {optimizer!r} is out of range: {key} must be in "
                         f"{'[' if closed else '('}{lo:g}, {hi:g}) ({what})")


@functools.cache
def _check_builds(spec: OptimizerSpec) -> None:
    """Trace one init and update (``jax.eval_shape``: no compute): an option of the wrong type is a ValueError."""

    def trial(lr, traced):
        opt = build(spec, lr, traced)
        p = (jnp.zeros((2,), jnp.float32), jnp.zeros((), jnp.float32))
        return opt.update(p, opt.init(p), p, value=jnp.zeros((), jnp.float32), grad=p,
                          value_fn=lambda q: jnp.sum(q[0] * q[0]) + q[1] * q[1])[0]

    scalar = jax.ShapeDtypeStruct((), jnp.float32)  # shapes only: nothing is created or compiled
    try:
        jax.eval_shape(trial, None if spec.name in LINE_SEARCH else scalar, {name: scalar for name in spec.traced})
    except (TypeError, ValueError, AttributeError, IndexError, KeyError) as e:
        given = ", ".join(f"{k}={v!r}" for k, v in spec.static) or "none"
        raise ValueError(f"optax.{spec.name} rejected its options ({given}; float options are checked as floats): "
                         f"{type(e).__name__}: {(str(e).splitlines() or [''])[0].rstrip('.')}. Check each option's "
                         f"type in the documentation of optax.{spec.name}") from None


def build(spec: OptimizerSpec, learning_rate, traced: dict[str, Any]) -> optax.GradientTransformationExtraArgs:
    """The optax transformation, in a traced program; ``learning_rate`` None: a line search's own step."""
    if spec.transformation is not None:
        return optax.with_extra_args_support(spec.transformation)
    kwargs = {**dict(spec.static), **{name: traced[name] for name in spec.traced}}
    kwargs.update({} if learning_rate is None else {"learning_rate": learning_rate})
    return optax.with_extra_args_support(getattr(optax, spec.name)(**kwargs))
