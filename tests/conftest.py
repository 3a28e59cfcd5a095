"""Shared fixtures.

Rank promotion raises in every test (catches (n,) vs (n, 1) mistakes, as optimistix does);
``x64`` turns on float64 for one test and restores the flag after it.
"""

from __future__ import annotations

import contextlib
import os

import jax
import numpy as np
import pytest


os.environ["GRADFIT_COMPILATION_CACHE"] = "0"  # the command's persistent cache stays off (tests/test_compile_cache.py)


@pytest.fixture(autouse=True)
def _strict_rank_promotion():
    with jax.numpy_rank_promotion("raise"):
        yield


@pytest.fixture
def x64():
    """Enable float64 for the duration of one test."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)


class CompileCounter:
    """Counts XLA backend compilations (JAX's own monitoring events)."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.count = 0

    def __call__(self, name, duration, **kwargs):
        if name == self.EVENT:
            self.count += 1


@pytest.fixture
def compile_counter():
    counter = CompileCounter()
    jax.monitoring.register_event_duration_secs_listener(counter)
    try:
        yield counter
    finally:
        with contextlib.suppress(Exception):
            jax.monitoring.unregister_event_duration_listener(counter)


@pytest.fixture
def data(rng):
    """A small float32 regression problem (30, 3) with an intercept, for fault tests."""
    X = rng.standard_normal((30, 3)).astype(np.float32)
    return X, (X @ np.array([1.0, -2.0, 0.5]) + 0.3).astype(np.float32)
