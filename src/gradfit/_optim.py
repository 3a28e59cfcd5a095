"""Optimizers: optax aliases by name, with float hyperparameters as traced arrays.

A fit names an optax alias (``"sgd"``, ``"adam"``, ``"lbfgs"``, ...) or passes any
``optax.GradientTransformation``. A named optimizer is built *inside* the traced program from
array hyperparameters, so a new learning rate, momentum or beta is new data, not a new program:
nothing recompiles and a grid of them vmaps. Options that change the program (booleans such as
``nesterov``, integers such as ``memory_size``) are static.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradfit._validation import suggest

# optax aliases that take a learning rate and need nothing but gradients (and, for lbfgs, the
# objective's value and a way to evaluate it, which the solver passes).
OPTIMIZERS = (
    "sgd", "adam", "adamw", "adamax", "adamaxw", "amsgrad", "adabelief", "adadelta",
    "adafactor", "adagrad", "adan", "fromage", "lamb", "lars", "lbfgs", "lion", "nadam",
    "nadamw", "novograd", "radam", "rmsprop", "rprop", "sign_sgd", "signum", "sm3", "yogi",
)
LINE_SEARCH = ("lbfgs",)  # the learning rate is optional: None lets the line search choose


class OptimizerSpec(NamedTuple):
    """What the compiled program needs to know about the optimizer (hashable, static): an optax
    alias ``name``, or a user's ``transformation``; ``traced`` names the float options passed as
    arrays, ``static`` holds the rest as ``(name, value)`` pairs."""

    name: str | None
    transformation: Any
    traced: tuple[str, ...]
    static: tuple[tuple[str, Any], ...]


def resolve(optimizer, options: dict[str, Any] | None, learning_rate) -> tuple[OptimizerSpec, dict[str, float]]:
    """Check an optimizer choice; return its spec and the float options to pass as arrays.

    ``ValueError`` for an unknown name or option, and for a ``GradientTransformation`` given
    ``learning_rate`` or options (it carries its own).
    """
    options = dict(options or {})
    if isinstance(optimizer, (optax.GradientTransformation, optax.GradientTransformationExtraArgs)):
        if options or learning_rate is not None:
            raise ValueError(
                "optimizer is an optax.GradientTransformation, which carries its own learning "
                "rate and options: leave learning_rate and optimizer_options unset, or pass the "
                "optimizer by name (e.g. optimizer='adam', learning_rate=1e-3)"
            )
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
    for key in sorted(options):
        if key not in allowed:
            raise ValueError(f"unknown option {key!r} for optimizer {optimizer!r}{suggest(key, allowed)}: "
                             f"its options are {', '.join(allowed)}")
    traced = {key: value for key, value in sorted(options.items()) if isinstance(value, float)}
    static = tuple((key, value) for key, value in sorted(options.items()) if key not in traced)
    spec = OptimizerSpec(optimizer, None, tuple(traced), static)
    try:
        _check_builds(spec)
    except TypeError:  # an unhashable static option: check it without the cache
        _check_builds.__wrapped__(spec)
    return spec, traced


@functools.cache
def _check_builds(spec: OptimizerSpec) -> None:
    """Trace one init and update on a tiny problem (``jax.eval_shape``: no compute), so that an
    option of the wrong type is a ValueError naming it before the fit compiles, not a TypeError
    from inside optax."""

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
        raise ValueError(
            f"optax.{spec.name} rejected its options ({given}; float options are checked as floats): "
            f"{type(e).__name__}: {(str(e).splitlines() or [''])[0].rstrip('.')}. Check each option's type in "
            f"the documentation of optax.{spec.name}"
        ) from None


def build(spec: OptimizerSpec, learning_rate, traced: dict[str, Any]) -> optax.GradientTransformationExtraArgs:
    """Make the optax transformation inside a traced program (arrays in, no recompiles);
    ``learning_rate`` is an array, or None for a line search's own step."""
    if spec.transformation is not None:
        return optax.with_extra_args_support(spec.transformation)
    kwargs = {**dict(spec.static), **{name: traced[name] for name in spec.traced}}
    if learning_rate is not None:
        kwargs["learning_rate"] = learning_rate
    return optax.with_extra_args_support(getattr(optax, spec.name)(**kwargs))
