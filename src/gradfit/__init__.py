"""gradfit: linear and logistic regression by gradient descent, compiled end to end with JAX.

Public surface::

    gradfit.fit(X, y, ...)            -> FitResult      (solver)
    gradfit.Params(W, b)                                (the model's pytree)
    gradfit.losses.mse / bce / l2_penalty               (pure losses)
    gradfit.gradients.mse / bce                         (hand-derived gradients)
    gradfit.check_gradients()                           (hand vs jax.grad table)
    gradfit.solve(params0, X, y, ..., steps=)  -> Solution   (pure; jit/vmap/grad-able)
    gradfit.datasets                                    (synthetic and small real data)
    gradfit.sklearn.GDRegressor / GDClassifier          (import gradfit.sklearn; needs scikit-learn)
    gradfit.shard_rows(data, devices) -> Data           (rows split over devices; sharding)
    gradfit.distributed.initialize / load_rows          (several processes or hosts)

Importing gradfit changes no JAX setting; enable float64 yourself with
``jax.config.update("jax_enable_x64", True)``.
"""

from gradfit import datasets as datasets
from gradfit import distributed as distributed
from gradfit import gradients as gradients
from gradfit import losses as losses
from gradfit._params import Params as Params
from gradfit._params import predict as predict
from gradfit.gradients import check_gradients as check_gradients
from gradfit.functional import Solution as Solution
from gradfit.functional import solve as solve
from gradfit.solver import FitResult as FitResult
from gradfit.sharding import shard_rows as shard_rows
from gradfit.solver import fit as fit

__version__ = "0.1.0"

__all__ = [
    "FitResult", "Params", "Solution", "check_gradients", "datasets", "distributed", "fit",
    "gradients", "losses", "predict", "shard_rows", "solve",
]
