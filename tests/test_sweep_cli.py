"""gradfit sweep / scripts/sweep.py: results.csv against separate fits, resume, config errors."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import gradfit
from gradfit import cli, datasets

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
[data]
source = "synthetic"
n_samples = 300
n_features = 4
seed = 3

[fit]
steps = 200
tol = 1e-4

[sweep]
grid = {{ optimizer = ["sgd", "adam"], learning_rate = [0.01, 0.1, 50.0] }}
plot = {plot}

[output]
dir = "{out}"
"""


def _write_config(tmp_path, plot=False) -> tuple[Path, Path]:
    out = tmp_path / "run"
    path = tmp_path / "sweep.toml"
    path.write_text(CONFIG.format(out=out.as_posix(), plot=str(plot).lower()))
    return path, out


def _read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_cli_sweep_writes_results_matching_separate_fits(tmp_path, capsys):
    config, out = _write_config(tmp_path)
    assert cli.main(["sweep", "--config", str(config)]) == 0
    rows = _read_csv(out / "results.csv")
    assert [r["optimizer"] for r in rows] == ["sgd"] * 3 + ["adam"] * 3
    assert list(rows[0]) == ["group", "optimizer", "learning_rate", "final_loss", "steps", "converged",
                             "diverged", "status", "seconds", "group_wall_seconds"]
    d = datasets.make_regression(300, 4, seed=3)
    for r in rows:
        with pytest.warns(RuntimeWarning) if r["diverged"] == "True" else contextlib.nullcontext():
            fit = gradfit.fit(d.X, d.y, steps=200, tol=1e-4, optimizer=r["optimizer"], learning_rate=float(r["learning_rate"]))
        assert int(r["steps"]) == fit.steps
        assert r["diverged"] == str(fit.diverged)
        assert r["converged"] == str(fit.converged) and r["status"] == fit.status
        # float32, standardized coordinates (the default): a member vmapped with others rounds the
        # map to and from those coordinates differently from a lone fit, ~1e-8 of W per step; after
        # 200 steps far from the optimum (sgd, learning_rate=0.01) the losses differ by ~2.5e-5
        np.testing.assert_allclose(float(r["final_loss"]), fit.loss, rtol=1e-4)
    # tol is the optimality test (G <= 1e-4, within float32's reach): sgd at 0.1 and adam at 0.1
    # converge before the budget, 50.0 diverges, the rest run out of steps
    assert [r["status"] for r in rows] == ["max_steps", "converged", "diverged", "max_steps", "converged", "max_steps"]
    with np.load(out / "histories.npz") as h:
        assert h["losses"].shape == (6, 200)
        assert list(h["config_optimizer"]) == ["sgd"] * 3 + ["adam"] * 3
        np.testing.assert_array_equal(h["config_learning_rate"], [0.01, 0.1, 50.0] * 2)
    with np.load(out / "params.npz") as p:
        assert p["W"].shape == (6, 4)
    printed = capsys.readouterr().out
    assert "group 2/2 {'optimizer': 'adam'}: 3 members" in printed
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))  # atomic writes leave nothing behind


def test_rerun_skips_written_groups(tmp_path, monkeypatch, capsys):
    config, out = _write_config(tmp_path)
    assert cli.main(["sweep", "--config", str(config)]) == 0
    first = (out / "results.csv").read_text()
    (out / "group_001.npz").unlink()  # as if killed during the second group
    calls = []
    real = gradfit.sweep

    def counting(*args, **kwargs):
        calls.append(kwargs["grid"])
        return real(*args, **kwargs)

    monkeypatch.setattr(gradfit.sweeps, "sweep", counting)
    assert cli.main(["sweep", "--config", str(config)]) == 0
    assert [g["optimizer"] for g in calls] == [["adam"]]
    assert "group 1/2 {'optimizer': 'sgd'}: already written, skipped" in capsys.readouterr().out
    strip = lambda text: [line.rsplit(",", 2)[0] for line in text.splitlines()]  # noqa: E731 (timings differ)
    assert strip((out / "results.csv").read_text()) == strip(first)


def test_changed_config_in_the_same_folder_is_refused(tmp_path, capsys):
    config, out = _write_config(tmp_path)
    assert cli.main(["sweep", "--config", str(config)]) == 0
    assert cli.main(["sweep", "--config", str(config), "--set", "fit.steps=50"]) == 2
    assert "holds a sweep of a different config" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, message",
    [
        ("sweep.grid={learnig_rate=[0.1]}", "did you mean 'learning_rate'"),
        ("sweep.grid={learning_rate=[]}", "grid['learning_rate'] is an empty list"),
        ("sweep.grid={}", "the config has no [sweep] grid"),
        ("sweep.gird={}", "did you mean 'grid'"),
    ],
)
def test_bad_sweep_configs_exit_2_before_writing(tmp_path, capsys, override, message):
    config, out = _write_config(tmp_path)
    assert cli.main(["sweep", "--config", str(config), "--set", override]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_script_is_the_same_entry_point(tmp_path):
    spec = importlib.util.spec_from_file_location("sweep_script", ROOT / "scripts" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config, out = _write_config(tmp_path, plot=True)
    pytest.importorskip("matplotlib")
    assert module.main(["--config", str(config), "--set", "sweep.grid={learning_rate=[0.01, 0.1]}"]) == 0
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "sweep.json").read_text())["groups"] == [{"learning_rate": [0.01, 0.1]}]


@pytest.mark.slow  # a real process killed; tests/test_run_faults.py interrupts a sweep by signal
def test_sigkill_during_a_sweep_then_rerun_gives_the_same_bits(tmp_path):
    """Kill `gradfit sweep` once its first group is on disk; the rerun skips that group,
    redoes the rest, and every member's params and history equal an uninterrupted sweep's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    grid = '{{ optimizer = ["sgd", "adam", "rmsprop"], learning_rate = [0.01, 0.1] }}'
    text = CONFIG.replace('{{ optimizer = ["sgd", "adam"], learning_rate = [0.01, 0.1, 50.0] }}', grid)
    text = text.replace("steps = 200", "steps = 20000").replace("tol = 1e-4", "tol = 0.0")
    runs = {}
    for name in ("killed", "whole"):
        out = tmp_path / name
        config = tmp_path / f"{name}.toml"
        config.write_text(text.format(out=out.as_posix(), plot="false"))
        runs[name] = (config, out)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "gradfit.cli", "sweep", "--no-progress", "--config"]

    config, out = runs["killed"]
    proc = subprocess.Popen([*command, str(config)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "group_000.npz").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.skip("the sweep finished before it could be killed (machine too fast for this size)")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "group_000.npz").exists() and not (out / "results.csv").exists()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*tmp"))  # nothing half-written
    subprocess.run([*command, str(config)], env=env, check=True, capture_output=True, timeout=300)
    subprocess.run([*command, str(runs["whole"][0])], env=env, check=True, capture_output=True, timeout=300)

    killed, whole = (np.load(runs[n][1] / "params.npz") for n in ("killed", "whole"))
    for key in ("W", "b"):
        np.testing.assert_array_equal(killed[key], whole[key])
    hk, hw = (np.load(runs[n][1] / "histories.npz") for n in ("killed", "whole"))
    assert set(hk.files) == set(hw.files)
    for key in hk.files:
        if "seconds" not in key:  # wall times differ, the numbers must not
            np.testing.assert_array_equal(hk[key], hw[key])
