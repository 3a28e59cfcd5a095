"""The gradfit command, run as a user would (in-process through cli.main, and once as a subprocess)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gradfit import cli

ROOT = Path(__file__).resolve().parents[1]


def test_fit_quickstart_writes_outputs_and_reaches_lstsq(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main([
        "fit", "--config", str(ROOT / "configs/quickstart.toml"),
        "--set", "data.n_samples=2000", "--set", f"output.dir={out}",
    ])
    assert rc == 0
    text = capsys.readouterr().out
    assert "least-squares optimum" in text and "compile" in text and "backend" not in text.split("time:")[0]
    report = json.loads((out / "report.json").read_text())
    assert report["converged"] and report["relative_distance_to_optimum"] < 1e-3
    params = np.load(out / "params.npz")
    # independent check: lstsq on the same synthetic data
    from gradfit import datasets
    ds = datasets.make_regression(2000, 32, noise=0.1, seed=0)
    coef = np.linalg.lstsq(np.hstack([ds.X, np.ones((2000, 1))]).astype(np.float64), ds.y, rcond=None)[0]
    np.testing.assert_allclose(params["W"], coef[:-1], atol=1e-3)
    history = np.load(out / "history.npz")["losses"]
    assert history.shape == (report["steps"],) and np.all(np.diff(history) <= 1e-6)


def test_fit_real_data_sets(tmp_path, capsys):
    pytest.importorskip("sklearn")
    rc = cli.main(["fit", "--set", "data.source=breast_cancer", "--set", "fit.loss=bce",
                   "--set", "fit.optimizer=lbfgs", "--set", "fit.steps=200", "--set", f"output.dir={tmp_path}"])
    assert rc == 0
    assert json.loads((tmp_path / "report.json").read_text())["loss"] < 0.1


@pytest.mark.slow  # CI runs `gradfit check-grads` itself
def test_check_grads_and_info(capsys):
    assert cli.main(["check-grads"]) == 0
    out = capsys.readouterr().out
    assert "float64" in out and "NO" not in out
    assert cli.main(["info"]) == 0
    assert "backend: " in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "--set", "fit.learnig_rate=0.1"], "did you mean 'learning_rate'"),
        (["fit", "--set", "fit.steps=many"], "fit.steps must be int"),
        (["fit", "--set", "fit.steps=-3"], "steps must be a positive integer"),
        (["fit", "--set", "data.source=missing.csv"], "does not exist"),
        (["fit", "--config", "nope.toml"], "does not exist"),
        (["fit", "--set", "fitt.steps=3"], "did you mean 'fit'"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    rc = cli.main(argv + ["--set", f"output.dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_console_script_runs():
    exe = Path(sys.executable).parent / "gradfit"
    if not exe.exists():
        pytest.skip("gradfit is not installed as a console script")
    out = subprocess.run([str(exe), "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "jax" in out.stdout
