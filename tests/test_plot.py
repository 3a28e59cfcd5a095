"""gradfit plot: PNGs of a fit folder and a sweep folder, drawn from what the runs wrote."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from gradfit import cli, plotting

mpl_image = pytest.importorskip("matplotlib.image")

FIT = """
[data]
source = "synthetic"
n_samples = 400
n_features = 3
[fit]
learning_rate = 0.1
steps = 100
[output]
dir = "{out}"
"""

SWEEP = """
[data]
source = "synthetic"
n_samples = 200
n_features = 3
[fit]
steps = 50
[sweep]
grid = {{ learning_rate = [0.01, 0.1, 80.0], l2 = [0.0, 0.5] }}
[output]
dir = "{out}"
"""


def _run(tmp_path, text, command):
    out = tmp_path / command
    config = tmp_path / f"{command}.toml"
    config.write_text(text.format(out=out.as_posix()))
    assert cli.main([command, "--config", str(config)]) == 0
    return out


def _pixels(path):
    image = mpl_image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    return image


def test_fit_folder_gets_loss_curve_and_predictions(tmp_path, capsys):
    out = _run(tmp_path, FIT, "fit")
    with np.load(out / "predictions.npz") as z:  # the sample the picture is drawn from
        X_rows, target, prediction = z["rows"], z["target"], z["prediction"]
    assert len(X_rows) == 400 and target.shape == prediction.shape == (400,)
    assert np.corrcoef(target, prediction)[0, 1] > 0.99  # a converged linear fit of linear data
    assert cli.main(["plot", str(out)]) == 0
    assert "loss_curve.png" in capsys.readouterr().out
    for name in ("loss_curve.png", "predictions.png"):
        image = _pixels(out / name)
        assert image[..., :3].std() > 0.05  # something is drawn


def test_sweep_folder_gets_curves_and_heatmap(tmp_path):
    out = _run(tmp_path, SWEEP, "sweep")
    paths = plotting.plot(out)
    assert [p.name for p in paths] == ["loss_curves.png", "heatmap.png"]
    for p in paths:
        assert _pixels(p)[..., :3].std() > 0.05


def test_plot_errors(tmp_path, capsys, monkeypatch):
    assert cli.main(["plot", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["plot", str(tmp_path)]) == 2
    assert "holds neither a fit" in capsys.readouterr().err
    out = _run(tmp_path, FIT, "fit")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    assert cli.main(["plot", str(out)]) == 2
    assert "pip install 'gradfit[plot]'" in capsys.readouterr().err
