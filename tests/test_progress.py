"""Progress bars: updated between chunks, one bar for many members, off by default."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest

import gradfit
from gradfit import datasets, progress
from gradfit._types import SolverState


def _state(step, converged=False, diverged=False, loss=1.0, stalled=False):
    step = np.asarray(step, np.int32)
    full = lambda v, dt: np.broadcast_to(np.asarray(v, dt), step.shape)  # noqa: E731
    return SolverState(None, None, None, step, full(loss, np.float32), None, full(converged, bool),
                       full(diverged, bool), None, full(stalled, bool), full(np.inf, np.float32), step)


def test_the_bar_shows_the_mean_progress_of_members_stopped_ones_counting_as_done():
    out = io.StringIO()
    with progress.Progress(100, members=4, file=out, mininterval=0) as bar:
        cb = bar.callback()
        cb(_state([10, 10, 10, 10]), None)
        assert bar.bar.n == 10
        # member 1 converged at step 20 and member 2 diverged: both count as 100 steps
        cb(_state([20, 20, 20, 20], converged=[False, True, False, False], diverged=[False, False, True, False],
                  loss=[1.0, 0.5, np.inf, 2.0]), None)
        assert bar.bar.n == (20 + 100 + 100 + 20) // 4
        assert "2/4 running, best loss 0.5" in out.getvalue()
        cb(_state([100, 20, 20, 100], converged=[False, True, False, False], diverged=[False, False, True, False]), None)
        assert bar.bar.n == 100


def test_a_stalled_member_counts_as_done():
    out = io.StringIO()
    with progress.Progress(100, members=2, file=out, mininterval=0) as bar:
        cb = bar.callback()
        cb(_state([30, 30], stalled=[True, False]), None)
        assert bar.bar.n == (100 + 30) // 2
        assert "1/2 running" in out.getvalue()


def test_one_bar_follows_several_runs_of_a_sweep():
    out = io.StringIO()
    with progress.Progress(50, members=6, desc="sweep", file=out, mininterval=0) as bar:
        group_a, group_b = bar.callback(), bar.callback()
        group_a(_state([50, 50]), None)  # 2 members done: 100 of 300 member-steps
        assert bar.bar.n == 100 // 6
        group_b(_state([25, 25, 25, 25]), None)
        assert bar.bar.n == (100 + 100) // 6
        group_b(_state([50, 50, 50, 50]), None)
        assert bar.bar.n == 50
    assert out.getvalue().count("sweep") >= 1


def test_fit_shows_a_bar_only_when_asked(capsys):
    d = datasets.make_regression(200, 3, seed=0)
    gradfit.fit(d.X, d.y, learning_rate=0.05, steps=40, chunk_size=10)
    assert capsys.readouterr().err == ""
    r = gradfit.fit(d.X, d.y, learning_rate=0.05, steps=40, chunk_size=10, progress=True)
    err = capsys.readouterr().err
    assert "40/40" in err and "loss " in err and r.steps == 40


def test_fit_bar_counts_vmapped_members(capsys):
    d = datasets.make_regression(200, 3, n_outputs=2, seed=0)
    seen = []
    with pytest.warns(RuntimeWarning, match="diverged"):
        gradfit.fit(d.X, d.y, learning_rate=[0.05, 1e9], steps=40, chunk_size=10, progress=True,
                    callback=lambda s, h: seen.append(np.asarray(s.diverged).tolist()))
    assert seen[-1] == [False, True]
    err = capsys.readouterr().err
    assert "40/40" in err and "/2 running" in err  # the diverged member counts as done


def test_progress_must_be_a_bool():
    d = datasets.make_regression(20, 2, seed=0)
    with pytest.raises(ValueError, match="progress must be True or False"):
        gradfit.fit(d.X, d.y, progress="yes")


def test_missing_tqdm_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    assert not progress.available()
    d = datasets.make_regression(20, 2, seed=0)
    with pytest.raises(ImportError, match=r"pip install 'gradfit\[progress\]'"):
        gradfit.fit(d.X, d.y, progress=True)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_bar_sizes(bad):
    with pytest.raises(ValueError, match="positive integer"):
        progress.Progress(bad, file=io.StringIO())


def test_chain_calls_every_callback_in_order():
    calls = []
    cb = progress.chain(None, lambda s, h: calls.append(1), None, lambda s, h: calls.append(2))
    cb(None, None)
    assert calls == [1, 2]
    assert progress.chain(None, None) is None


def test_the_bar_reads_states_at_most_once_per_interval_and_catches_up_on_close():
    out = io.StringIO()
    bar = progress.Progress(100, members=3, file=out, mininterval=3600)
    group_a, group_b = bar.callback(), bar.callback()
    group_a(_state([5]), None)  # the first call draws
    assert bar.bar.n == 5 // 3
    group_a(_state([100]), None)  # within the interval: only kept
    group_b(_state([40, 100], converged=[False, True]), None)
    assert bar.bar.n == 5 // 3
    bar.close()  # reads every run's newest state
    assert bar.bar.n == (100 + 40 + 100) // 3


def test_a_disabled_bar_is_a_silent_no_op():
    out = io.StringIO()
    with progress.Progress(10, file=out, disable=True) as bar:
        bar(_state(3), None)
    assert out.getvalue() == ""


def test_sweep_shows_one_bar_over_every_members_budget(capsys):
    d = datasets.make_regression(300, 3, seed=0)
    grid = {"learning_rate": [0.01, 0.1, 1e6], "steps": [20, 60]}
    plain = gradfit.sweep(d.X, d.y, grid=grid, tol=1e-6, chunk_size=8, grad="onepass")
    assert capsys.readouterr().err == ""  # off by default
    shown = gradfit.sweep(d.X, d.y, grid=grid, tol=1e-6, chunk_size=8, grad="onepass", progress=True)
    err = capsys.readouterr().err
    # one bar (one "sweep:" prefix per redraw, one total), ending at the sum of the budgets:
    # members that converged or diverged early count their whole budget
    assert err.count("/240") >= 1 and "240/240" in err and "0/6 members running" in err
    assert shown.diverged.sum() == 2 and (shown.steps < [20, 60] * 3).any()
    np.testing.assert_array_equal(shown.params.W, plain.params.W)


def test_member_bar_counts_stopped_members_as_done():
    out = io.StringIO()
    with progress.MemberBar([10, 10, 40], file=out, mininterval=0) as bar:
        bar.update(np.array([0, 2]), np.array([5, 5]), np.array([True, True]))
        assert bar.bar.n == 10
        bar.update(np.array([0, 2]), np.array([7, 9]), np.array([False, True]))  # member 0 stopped at 7
        assert bar.bar.n == 10 + 9
        bar.update(np.array([1]), np.array([10]), np.array([False]))
        assert bar.bar.n == 29 and "1/3 members running" in out.getvalue()
