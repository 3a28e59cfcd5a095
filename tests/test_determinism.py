"""The same seed gives the same bits on the CPU: twice in one process, and across processes.

What is and is not deterministic on GPU is in docs/faults.md ("Determinism").
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import gradfit
from _sample import thinned

SRC = Path(__file__).resolve().parents[1] / "src"

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="bit-for-bit claims are for the CPU")


def _bits(result) -> bytes:
    """Every number a fit returns, as raw bytes (NaN-safe, sign-of-zero-safe)."""
    parts = [np.asarray(result.params.W), np.asarray(result.params.b), np.asarray(result.loss), np.asarray(result.losses)]
    return b"".join(p.tobytes() for p in parts)


@pytest.fixture
def problem(rng):
    X = rng.standard_normal((101, 5)).astype(np.float32)
    y = (X @ rng.standard_normal(5) + 0.1 * rng.standard_normal(101)).astype(np.float32)
    return X, y


@pytest.mark.parametrize(
    "kwargs",
    thinned([
        dict(learning_rate=0.1, steps=300),
        dict(optimizer="adam", learning_rate=0.05, steps=300, init="normal"),
        dict(batch_size=16, learning_rate=0.05, steps=40),
        dict(batch_size=7, optimizer="sgd", optimizer_options={"momentum": 0.9}, learning_rate=0.01, steps=30),
    ], fast=[dict(optimizer="adam", learning_rate=0.05, steps=300, init="normal"),
             dict(batch_size=7, optimizer="sgd", optimizer_options={"momentum": 0.9}, learning_rate=0.01, steps=30)]),
    ids=["full-batch", "adam-normal-init", "minibatch", "minibatch-momentum"],
)
def test_same_seed_same_bits(problem, kwargs):
    X, y = problem
    a = gradfit.fit(X, y, seed=3, **kwargs)
    b = gradfit.fit(X, y, seed=3, **kwargs)
    assert _bits(a) == _bits(b)


def test_the_seed_matters_for_minibatches(problem):
    """The test above could not fail if the seed were ignored: a new seed gives new bits (its minibatch case's
    settings, so its compiled programs serve here too)."""
    X, y = problem
    kwargs = dict(batch_size=7, optimizer="sgd", optimizer_options={"momentum": 0.9}, learning_rate=0.01, steps=5)
    a = gradfit.fit(X, y, seed=3, **kwargs)
    b = gradfit.fit(X, y, seed=4, **kwargs)
    assert _bits(a) != _bits(b)


def test_same_bits_with_vmapped_outputs_and_problems(rng):
    X = rng.standard_normal((3, 40, 4)).astype(np.float32)
    y = rng.standard_normal((3, 40, 2)).astype(np.float32)
    kwargs = dict(batched=True, learning_rate=np.array([0.1, 0.05]), batch_size=8, steps=10, seed=1)
    assert _bits(gradfit.fit(X, y, **kwargs)) == _bits(gradfit.fit(X, y, **kwargs))


_SCRIPT = """
import hashlib, sys
import numpy as np
import gradfit
rng = np.random.default_rng(0)
X = rng.standard_normal((101, 5)).astype(np.float32)
y = (X @ rng.standard_normal(5)).astype(np.float32)
r = gradfit.fit(X, y, batch_size=16, learning_rate=0.05, steps=20, seed=7, init="normal")
parts = [np.asarray(r.params.W), np.asarray(r.params.b), np.asarray(r.losses)]
print(hashlib.sha256(b"".join(p.tobytes() for p in parts)).hexdigest())
"""


@pytest.mark.slow  # a subprocess; the in-process determinism tests stay in the default suite
def test_same_bits_in_a_fresh_process():
    """Two fresh processes (fresh compilations, fresh PRNG state) agree to the bit."""
    env = {"PYTHONPATH": str(SRC), "JAX_PLATFORMS": "cpu"}
    digests = [
        subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, check=True).stdout.strip()
        for _ in range(2)
    ]
    assert len(digests[0]) == 64 and digests[0] == digests[1]


def _array_bits(result) -> bytes:
    fields = result._asdict() if hasattr(result, "_asdict") else {"result": result}
    fields.pop("stats", None)  # timings differ from run to run
    return b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(fields) if hasattr(x, "shape"))


def test_sweep_same_seed_same_bits():
    """Sweeps: the same grid and seed give the same bits for every member (minibatches, init)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 3)).astype(np.float32)
    y = (X @ np.ones(3)).astype(np.float32)
    kwargs = dict(grid={"learning_rate": [0.01, 0.1], "seed": [2, 3]}, batch_size=16, steps=5, init="normal")
    first, second = gradfit.sweep(X, y, **kwargs), gradfit.sweep(X, y, **kwargs)
    assert _array_bits(first.params) == _array_bits(second.params)
    assert _array_bits(first.losses) == _array_bits(second.losses)
