"""gradfit: linear and logistic regression by gradient descent, compiled end to end with JAX.

Public surface::

    gradfit.fit(X, y, ...)            -> FitResult      (solver)
    gradfit.Params(W, b)                                (the model's pytree)
    gradfit.losses.mse / bce / l2_penalty               (pure losses)
    gradfit.gradients.mse / bce                         (hand-derived gradients)
    gradfit.check_gradients()                           (hand vs jax.grad table)
    gradfit.health.safe_learning_rate / conditioning    (numerical health: 1/L, condition)

Importing gradfit changes no JAX setting; enable float64 yourself with
``jax.config.update("jax_enable_x64", True)``.
"""

from gradfit import gradients as gradients
from gradfit import health as health
from gradfit import losses as losses
from gradfit._params import Params as Params
from gradfit._params import predict as predict
from gradfit.gradients import check_gradients as check_gradients
from gradfit.solver import FitResult as FitResult
from gradfit.solver import fit as fit

__version__ = "0.1.0"

__all__ = ["FitResult", "Params", "check_gradients", "fit", "gradients", "health", "losses", "predict"]
