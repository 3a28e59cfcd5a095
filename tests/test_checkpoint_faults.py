"""Checkpoint faults (issue 13): a checkpoint path that must not be written over, a failed
checkpoint write during a fit, and a damaged checkpoint given to resume."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import warnings

import numpy as np
import pytest

import gradfit
from gradfit import Interrupted, _io, checkpoint, datasets

KW = dict(learning_rate=0.05, steps=20, chunk_size=5, tol=None)


class Crash(Exception):
    pass


def _crash_at(step: int):
    def callback(state, history):
        if int(np.max(state.step)) >= step:
            raise Crash

    return callback


# session: --dist loadgroup sends this file's tests to a worker one by one, and a module fixture would end
# (and be built again) whenever the next test there is another file's
@pytest.fixture(scope="session")
def reg():
    return datasets.make_regression(40, 3, seed=0)


# session: as the fixture above
@pytest.fixture(scope="session")
def unfinished(reg, tmp_path_factory):
    """The bytes of a real checkpoint of a fit stopped at step 10 of 20."""
    path = tmp_path_factory.mktemp("ck") / "c.npz"
    with pytest.raises(Crash):
        gradfit.fit(reg.X, reg.y, checkpoint=path, checkpoint_every=1, callback=_crash_at(10), **KW)
    return path.read_bytes()


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# --------------------------------------------------------------------------- what a run may write over
def test_a_file_that_is_not_a_checkpoint_is_never_replaced(tmp_path, reg):
    for name, content in [("train.csv", b"a,b\n1,2\n"), ("X.npy", None), ("mine.npz", None)]:
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        else:
            (np.save if name.endswith(".npy") else np.savez)(path, np.arange(3.0))
        before = path.read_bytes()
        for options in (dict(), dict(resume=True)):
            with pytest.raises(ValueError, match=r"is not a gradfit checkpoint: choose another checkpoint path"):
                gradfit.fit(reg.X, reg.y, checkpoint=path, **options, **KW)
        with pytest.raises(ValueError, match="not a gradfit checkpoint"):
            checkpoint.check_target(path, resume=False, overwrite=True)
        assert path.read_bytes() == before


def test_an_unfinished_checkpoint_needs_resume_or_overwrite(tmp_path, reg, unfinished):
    path = tmp_path / "c.npz"
    path.write_bytes(unfinished)
    with pytest.raises(ValueError, match=r"holds an unfinished run \(step 10\): pass resume=True \(gradfit fit "
                                         r"--resume\) to continue it, or overwrite=True \(--restart\) to start over"):
        gradfit.fit(reg.X, reg.y, checkpoint=path, **KW)
    assert path.read_bytes() == unfinished
    checkpoint.check_target(path, resume=True)
    checkpoint.check_target(path, resume=False, overwrite=True)
    with pytest.raises(ValueError, match="pass one of them"):
        checkpoint.check_target(path, resume=True, overwrite=True)
    assert gradfit.fit(reg.X, reg.y, checkpoint=path, resume=True, **KW).stats["resumed_from_step"] == 10
    path.write_bytes(unfinished)  # overwrite=True: the run starts over, to an unbroken run's bits
    over = gradfit.fit(reg.X, reg.y, checkpoint=path, overwrite=True, **KW)
    assert over.stats["resumed_from_step"] == 0
    np.testing.assert_array_equal(over.params.W, gradfit.fit(reg.X, reg.y, **KW).params.W)
    with pytest.raises(ValueError, match="need checkpoint=PATH"):
        gradfit.fit(reg.X, reg.y, overwrite=True, **KW)


def test_the_command_refuses_an_unfinished_checkpoint_in_one_line(tmp_path, unfinished, capsys):
    from gradfit import cli

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.npz").write_bytes(unfinished)
    assert cli.main(["fit", "--no-progress", "--set", f"output.dir={tmp_path / 'run'}", "--set", "data.n_samples=50",
                     "--set", "fit.steps=10"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gradfit fit: error: checkpoint") and "--resume" in err and "--restart" in err
    assert len(err.splitlines()) == 1 and (tmp_path / "run" / "checkpoint.npz").read_bytes() == unfinished


def test_a_finished_checkpoint_is_replaced_by_a_new_run(tmp_path, reg):
    path = tmp_path / "c.npz"
    gradfit.fit(reg.X, reg.y, checkpoint=path, **KW)
    again = gradfit.fit(reg.X, reg.y, checkpoint=path, **{**KW, "learning_rate": 0.01})
    assert again.stats["resumed_from_step"] == 0 and checkpoint.read_header(path)["complete"]


def test_overwrite_may_start_a_damaged_checkpoint_over(tmp_path, unfinished):
    path = tmp_path / "c.npz"
    path.write_bytes(unfinished[: len(unfinished) // 2])
    with pytest.raises(ValueError, match="is damaged"):
        checkpoint.check_target(path, resume=False)
    checkpoint.check_target(path, resume=False, overwrite=True)


# --------------------------------------------------------------------------- a failed write during a fit
def test_a_failed_periodic_write_warns_once_and_the_fit_goes_on(tmp_path, reg, monkeypatch):
    path = tmp_path / "c.npz"
    reference = gradfit.fit(reg.X, reg.y, **KW)
    monkeypatch.setattr(_io, "write_npz", _no_space)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = gradfit.fit(reg.X, reg.y, checkpoint=path, checkpoint_every=1, **KW)
    messages = [str(w.message) for w in caught if "checkpoint not saved" in str(w.message)]
    assert len(messages) == 1, messages
    assert "No space left on device" in messages[0] and str(path) in messages[0] and "last good" in messages[0]
    assert "No space left" in result.stats["checkpoint_error"] and not path.exists()
    np.testing.assert_array_equal(result.params.W, reference.params.W)


def test_after_a_failed_write_the_next_one_succeeds(tmp_path, reg, monkeypatch):
    path = tmp_path / "c.npz"
    real, calls = _io.write_npz, [0]

    def flaky(*args, **kwargs):
        calls[0] += 1
        return _no_space() if calls[0] == 2 else real(*args, **kwargs)

    monkeypatch.setattr(_io, "write_npz", flaky)
    with pytest.warns(RuntimeWarning, match="checkpoint not saved"):
        result = gradfit.fit(reg.X, reg.y, checkpoint=path, checkpoint_every=1, **KW)
    assert result.steps == 20 and checkpoint.read_header(path)["complete"]


def test_a_failed_save_on_interrupt_says_so(tmp_path, reg, monkeypatch):
    path = tmp_path / "c.npz"

    def interrupt_and_fill_the_disk(state, history):
        if int(np.max(state.step)) >= 10:
            monkeypatch.setattr(_io, "write_npz", _no_space)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted, match=r"could not be saved \(.*No space left on device.*\).*keeps the last good"):
        gradfit.fit(reg.X, reg.y, checkpoint=path, checkpoint_every=1, callback=interrupt_and_fill_the_disk, **KW)
    assert checkpoint.read_header(path)["step"] == 10  # the periodic save at that boundary came first


# --------------------------------------------------------------------------- a damaged checkpoint to resume
@pytest.mark.parametrize(
    "damage, detail",
    [
        ("truncated", r"BadZipFile"),
        ("bit_flip", r"leaf_0000: BadZipFile: Bad CRC-32"),
        ("shape", r"leaf 0 is float32 \(2,\), the run needs float32 \(3,\)"),
        ("dtype", r"leaf 0 is float64 \(3,\), the run needs float32 \(3,\)"),
        ("nan", r"leaf 0 holds NaN or inf, but was finite when saved"),
        ("inf", r"leaf 1 holds NaN or inf"),
        ("header_keys", r"its header has a malformed leaves"),
        ("header_spec", r"its header has a malformed leaves\[2\]"),
        ("header_json", r"JSONDecodeError"),
        ("history", r"the history is \(2, 10\)"),
        ("member", r"leaf_0003: KeyError"),
    ],
)
def test_a_damaged_checkpoint_gives_one_clear_error(tmp_path, reg, unfinished, damage, detail):
    path = tmp_path / "ckpt.npz"
    path.write_bytes(unfinished)
    with np.load(path) as z:
        arrays, header = dict(z), json.loads(str(z["header"]))
    if damage == "truncated":
        path.write_bytes(unfinished[: len(unfinished) // 2])
    elif damage == "bit_flip":
        raw = bytearray(unfinished)
        raw[raw.index(b"PK\x03\x04", 4) - 5] ^= 0x10  # in the last bytes of the first member, leaf_0000's data
        path.write_bytes(bytes(raw))
    else:
        changes = {
            "shape": {"leaf_0000": np.zeros(2, np.float32)},
            "dtype": {"leaf_0000": arrays["leaf_0000"].astype(np.float64)},
            "nan": {"leaf_0000": np.full(3, np.nan, np.float32)},
            "inf": {"leaf_0001": np.asarray(np.inf, np.float32)},
            "header_keys": {"header": json.dumps({**header, "leaves": None})},
            "header_spec": {"header": json.dumps({**header, "leaves": [*header["leaves"][:2], {"dtype": 3}]})},
            "header_json": {"header": "{not json"},
            "history": {"history": np.zeros((2, 10), np.float32)},
            "member": {},
        }[damage]
        if damage == "member":
            del arrays["leaf_0003"]
        np.savez(path, **{**arrays, **{k: np.asarray(v) for k, v in changes.items()}})
    message = rf"checkpoint {re.escape(str(path))} is damaged \(.*{detail}.*\): delete it, or pass overwrite=True"
    with pytest.raises(ValueError, match=message + r" \(gradfit fit --restart\) to start over"):
        gradfit.fit(reg.X, reg.y, checkpoint=path, resume=True, **KW)
