"""The fault table of docs/faults.md: one test per row, named in the table.

Every user mistake is a ValueError naming the problem and the fix, raised before anything is
compiled (checked with JAX's own compile events); every stated behaviour is checked against
an independent reference (np.linalg.lstsq, scikit-learn, numpy written from the formula).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

import gradfit
from gradfit import cli, config, health

SRC = Path(__file__).resolve().parents[1] / "src"


@contextlib.contextmanager
def raises_before_compute(compile_counter, match: str):
    """A ValueError whose message matches, with no XLA compilation before it."""
    before = compile_counter.count
    with pytest.raises(ValueError, match=match):
        yield
    assert compile_counter.count == before, "the error came after something was compiled"




@pytest.fixture
def x32():
    """float64 off for one test (another test may have left it on), restored after it."""
    with jax.enable_x64(False):
        yield


@pytest.fixture
def restore_x64():
    """The CLI may switch float64 on in its own process; undo that after an in-process call."""
    flag = jax.config.jax_enable_x64
    yield
    jax.config.update("jax_enable_x64", flag)


# --------------------------------------------------------------------------- arrays
@pytest.mark.parametrize("where", ["X", "y"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_data(compile_counter, data, where, bad):
    X, y = data[0].copy(), data[1].copy()
    (X if where == "X" else y)[4] = bad
    with raises_before_compute(compile_counter, rf"{where} contains NaN or inf: drop or impute"):
        gradfit.fit(X, y, steps=5)


def test_mismatched_lengths(compile_counter, data):
    X, y = data
    with raises_before_compute(compile_counter, "X has 30 rows but y has 29: give one target per row"):
        gradfit.fit(X, y[:-1], steps=5)


def test_zero_rows(compile_counter, data):
    X, y = data
    with raises_before_compute(compile_counter, r"X has no rows \(m = 0\)"):
        gradfit.fit(X[:0], y[:0], steps=5)


def test_zero_features(compile_counter, data):
    X, y = data
    with raises_before_compute(compile_counter, r"X has no columns \(n = 0\)"):
        gradfit.fit(X[:, :0], y, steps=5)


def test_zero_outputs(compile_counter, data):
    X, _ = data
    with raises_before_compute(compile_counter, "y has zero output columns"):
        gradfit.fit(X, np.zeros((30, 0)), steps=5)


def test_one_dimensional_X(compile_counter, data):
    X, y = data
    with raises_before_compute(compile_counter, r"expected a 2-d array .* use X.reshape\(-1, 1\)"):
        gradfit.fit(X[:, 0], y, steps=5)


def test_wrong_rank(compile_counter, data):
    X, y = data
    with raises_before_compute(compile_counter, r"X has shape \(1, 30, 3\): expected \(m, n\)"):
        gradfit.fit(X[None], y, steps=5)
    with raises_before_compute(compile_counter, r"y has shape \(30, 1, 1\)"):
        gradfit.fit(X, y[:, None, None], steps=5)


@pytest.mark.parametrize(
    "convert, match",
    [
        (lambda a: a.astype(object), "dtype object, not a real number type"),
        (lambda a: a.astype(str), "dtype <U.*, not a real number type"),
        (lambda a: a.astype(np.complex64), r"complex \(complex64\).*real part"),
        (lambda a: [[1.0, 2.0], [3.0]], "could not be read as a numeric array"),
    ],
    ids=["object", "string", "complex", "ragged"],
)
def test_non_numeric_X(compile_counter, data, convert, match):
    X, y = data
    with raises_before_compute(compile_counter, match):
        gradfit.fit(convert(X), y if not isinstance(convert(X), list) else y[:2], steps=5)


def test_bce_targets_outside_unit_interval(compile_counter, data):
    X, y = data
    with raises_before_compute(compile_counter, r"bce needs targets in \[0, 1\] .* encode classes as 0/1"):
        gradfit.fit(X, y, loss="bce", steps=5)


def test_bce_targets_not_numeric(compile_counter, data):
    X, _ = data
    labels = np.array(["cat", "dog"] * 15)
    with raises_before_compute(compile_counter, "y has dtype <U3, not a real number type"):
        gradfit.fit(X, labels, loss="bce", steps=5)


def test_bce_boolean_targets_are_fitted_as_0_1(data):
    """A stated behaviour: bool targets are read as 0/1 (same result as float 0/1 targets)."""
    X, y = data
    labels = y > 0
    a = gradfit.fit(X, labels, loss="bce", steps=20, learning_rate=0.5, l2=0.1)
    b = gradfit.fit(X, labels.astype(np.float32), loss="bce", steps=20, learning_rate=0.5, l2=0.1)
    np.testing.assert_array_equal(np.asarray(a.params.W), np.asarray(b.params.W))


@pytest.mark.parametrize("dtype", ["int32", "float16", "bool"])
def test_integer_bool_and_half_X_are_fitted_in_float32(x32, data, dtype):
    """A stated behaviour: such X are fitted in JAX's default float, the same bits as X cast to
    float32 first."""
    X, y = data
    X = (X * 4).astype(dtype) if dtype != "bool" else X > 0
    a = gradfit.fit(X, y, learning_rate=0.05, steps=20)
    b = gradfit.fit(np.asarray(X, np.float32), y, learning_rate=0.05, steps=20)
    assert a.stats["dtype"] == "float32" and a.params.W.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(a.params.W), np.asarray(b.params.W))


def test_float64_values_beyond_float32(x32, compile_counter, data):
    """float64 data are fitted in float32 unless x64 is on: values past float32's range would
    become inf, so they are refused with the two remedies."""
    X, y = data
    X = X.astype(np.float64)
    X[3, 1] = 1e300
    with raises_before_compute(compile_counter, r"beyond float32's range .*: rescale .*jax_enable_x64"):
        gradfit.fit(X, y, steps=5)


def test_constant_column_gives_the_minimum_norm_least_squares_solution(x64, rng):
    """A constant column duplicates the bias: the minimiser is not unique. Gradient descent from
    zeros stays in the row space of [X, 1], so it converges to the minimum-norm solution, which
    is what np.linalg.lstsq returns. No warning: the duplicate direction is never excited."""
    X = np.c_[rng.standard_normal((40, 2)), np.full(40, 3.0)]
    y = X[:, 0] - X[:, 1] + 2.0 + 0.01 * rng.standard_normal(40)
    # the row-space argument is about gradient descent on raw (W, b): standardize=False; tol is the
    # optimality test (1e-12: within float64's reach)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = gradfit.fit(X, y, learning_rate="auto", steps=20_000, tol=1e-12, standardize=False)
    A = np.c_[X, np.ones(40)]
    ref = np.linalg.lstsq(A, y, rcond=None)[0]
    assert r.converged and not r.diverged
    np.testing.assert_allclose(np.r_[r.params.W, r.params.b], ref, atol=1e-6)
    # standardized (the default), the centred constant column is 0, so its weight never moves from
    # 0 and the bias takes its share: another minimiser, with the same predictions
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = gradfit.fit(X, y, learning_rate="auto", steps=20_000, tol=1e-12)
    assert r.converged and not r.diverged
    assert abs(float(r.params.W[2])) < 1e-12
    np.testing.assert_allclose(A @ np.r_[r.params.W, r.params.b], A @ ref, atol=1e-6)


def test_constant_target_mse(data):
    """A constant target: W -> 0 and b -> the constant (the least-squares answer), converged."""
    X, _ = data
    r = gradfit.fit(X, np.full(30, 2.5, np.float32), learning_rate="auto", steps=5000, tol=1e-10)
    assert r.converged and not r.diverged
    np.testing.assert_allclose(r.params.W, 0.0, atol=1e-3)
    np.testing.assert_allclose(r.params.b, 2.5, rtol=1e-3)


def test_constant_target_bce_is_separable(data):
    """All labels 1: b grows without bound (no minimiser), so the fit is not converged, warns,
    and stays finite."""
    X, _ = data
    with pytest.warns(health.SeparableWarning, match="no minimiser"):
        r = gradfit.fit(X, np.ones(30, np.float32), loss="bce", learning_rate=1.0, steps=2000, tol=1e-6)
    assert not r.converged and not r.diverged
    assert np.isfinite(np.asarray(r.params.W)).all() and np.isfinite(float(r.params.b))
    assert float(r.params.b) > 3


def test_separable_classes_without_penalty_are_not_converged_and_never_nan(rng):
    X = rng.standard_normal((60, 3)).astype(np.float32)  # 3 columns: the bce fits above compiled its programs
    y = (X[:, 0] + X[:, 1] > 0).astype(np.float32)
    with pytest.warns(health.SeparableWarning, match=r"linearly separable .* l2=1e-3"):
        r = gradfit.fit(X, y, loss="bce", learning_rate=50.0, steps=5000, tol=1e-7)
    assert not r.converged and not r.diverged
    assert r.stats["separable"] is True
    W = np.asarray(r.params.W)
    assert np.isfinite(W).all() and np.isfinite(r.losses).all() and np.isfinite(float(r.loss))
    assert np.linalg.norm(W) > 10  # the weights keep growing


def test_separable_classes_with_penalty_match_scikit_learn(x64, rng):
    """With l2 > 0 the minimiser exists: no warning, and the fit is scikit-learn's
    LogisticRegression(C) with l2 = 1 / (C m)."""
    from sklearn.linear_model import LogisticRegression

    X = rng.standard_normal((60, 2))
    y = (X[:, 0] + X[:, 1] > 0).astype(float)
    C = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = gradfit.fit(X, y, loss="bce", l2=1 / (C * 60), optimizer="lbfgs", steps=500, tol=1e-14)
    ref = LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(X, y)
    assert r.converged and r.stats["separable"] is False
    np.testing.assert_allclose(r.params.W, ref.coef_[0], rtol=1e-4)
    np.testing.assert_allclose(r.params.b, ref.intercept_[0], rtol=1e-4)


def test_negative_sample_weight(compile_counter, data):
    X, y = data
    w = np.ones(30)
    w[0] = -1
    with raises_before_compute(compile_counter, "sample_weight must be >= 0"):
        gradfit.fit(X, y, sample_weight=w, steps=5)


def test_init_of_the_wrong_shape(compile_counter, data):
    X, y = data
    with raises_before_compute(compile_counter, r"init has W \(2,\) .* needs W \(3,\)"):
        gradfit.fit(X, y, init=gradfit.Params(np.zeros(2), np.zeros(())), steps=5)


# --------------------------------------------------------------------------- hyperparameters
@pytest.mark.parametrize(
    "lr, match",
    [(0.0, "must be > 0"), (-0.1, "must be > 0"), (np.nan, "must be finite"), (np.inf, "must be finite"),
     ("fast", "a positive number or 'auto'"), (True, "must be a number")],
)
def test_learning_rate_not_positive(compile_counter, data, lr, match):
    X, y = data
    with raises_before_compute(compile_counter, f"learning_rate must be {match}" if "auto" in match else match):
        gradfit.fit(X, y, learning_rate=lr, steps=5)


def test_auto_learning_rate_needs_sgd(compile_counter, data):
    X, y = data
    with raises_before_compute(compile_counter, r"learning_rate='auto' .* needs optimizer='sgd'"):
        gradfit.fit(X, y, learning_rate="auto", optimizer="adam", steps=5)


@pytest.mark.parametrize(
    "steps, match",
    [(0, "positive integer, got 0"), (-3, "positive integer"), (10.0, "positive integer, got 10.0"),
     (2**31, "too large: the compiled loop counts in int32")],
)
def test_steps_not_positive(compile_counter, data, steps, match):
    X, y = data
    with raises_before_compute(compile_counter, f"steps.*{match}"):
        gradfit.fit(X, y, steps=steps)


@pytest.mark.parametrize("batch_size, match", [(31, "larger than the 30 rows"), (0, "positive integer")])
def test_batch_size_larger_than_rows(compile_counter, data, batch_size, match):
    X, y = data
    with raises_before_compute(compile_counter, f"batch_size.*{match}"):
        gradfit.fit(X, y, batch_size=batch_size, steps=5)


def test_negative_l2_and_tol(compile_counter, data):
    X, y = data
    with raises_before_compute(compile_counter, "l2 must be >= 0"):
        gradfit.fit(X, y, l2=-1.0, steps=5)
    with raises_before_compute(compile_counter, "tol must be >= 0"):
        gradfit.fit(X, y, tol=-1e-6, steps=5)


@pytest.mark.parametrize("seed, match", [(2**64, "does not fit in 64 bits"), (1.5, "must be an integer")])
def test_bad_seed(compile_counter, data, seed, match):
    X, y = data
    with raises_before_compute(compile_counter, match):
        gradfit.fit(X, y, seed=seed, steps=5)


def test_unknown_optimizer(compile_counter, data):
    X, y = data
    with raises_before_compute(compile_counter, r"unknown optimizer 'adm' \(did you mean 'adam'\?\)"):
        gradfit.fit(X, y, optimizer="adm", steps=5)
    with raises_before_compute(compile_counter, r"unknown option 'momentm' .* \(did you mean 'momentum'\?\)"):
        gradfit.fit(X, y, optimizer_options={"momentm": 0.9}, steps=5)


def test_optimizer_option_of_the_wrong_type(compile_counter, data):
    X, y = data
    with raises_before_compute(compile_counter, r"optax.sgd rejected its options \(momentum='a'"):
        gradfit.fit(X, y, optimizer_options={"momentum": "a"}, steps=5)


def test_overflow_at_the_initial_params(data):
    """Targets whose squares overflow float32: the objective is inf at step 0. Reported as
    diverged at step 0 with the remedy (rescale or float64), params left at init, no NaN."""
    X, y = data
    with pytest.warns(RuntimeWarning, match=r"at step 0 \(.*\): the objective is not finite at the initial params.*rescale"):
        r = gradfit.fit(X, y * np.float32(1e19), steps=10)
    assert r.diverged and not r.converged and r.steps == 1
    np.testing.assert_array_equal(np.asarray(r.params.W), 0.0)


# --------------------------------------------------------------------------- config
def test_unknown_config_key_did_you_mean(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[fit]\nlearnig_rate = 0.1\n")
    with pytest.raises(config.ConfigError, match=r"unknown key fit.learnig_rate \(did you mean 'learning_rate'\?\)"):
        config.load(path)
    with pytest.raises(config.ConfigError, match=r"unknown section \[fitt\] \(did you mean 'fit'\?\)"):
        config.load(None, ["fitt.steps=3"])


@pytest.mark.parametrize(
    "override, match",
    [("fit.steps='many'", "fit.steps must be int, got str"), ("fit.steps=1.5", "fit.steps must be int, got float"),
     ("data.stream=3", "data.stream must be bool, got int"),
     ("data.standardize=true", "data.standardize was removed: fits standardise the columns internally"), ("fit.tol=true", "fit.tol must be int or float")],
)
def test_wrong_config_type(override, match):
    with pytest.raises(config.ConfigError, match=match):
        config.load(None, [override])


def test_bad_override_syntax():
    with pytest.raises(config.ConfigError, match="expected section.key=value"):
        config.load(None, ["fit.steps"])
    with pytest.raises(config.ConfigError, match="the name must be section.key"):
        config.load(None, ["steps=3"])


@pytest.mark.parametrize(
    "content, match",
    [(None, "does not exist: check the path"), (b"[fit\nsteps = 3\n", "not valid TOML"),
     (b"\xff\xfe[fit]\n", "not a UTF-8 text file"), (b"fit = 3\n", r"\[fit\] must be a table")],
    ids=["missing", "not-toml", "not-utf8", "not-a-table"],
)
def test_missing_or_corrupt_config_file(tmp_path, content, match):
    path = tmp_path / "c.toml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(config.ConfigError, match=match):
        config.load(path)


# --------------------------------------------------------------------------- data files
def _data_section(source, **kw):
    section = dict(config.DEFAULTS["data"], source=str(source))
    section.update(kw)
    return section


@pytest.mark.parametrize(
    "name, content, match",
    [("missing.csv", None, r"does not exist: check the path \(data.source\)"),
     ("bad.npy", b"garbage", "is not a readable .npy file"),
     ("bad.npz", b"garbage", "is not a readable .npz file"),
     ("bad.parquet", b"garbage", "is not a readable .parquet file"),
     ("text.csv", b"a,b\n1,x\n", "column 'b' line 2 holds 'x', not a number: encode text as numbers"),
     ("ragged.csv", b"a,b\n1,2\n3\n", "line 3 has 1 fields but the header names 2 columns"),
     ("empty.csv", b"", r"is empty \(0 bytes\)"),
     ("data.xlsx", b"", "neither a built-in data set .* nor a file of a known format")],
)
def test_missing_or_corrupt_data_file(tmp_path, name, content, match):
    from gradfit import data

    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    target = "b" if name.endswith(".csv") else None  # a CSV names its target; damage is found first otherwise
    with pytest.raises(ValueError, match=match):
        data.load(_data_section(path, target=target))


def test_data_file_with_wrong_arrays(tmp_path):
    from gradfit import data

    np.savez(tmp_path / "a.npz", X=np.ones((3, 2)))
    with pytest.raises(ValueError, match="holds the arrays 'X': name them X and y"):
        data.load(_data_section(tmp_path / "a.npz"))
    np.save(tmp_path / "v.npy", np.ones(5))
    with pytest.raises(ValueError, match=r"shape \(5,\): expected a 2-d table \(rows, columns\)"):
        data.load(_data_section(tmp_path / "v.npy"))
    np.save(tmp_path / "m.npy", np.ones((5, 3)))
    with pytest.raises(ValueError, match=r"has no column names: give target columns by index \(0..2\)"):
        data.load(_data_section(tmp_path / "m.npy", target="zz"))


@pytest.mark.parametrize(
    "key, value, match",
    [("dtype", "float33", "data.dtype 'float33' is not supported"), ("dtype", "int32", "not supported"),
     ("n_samples", 0, "data.n_samples must be a positive integer"), ("n_outputs", -1, "data.n_outputs must be 0"),
     ("noise", -1.0, "data.noise is a standard deviation")],
)
def test_bad_data_section(key, value, match):
    from gradfit import data

    with pytest.raises(ValueError, match=match):
        data.load(_data_section("synthetic", **{key: value}))


# --------------------------------------------------------------------------- the command line
CLI_MISTAKES = [
    ["--config", "nope.toml"],
    ["--set", "fit.learnig_rate=0.1"],
    ["--set", "fit.steps='many'"],
    ["--set", "data.source=nope.csv"],
    ["--set", "data.dtype=float33"],
    ["--set", "fit.steps=0"],
    ["--set", "fit.learning_rate=-1"],
    ["--set", "fit.batch_size=100000"],
    ["--set", "fit.optimizer=adm"],
    ["--set", "fit.optimizer_options={momentum='a'}"],
    ["--set", "data.source=diabetes", "--set", "fit.loss=bce"],
]


@pytest.mark.parametrize("argv", CLI_MISTAKES, ids=[" ".join(a) for a in CLI_MISTAKES])
def test_cli_user_mistake_is_one_line_and_exit_2(capsys, restore_x64, tmp_path, argv):
    rc = cli.main(["fit", *argv, "--set", "data.n_samples=50", "--set", f"output.dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("gradfit fit: error: "), err
    assert not (tmp_path / "out").exists()  # nothing written


def test_cli_process_exit_code_and_no_traceback(tmp_path):
    """The real process: exit status 2, one line on stderr, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "gradfit.cli", "fit", "--set", "fit.lr=1"],
        capture_output=True, text=True, env={"PYTHONPATH": str(SRC), "JAX_PLATFORMS": "cpu"}, cwd=tmp_path,
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("gradfit fit: error: --set fit.lr=1: unknown key fit.lr; [fit] takes loss, reduction, ")
    assert "Traceback" not in proc.stdout + proc.stderr


# The two commands below fit float64 data of the shape of the constant-column test's (3 columns, under 256 rows), with
# the same plan: its compiled programs serve them.
CLI_DATA = ["--set", "data.n_samples=50", "--set", "data.n_features=3", "--set", "data.dtype=float64"]


def test_cli_warning_is_one_line(capsys, restore_x64, tmp_path):
    rc = cli.main(["fit", *CLI_DATA, "--set", "fit.learning_rate=5", "--set", "fit.steps=40",
                   "--set", f"output.dir={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1  # diverged
    assert len(err) == 1 and err[0].startswith("gradfit: warning: the fit diverged"), err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["diverged"] is True and report["diverged_at_step"] >= 1
    assert 0 < report["suggested_learning_rate"] < 5


def test_cli_float64_data_are_fitted_in_float64(capsys, restore_x64, tmp_path):
    rc = cli.main(["fit", *CLI_DATA, "--set", "fit.steps=40", "--set", f"output.dir={tmp_path}"])
    assert rc == 0
    with np.load(tmp_path / "params.npz") as z:
        assert z["W"].dtype == np.float64
