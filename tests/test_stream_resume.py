"""A streamed fit runs under the same driver as an in-memory one: it shows a progress bar,
writes checkpoints, and a run killed with SIGKILL and resumed (``resume=True``) ends with the
same bits as one that never stopped, for each of the three streamed plans:

- full-batch passes (``grad="hand"``, bce): one streamed pass per step;
- minibatch epochs (``batch_size``, ``shuffle="blocks"``): one streamed epoch per step, the
  chunk and batch order drawn from (seed, epoch), so the step is the data position;
- sufficient statistics (``grad="stats"``, mse, sgd): two passes, then chunks of steps on the
  statistics in memory (here float64, under x64, in both processes).

The killed run is a child process (``JAX_PLATFORMS=cpu``) whose callback sleeps between
chunks; the parent kills it once the checkpoint on disk is at step >= 2.
"""

from __future__ import annotations

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
from gradfit import checkpoint

pytest.importorskip("tqdm")

SRC = str(Path(gradfit.__file__).resolve().parents[1])
M, N = 300, 4  # rows and features of the files

CASES = {
    "passes": dict(dtype="float32", target="binary",
                   options=dict(loss="bce", grad="hand", optimizer="adam", learning_rate=0.05, steps=30)),
    "minibatch_epochs": dict(dtype="float32", target="real",
                             options=dict(optimizer="sgd", learning_rate=0.05, batch_size=32, shuffle="blocks",
                                          seed=5, steps=24)),
    "statistics": dict(dtype="float64", target="real",
                       # tol=None: the whole budget runs (the default tol converges it at step 155)
                       options=dict(loss="mse", grad="stats", optimizer="sgd", learning_rate=0.05, steps=240,
                                    chunk_size=8, tol=None)),
}
EXPECTED_PLAN = {"passes": "hand", "minibatch_epochs": "hand", "statistics": "stats"}
CHUNK_ROWS = 64  # 300 rows: five chunks, the last one short (44 rows)


def _chunk_bytes(dtype: str) -> int:
    return CHUNK_ROWS * N * np.dtype(dtype).itemsize


def _files(tmp_path: Path, case: str) -> tuple[Path, Path]:
    spec = CASES[case]
    rng = np.random.default_rng(11)
    X = rng.standard_normal((M, N)) + 0.25
    z = X @ rng.standard_normal(N) + 0.3
    if spec["target"] == "binary":
        y = (rng.random(M) < 1 / (1 + np.exp(-z))).astype(np.float64)
    else:
        y = z + 0.1 * rng.standard_normal(M)
    xp, yp = tmp_path / "X.npy", tmp_path / "y.npy"
    np.save(xp, X.astype(spec["dtype"]))
    np.save(yp, y.astype(spec["dtype"]))
    return xp, yp


@pytest.fixture
def precision(request):
    """float64 on for the cases that read float64 files (as the child turns it on too)."""
    with jax.enable_x64(CASES[request.param]["dtype"] == "float64"):
        yield request.param


def _fit(xp, yp, case: str, **extra) -> gradfit.FitResult:
    return gradfit.fit_streaming(xp, yp, chunk_bytes=_chunk_bytes(CASES[case]["dtype"]),
                                 **CASES[case]["options"], **extra)


def _assert_same_bits(a: gradfit.FitResult, b: gradfit.FitResult) -> None:
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_array_equal(np.asarray(a.loss), np.asarray(b.loss))
    np.testing.assert_array_equal(a.losses, b.losses)
    np.testing.assert_array_equal(np.asarray(a.steps), np.asarray(b.steps))
    np.testing.assert_array_equal(np.asarray(a.converged), np.asarray(b.converged))
    np.testing.assert_array_equal(np.asarray(a.diverged), np.asarray(b.diverged))


def _final_bar(err: str) -> str:
    """The last frame tqdm drew (frames are separated by carriage returns)."""
    frames = [f for f in err.replace("\n", "\r").split("\r") if f.strip()]
    assert frames, "nothing was written to stderr"
    return frames[-1]


# --------------------------------------------------------------------------- the killed child
CHILD = textwrap.dedent(
    """
    import json, sys, time
    import jax

    X_path, y_path, path, chunk_bytes, x64, options = sys.argv[1:7]
    if x64 == "1":
        jax.config.update("jax_enable_x64", True)
    import gradfit

    def slow(state, history):
        time.sleep(0.15)  # a long run, so that the kill lands mid-fit

    gradfit.fit_streaming(X_path, y_path, chunk_bytes=int(chunk_bytes), checkpoint=path, checkpoint_every=1,
                          callback=slow, **json.loads(options))
    print("finished")
    """
)


def _step_on_disk(path: Path) -> int:
    try:
        return int(checkpoint.read_header(path)["step"])
    except ValueError:  # not written yet
        return 0


def _run_and_kill(tmp_path: Path, xp: Path, yp: Path, case: str, path: Path) -> int:
    """Start the child's checkpointed fit, SIGKILL it once the checkpoint is at step >= 2;
    returns the step of the checkpoint it left."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    spec = CASES[case]
    env = {**os.environ, "PYTHONPATH": SRC, "JAX_PLATFORMS": "cpu"}
    argv = [sys.executable, str(script), str(xp), str(yp), str(path), str(_chunk_bytes(spec["dtype"])),
            "1" if spec["dtype"] == "float64" else "0", json.dumps(spec["options"])]
    log = tmp_path / "child.log"
    with open(log, "wb") as out:
        child = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while _step_on_disk(path) < 2:
                if child.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the child wrote no checkpoint at step >= 2 (exit {child.poll()}); it said:\n"
                                f"{log.read_text()[-3000:]}")
                time.sleep(0.01)
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, f"the child was not killed mid-fit:\n{log.read_text()[-3000:]}"
    header = checkpoint.read_header(path)
    assert not header["complete"] and header["fit_streaming"] is True
    return int(header["step"])


# --------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("precision", list(CASES), indirect=True)
def test_sigkill_then_resume_gives_the_bits_of_an_uninterrupted_streamed_fit(tmp_path, precision, capsys):
    case = precision
    xp, yp = _files(tmp_path, case)
    path = tmp_path / "ckpt.npz"
    killed_at = _run_and_kill(tmp_path, xp, yp, case, path)
    steps = CASES[case]["options"]["steps"]
    assert 2 <= killed_at < steps
    if case == "statistics":
        assert killed_at % CASES[case]["options"]["chunk_size"] == 0  # saved at chunk boundaries

    capsys.readouterr()
    resumed = _fit(xp, yp, case, checkpoint=path, checkpoint_every=1, resume=True, progress=True)
    bar = _final_bar(capsys.readouterr().err)
    assert "fit (streamed)" in bar and f"{steps}/{steps}" in bar and "100%" in bar, bar

    reference = _fit(xp, yp, case)
    assert reference.stats["plan"] == resumed.stats["plan"] == EXPECTED_PLAN[case]
    assert reference.stats["n_chunks"] == 5
    assert resumed.stats["resumed_from_step"] == killed_at > 0
    assert resumed.steps == reference.steps == steps  # the settings run their whole budget
    assert np.asarray(resumed.params.W).dtype == np.dtype(CASES[case]["dtype"])
    _assert_same_bits(resumed, reference)
    header = checkpoint.read_header(path)
    assert header["complete"] and header["step"] == steps


@pytest.mark.parametrize("precision", list(CASES), indirect=True)
def test_progress_bar_shows_every_step_of_a_streamed_fit(tmp_path, precision, capsys):
    case = precision
    xp, yp = _files(tmp_path, case)
    steps = CASES[case]["options"]["steps"]
    capsys.readouterr()
    shown = _fit(xp, yp, case, progress=True)
    err = capsys.readouterr().err
    bar = _final_bar(err)
    assert bar.startswith("fit (streamed):") and f"{steps}/{steps}" in bar and "100%" in bar, bar
    assert "loss" in bar  # the postfix shows the objective
    plain = _fit(xp, yp, case)
    assert capsys.readouterr().err == ""  # no bar unless asked
    _assert_same_bits(shown, plain)  # the bar only reads states


@pytest.mark.parametrize("precision", ["passes", "minibatch_epochs"], indirect=True)
def test_checkpoint_every_step_of_a_streamed_fit_and_a_crash_resumes_in_process(tmp_path, precision):
    """One step per chunk for the pass plans: with checkpoint_every=1 every step but the last
    is saved (the last is the final, complete checkpoint), and an exception from the callback
    finds the run saved."""
    case = precision
    xp, yp = _files(tmp_path, case)
    steps = CASES[case]["options"]["steps"]
    path = tmp_path / "c.npz"
    saved = []

    def record(state, history):
        saved.append(checkpoint.read_header(path)["step"] if path.exists() else None)
        if len(saved) == 5:
            raise KeyboardInterrupt  # a user's Ctrl-C between chunks

    with pytest.raises(KeyboardInterrupt):
        _fit(xp, yp, case, checkpoint=path, checkpoint_every=1, callback=record)
    assert saved == [1, 2, 3, 4, 5]
    resumed = _fit(xp, yp, case, checkpoint=path, checkpoint_every=1, resume=True)
    assert resumed.stats["resumed_from_step"] == 5 and resumed.stats["checkpoints"] == steps - 5
    _assert_same_bits(resumed, _fit(xp, yp, case))


@pytest.mark.parametrize("precision", list(CASES), indirect=True)
def test_a_streamed_checkpoint_of_another_problem_is_refused(tmp_path, precision):
    case = precision
    xp, yp = _files(tmp_path, case)
    path = tmp_path / "c.npz"
    _fit(xp, yp, case, checkpoint=path)
    other = {**CASES[case]["options"], "learning_rate": 0.01}
    with pytest.raises(ValueError, match="different problem or config.*hyperparameters"):
        gradfit.fit_streaming(xp, yp, chunk_bytes=_chunk_bytes(CASES[case]["dtype"]), checkpoint=path, resume=True,
                              **other)
    y = np.load(yp)
    y[7] += 1
    np.save(yp, y)
    with pytest.raises(ValueError, match="different problem or config.*data"):
        _fit(xp, yp, case, checkpoint=path, resume=True)
