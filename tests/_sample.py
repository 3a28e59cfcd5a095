"""Covering samples of parametrized cases: the default suite runs the cases listed as fast (together they take
every value of every axis at least once), ``-m slow`` or ``-m ''`` the rest too (pyproject.toml's addopts)."""

from __future__ import annotations

import itertools

import pytest


def thinned(cases, fast) -> list:
    """``cases`` (tuples of a test's parameters, or single values) as pytest params, each one not in ``fast`` marked
    slow. Compared with ``==``, so cases may hold dicts."""
    cases, fast = list(cases), list(fast)
    missing = [c for c in fast if c not in cases]
    assert not missing, f"fast cases not among the cases: {missing}"
    return [pytest.param(*(c if isinstance(c, tuple) else (c,)), marks=() if c in fast else pytest.mark.slow)
            for c in cases]


def crossed(*axes, fast) -> list:
    """:func:`thinned` over the cartesian product of ``axes`` (the order of stacked parametrize decorators reversed:
    the first axis is the test's first parameter)."""
    return thinned(itertools.product(*axes), fast)
