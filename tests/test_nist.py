"""Accuracy against certified values nobody here computed: the NIST StRD linear regressions.

The data and the certified coefficients are NIST's (tests/data/nist, public domain). LRE is the
log relative error, ``-log10(max_j |b_j - c_j| / |c_j|)``, the number of correct digits of the
worst coefficient. In float64 every fit must reach LRE >= 6 (Wampler5, whose R^2 is 0.002: 4)
with the default plan (the statistics, for mse) and with a direct plan, or, where float64 cannot
(Filip), not claim convergence.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import gradfit
from _sample import crossed, thinned

DATA = Path(__file__).parent / "data" / "nist"
REQUIRED = {"Norris": 6, "Pontius": 6, "NoInt1": 6, "NoInt2": 6, "Longley": 6, "Wampler1": 6, "Wampler2": 6,
            "Wampler3": 6, "Wampler4": 6, "Wampler5": 4}


def load(name: str):
    """(X, y, certified coefficients with the intercept first, intercept?) of one NIST file."""
    lines = (DATA / f"{name}.txt").read_text().splitlines()
    meta = {line[2:].split(":", 1)[0]: line.split(":", 1)[1].strip() for line in lines if line.startswith("# ")}
    rows = np.array([[float(v) for v in line.split()] for line in lines if line and not line.startswith("#")])
    y, x = rows[:, 0], rows[:, 1:]
    degree = meta["degree"]
    X = np.stack([x[:, 0] ** p for p in range(1, int(degree) + 1)], axis=1) if degree.isdigit() else x
    certified = np.array([float(v) for v in meta["certified"].split()])
    return X, y, certified, meta["intercept"] == "True"


def lre(got: np.ndarray, certified: np.ndarray) -> float:
    err = np.max(np.abs(got - certified) / np.abs(certified))
    return float(-np.log10(err)) if err > 0 else 16.0


def fit(name: str, **options):
    X, y, certified, intercept = load(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ill-conditioning warnings are the point of these data
        r = gradfit.fit(X, y, fit_intercept=intercept, optimizer="lbfgs", steps=500, tol=1e-12, **options)
    got = np.concatenate([[float(r.params.b)], np.asarray(r.params.W)]) if intercept else np.asarray(r.params.W)
    return r, lre(got, certified)


# Every data set with the default plan, and the direct plan on the Wampler polynomials (Wampler5 the hardest: R^2
# 0.002): one shape, so one compiled program serves all five (a fit compiles per column count and intercept).
@pytest.mark.parametrize("name, grad", crossed(sorted(REQUIRED), ["auto", "hand"], fast=[
    *((name, "auto") for name in REQUIRED), *((f"Wampler{i}", "hand") for i in range(1, 6))]))
def test_certified_coefficients(x64, name, grad):
    r, digits = fit(name, grad=grad)
    assert r.params.W.dtype == np.float64
    assert digits >= REQUIRED[name], (name, grad, digits, r.status, r.stats["grad_norm"])


@pytest.mark.parametrize("grad", thinned(["auto", "hand"], fast=["auto"]))
def test_filip_is_accurate_or_says_it_is_not(x64, grad):
    r, digits = fit("Filip", grad=grad)
    assert digits >= 6 or not r.converged, (digits, r.status, r.stats["grad_norm"])


def test_numpy_lstsq_is_the_yardstick(x64):
    """The same LRE measured on numpy's answer (for the closing note's table; not a gradfit claim)."""
    X, y, certified, intercept = load("Longley")
    A = np.hstack([np.ones((len(X), 1)), X]) if intercept else X
    assert lre(np.linalg.lstsq(A, y, rcond=None)[0], certified) >= 6
