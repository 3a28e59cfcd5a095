"""Compile once per shape family: row buckets in one process, the persistent cache across processes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import gradfit
from gradfit import datasets, solver


def test_row_buckets_round_up_by_a_share_that_falls_as_x_grows():
    for nbytes, most in ((0, 1.25), (1 << 20, 1.0625), (16 << 20, 1.0 + 1 / 64)):
        for m in [1, 255, 256, 257, 1000, 1024, 1025, 1100, 99_999, 131_073, 10**6 + 1]:
            b = solver.row_bucket(m, nbytes)
            assert b >= m and (b <= 256 or b <= most * m), (m, nbytes, b)
    assert solver.row_bucket(1000) == solver.row_bucket(900) == 1024
    assert solver.row_bucket(200_000, 200_000 * 32 * 4) == 200_704  # was 229,376 (+15% rows read every step)


def test_a_new_m_in_the_same_bucket_compiles_nothing_and_fits_only_its_rows():
    d = datasets.make_classification(1000, 6, seed=1)
    first = gradfit.fit(d.X, d.y, loss="bce", optimizer="lbfgs", l2=1e-2, steps=50, tol=1e-6)
    second = gradfit.fit(d.X[:900], d.y[:900], loss="bce", optimizer="lbfgs", l2=1e-2, steps=50, tol=1e-6)
    assert first.stats["compile_seconds"] > 0 and second.stats["compile_seconds"] == 0
    # the padding rows count for nothing: the same fit without padding (minibatch-free, exact shapes via sklearn)
    from sklearn.linear_model import LogisticRegression

    X, y = d.X[:900].astype(np.float64), d.y[:900]
    ref = LogisticRegression(C=1 / (1e-2 * len(X)), tol=1e-12, max_iter=10_000).fit(X, y)
    np.testing.assert_allclose(second.params.W, ref.coef_[0], rtol=2e-3, atol=2e-4)
    assert second.converged


@pytest.mark.slow  # two command processes
def test_the_command_fills_a_persistent_cache_that_a_second_process_reuses(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "GRADFIT_COMPILATION_CACHE": str(cache), "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "gradfit.cli", "fit", "--config", "configs/quickstart.toml", "--set",
           f"output.dir={tmp_path / 'run'}", "--restart"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(cmd, check=True, env=env, cwd=root, capture_output=True)
    entries = sorted(os.listdir(cache))
    assert entries  # every program written
    subprocess.run(cmd, check=True, env=env, cwd=root, capture_output=True)
    assert sorted(os.listdir(cache)) == entries  # nothing compiled again: every program came from disk


def test_auto_plans_by_the_evaluations_expected_not_the_budget():
    from gradfit import _plan

    # L-BFGS on a well-conditioned problem: a handful of evaluations, whatever the budget
    few = _plan.expected_evaluations(steps=10_000, condition=2.0, tol=1e-4, line_search=True, steepest=False)
    assert few < 15
    other = _plan.expected_evaluations(steps=10_000, condition=2.0, tol=1e-4, line_search=False, steepest=False)
    assert other == 10_000  # adam and friends: no estimate, the budget
    assert _plan.expected_evaluations(steps=50, condition=1e6, tol=1e-4, line_search=False, steepest=True) == 50
    m, n = 2_000_000, 64
    assert _plan.choose("auto", loss="mse", m=m, n=n, k=1, steps=10_000, batch_size=None, line_search=True,
                        evals=3) == "hand"  # three direct evaluations cost less than the statistics pass
    assert _plan.choose("auto", loss="mse", m=m, n=n, k=1, steps=10_000, batch_size=None, line_search=True) == "stats"
