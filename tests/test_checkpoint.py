"""Checkpoint and resume: a run stopped at any chunk boundary (by SIGKILL or an exception)
and resumed ends with the same bits as a run that never stopped, on the CPU."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import gradfit
from gradfit import checkpoint, datasets
from _sample import thinned

SRC = str(Path(gradfit.__file__).resolve().parents[1])


class Crash(Exception):
    """Stands in for a process dying right after a chunk boundary."""


def _crash_after(n_chunks: int):
    seen = [0]

    def callback(state, history):
        seen[0] += 1
        if seen[0] == n_chunks:
            raise Crash

    return callback


def _assert_same_bits(a: gradfit.FitResult, b: gradfit.FitResult) -> None:
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(a.loss), np.asarray(b.loss))
    np.testing.assert_array_equal(a.losses, b.losses)  # NaN padding compares equal
    np.testing.assert_array_equal(np.asarray(a.steps), np.asarray(b.steps))
    np.testing.assert_array_equal(np.asarray(a.converged), np.asarray(b.converged))
    np.testing.assert_array_equal(np.asarray(a.diverged), np.asarray(b.diverged))


@pytest.fixture(scope="module")
def reg():
    return datasets.make_regression(300, 5, seed=1)


def _problem(name: str):
    """(X, y, fit kwargs) for each kind of state a checkpoint must carry."""
    d = datasets.make_regression(300, 5, seed=1)
    d2 = datasets.make_regression(300, 5, n_outputs=3, seed=2)
    c = datasets.make_classification(300, 4, seed=3)
    common = dict(steps=120, chunk_size=16)
    return {
        "sgd": (d.X, d.y, dict(optimizer="sgd", learning_rate=0.05, **common)),
        "adam_minibatch_key": (d.X, d.y, dict(optimizer="adam", learning_rate=0.01, batch_size=64, seed=7, **common)),
        "momentum_l2_tol": (d.X, d.y, dict(optimizer="sgd", learning_rate=0.02, l2=0.1, tol=1e-7,
                                           optimizer_options={"momentum": 0.9}, **common)),
        # chunks of 1 step: L-BFGS meets the default tol in 7 steps, so the crash after 3 chunks is mid-run
        "lbfgs": (d.X, d.y, dict(optimizer="lbfgs", steps=40, chunk_size=1)),
        "per_output_vmapped": (d2.X, d2.y, dict(optimizer="sgd", learning_rate=[0.01, 0.05, 0.1], **common)),
        "batched_problems": (np.stack([d.X, d.X[::-1]]), np.stack([d.y, d.y[::-1]]),
                             dict(optimizer="adam", learning_rate=0.02, batched=True, **common)),
        "bce_init_normal": (c.X, c.y, dict(loss="bce", optimizer="sgd", learning_rate=0.5, init="normal", **common)),
    }[name]


PROBLEMS = ["sgd", "adam_minibatch_key", "momentum_l2_tol", "lbfgs", "per_output_vmapped", "batched_problems",
            "bce_init_normal"]


@pytest.mark.parametrize("name", thinned(PROBLEMS, ["adam_minibatch_key", "lbfgs", "per_output_vmapped"]))
def test_crash_at_a_chunk_boundary_then_resume_gives_the_same_bits(tmp_path, name):
    X, y, kw = _problem(name)
    reference = gradfit.fit(X, y, **kw)
    path = tmp_path / "ckpt.npz"
    with pytest.raises(Crash):
        gradfit.fit(X, y, checkpoint=path, checkpoint_every=1, callback=_crash_after(3), **kw)
    header = checkpoint.read_header(path)
    assert header["step"] == 3 * kw["chunk_size"] and not header["complete"]
    resumed = gradfit.fit(X, y, checkpoint=path, checkpoint_every=1, resume=True, **kw)
    assert resumed.stats["resumed_from_step"] == 3 * kw["chunk_size"]
    assert resumed.stats["compile_seconds"] == 0  # the loaded state has the compiled program's exact types
    _assert_same_bits(resumed, reference)
    assert checkpoint.read_header(path)["complete"]


def test_gradfit_resume_reads_the_fit_arguments_from_the_checkpoint(tmp_path):
    X, y, kw = _problem("adam_minibatch_key")
    reference = gradfit.fit(X, y, **kw)
    path = tmp_path / "c.npz"
    with pytest.raises(Crash):
        gradfit.fit(X, y, checkpoint=path, checkpoint_every=16, callback=_crash_after(2), **kw)
    resumed = gradfit.resume(path, X, y)
    _assert_same_bits(resumed, reference)


def test_checkpoints_fall_on_chunk_boundaries_even_when_timed(tmp_path, reg):
    path = tmp_path / "c.npz"
    steps_seen = []

    def record(state, history):
        if path.exists():
            steps_seen.append(checkpoint.read_header(path)["step"])

    # chunks of 10 (the other tests' program on reg), 95 steps: a short last chunk, as chunks of 12 in 100 steps
    gradfit.fit(reg.X, reg.y, learning_rate=0.01, steps=95, chunk_size=10, checkpoint=path,
                checkpoint_every=datetime.timedelta(microseconds=1), callback=record)
    assert sorted(set(steps_seen)) == [10 * i for i in range(1, 10)]  # every boundary but the last (95)
    assert checkpoint.read_header(path)["step"] == 95


def test_checkpoint_every_steps_counts_steps_between_saves(tmp_path, reg):
    path = tmp_path / "c.npz"
    saved = []
    gradfit.fit(reg.X, reg.y, learning_rate=0.01, steps=100, chunk_size=10, checkpoint=path,
                checkpoint_every=25, callback=lambda s, h: saved.append(checkpoint.read_header(path)["step"])
                if path.exists() else None)
    # due at the first boundary >= 25 steps after the last save: 30, 60, 90 (then the final 100)
    assert sorted(set(saved)) == [30, 60, 90]


def test_a_different_chunk_size_is_refused_because_boundaries_must_match(tmp_path, reg):
    path = tmp_path / "c.npz"
    with pytest.raises(Crash):
        gradfit.fit(reg.X, reg.y, learning_rate=0.01, steps=100, chunk_size=10, checkpoint=path,
                    checkpoint_every=1, callback=_crash_after(2))
    with pytest.raises(ValueError, match=r"chunk_size.*chunk_size=10"):
        gradfit.fit(reg.X, reg.y, learning_rate=0.01, steps=100, chunk_size=20, checkpoint=path, resume=True)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(learning_rate=0.02), "hyperparameters"),
        (dict(l2=0.5), "hyperparameters"),
        (dict(optimizer="adam"), "optimizer"),
        (dict(seed=1, init="normal"), "start"),
        (dict(fit_intercept=False), "settings"),
        (dict(y_shift=1.0), "data"),
        (dict(X_cols=3), "data"),  # the column count of test_load_checks_the_treedef_and_leaf_shapes' other fit
    ],
)
def test_a_checkpoint_of_another_problem_or_config_is_refused(tmp_path, reg, change, match):
    path = tmp_path / "c.npz"
    base = dict(learning_rate=0.01, steps=60, chunk_size=10)
    gradfit.fit(reg.X, reg.y, checkpoint=path, **base)
    X, y, kw = reg.X, reg.y, {**base}
    change = dict(change)
    if "y_shift" in change:
        y = y + np.float32(change.pop("y_shift"))
    if "X_cols" in change:
        X = X[:, : change.pop("X_cols")]
    kw.update(change)
    with pytest.raises(ValueError, match=rf"different problem or config.*{match}.*start afresh"):
        gradfit.fit(X, y, checkpoint=path, resume=True, **kw)


def test_load_checks_the_treedef_and_leaf_shapes(tmp_path, reg):
    path = tmp_path / "c.npz"
    gradfit.fit(reg.X, reg.y, learning_rate=0.01, steps=20, chunk_size=10, checkpoint=path)
    other = {}
    gradfit.fit(reg.X[:, :3], reg.y, learning_rate=0.01, steps=10, chunk_size=10,
                callback=lambda s, h: other.setdefault("state", s))
    with pytest.raises(ValueError, match=r"leaf 0 is float32 \(5,\) but this problem needs float32 \(3,\)"):
        checkpoint.load(path, other["state"])
    adam = {}
    gradfit.fit(reg.X, reg.y, optimizer="adam", learning_rate=0.01, steps=10, chunk_size=10,
                callback=lambda s, h: adam.setdefault("state", s))
    with pytest.raises(ValueError, match="different solver state"):
        checkpoint.load(path, adam["state"])


def test_the_saved_state_is_the_state_itself(tmp_path, reg):
    """Independent of gradfit's loader: the npz leaves are the flattened SolverState."""
    path = tmp_path / "c.npz"
    states = []
    result = gradfit.fit(reg.X, reg.y, optimizer="adam", learning_rate=0.01, steps=30, chunk_size=10,
                         checkpoint=path, checkpoint_every=10, callback=lambda s, h: states.append(s))
    # The complete checkpoint holds the state the run ended with: the last chunk's state after the
    # end-of-run rule, which sets the optimality to G at the returned params (one more evaluation);
    # the flags stay (30 steps of adam: stopped by the budget, not converged).
    assert result.status == "max_steps"
    last = states[-1]
    final = last._replace(optimality=np.asarray(result.stats["grad_norm"], np.asarray(last.optimality).dtype))
    leaves = jax.tree.leaves(final)
    with np.load(path) as z:
        header = json.loads(str(z["header"]))
        assert len(header["leaves"]) == len(leaves)
        for i, leaf in enumerate(leaves):
            if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                np.testing.assert_array_equal(z[f"leaf_{i:04d}"], jax.random.key_data(leaf))
            else:
                np.testing.assert_array_equal(z[f"leaf_{i:04d}"], np.asarray(leaf))
        assert z["history"].shape == (30,)
    assert header["step"] == 30 and header["complete"]


def test_a_finished_checkpoint_can_be_continued_with_more_steps(tmp_path, reg):
    kw = dict(optimizer="adam", learning_rate=0.01, chunk_size=10)  # the program of the other adam fits on reg
    reference = gradfit.fit(reg.X, reg.y, steps=150, **kw)
    path = tmp_path / "c.npz"
    gradfit.fit(reg.X, reg.y, steps=100, checkpoint=path, **kw)
    again = gradfit.resume(path, reg.X, reg.y)  # finished: nothing more to run
    assert again.steps == 100 and again.stats["resumed_from_step"] == 100
    longer = gradfit.resume(path, reg.X, reg.y, steps=150)
    _assert_same_bits(longer, reference)


def test_resume_without_a_checkpoint_file_starts_afresh(tmp_path, reg):
    path = tmp_path / "new" / "c.npz"
    r = gradfit.fit(reg.X, reg.y, learning_rate=0.01, steps=20, chunk_size=10, checkpoint=path, resume=True)
    assert r.stats["resumed_from_step"] == 0 and path.is_file()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(resume=True), "need checkpoint=PATH"),
        (dict(checkpoint_every=10), "need checkpoint=PATH"),
        (dict(checkpoint="DIR"), "is a folder"),
        (dict(checkpoint="UNDER_FILE"), "cannot write to the checkpoint folder"),
        (dict(checkpoint=3), "must be a file path"),
        (dict(checkpoint="c.npz", checkpoint_every=0), "positive integer"),
        (dict(checkpoint="c.npz", checkpoint_every=2.5), "number of steps"),
        (dict(checkpoint="c.npz", checkpoint_every=checkpoint.Every()), "neither steps nor seconds"),
        (dict(checkpoint="c.npz", checkpoint_every=checkpoint.Every(seconds=-1.0)), "positive number"),
        (dict(checkpoint="c.npz", resume="yes"), "resume must be True or False"),
    ],
)
def test_bad_checkpoint_arguments_fail_before_compute(tmp_path, reg, kwargs, match, monkeypatch):
    (tmp_path / "file").write_text("x")
    path = kwargs.get("checkpoint")
    if path == "DIR":
        kwargs["checkpoint"] = tmp_path
    elif path == "UNDER_FILE":
        kwargs["checkpoint"] = tmp_path / "file" / "c.npz"
    elif isinstance(path, str):
        kwargs["checkpoint"] = tmp_path / path
    monkeypatch.setattr(gradfit.solver, "build", lambda *a, **k: pytest.fail("computed before validating"))
    with pytest.raises(ValueError, match=match):
        gradfit.fit(reg.X, reg.y, learning_rate=0.01, steps=10, **kwargs)


def test_unreadable_and_missing_checkpoints_give_clear_errors(tmp_path, reg):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="is not a gradfit checkpoint: choose another checkpoint path"):
        gradfit.fit(reg.X, reg.y, learning_rate=0.01, steps=10, checkpoint=bad, resume=True)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(ValueError, match="is not a gradfit checkpoint"):
        checkpoint.read_header(other)
    with pytest.raises(ValueError, match="does not exist"):
        gradfit.resume(tmp_path / "missing.npz", reg.X, reg.y)


def test_resume_asks_again_for_arguments_it_could_not_store(tmp_path, reg):
    import optax

    path = tmp_path / "c.npz"
    kw = dict(optimizer=optax.sgd(0.01), steps=20, chunk_size=10)
    reference = gradfit.fit(reg.X, reg.y, **kw)
    gradfit.fit(reg.X, reg.y, checkpoint=path, **kw)
    with pytest.raises(ValueError, match=r"could not store the fit arguments optimizer.*pass them again"):
        gradfit.resume(path, reg.X, reg.y)
    _assert_same_bits(gradfit.resume(path, reg.X, reg.y, optimizer=kw["optimizer"]), reference)


# --------------------------------------------------------------------------- SIGKILL
CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import gradfit
    from gradfit import datasets

    mode, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
    d = datasets.make_regression(2000, 8, seed=0)
    kw = dict(optimizer="adam", learning_rate=0.01, batch_size=128, seed=3, steps=300, chunk_size=10)
    slow = lambda state, history: time.sleep(0.05)  # a long run, so the kill lands mid-fit
    if mode == "run":
        gradfit.fit(d.X, d.y, checkpoint=path, checkpoint_every=10, callback=slow, **kw)
    else:
        resumed = gradfit.fit(d.X, d.y, checkpoint=path, checkpoint_every=10, resume=True, **kw)
        plain = gradfit.fit(d.X, d.y, **kw)
        np.savez(out, W=resumed.params.W, b=resumed.params.b, losses=resumed.losses,
                 W_ref=plain.params.W, b_ref=plain.params.b, losses_ref=plain.losses,
                 resumed_from=resumed.stats["resumed_from_step"], steps=resumed.steps)
    """
)


def test_sigkill_then_resume_in_a_new_process_gives_the_same_bits(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    path, out = tmp_path / "ckpt.npz", tmp_path / "out.npz"
    env = {**os.environ, "PYTHONPATH": SRC, "JAX_PLATFORMS": "cpu"}
    child = subprocess.Popen([sys.executable, str(script), "run", str(path), str(out)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not path.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"no checkpoint appeared; child said: {child.stdout.read().decode()[-2000:]}")
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL  # killed mid-fit, not finished
    killed_at = checkpoint.read_header(path)["step"]
    assert 0 < killed_at < 300 and killed_at % 10 == 0
    done = subprocess.run([sys.executable, str(script), "resume", str(path), str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as z:
        assert int(z["resumed_from"]) >= killed_at and int(z["steps"]) == 300
        np.testing.assert_array_equal(z["W"], z["W_ref"])
        np.testing.assert_array_equal(z["b"], z["b_ref"])
        np.testing.assert_array_equal(z["losses"], z["losses_ref"])


# --------------------------------------------------------------------------- the command
def _cli(out_dir, *extra, progress=("--no-progress",)) -> int:
    """The command on data of reg's shape with the in-process adam fits' settings: their compiled programs serve it,
    and every command test here shares one set (``progress=()``: no progress flag, the default)."""
    from gradfit import cli

    return cli.main(["fit", "--set", f"output.dir={out_dir}", "--set", "data.n_samples=300",
                     "--set", "data.n_features=5", "--set", "fit.optimizer=adam", "--set", "fit.learning_rate=0.01",
                     "--set", "fit.chunk_size=10", "--set", "checkpoint.every_steps=10", *progress, *extra])


def test_cli_resume_continues_a_checkpoint_to_the_same_bits(tmp_path, capsys):
    assert _cli(tmp_path / "straight", "--set", "fit.steps=80") == 0
    assert _cli(tmp_path / "stopped", "--set", "fit.steps=50") == 0  # as if stopped at step 50
    assert _cli(tmp_path / "stopped", "--set", "fit.steps=80", "--resume") == 0
    assert "resumed from step 50" in capsys.readouterr().out
    for name in ("params.npz", "history.npz"):
        with np.load(tmp_path / "straight" / name) as a, np.load(tmp_path / "stopped" / name) as b:
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
    report = json.loads((tmp_path / "stopped" / "report.json").read_text())
    assert report["checkpoint"]["resumed_from_step"] == 50 and report["steps"] == 80


def test_cli_resume_refuses_another_config_and_needs_checkpoints(tmp_path, capsys):
    assert _cli(tmp_path / "run", "--set", "fit.steps=20") == 0
    capsys.readouterr()
    assert _cli(tmp_path / "run", "--set", "fit.steps=20", "--set", "fit.learning_rate=0.5", "--resume") == 2
    err = capsys.readouterr().err
    assert "different problem or config" in err and "hyperparameters" in err and "Traceback" not in err
    assert _cli(tmp_path / "run", "--set", "checkpoint.every_steps=0", "--set", "checkpoint.every_seconds=0",
                "--resume") == 2
    assert "--resume needs checkpoints" in capsys.readouterr().err
    assert _cli(tmp_path / "run", "--set", "checkpoint.every_steps=-5") == 2
    assert "checkpoint.every_steps must be >= 0" in capsys.readouterr().err


def test_cli_resume_without_a_checkpoint_starts_afresh(tmp_path, capsys):
    assert _cli(tmp_path / "new", "--set", "fit.steps=20", "--resume") == 0
    assert "no checkpoint at" in capsys.readouterr().out
    assert (tmp_path / "new" / "checkpoint.npz").is_file()


def test_cli_progress_flag(tmp_path, capsys):
    assert _cli(tmp_path / "bar", "--set", "fit.steps=20", progress=("--progress",)) == 0
    assert "20/20" in capsys.readouterr().err
    assert _cli(tmp_path / "plain", "--set", "fit.steps=20", progress=()) == 0
    assert capsys.readouterr().err == ""  # stderr is not a terminal here: no bar by default


# --------------------------------------------------------------------------- a sweep's groups
def test_a_vmapped_group_resumes_to_the_same_bits(tmp_path, reg):
    """The driver over a vmapped grid of learning rates, one checkpoint file per group."""
    import io

    import jax.numpy as jnp

    from gradfit import _optim, _runner, health, progress
    from gradfit._driver import CompiledStepper
    from gradfit._types import Data, Hyper, Level, Params, Program, Scaling

    spec, _ = _optim.resolve("adam", None, 0.01)
    program = Program("mse", "mean", "autodiff", spec, True, True, None, 8)
    f32 = jnp.float32  # explicit dtypes: these are the engine's internals, not fit()'s checked inputs
    data = Data(jnp.asarray(reg.X, f32), jnp.asarray(reg.y, f32), None)
    params = Params(jnp.zeros(5, f32), jnp.zeros((), f32))
    key = jax.random.key(0)
    level = Level(Data(None, None, None), Hyper(0, None, None, None, {}, None, None), None, None)
    scaling = Scaling(*(jnp.asarray(v, f32) for v in health.scaling(reg.X, reg.y, loss="mse", reduction="mean",
                                                                      fit_intercept=True, dtype=np.float32)))

    def group(rates, path=None, **kwargs):  # tol and ftol < 0: no stopping test, every step runs
        hyper = Hyper(jnp.asarray(rates, f32), jnp.zeros((), f32), jnp.asarray(-1.0, f32), jnp.asarray(40, jnp.int32), {},
                      jnp.asarray(-1.0, f32), scaling)
        stepper = CompiledStepper(data, hyper, program, (level,))
        fp = checkpoint.fingerprint(params, data, hyper, key, program, (level,))
        return _runner.run(stepper, stepper.init(params, key), hyper, chunk_steps=8, max_steps=40, checkpoint=path,
                           every=checkpoint.Every(steps=1), fingerprint=fp, **kwargs)

    rates = [[0.001, 0.01], [0.1, 0.5]]
    reference = [group(r)[0] for r in rates]
    with pytest.raises(Crash):
        group(rates[1], tmp_path / "group1.npz", callback=_crash_after(2))
    sink = io.StringIO()
    with progress.Progress(40, members=4, desc="sweep", file=sink) as bar:
        results = [group(r, tmp_path / f"group{g}.npz", resume=True, callback=bar.callback())
                   for g, r in enumerate(rates)]
    assert bar.bar.n == 40  # closing caught the bar up with every group's last state
    assert [info["resumed_from_step"] for _, info in results] == [0, 16]
    for (result, _), ref in zip(results, reference):
        for a, b in zip(jax.tree.leaves(result.state), jax.tree.leaves(ref.state)):
            a, b = (jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x for x in (a, b))
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(result.history, ref.history)


def test_float64_state_resumes_to_the_same_bits(tmp_path, x64):
    d = datasets.make_regression(200, 4, seed=5, dtype=np.float64)
    kw = dict(optimizer="adam", learning_rate=0.01, batch_size=50, steps=60, chunk_size=10)
    reference = gradfit.fit(d.X, d.y, **kw)
    assert reference.params.W.dtype == np.float64
    path = tmp_path / "c.npz"
    with pytest.raises(Crash):
        gradfit.fit(d.X, d.y, checkpoint=path, checkpoint_every=10, callback=_crash_after(2), **kw)
    _assert_same_bits(gradfit.fit(d.X, d.y, checkpoint=path, resume=True, **kw), reference)
    with jax.enable_x64(False):  # the same file cannot be resumed in float32
        with pytest.raises(ValueError, match="different problem or config"):
            gradfit.fit(d.X, d.y, checkpoint=path, resume=True, **kw)


SHARDED = textwrap.dedent(
    """
    import numpy as np
    import gradfit
    from gradfit import datasets

    class Crash(Exception):
        pass

    def crash_after_two(state, history, seen=[0]):
        seen[0] += 1
        if seen[0] == 2:
            raise Crash

    d = datasets.make_regression(1001, 5, seed=0)  # 1001 rows: padded to split over 4 devices
    kw = dict(optimizer="adam", learning_rate=0.01, steps=60, chunk_size=10, devices=4, batch_size=100)
    reference = gradfit.fit(d.X, d.y, **kw)
    path = __import__("sys").argv[1]
    try:
        gradfit.fit(d.X, d.y, checkpoint=path, checkpoint_every=10, callback=crash_after_two, **kw)
    except Crash:
        pass
    resumed = gradfit.fit(d.X, d.y, checkpoint=path, resume=True, **kw)
    assert resumed.stats["devices"] == 4 and resumed.stats["resumed_from_step"] == 20
    assert resumed.stats["compile_seconds"] == 0
    np.testing.assert_array_equal(resumed.params.W, reference.params.W)
    np.testing.assert_array_equal(resumed.params.b, reference.params.b)
    np.testing.assert_array_equal(resumed.losses, reference.losses)
    print("same bits")
    """
)


def test_rows_sharded_over_devices_resume_to_the_same_bits(tmp_path):
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED)
    env = {**os.environ, "PYTHONPATH": SRC, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "c.npz")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "same bits" in done.stdout, done.stderr[-3000:]
