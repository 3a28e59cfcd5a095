"""Models you can apply: a run folder holds what prediction on raw rows needs, and ``gradfit predict``
gives what ``FitResult.predict`` gives on the same rows."""

import json

import numpy as np
import pytest

import gradfit
from gradfit import cli, data, runs

COLUMNS = ["size", "rooms", "ratio", "price"]


def _table(rng, m=300):
    """Raw columns with units and offsets far from standardized (sizes ~1e3, a ratio ~1e-2)."""
    X = rng.standard_normal((m, 3)) * [150.0, 1.0, 0.01] + [900.0, 4.0, 0.05]
    y = X @ [0.3, 12.0, 400.0] + 20.0 + rng.standard_normal(m)
    return X, y


def _write_csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "".join(",".join(repr(float(v)) for v in r) + "\n" for r in rows))
    return path


def test_fit_then_predict_on_raw_rows_equals_fit_result_predict(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X, y = _table(rng)
    train = _write_csv(tmp_path / "train.csv", COLUMNS, np.c_[X, y])
    new = _write_csv(tmp_path / "new.csv", ["ratio", "size", "rooms"], X[:7, [2, 0, 1]])  # other order, no target
    run = tmp_path / "run"
    rc = cli.main(["fit", "--set", f"data.source='{train}'", "--set", "data.target=price",
                   "--set", "fit.optimizer=lbfgs", "--set", f"output.dir='{run}'"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "features 'size', 'rooms', 'ratio'; target 'price'" in out
    model = json.loads((run / "model.json").read_text())
    assert model["features"] == COLUMNS[:3] and model["target"] == ["price"] and model["link"] == "identity"
    # the reference: the library's fit of the same rows, in the same dtype
    Xf, yf = data.load_file(train, "price")
    ref = gradfit.fit(Xf.astype(np.float32), yf.astype(np.float32), optimizer="lbfgs")
    with np.load(run / "params.npz") as z:
        np.testing.assert_array_equal(z["W"], ref.params.W)
    expected = np.asarray(ref.predict(X[:7].astype(np.float32)))
    assert cli.main(["predict", str(run), str(new), "--output", str(tmp_path / "p.csv")]) == 0
    got = np.loadtxt(tmp_path / "p.csv", delimiter=",", skiprows=1)
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "predicted_price"
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # and the model is right in the data's own units: close to least squares on the raw rows
    coef = np.linalg.lstsq(np.c_[X, np.ones(len(X))], y, rcond=None)[0]
    np.testing.assert_allclose(got, np.c_[X[:7], np.ones(7)] @ coef, rtol=1e-4)
    capsys.readouterr()
    assert cli.main(["predict", str(run), str(new)]) == 0  # CSV on stdout
    np.testing.assert_allclose(np.loadtxt(capsys.readouterr().out.splitlines()[1:], delimiter=","), got)


def test_predict_gives_probabilities_for_bce(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((400, 2)) * [10.0, 0.1] + [50.0, 0.0]
    t = (rng.random(400) < 1 / (1 + np.exp(-(0.2 * (X[:, 0] - 50) + 8 * X[:, 1])))).astype(float)
    np.save(tmp_path / "train.npy", np.c_[X, t])
    run = tmp_path / "run"
    assert cli.main(["fit", "--set", f"data.source='{tmp_path / 'train.npy'}'", "--set", "fit.loss=bce",
                     "--set", "fit.optimizer=lbfgs", "--set", "fit.l2=0.01", "--set", f"output.dir='{run}'"]) == 0
    np.save(tmp_path / "new.npy", X[:5])  # a .npy is read by column index: the model's features are 0 and 1
    p = runs.predict_run(run, tmp_path / "new.npy", tmp_path / "p.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), p)
    with np.load(run / "params.npz") as z:
        expected = 1 / (1 + np.exp(-(X[:5].astype(np.float32) @ z["W"] + z["b"])))
    np.testing.assert_allclose(p, expected, rtol=1e-5)
    assert np.all((p > 0) & (p < 1))


def test_a_csv_without_a_named_target_is_refused_with_its_columns(tmp_path, capsys):
    path = _write_csv(tmp_path / "d.csv", COLUMNS, np.ones((3, 4)))
    rc = cli.main(["fit", "--set", f"data.source='{path}'", "--set", f"output.dir='{tmp_path / 'run'}'"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "data.target is not set" in err and "'size', 'rooms', 'ratio', 'price'" in err
    assert "--set data.target=price" in err
    assert not (tmp_path / "run").exists()


def test_y_source_works_in_memory(tmp_path):
    rng = np.random.default_rng(2)
    X, y = _table(rng, 200)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    section = {**gradfit.config.DEFAULTS["data"], "source": str(tmp_path / "X.npy"),
               "y_source": str(tmp_path / "y.npy"), "dtype": "float64"}
    ds = data.load(section)
    np.testing.assert_array_equal(ds.X, X)
    np.testing.assert_array_equal(ds.y, y)
    assert ds.features == ["0", "1", "2"] and ds.target == ["y"]
    np.save(tmp_path / "short.npy", y[:-1])
    with pytest.raises(ValueError, match=r"expected numbers of shape \(200,\)"):
        data.load({**section, "y_source": str(tmp_path / "short.npy")})


def test_predict_names_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="not the output.dir of a gradfit fit"):
        runs.predict_run(tmp_path, tmp_path / "x.csv")
    rng = np.random.default_rng(3)
    X, y = _table(rng, 50)
    train = _write_csv(tmp_path / "train.csv", COLUMNS, np.c_[X, y])
    run = tmp_path / "run"
    assert cli.main(["fit", "--set", f"data.source='{train}'", "--set", "data.target=price", "--set", "fit.steps=5",
                     "--set", f"output.dir='{run}'"]) == 0
    missing = _write_csv(tmp_path / "m.csv", ["size", "rooms"], X[:3, :2])
    with pytest.raises(ValueError, match="feature column 'ratio' is not in"):
        runs.predict_run(run, missing)
    with pytest.raises(ValueError, match="a .csv or .npy file"):
        runs.predict_run(run, train, tmp_path / "p.txt")
