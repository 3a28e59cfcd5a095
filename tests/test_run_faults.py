"""Faults of run folders and the command (issue 13): a lock keeps two runs out of one folder,
output.dir "" / "~", rank-deficient data in the report, a data file changed under a sweep, damaged
sweep, history and params files, predict on a table of another width, and a sweep stopped by a
signal that a rerun finishes to the same bits."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gradfit
from gradfit import cli

SRC = str(Path(gradfit.__file__).resolve().parents[1])
ENV = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
SMALL = ["--no-progress", "--set", "data.n_samples=200", "--set", "data.n_features=3", "--set", "fit.steps=20"]


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gradfit.cli", *args]


def _wait_for(path: Path, child: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.slow  # two processes, ~10 s
def test_a_second_run_into_a_busy_folder_is_refused_and_the_lock_goes_with_the_first(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(_command("fit", *SMALL, "--set", "fit.steps=100000000", "--set", "fit.tol=none",
                                      "--set", "fit.learning_rate=1e-6", "--set", f"output.dir='{run}'"),
                             env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(run / ".lock", first)
        assert (run / ".lock").read_text() == str(first.pid)
        second = subprocess.run(_command("fit", *SMALL, "--set", f"output.dir='{run}'"), env=ENV,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        lock = run / ".lock"
        assert second.stderr.strip().splitlines() == [
            f"gradfit fit: error: {run} is in use by another gradfit run (pid {first.pid}, {lock}): wait for it, "
            f"stop it, or choose another output.dir (a lock left by a crashed run elsewhere: delete {lock})"]
        assert not (run / "params.npz").exists()
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 128 + signal.SIGTERM
    assert not (run / ".lock").exists()  # released on the interrupt


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(dead.stdout.strip())
    assert cli.main(["fit", *SMALL, "--set", f"output.dir='{run}'"]) == 0
    assert (run / "params.npz").exists() and not (run / ".lock").exists()


def test_a_failed_run_removes_its_lock_and_the_folder_it_made(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["fit", *SMALL, "--set", "fit.optimizer_options={momentum=-1.0}",
                     "--set", f"output.dir='{run}'"]) == 2
    assert "Traceback" not in capsys.readouterr().err and not run.exists()


def test_empty_output_dir_is_refused_and_tilde_is_home(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["fit", *SMALL, "--set", "output.dir=''"]) == 2
    assert 'output.dir is "": name a folder' in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cli.main(["fit", *SMALL, "--set", "output.dir='~/runs/x'"]) == 0
    assert (tmp_path / "home" / "runs" / "x" / "params.npz").exists() and not (tmp_path / "~").exists()


def test_rank_deficient_columns_give_a_report_not_singular_matrix(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 2))
    table = np.c_[X, np.ones(60), X[:, 0], X[:, 0] + X[:, 1], X @ [1.0, 2.0] + 0.1 * rng.standard_normal(60)]
    path = tmp_path / "t.csv"
    np.savetxt(path, table, delimiter=",", header="a,b,const,dup,sum,y", comments="")
    run = tmp_path / "run"
    assert cli.main(["fit", "--no-progress", "--set", f"data.source='{path}'", "--set", "data.target=y",
                     "--set", "fit.steps=30", "--set", f"output.dir='{run}'"]) == 0
    report = json.loads((run / "report.json").read_text())
    assert np.isfinite(report["optimum_loss"]) and np.isfinite(report["relative_distance_to_optimum"])


SWEEP = """
[data]
source = "{data}"
target = "y"
[fit]
steps = 20
[sweep]
grid = {{ learning_rate = [0.01, 0.1] }}
plot = false
[output]
dir = "{out}"
"""


def _sweep_config(tmp_path: Path, name: str = "run") -> tuple[Path, Path, Path]:
    """A sweep config in ``tmp_path`` with paths relative to it (run from there: a copy of the folder is the
    same sweep)."""
    data, out, config = tmp_path / "d.csv", tmp_path / name, tmp_path / f"{name}.toml"
    if not data.exists():
        rng = np.random.default_rng(1)
        X = rng.standard_normal((80, 2))
        np.savetxt(data, np.c_[X, X @ [1.0, -1.0]], delimiter=",", header="a,b,y", comments="")
    config.write_text(SWEEP.format(data=data.name, out=out.name))
    return config, out, data


# session: --dist loadgroup sends this file's tests to a worker one by one, and a module fixture would end
# (and be built again) whenever the next test there is another file's
@pytest.fixture(scope="session")
def swept(tmp_path_factory) -> Path:
    """A finished sweep folder (copied by each test that damages it)."""
    tmp = tmp_path_factory.mktemp("swept")
    config, out, _ = _sweep_config(tmp)
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        assert cli.main(["sweep", "--no-progress", "--config", str(config)]) == 0
    finally:
        os.chdir(cwd)
    return tmp


def test_a_data_file_changed_under_a_sweep_folder_is_refused(tmp_path, swept, capsys, monkeypatch):
    shutil.copytree(swept, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sweep", "--no-progress", "--config", "run.toml"]) == 0  # the same sweep: all skipped
    assert "already written, skipped" in capsys.readouterr().out
    config, out, data = _sweep_config(tmp_path)
    lines = data.read_text().splitlines()
    data.write_text("\n".join(lines[:-1]) + "\n")  # one row fewer, same path
    assert cli.main(["sweep", "--no-progress", "--config", str(config)]) == 2
    assert "holds a sweep of a different config or data" in capsys.readouterr().err


@pytest.mark.parametrize("name, damage, message", [
    ("sweep.json", b"{not json", "sweep.json is not valid JSON"),
    ("sweep.json", b"{}", "sweep.json lacks fingerprint"),
    ("group_000.npz", b"PK\x03\x04 cut short", "group_000.npz is not a readable .npz file"),
])
def test_a_damaged_sweep_folder_names_the_file_and_the_fix(tmp_path, swept, capsys, monkeypatch, name, damage,
                                                           message):
    shutil.copytree(swept, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    config, out, _ = _sweep_config(tmp_path)
    (out / name).write_bytes(damage)
    assert cli.main(["sweep", "--no-progress", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert ("delete it to run that group again" if name.startswith("group") else f"delete the folder {out.name}") in err
    assert not (out / ".lock").exists()


# session: as the fixture above
@pytest.fixture(scope="session")
def fitted(tmp_path_factory) -> Path:
    """A fit of a 4-column .npy table (features 0, 1, 2; target 3)."""
    tmp = tmp_path_factory.mktemp("fitted")
    rng = np.random.default_rng(2)
    X = rng.standard_normal((50, 3)).astype(np.float32)
    np.save(tmp / "t.npy", np.c_[X, X @ [1.0, 2.0, 3.0]].astype(np.float32))
    np.save(tmp / "x.npy", X)
    assert cli.main(["fit", "--no-progress", "--set", f"data.source='{tmp / 't.npy'}'",
                     "--set", "fit.steps=20", "--set", f"output.dir='{tmp / 'run'}'"]) == 0
    return tmp


@pytest.mark.parametrize("damage", [b"not an npz", "no losses"])
def test_plot_of_a_damaged_history_names_the_file(tmp_path, fitted, capsys, damage):
    run = shutil.copytree(fitted / "run", tmp_path / "run")
    if damage == "no losses":
        np.savez(run / "history.npz", other=np.ones(3))
    else:
        (run / "history.npz").write_bytes(damage)
    assert cli.main(["plot", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gradfit plot: error: {run / 'history.npz'} ") and err.count("\n") == 1
    assert ("lacks losses" if damage == "no losses" else "is not a readable .npz file") in err


@pytest.mark.parametrize("columns", [2, 5])
def test_predict_on_a_table_of_another_width_names_the_expected_columns(tmp_path, fitted, capsys, columns):
    source = tmp_path / "other.npy"
    np.save(source, np.ones((4, columns), np.float32))
    assert cli.main(["predict", str(fitted / "run"), str(source)]) == 2
    err = capsys.readouterr().err
    assert f"{source} has {columns} columns, but the model takes 3 features" in err and "4-column table" in err
    # the fit's table, or its feature columns alone, are fine and agree
    with_target, alone = (gradfit.runs.predict_run(fitted / "run", fitted / f) for f in ("t.npy", "x.npy"))
    np.testing.assert_array_equal(with_target, alone)


def test_predict_on_damaged_params_names_the_file(tmp_path, fitted, capsys):
    run = shutil.copytree(fitted / "run", tmp_path / "run")
    (run / "params.npz").write_bytes(b"")
    assert cli.main(["predict", str(run), str(fitted / "x.npy")]) == 2
    assert f"{run / 'params.npz'} is not a readable .npz file" in capsys.readouterr().err


SIGNAL_SWEEP = SWEEP.replace("steps = 20", "steps = 400000\ntol = 0.0\nftol = 0.0").replace(
    "{{ learning_rate = [0.01, 0.1] }}", '{{ optimizer = ["sgd", "adam"], learning_rate = [1e-5] }}')


def _signal_sweep(tmp_path: Path, name: str) -> tuple[list[str], Path]:
    config, out, data = _sweep_config(tmp_path, name)
    config.write_text(SIGNAL_SWEEP.format(data=data.as_posix(), out=out.as_posix()))  # absolute paths
    return _command("sweep", "--no-progress", "--config", str(config)), out


# session: as the fixture above
@pytest.fixture(scope="session")
def whole_sweep(tmp_path_factory) -> Path:
    """The sweep of :data:`SIGNAL_SWEEP`, never stopped."""
    command, out = _signal_sweep(tmp_path_factory.mktemp("whole"), "whole")
    subprocess.run(command, env=ENV, check=True, capture_output=True, timeout=600)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_sweep_says_what_was_saved_and_the_rerun_gives_the_same_bits(tmp_path, whole_sweep, signum):
    command, out = _signal_sweep(tmp_path, "stopped")
    child = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "group_000.npz", child)
    if child.poll() is not None:
        pytest.skip("the sweep finished before the signal (machine too fast for this size)")
    child.send_signal(signum)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 128 + signum, err[-2000:]
    notice = f"gradfit: {signal.Signals(signum).name}: stopping at the end of this chunk"  # gradfit._driver's, if
    lines = [line for line in err.strip().splitlines() if not line.startswith(notice)]  # the loop was running
    assert len(lines) == 1 and lines[0].startswith(("gradfit sweep: interrupted", "gradfit sweep: terminated")), err
    assert lines[0].endswith(f"; 1 of 2 groups saved in {out}; continue with: gradfit {' '.join(command[3:])}")
    assert not (out / ".lock").exists() and not (out / "results.csv").exists()
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "group 1/2 {'optimizer': 'sgd'}: already written, skipped" in done.stdout
    strip = lambda text: [line.rsplit(",", 2)[0] for line in text.splitlines()]  # noqa: E731 (timings differ)
    assert strip((out / "results.csv").read_text()) == strip((whole_sweep / "results.csv").read_text())
    with np.load(out / "params.npz") as a, np.load(whole_sweep / "params.npz") as b:
        np.testing.assert_array_equal(a["W"], b["W"])
        np.testing.assert_array_equal(a["b"], b["b"])


def test_fit_restart_flag_reaches_the_checkpoint_check(tmp_path, capsys):
    argv = ["fit", *SMALL, "--set", f"output.dir='{tmp_path / 'run'}'", "--set", "checkpoint.every_steps=5"]
    assert cli.main([*argv, "--resume", "--restart"]) == 2
    assert "resume=True continues the checkpoint and overwrite=True starts over" in capsys.readouterr().err
    assert cli.main([*argv, "--restart"]) == 0
