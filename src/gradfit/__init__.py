"""gradfit: linear and logistic regression by gradient descent, compiled end to end with JAX.

Public surface::

    gradfit.fit(X, y, ...)            -> FitResult      (solver)
    gradfit.sweep(X, y, grid={...})   -> SweepResult    (the fit, vmapped over a grid: gradfit.sweeps)
    gradfit.sweep(X, y, grid=, cv=5)  -> SweepResult    (cross-validated: folds vmapped with the grid; .cv, .best)
    gradfit.Params(W, b)                                (the model's pytree)
    gradfit.losses.mse / bce / l2_penalty               (pure losses)
    gradfit.gradients.mse / bce                         (hand-derived gradients)
    gradfit.gradients.mse_value_and_grad / ...          (J and dJ sharing X W + b; xt_dot: X^T s in place)
    gradfit.check_gradients()                           (hand vs jax.grad table)
    gradfit.health.safe_learning_rate / conditioning    (numerical health: 1/L, condition)
    gradfit.solve(params0, X, y, ..., steps=)  -> Solution   (pure; jit/vmap/grad-able)
    gradfit.datasets                                    (synthetic and small real data)
    gradfit.data.load_file(path, target, features)      (.npy, .npz, .csv, .parquet)
    gradfit.sklearn.GDRegressor / GDClassifier          (import gradfit.sklearn; needs scikit-learn)
    gradfit.sklearn.GDRegressorCV / GDClassifierCV      (RidgeCV / LogisticRegressionCV, one compiled program)
    gradfit.shard_rows(data, devices) -> Data           (rows split over devices; sharding)
    gradfit.distributed.initialize / load_rows          (several processes or hosts)
    gradfit.resume(path, X, y)        -> FitResult      (continue a checkpointed fit)
    gradfit.checkpoint / progress                       (long runs: checkpoints, progress bars)
    gradfit.fit_streaming("X.npy", "y.npy", ...)        (data bigger than memory, streamed)
    gradfit.Interrupted                                 (Ctrl-C/SIGTERM: the run saved where it stopped)
    gradfit.enable_compilation_cache(path=None)         (opt-in: fresh processes load compiled programs from disk)

Importing gradfit changes no JAX setting (float64: ``jax.config.update("jax_enable_x64", True)``; the ``gradfit``
command turns on the persistent compilation cache). The input dtype is respected; a 16-bit X stays 16-bit on the
device (``gradfit._precision``)."""

from gradfit import checkpoint as checkpoint
from gradfit import data as data
from gradfit import datasets as datasets
from gradfit import distributed as distributed
from gradfit import gradients as gradients
from gradfit import health as health
from gradfit import losses as losses
from gradfit import progress as progress
from gradfit import stream as stream
from gradfit import sweeps as sweeps
from gradfit._cv import CVScores as CVScores
from gradfit._driver import Interrupted as Interrupted
from gradfit._compile_cache import enable_compilation_cache as enable_compilation_cache
from gradfit._params import predict as predict
from gradfit._types import Data as Data
from gradfit._types import Params as Params
from gradfit.functional import Solution as Solution
from gradfit.functional import solve as solve
from gradfit.gradients import check_gradients as check_gradients
from gradfit.sharding import shard_rows as shard_rows
from gradfit.solver import FitResult as FitResult
from gradfit.solver import fit as fit
from gradfit.solver import resume as resume
from gradfit.stream import fit_streaming as fit_streaming
from gradfit.sweeps import SweepResult as SweepResult
from gradfit.sweeps import sweep as sweep

__version__ = "0.1.0"

__all__ = [
    "CVScores", "Data", "FitResult", "Interrupted", "Params", "Solution", "SweepResult", "check_gradients",
    "checkpoint", "data", "datasets", "distributed", "enable_compilation_cache", "fit", "fit_streaming", "gradients",
    "health", "losses", "predict", "progress", "resume", "shard_rows", "solve", "stream", "sweep", "sweeps",
]
