"""fit's validation data and early stopping, against runs without them and losses written in numpy."""

from __future__ import annotations

import numpy as np
import pytest

import gradfit
from gradfit import _heldout, datasets


def _log_loss(params, X, y) -> float:
    z = np.asarray(X, np.float64) @ np.asarray(params.W, np.float64) + float(params.b)
    return float(np.mean(np.logaddexp(0, z) - y * z))


@pytest.fixture(scope="module")
def split():
    d = datasets.make_classification(1200, 6, seed=5)
    return d.X[:900], d.y[:900], d.X[900:], d.y[900:]


def test_validation_losses_are_the_held_out_loss_after_each_step(split):
    X, y, Xv, yv = split
    opts = dict(loss="bce", optimizer="adam", learning_rate=0.05, tol=None)
    r = gradfit.fit(X, y, steps=12, validation=(Xv, yv), **opts)
    assert r.validation_losses.shape == (12,) and r.status == "max_steps"
    for t in (1, 5, 12):  # the same run stopped after t steps, scored in numpy
        ref = gradfit.fit(X, y, steps=t, **opts)
        assert r.validation_losses[t - 1] == pytest.approx(_log_loss(ref.params, Xv, yv), rel=1e-5)
    assert r.stats["best_step"] == 1 + int(np.argmin(r.validation_losses))


def test_early_stopping_returns_the_best_params_after_n_iter_no_change(split):
    X, y, Xv, yv = split
    opts = dict(loss="bce", optimizer="adam", learning_rate=0.3, tol=None)  # overshoots: the held-out loss turns up
    # the budget and patience of the checkpoint test below (a validated program is compiled per budget and patience)
    r = gradfit.fit(X, y, steps=30, validation=(Xv, yv), early_stopping=True, n_iter_no_change=15, **opts)
    best = r.stats["best_step"]
    assert r.status == "early_stopped" and not r.converged and r.steps == best + 15
    ref = gradfit.fit(X, y, steps=best, **opts)  # the run that stopped at the best step
    np.testing.assert_allclose(r.params.W, ref.params.W, rtol=1e-5, atol=1e-6)
    assert r.stats["validation_loss"] == pytest.approx(_log_loss(r.params, Xv, yv), rel=1e-5)
    assert np.all(r.validation_losses[best:] >= r.stats["validation_loss"])


def test_validation_fraction_holds_out_a_stratified_seeded_part(split):
    X, y, _, _ = split
    train, held = _heldout.split_rows(y, 0.2, seed=3, stratify=True)
    assert np.intersect1d(train, held).size == 0 and np.union1d(train, held).size == len(y)
    assert abs(y[held].mean() - y.mean()) < 0.02 and abs(len(held) - 0.2 * len(y)) <= 2
    r = gradfit.fit(X, y, loss="bce", optimizer="lbfgs", steps=50, validation_fraction=0.2, seed=3)
    ref = gradfit.fit(X[train], y[train], loss="bce", optimizer="lbfgs", steps=50, validation=(X[held], y[held]))
    np.testing.assert_allclose(r.params.W, ref.params.W, rtol=1e-6)
    np.testing.assert_allclose(r.validation_losses, ref.validation_losses, rtol=1e-6)


def test_mse_statistics_plan_scores_validation_like_the_rows(x64, rng):
    X = rng.standard_normal((300, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.3 * rng.standard_normal(300)
    kw = dict(learning_rate=0.05, steps=30, tol=None, validation=(X[:100], y[:100]))
    stats, rows = gradfit.fit(X[100:], y[100:], grad="stats", **kw), gradfit.fit(X[100:], y[100:], grad="hand", **kw)
    np.testing.assert_allclose(stats.validation_losses, rows.validation_losses, rtol=1e-9)


@pytest.mark.parametrize("options, message", [
    (dict(validation_fraction=1.5), "validation_fraction must be a number in (0, 1)"),
    (dict(validation_fraction=0.1, validation="both"), "not both"),
    (dict(validation=(np.zeros((5, 3)),)), "a pair (X_val, y_val)"),
    (dict(validation=(np.zeros((5, 3)), np.zeros(5))), "validation X has 3 columns but X has 6"),
    (dict(validation=(np.zeros((5, 6)), np.zeros((5, 2)))), "give y_val the shape of y"),
    (dict(early_stopping=1), "early_stopping must be True or False"),
    (dict(early_stopping=True, n_iter_no_change=0), "n_iter_no_change"),
    (dict(validation_fraction=0.1, l2=np.array([0.1, 0.2])), "output"),
])
def test_bad_validation_options_are_refused_before_any_compute(split, options, message):
    X, y, _, _ = split
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        gradfit.fit(X, y, loss="bce", steps=5, **options)


def test_sweep_and_streaming_point_to_their_own_validation(split, tmp_path):
    X, y, _, _ = split
    with pytest.raises(ValueError, match="validate a sweep with cv="):
        gradfit.sweep(X, y, grid={"l2": [0.0, 0.1]}, loss="bce", early_stopping=True)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    with pytest.raises(ValueError, match="needs the rows in memory"):
        gradfit.fit_streaming(tmp_path / "X.npy", tmp_path / "y.npy", loss="bce", validation_fraction=0.1)


def test_a_validated_checkpoint_resumes_with_a_larger_budget(split, tmp_path):
    # The validation history's length is the step budget: a run resumed with more steps continues it, and equals
    # the run that was given them from the start (early stopping's record included).
    X, y, Xv, yv = split
    path = tmp_path / "fit.ckpt"
    opts = dict(loss="bce", optimizer="adam", learning_rate=0.05, tol=None, validation=(Xv, yv), early_stopping=True,
                n_iter_no_change=15)  # the best step is 20: no early stop within 30 steps
    gradfit.fit(X, y, steps=15, checkpoint=path, **opts)
    resumed = gradfit.resume(path, X, y, steps=30, validation=(Xv, yv))
    whole = gradfit.fit(X, y, steps=30, **opts)
    assert resumed.stats["resumed_from_step"] == 15 and resumed.steps == whole.steps == 30
    np.testing.assert_array_equal(resumed.params.W, whole.params.W)
    np.testing.assert_array_equal(resumed.validation_losses, whole.validation_losses)
    np.testing.assert_array_equal(resumed.losses, whole.losses)
    with pytest.raises(ValueError, match="has run 30 steps with validation, more than this run's steps=10: resume "
                                         "with steps >= 30"):
        gradfit.resume(path, X, y, steps=10, validation=(Xv, yv))


def test_a_validated_checkpoint_written_before_the_budget_left_its_fingerprint_still_resumes(split, tmp_path,
                                                                                           monkeypatch):
    from gradfit import checkpoint

    X, y, Xv, yv = split
    path = tmp_path / "fit.ckpt"
    opts = dict(loss="bce", optimizer="adam", learning_rate=0.05, tol=None, validation=(Xv, yv))
    digest = checkpoint._settings_digest
    with monkeypatch.context() as m:  # written as before: the settings digest hashed the history's length too
        m.setattr(checkpoint, "_settings_digest", lambda program, levels, legacy=False: digest(program, levels,
                                                                                              legacy=True))
        first = gradfit.fit(X, y, steps=12, checkpoint=path, **opts)  # the first test's program: 12 steps
    again = gradfit.resume(path, X, y, validation=(Xv, yv))
    assert again.stats["resumed_from_step"] == 12
    np.testing.assert_array_equal(again.params.W, first.params.W)
    np.testing.assert_array_equal(again.validation_losses, first.validation_losses)
