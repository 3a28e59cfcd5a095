"""Ctrl-C and SIGTERM: a run stops at the next chunk boundary, saves where it stopped, and a resume
ends with the same bits as a run that never stopped.

In process the signal is sent from a callback (it runs between chunks), so the stop lands at a
known step; the command is a child process that gets a real SIGTERM or SIGINT while it runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gradfit
from gradfit import Interrupted, checkpoint

SRC = str(Path(gradfit.__file__).resolve().parents[1])
OPTIONS = dict(learning_rate=0.05, steps=60, tol=None, chunk_size=5)


def _problem(m=200, n=4):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((m, n)).astype(np.float32)
    return X, (X @ rng.standard_normal(n) + 0.1 * rng.standard_normal(m)).astype(np.float32)


def _send_at(step: int, signum: int):
    """A callback that sends ``signum`` to this process once the run has reached ``step``."""

    def callback(state, history):
        if int(np.max(state.step)) >= step:
            os.kill(os.getpid(), signum)

    return callback


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_fit_stops_saves_and_resumes_to_the_same_bits(tmp_path, signum):
    X, y = _problem()
    path = tmp_path / "ck.npz"
    with pytest.raises(Interrupted) as stop:
        gradfit.fit(X, y, **OPTIONS, checkpoint=path, callback=_send_at(10, signum))
    assert stop.value.signum == signum and stop.value.checkpoint == path
    assert int(stop.value.state.step) == 10  # the chunk boundary after the signal
    assert checkpoint.read_header(path)["step"] == 10
    assert signal.getsignal(signum) in (signal.default_int_handler, signal.SIG_DFL)  # handlers restored
    resumed = gradfit.fit(X, y, **OPTIONS, checkpoint=path, resume=True)
    whole = gradfit.fit(X, y, **OPTIONS)
    assert resumed.stats["resumed_from_step"] == 10 and resumed.steps == whole.steps == 60
    np.testing.assert_array_equal(resumed.params.W, whole.params.W)
    np.testing.assert_array_equal(resumed.losses, whole.losses)


def test_a_stepper_that_gives_up_its_first_chunk_raises_interrupted():
    """No chunk ran yet (no history at all): the driver still stops with Interrupted at step 0."""
    from gradfit._driver import StopChunk, drive

    X, y = _problem()
    first = {}
    gradfit.fit(X, y, **OPTIONS, callback=lambda s, h: first.setdefault("state", s))
    state = first["state"]._replace(step=np.zeros((), np.int32))

    class GivesUp:
        compile_seconds = 0.0

        def chunk(self, state, limit):
            os.kill(os.getpid(), signal.SIGINT)  # answered between bytecodes, before the raise below
            raise StopChunk

    class Budget:
        max_steps = 60

    with pytest.raises(Interrupted, match="SIGINT at step 0") as stop:
        drive(GivesUp(), state, Budget(), chunk_steps=5)
    assert stop.value.history.shape == (0,)


def test_a_streamed_fit_stops_between_file_chunks_and_resumes(tmp_path):
    X, y = _problem(m=240)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    files = (tmp_path / "X.npy", tmp_path / "y.npy")
    opts = dict(grad="hand", learning_rate=0.05, steps=12, tol=None, chunk_bytes=40 * 4 * 4)  # 6 file chunks a pass
    path = tmp_path / "ck.npz"
    with pytest.raises(Interrupted):
        gradfit.fit_streaming(*files, **opts, checkpoint=path, callback=_send_at(4, signal.SIGINT))
    assert checkpoint.read_header(path)["step"] == 4
    resumed = gradfit.fit_streaming(*files, **opts, checkpoint=path, resume=True)
    whole = gradfit.fit_streaming(*files, **opts)
    np.testing.assert_array_equal(resumed.params.W, whole.params.W)


def _command(tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gradfit.cli", "fit", "--no-progress", "--set", "data.n_samples=4000",
            "--set", "data.n_features=8", "--set", "fit.learning_rate=1e-4", "--set", "fit.tol=none",
            "--set", "fit.grad='hand'", "--set", f"output.dir='{tmp_path / 'run'}'", *extra]


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_the_command_exits_128_plus_signal_and_says_how_to_resume(tmp_path, signum):
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    saved = tmp_path / "run" / "checkpoint.npz"
    child = subprocess.Popen(_command(tmp_path, "--set", "fit.steps=100000000", "--set", "checkpoint.every_seconds=0.5"),
                             cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not saved.exists() and child.poll() is None and time.monotonic() < deadline:  # the loop is running
        time.sleep(0.1)
    start = time.monotonic()
    child.send_signal(signum)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 128 + signum, err[-2000:]
    assert time.monotonic() - start < 20  # within a few chunks of ~1 s
    line = err.strip().splitlines()[-1]
    assert "continue with:" in line and line.endswith("--resume"), line
    assert checkpoint.read_header(saved)["step"] > 0
    resume_equals_unbroken(_command, tmp_path, env, checkpoint.read_header(saved)["step"] + 50)


def resume_equals_unbroken(command, tmp_path: Path, env: dict, steps: int) -> None:
    """``command(tmp_path, *extra)`` resumed to ``steps`` ends with the bits of a run of ``steps`` that never
    stopped (written to tmp_path/whole)."""
    step = checkpoint.read_header(tmp_path / "run" / "checkpoint.npz")["step"]
    done = subprocess.run(command(tmp_path, "--set", f"fit.steps={steps}", "--resume"), cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and f"resumed from step {step}" in done.stdout, done.stderr[-2000:]
    whole = subprocess.run(command(tmp_path, "--set", f"fit.steps={steps}", "--set",
                                   f"output.dir='{tmp_path / 'whole'}'"),
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]
    with np.load(tmp_path / "run" / "params.npz") as a, np.load(tmp_path / "whole" / "params.npz") as b:
        np.testing.assert_array_equal(a["W"], b["W"])
        np.testing.assert_array_equal(a["b"], b["b"])
