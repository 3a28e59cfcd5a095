"""Problems with known truth, and small real data sets from scikit-learn, as :class:`Dataset` ``(X, y, truth)``."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gradfit._types import Params


class Dataset(NamedTuple):
    X: np.ndarray  # (m, n)
    y: np.ndarray  # (m,) or (m, k)
    truth: Params | None  # generating weights of a synthetic problem


def make_regression(n_samples: int = 10_000, n_features: int = 16, *, n_outputs: int | None = None,
                    noise: float = 0.1, seed: int = 0, dtype=np.float32) -> Dataset:
    """``y = X W + b + noise * e`` with X, W, e standard normal and b uniform in [-1, 1]."""
    rng = np.random.default_rng(seed)
    out = () if not n_outputs else (n_outputs,)
    X = rng.standard_normal((n_samples, n_features))
    W = rng.standard_normal((n_features, *out))
    b = rng.uniform(-1, 1, out)
    y = X @ W + b + noise * rng.standard_normal((n_samples, *out))
    return Dataset(X.astype(dtype), y.astype(dtype), Params(W.astype(dtype), np.asarray(b, dtype)))


def make_classification(n_samples: int = 10_000, n_features: int = 16, *, seed: int = 0, dtype=np.float32) -> Dataset:
    """Logistic data: ``y ~ Bernoulli(sigmoid(X W + b))``, X and W standard normal, W scaled by 1/sqrt(n)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, n_features))
    W = rng.standard_normal(n_features) * (2 / np.sqrt(n_features))
    b = rng.uniform(-0.5, 0.5)
    y = (rng.random(n_samples) < 1 / (1 + np.exp(-(X @ W + b)))).astype(dtype)
    return Dataset(X.astype(dtype), y, Params(W.astype(dtype), np.asarray(b, dtype)))


def standardize(X: np.ndarray) -> np.ndarray:
    """Columns scaled to mean 0 and standard deviation 1 (constant columns left at 0)."""
    std = X.std(axis=0)
    return (X - X.mean(axis=0)) / np.where(std > 0, std, 1)


def _sklearn(name: str, dtype) -> Dataset:
    """scikit-learn's data set ``load_<name>``, X standardised, y as given."""
    try:
        from sklearn import datasets
    except ImportError:
        raise ValueError("the real data sets ship inside scikit-learn, which is not installed: "
                         "pip install 'gradfit[data]' (or scikit-learn), or use source = 'synthetic'") from None
    d = getattr(datasets, f"load_{name}")()
    return Dataset(standardize(d.data).astype(dtype), d.target.astype(dtype), None)


def feature_names(name: str) -> list[str]:
    """The column names of the built-in real data set ``name`` ("diabetes" or "breast_cancer")."""
    from sklearn import datasets

    return [str(c) for c in getattr(datasets, f"load_{name}")().feature_names]


def load_diabetes(*, dtype=np.float32) -> Dataset:
    """scikit-learn's diabetes regression data (442 x 10), X standardised, y as given."""
    return _sklearn("diabetes", dtype)


def load_breast_cancer(*, dtype=np.float32) -> Dataset:
    """scikit-learn's breast cancer classification data (569 x 30), X standardised, y in {0, 1}."""
    return _sklearn("breast_cancer", dtype)


BUILTIN = {"synthetic": make_regression, "synthetic_classification": make_classification,
           "diabetes": load_diabetes, "breast_cancer": load_breast_cancer}
