"""Faults (issue 7, item 3): output files are whole or absent, a write error is clear and leaves
earlier outputs intact, and nothing is computed before the outputs are known writable."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import gradfit
from gradfit import _io, cli

SRC = str(Path(gradfit.__file__).resolve().parents[1])
SMALL = ["--set", "data.n_samples=200", "--set", "data.n_features=3", "--set", "fit.steps=30",
         "--set", "fit.learning_rate=0.1", "--set", "fit.chunk_size=10", "--no-progress"]
OUTPUTS = ("params.npz", "model.json", "history.npz", "predictions.npz", "report.json")


def _fit(out_dir, *extra) -> int:
    return cli.main(["fit", "--set", f"output.dir={out_dir}", *SMALL, *extra])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_outputs_are_written_whole_with_ordinary_permissions(tmp_path):
    assert _fit(tmp_path / "run") == 0
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == sorted([*OUTPUTS, "checkpoint.npz"])  # no temporaries left
    mode = (tmp_path / "run" / "params.npz").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_an_output_folder_under_a_regular_file_fails_before_compute(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setattr(gradfit.solver, "fit", lambda *a, **k: pytest.fail("computed before checking the output"))
    assert _fit(tmp_path / "file" / "run") == 2
    err = capsys.readouterr().err
    assert "cannot write to the output folder" in err and "choose a writable folder" in err
    assert "Traceback" not in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_a_read_only_output_folder_fails_before_compute_and_keeps_earlier_outputs(tmp_path, capsys):
    run = tmp_path / "run"
    assert _fit(run) == 0
    before = _snapshot(run)
    run.chmod(0o555)
    try:
        assert _fit(run, "--set", "fit.learning_rate=0.05") == 2
        assert "cannot write to the output folder" in capsys.readouterr().err
        assert _snapshot(run) == before
    finally:
        run.chmod(0o755)


def test_a_write_error_midway_leaves_every_earlier_output_intact(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert _fit(run) == 0
    before = _snapshot(run)
    calls = [0]
    real_fsync = os.fsync

    def failing_fsync(fd):  # the disk fills up while the second output is written
        calls[0] += 1
        if calls[0] == 3:  # checkpoints are off: params.npz, model.json, then history.npz
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    assert _fit(run, "--set", "fit.learning_rate=0.05", "--set", "checkpoint.every_seconds=0") == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "history.npz" in err and "No space left on device" in err
    assert _snapshot(run) == before  # params.npz was staged but never published; no temporaries


def test_write_bytes_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    _io.write_bytes(target, b"old contents")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError, match=r"cannot write .*f\.bin: I/O error; choose a writable output folder"):
        _io.write_bytes(target, b"new contents that never land")
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_write_many_publishes_nothing_if_any_file_fails(tmp_path):
    (tmp_path / "a.txt").write_text("old a")
    with pytest.raises(OSError, match="cannot write"):
        _io.write_many({tmp_path / "a.txt": b"new a", tmp_path / "a.txt" / "b.txt": b"b"})
    assert (tmp_path / "a.txt").read_text() == "old a"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_library_write_errors_are_clear_before_compute(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    d = gradfit.datasets.make_regression(50, 2, seed=0)
    monkeypatch.setattr(gradfit.solver, "build", lambda *a, **k: pytest.fail("computed before checking"))
    with pytest.raises(ValueError, match="cannot write to the checkpoint folder"):
        gradfit.fit(d.X, d.y, checkpoint=tmp_path / "file" / "c.npz")


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from gradfit import _io
    path = sys.argv[1]
    i = 0
    while True:
        i += 1
        _io.write_npz(path, a=np.full(400_000, i, np.float64), i=np.asarray(i))
        print(i, flush=True)
    """
)


def test_sigkill_during_writes_leaves_the_file_whole_or_absent(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    target = tmp_path / "out" / "big.npz"
    env = {**os.environ, "PYTHONPATH": SRC}
    rng = np.random.default_rng(0)
    for _ in range(3):
        child = subprocess.Popen([sys.executable, str(script), str(target)], env=env, stdout=subprocess.PIPE)
        child.stdout.readline()  # at least one write finished
        time.sleep(float(rng.uniform(0.0, 0.05)))  # then kill at a random point of a later write
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        with np.load(target) as z:  # the last published version, never a partial one
            i = int(z["i"])
            assert z["a"].shape == (400_000,) and (z["a"] == i).all()
