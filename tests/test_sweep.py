"""gradfit.sweep: members equal separate fits and a numpy reference, compile once, stay independent."""

from __future__ import annotations

import itertools
import sys
import warnings

import chex
import jax
import numpy as np
import pytest

import gradfit
from gradfit import datasets

sweep_module = gradfit.sweeps  # gradfit.sweep is the function


def _fit(X, y, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # diverged members warn in fit
        return gradfit.fit(X, y, **kwargs)


def _numpy_gd(X, y, lr, l2, steps):
    """Full-batch gradient descent on (1/m)||y - Xw - b||^2 + (l2/2)||w||^2, float64, from the formula."""
    m, n = X.shape
    W = np.zeros((n, *y.shape[1:]))
    b = np.zeros(y.shape[1:])
    for _ in range(steps):
        r = y - X @ W - b
        W, b = W - lr * (-(2 / m) * X.T @ r + l2 * W), b - lr * (-(2 / m) * r.sum(0))
    return W, b


@pytest.fixture(scope="module")
def problem():
    d = datasets.make_regression(400, 5, seed=1)
    return d.X, d.y


def _assert_member_equals_fit(result, i, fit, rtol=1e-5, atol=1e-6):
    assert int(np.max(result.steps[i])) == int(np.max(fit.steps))
    assert bool(np.all(result.converged[i] == fit.converged))
    assert bool(np.all(result.diverged[i] == fit.diverged))
    np.testing.assert_allclose(result.params.W[i], fit.params.W, rtol=rtol, atol=atol)
    np.testing.assert_allclose(result.params.b[i], fit.params.b, rtol=rtol, atol=atol)
    np.testing.assert_allclose(result.final_loss[i], fit.loss, rtol=rtol, atol=atol)
    T = fit.losses.shape[-1]
    np.testing.assert_allclose(result.losses[i][..., :T], fit.losses, rtol=rtol, atol=atol)
    assert np.isnan(result.losses[i][..., T:]).all()  # NaN-padded past the member's steps


def test_members_match_numpy_reference(problem, x64):
    X, y = (np.asarray(a, np.float64) for a in problem)
    grid = {"learning_rate": [0.01, 0.1], "l2": [0.0, 0.5]}
    # raw (W, b) iterates and every step run, as the numpy loop (fit standardizes by default and
    # stops at tol=1e-5)
    result = gradfit.sweep(X, y, grid=grid, steps=50, standardize=False, tol=None)
    for i, (lr, l2) in enumerate(itertools.product(*grid.values())):
        W, b = _numpy_gd(X, y, lr, l2, 50)
        np.testing.assert_allclose(result.params.W[i], W, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(result.params.b[i], b, rtol=1e-10, atol=1e-12)
    assert result.configs == [dict(zip(grid, c)) for c in itertools.product(*grid.values())]


def test_each_member_equals_a_separate_fit_with_early_stopping(problem, x64):
    X, y = (np.asarray(a, np.float64) for a in problem)
    # 4 members: learning rate 0.003 runs to the budget under both tols, 0.3 stops at each tol (after 20 and 32
    # steps), so the later chunks run the 2 still active
    grid = {"learning_rate": [0.003, 0.3], "tol": [1e-6, 1e-10]}
    opts = dict(steps=700, chunk_size=32)
    result = gradfit.sweep(X, y, grid=grid, **opts)
    assert len(set(result.steps.tolist())) > 2  # members stop at different steps: compaction ran
    assert result.stats["batch_sizes"][0] == 4 and min(result.stats["batch_sizes"]) < 4
    for i, config in enumerate(result.configs):
        _assert_member_equals_fit(result, i, _fit(X, y, **opts, **config), rtol=1e-9, atol=1e-12)


def test_minibatch_seeds_and_optimizer_options_equal_fits(problem):
    X, y = problem
    grid = {"momentum": [0.0, 0.9], "seed": [0, 7]}
    opts = dict(steps=6, batch_size=64, learning_rate=0.02, init="normal")
    result = gradfit.sweep(X, y, grid=grid, **opts)
    for i, c in enumerate(result.configs):
        fit = _fit(X, y, seed=c["seed"], optimizer_options={"momentum": c["momentum"]}, **opts)
        _assert_member_equals_fit(result, i, fit)
    # seeds give each member its own init and permutations
    assert not np.allclose(result.params.W[0], result.params.W[1])


def test_program_keys_split_into_groups(problem):
    X, y = problem
    grid = {"optimizer": ["sgd", "adam"], "learning_rate": [0.01, 0.1]}
    result = gradfit.sweep(X, y, grid=grid, steps=40, grad="hand")
    assert result.stats["groups"] == 2
    assert [c["optimizer"] for c in result.configs] == ["sgd"] * 2 + ["adam"] * 2
    for i, c in enumerate(result.configs):
        _assert_member_equals_fit(result, i, _fit(X, y, steps=40, grad="hand", **c))


def test_steps_tol_and_l2_are_one_group(problem, x64):
    X, y = (np.asarray(a, np.float64) for a in problem)  # tol=0 compares losses exactly: float64
    grid = {"steps": [3, 40], "tol": [0.0, 1e-3], "l2": [0.0, 0.2]}
    result = gradfit.sweep(X, y, grid=grid, learning_rate=0.1)
    assert result.stats["groups"] == 1 and result.losses.shape == (8, result.steps.max())
    assert set(result.steps[:4].tolist()) == {3}  # steps=3 members stop at their own budget
    # "auto" picks the group's plan for its largest budget (40 steps: statistics); a separate
    # fit of 3 steps alone would pick a direct plan, so compare with the same plan forced
    assert result.stats["plan"] == ["stats"]
    for i, c in enumerate(result.configs):
        _assert_member_equals_fit(result, i, _fit(X, y, learning_rate=0.1, grad="stats", **c))


def test_diverged_member_never_spoils_the_others(problem):
    X, y = problem
    grid = {"learning_rate": [0.05, 1e6, 0.2]}
    # tol is the optimality test G <= tol: float32 reaches G ~ 5e-6 on this problem, so tol=1e-4 is
    # met by a clear margin (1e-7, an objective-change tolerance before, is below float32's reach:
    # every member stalled, at a step set by rounding). Chunks of 16, 3 members: the compiled programs of
    # test_compaction_and_member_chunks_give_the_same_members serve.
    result = gradfit.sweep(X, y, grid=grid, steps=300, tol=1e-4, chunk_size=16)
    np.testing.assert_array_equal(result.diverged, [False, True, False])
    np.testing.assert_array_equal(result.status, ["converged", "diverged", "converged"])
    for i in (0, 2):
        chex.assert_tree_all_finite((result.params.W[i], result.params.b[i], result.final_loss[i]))
        _assert_member_equals_fit(result, i, _fit(X, y, steps=300, tol=1e-4, **result.configs[i]))
    assert np.isfinite(result.losses[[0, 2]][~np.isnan(result.losses[[0, 2]])]).all()
    assert result.best["learning_rate"] != 1e6
    assert result.best_index == int(np.argmin(np.where(result.diverged, np.inf, result.final_loss)))


def _compile_events():
    events = []

    def listener(name, duration, **kwargs):
        if "compil" in name:
            events.append(name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    return events, listener


def test_second_sweep_of_same_size_compiles_nothing(problem):
    X, y = problem
    events, listener = _compile_events()
    try:
        first = gradfit.sweep(X, y, grid={"learning_rate": [0.01, 0.02, 0.03], "l2": [0.0, 0.1]}, steps=30)
        assert first.stats["programs"] >= 1
        before = len(events)
        second = gradfit.sweep(X, y, grid={"learning_rate": [0.05, 0.06, 0.07], "l2": [0.2, 0.3]}, steps=30)
        assert events[before:] == []
        assert second.stats["compile_seconds"] == 0 and second.stats["programs"] == 0
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    fit = _fit(X, y, steps=30, learning_rate=0.07, l2=0.3)
    _assert_member_equals_fit(second, 5, fit)


def test_compaction_and_member_chunks_give_the_same_members(problem):
    X, y = problem
    grid = {"learning_rate": [0.002, 0.1, 0.3]}  # 3 members: the compacted batches (2, 1) are the chunked sweep's
    # tol=1e-4: the optimality test met well above float32's floor on this problem (G ~ 5e-6), so
    # members stop at a step set by their iterates, not by rounding
    opts = dict(steps=400, tol=1e-4, chunk_size=16)
    full = gradfit.sweep(X, y, grid=grid, compact=False, **opts)
    compact = gradfit.sweep(X, y, grid=grid, **opts)
    assert compact.stats["lane_steps"] < full.stats["lane_steps"]
    assert set(full.stats["batch_sizes"]) == {3}
    # a budget of two members: chunks of 2, 1
    progress = []
    chunked = gradfit.sweep(X, y, grid=grid, memory_budget=2 * sweep_module._member_bytes(
        gradfit.solver.build(*gradfit.solver.prepare(X, y, learning_rate=0.1, **opts)[:5])), callback=lambda *a: progress.append(a), **opts)
    assert chunked.stats["member_chunks"] == 2
    assert progress == [(2, 3), (3, 3)]
    for other in (compact, chunked):
        np.testing.assert_array_equal(other.steps, full.steps)
        np.testing.assert_array_equal(other.status, full.status)
        np.testing.assert_allclose(other.params.W, full.params.W, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(other.losses, full.losses, rtol=1e-5, atol=1e-6)


def test_multi_output_crossed_with_a_grid(rng):
    d = datasets.make_regression(300, 4, n_outputs=3, seed=2)
    grid = {"learning_rate": [0.05, 0.2], "l2": [0.0, 0.3]}
    result = gradfit.sweep(d.X, d.y, grid=grid, steps=60)
    chex.assert_shape(result.params.W, (4, 4, 3))
    chex.assert_shape(result.params.b, (4, 3))
    for i, c in enumerate(result.configs):
        _assert_member_equals_fit(result, i, _fit(d.X, d.y, steps=60, **c))
    # per-output hyperparameters in the fixed options, crossed with the grid
    l2 = np.array([0.0, 0.1, 1.0])
    per = gradfit.sweep(d.X, d.y, grid={"learning_rate": [0.05, 0.2]}, steps=200, tol=1e-6, l2=l2)
    chex.assert_shape(per.steps, (2, 3))
    for i, c in enumerate(per.configs):
        _assert_member_equals_fit(per, i, _fit(d.X, d.y, steps=200, tol=1e-6, l2=l2, **c))


def test_logistic_sweep_on_breast_cancer():
    pytest.importorskip("sklearn")
    d = datasets.load_breast_cancer()
    result = gradfit.sweep(d.X, d.y, grid={"learning_rate": [0.1, 1.0], "l2": [0.0, 0.01]}, loss="bce", steps=100)
    # "auto" gives a group of bce members vmapped over one X the autodiff plan (X^T S one matrix-matrix product),
    # each member's own fit "hand" (as test_bce_members_share_X_through_one_matrix_product, in the slow suite)
    assert result.stats["plan"] == ["autodiff"]
    for i, c in enumerate(result.configs):
        one = _fit(d.X, d.y, loss="bce", steps=100, **c)
        assert one.stats["plan"] == "hand"
        _assert_member_equals_fit(result, i, one)


def test_rows_table_and_best(problem):
    X, y = problem
    # the settings of test_program_keys_split_into_groups' sgd group: its compiled programs serve
    result = gradfit.sweep(X, y, grid={"learning_rate": [0.001, 0.1]}, steps=40, grad="hand")
    rows = result.rows()
    assert [r["learning_rate"] for r in rows] == [0.001, 0.1]
    assert set(rows[0]) == {"learning_rate", "final_loss", "steps", "converged", "diverged", "status", "seconds"}
    assert [r["status"] for r in rows] == list(result.status)
    assert result.best == {"learning_rate": 0.1}  # the larger step gets further in 40 steps
    assert result.table().splitlines()[1].split()[0] == "0.1"  # best first


@pytest.mark.parametrize(
    "grid, message",
    [
        ({"learnig_rate": [0.1]}, "did you mean 'learning_rate'"),
        ({"learning_rate": []}, "grid['learning_rate'] is an empty list"),
        ({"learning_rate": 0.1}, "grid['learning_rate'] must be a list"),
        ({"l2": [0.1, "a"]}, "grid['l2'][1] = 'a' is not a number"),
        ({"l2": [[0.1, 0.2]]}, "grid['l2'][0] has shape (2,)"),
        ({"learning_rate": np.ones((2, 2))}, "grid['learning_rate'] has shape (2, 2)"),
        ({"steps": [10.5]}, "grid['steps'][0] = 10.5 must be an integer"),
        ({"learning_rate": [0.1, -1.0]}, "learning_rate must be > 0"),
        ({"tol": [float("nan")]}, "grid['tol'][0] = nan must be finite"),
        ({"momentm": [0.9]}, "did you mean 'momentum'"),
        ({"optimizer_options": [{}]}, "cannot be swept"),
        ({}, "non-empty dict"),
        ({"optimizer": ["adam"], "momentum": [0.9]}, "unknown grid key 'momentum'"),
        ({"optimizer": ["sgd", "adma"]}, "grid group {'optimizer': 'adma'}: unknown optimizer 'adma'"),
    ],
)
def test_bad_grids_raise_before_compute(problem, monkeypatch, grid, message):
    X, y = problem

    def never(*args, **kwargs):
        raise AssertionError("compute started before the grid was checked")

    monkeypatch.setattr(gradfit.solver, "build", never)
    with pytest.raises(ValueError) as info:
        gradfit.sweep(X, y, grid=grid, chunk_size=5)
    assert message in str(info.value)


def test_bad_options_raise_before_compute(problem, monkeypatch):
    X, y = problem
    monkeypatch.setattr(gradfit.solver, "build", lambda *a, **k: pytest.fail("compute started"))
    with pytest.raises(ValueError, match="given both in the grid and as a fixed option"):
        gradfit.sweep(X, y, grid={"learning_rate": [0.1]}, learning_rate=0.1)
    with pytest.raises(ValueError, match="did you mean 'steps'"):
        gradfit.sweep(X, y, grid={"learning_rate": [0.1]}, step=5)
    with pytest.raises(ValueError, match="drop batched=True"):
        gradfit.sweep(X, y, grid={"learning_rate": [0.1]}, batched=True)
    with pytest.raises(ValueError, match="memory_budget"):
        gradfit.sweep(X, y, grid={"learning_rate": [0.1]}, memory_budget=0)
    # the second group is invalid (bce needs y in [0, 1]): nothing of the first group runs
    with pytest.raises(ValueError, match="bce needs targets in"):
        gradfit.sweep(X, y, grid={"loss": ["mse", "bce"]})
    with pytest.raises(ValueError, match="X has 400 rows but y has 3"):
        gradfit.sweep(X, y[:3], grid={"learning_rate": [0.1]})


def test_split_grid_covers_the_grid(problem):
    grid = {"optimizer": ["sgd", "adam"], "learning_rate": [0.1, 0.2], "nesterov": [False, True]}
    parts = sweep_module.split_grid(grid)
    assert len(parts) == 4
    members = [c for p in parts for c in itertools.product(*p.values())]
    assert sorted(map(str, members)) == sorted(map(str, itertools.product(*grid.values())))


SHARDED = """
import json, warnings
import numpy as np, jax, gradfit
from gradfit import datasets
d = datasets.make_regression(1001, 5, seed=0)
grid = {"learning_rate": [0.01, 0.1, 0.3, 100.0], "seed": [0, 1]}
# tol: the optimality test G <= 1e-4, well within float32's reach. grad="hand" for both: on one
# device "auto" picks the statistics plan, whose loop tests G <= tol/2 (its G only estimates the
# one on the data), so it stops a few steps later than the direct plan the sharded sweep runs
opts = dict(steps=300, tol=1e-4, init="normal", chunk_size=32, grad="hand")
r = gradfit.sweep(d.X, d.y, grid=grid, devices=4, **opts)
out = {"devices": len(jax.devices()), "batch_sizes": r.stats["batch_sizes"], "sweep_steps": r.steps.tolist(),
       "sweep_status": r.status.tolist(),
       "fit_steps": [], "fit_status": [], "max_dW": 0.0}
for i, c in enumerate(r.configs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = gradfit.fit(d.X, d.y, devices=1, **opts, **c)
    out["fit_steps"].append(f.steps)
    out["fit_status"].append(f.status)
    W = np.asarray(f.params.W)
    out["max_dW"] = max(out["max_dW"], float(np.max(np.abs(r.params.W[i] - W) / np.maximum(1, np.abs(W)))))
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_sweep_over_rows_split_across_four_devices():
    """Data sharded over 4 forced host devices: members equal single-device fits, compaction included."""
    import json
    import os
    import subprocess
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1][len("RESULT"):])
    assert out["devices"] == 4
    assert out["sweep_steps"] == out["fit_steps"]
    assert out["sweep_status"] == out["fit_status"]
    assert out["max_dW"] < 1e-5
    assert min(out["batch_sizes"]) < 8  # finished members were dropped


@pytest.mark.slow  # the same plans asserted on breast cancer by test_logistic_sweep_on_breast_cancer
def test_bce_members_share_X_through_one_matrix_product():
    # "auto" gives a group of members vmapped over one X the autodiff plan (X^T S is then one
    # matrix-matrix product); each member still equals its own fit, whose plan is "hand".
    d = datasets.make_classification(400, 5, seed=3)
    result = gradfit.sweep(d.X, d.y, grid={"learning_rate": [0.1, 0.5]}, loss="bce", steps=50)
    assert result.stats["plan"] == ["autodiff"]
    for i, c in enumerate(result.configs):
        one = _fit(d.X, d.y, loss="bce", steps=50, **c)
        assert one.stats["plan"] == "hand"
        _assert_member_equals_fit(result, i, one)
