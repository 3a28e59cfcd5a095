"""Sweeps along an l2 path (gradfit.sweep(warm_start=True)): each member starts from the previous one's solution
and L-BFGS curvature pairs. Checked against jax.hessian (the carried pairs are the new objective's), cold-started
sweeps and scikit-learn's LogisticRegression per C (every member at its own optimum)."""

from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradfit
from gradfit import _engine, datasets, solver, sweeps
from gradfit._driver import CompiledStepper, drive

CS = [0.01, 0.1, 1.0, 10.0, 100.0]  # LogisticRegression's C: l2 = 1 / C with reduction="sum"


@pytest.fixture(scope="module")
def classification():
    d = datasets.make_classification(300, 6, seed=3, dtype=np.float64)
    return d.X, d.y


def _flat(tree) -> jax.Array:
    return jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(tree)])


def _np_flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(a) for a in jax.tree.leaves(tree)])


def test_carried_curvature_pairs_are_the_new_objectives(x64):
    """On a quadratic objective every L-BFGS pair satisfies y = H s; carried from l2 = 3 to l2 = 0.2, the pairs
    must satisfy y' = H' s with H' the new objective's Hessian in the fit's coordinates (jax.hessian)."""
    d = datasets.make_regression(120, 4, seed=2, dtype=np.float64)
    X = d.X * np.array([1.0, 10.0, 0.1, 3.0]) + np.array([5.0, -2.0, 0.0, 1.0])  # scaled, shifted columns
    options = dict(loss="mse", reduction="sum", optimizer="lbfgs", steps=3, tol=0.0)
    run = {}
    for l2 in (3.0, 0.2):
        problem = solver.build(*solver.prepare(X, d.y, l2=l2, **options)[:5])
        stepper = CompiledStepper(problem.operand, problem.hyper, problem.program)
        run[l2] = (problem, stepper)
    problem, stepper = run[3.0]
    state = drive(stepper, stepper.init(problem.params, problem.key), problem.hyper, chunk_steps=3).state
    new_problem, new_stepper = run[0.2]
    warm = new_stepper.warm(state, problem.hyper, new_problem.key)
    is_lbfgs = lambda x: isinstance(x, optax.ScaleByLBFGSState)  # noqa: E731
    memory = next(x for x in jax.tree.leaves(warm.opt_state, is_leaf=is_lbfgs) if is_lbfgs(x))
    scaling = new_problem.hyper.scaling
    theta0 = _engine.to_fit(warm.params, scaling)
    unflat = jax.flatten_util.ravel_pytree(theta0)[1]
    J = lambda v: _engine.objective(_engine.to_model(unflat(v), scaling), new_problem.operand,  # noqa: E731
                                    new_problem.hyper.l2, new_problem.program)
    H = np.asarray(jax.jit(jax.hessian(J))(_flat(theta0)))  # jax.hessian, compiled once (not op by op)
    memory = jax.tree.map(np.asarray, memory)  # the pairs indexed in numpy, not by one small program each
    used = np.flatnonzero(memory.weights_memory)
    assert len(used) >= 2
    for i in used:
        s = _np_flat(jax.tree.map(lambda a: a[i], memory.diff_params_memory))
        y = _np_flat(jax.tree.map(lambda a: a[i], memory.diff_updates_memory))
        np.testing.assert_allclose(y, H @ s, rtol=1e-8, atol=1e-8 * float(np.max(np.abs(H @ s))))
        np.testing.assert_allclose(memory.weights_memory[i], 1 / float(s @ y), rtol=1e-10)
    # the last pair comes back as the first update's: its point theta0 - s, its gradient g0 - y
    last = (int(memory.count) - 1) % len(memory.weights_memory)
    s = _np_flat(jax.tree.map(lambda a: a[last], memory.diff_params_memory))
    np.testing.assert_allclose(_np_flat(memory.params), np.asarray(_flat(theta0)) - s, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("converged", [True, False])
def test_the_warm_start_objective_and_gradient_are_the_new_penalties(classification, x64, converged):
    """J and dJ at a warm start's params for the new l2 equal numpy's formulas; a converged previous member hands
    them on with the penalty's change in closed form (no evaluation), an unconverged one is evaluated again."""
    X, y = classification
    options = dict(loss="bce", reduction="sum", optimizer="lbfgs", steps=50 if converged else 2,
                   tol=1e-8 if converged else 0.0)
    run = {}
    for l2 in (3.0, 0.2):
        problem = solver.build(*solver.prepare(X, y, l2=l2, **options)[:5])
        run[l2] = (problem, CompiledStepper(problem.operand, problem.hyper, problem.program))
    problem, stepper = run[3.0]
    state = drive(stepper, stepper.init(problem.params, problem.key), problem.hyper, chunk_steps=50).state
    assert bool(state.converged) == converged
    new_problem, new_stepper = run[0.2]
    warm = new_stepper.warm(state, problem.hyper, new_problem.key)
    assert int(warm.evaluations) == (0 if converged else 1)
    W, b = np.asarray(warm.params.W), float(warm.params.b)
    z = X @ W + b
    a = 1 / (1 + np.exp(-z))
    value = np.sum(np.logaddexp(0, z) - y * z) + 0.1 * W @ W
    np.testing.assert_allclose(float(optax.tree.get(warm.opt_state, "value")), value, rtol=1e-10)
    g = _engine.out_of_fit(optax.tree.get(warm.opt_state, "grad"), new_problem.hyper.scaling)
    np.testing.assert_allclose(np.asarray(g.W), X.T @ (a - y) + 0.2 * W, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(float(g.b), np.sum(a - y), rtol=1e-7, atol=1e-9)


def test_the_end_of_run_rule_keeps_a_state_converged_where_the_loop_evaluated(classification, x64):
    """drive() skips the end-of-run rule (one program) when every member converged where the loop evaluated:
    that rule must then return the state unchanged, which this checks on a real converged run."""
    X, y = classification
    problem = solver.build(*solver.prepare(X, y, l2=3.0, loss="bce", reduction="sum", optimizer="lbfgs", steps=50,
                                           tol=1e-8)[:5])
    stepper = CompiledStepper(problem.operand, problem.hyper, problem.program)
    state = drive(stepper, stepper.init(problem.params, problem.key), problem.hyper, chunk_steps=50).state
    assert bool(state.converged) and not bool(state.diverged)
    final, optimality = stepper.evaluate(state)
    assert final is state.loss  # what drive() tests before it skips the rule
    after, end = jax.jit(_engine.finalize)(state, final, optimality, problem.hyper)
    assert not bool(end)
    data = lambda a: jax.random.key_data(a) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else a  # noqa: E731
    for before_leaf, after_leaf in zip(jax.tree.leaves(state), jax.tree.leaves(after)):
        np.testing.assert_array_equal(np.asarray(data(after_leaf)), np.asarray(data(before_leaf)))


def test_a_warm_path_ends_every_member_at_its_optimum_in_fewer_steps(classification, x64):
    from sklearn.linear_model import LogisticRegression

    X, y = classification
    grid = {"l2": [1 / C for C in CS]}
    options = dict(loss="bce", reduction="sum", optimizer="lbfgs", tol=1e-9, steps=500)
    cold = gradfit.sweep(X, y, grid=grid, **options)
    warm = gradfit.sweep(X, y, grid=grid, warm_start=True, **options)
    assert warm.converged.all() and cold.converged.all()
    assert warm.steps.sum() < cold.steps.sum()
    for i, C in enumerate(CS):
        ref = LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(X, y)
        np.testing.assert_allclose(warm.params.W[i], ref.coef_[0], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(warm.params.b[i], ref.intercept_[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(warm.final_loss, cold.final_loss, rtol=1e-10)
    assert [c["l2"] for c in warm.configs] == grid["l2"]  # results in the grid's order, whatever the path's


def _cold_paths(X, y, grid, options) -> list[sweeps.SweepResult]:
    """Each of ``grid``'s l2 values swept alone with ``options`` (warm_start=True): a path of one member, started
    cold, on the compiled programs of the warm path over the whole grid. The cold sweep of the whole grid, vmapped
    over its members, gives the same numbers (the first test above compares a warm path with it)."""
    return [gradfit.sweep(X, y, grid={"l2": [l2]}, **options) for l2 in grid["l2"]]


def _stacked(runs, get) -> np.ndarray:
    return np.concatenate([np.asarray(get(r)) for r in runs])


def test_paths_split_by_the_other_keys_and_run_from_the_largest_l2():
    configs = [{"l2": l2, "tol": tol} for tol in (1e-3, 1e-6) for l2 in (0.1, 10.0, 1.0)]
    assert sweeps.paths(configs) == [[1, 2, 0], [4, 5, 3]]


def test_cross_validated_warm_path_agrees_with_the_cold_sweep(classification, x64):
    X, y = classification
    grid = {"l2": [1 / C for C in CS]}
    options = dict(loss="bce", reduction="sum", optimizer="lbfgs", tol=1e-9, steps=500, cv=3, warm_start=True)
    warm, cold = gradfit.sweep(X, y, grid=grid, **options), _cold_paths(X, y, grid, options)
    cold_loss = _stacked(cold, lambda r: r.cv.mean["loss"])
    assert warm.converged.all() and warm.best_index == int(np.argmin(cold_loss))
    np.testing.assert_allclose(warm.cv.mean["loss"], cold_loss, rtol=1e-8)
    np.testing.assert_allclose(warm.params.W, _stacked(cold, lambda r: r.params.W), rtol=1e-5, atol=1e-7)


def test_gradient_descent_paths_carry_the_params(classification, x64):
    X, y = classification
    grid = {"l2": [1.0, 0.1, 0.01]}
    # grad: "auto"'s plan for members over one X (a single member's would be "hand", other programs)
    options = dict(loss="bce", reduction="mean", learning_rate="auto", tol=1e-6, steps=3000, warm_start=True,
                   grad="autodiff")
    warm, cold = gradfit.sweep(X, y, grid=grid, **options), _cold_paths(X, y, grid, options)
    assert warm.converged.all() and warm.steps[1:].sum() < _stacked(cold, lambda r: r.steps)[1:].sum()
    np.testing.assert_allclose(warm.params.W, _stacked(cold, lambda r: r.params.W), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("grid, warm_start, message", [
    ({"learning_rate": [0.1, 0.2]}, True, r"warm_start=True runs the members as a path of l2 values"),
    ({"l2": [0.1, 1.0]}, "yes", r"warm_start must be True or False, got 'yes'"),
])
def test_bad_warm_start_raises_before_compute(classification, monkeypatch, grid, warm_start, message):
    monkeypatch.setattr(sweeps, "_run_paths", None)  # nothing may run
    monkeypatch.setattr(sweeps, "_run_group", None)
    X, y = classification
    with pytest.raises(ValueError, match=message):
        gradfit.sweep(X, y, grid=grid, warm_start=warm_start, loss="bce", optimizer="lbfgs")


def test_a_diverged_member_passes_nothing_on(classification, monkeypatch, x64):
    """A member whose run diverges hands the next one a cold start, never its params. (float64 and a learning rate
    per member, as in the gradient descent path above: its programs serve this run too.)"""
    X, y = classification
    calls = []
    original = CompiledStepper.warm

    def spy(self, previous, previous_hyper, key):
        calls.append(np.asarray(previous.params.W).copy())
        return original(self, previous, previous_hyper, key)

    monkeypatch.setattr(CompiledStepper, "warm", spy)
    result = gradfit.sweep(X, y, grid={"l2": [1.0, 0.1], "learning_rate": [1e6]}, warm_start=True, loss="bce",
                           optimizer="sgd", steps=20)
    assert result.diverged[0] and calls == []


WARM_CONFIG = """
[data]
source = "synthetic_classification"
n_samples = 300
n_features = 6
seed = 3
dtype = "float64"

[fit]
loss = "bce"
optimizer = "lbfgs"
reduction = "sum"
steps = 300
tol = 1e-6

[sweep]
grid = {{ {grid} }}
warm_start = true
plot = false

[output]
dir = "{out}"
"""


def test_the_command_runs_a_warm_path_and_refuses_one_without_l2(tmp_path, capsys):
    import csv

    from gradfit import cli

    bad = tmp_path / "bad.toml"
    bad.write_text(WARM_CONFIG.format(grid="tol = [1e-6, 1e-7]", out=(tmp_path / "bad").as_posix()))
    assert cli.main(["sweep", "--config", str(bad)]) == 2
    assert "sweep.warm_start = true runs the members as a path of l2 values" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    good = tmp_path / "good.toml"
    good.write_text(WARM_CONFIG.format(grid="l2 = [10.0, 1.0, 0.1]", out=(tmp_path / "good").as_posix()))
    assert cli.main(["sweep", "--config", str(good)]) == 0
    with (tmp_path / "good" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [float(r["l2"]) for r in rows] == [10.0, 1.0, 0.1] and all(r["converged"] == "True" for r in rows)
