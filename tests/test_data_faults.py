"""Faults in data files and streamed reads (issue 13): each gives one clear ValueError, or is read correctly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_interrupts import resume_equals_unbroken

import gradfit
from gradfit import _reader, checkpoint, config, data, stream

SRC = str(Path(gradfit.__file__).resolve().parents[1])
STREAMED = dict(grad="hand", learning_rate=0.1, tol=None, chunk_bytes=10 * 3 * 4)  # 4 chunks of 10 rows a pass


def _files(tmp_path, dtype=np.float32, m=40, n=3):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((m, n))
    y = X @ rng.standard_normal(n) + 0.1
    np.save(tmp_path / "X.npy", X.astype(dtype))
    np.save(tmp_path / "y.npy", y.astype(dtype))
    return tmp_path / "X.npy", tmp_path / "y.npy"


def test_a_csv_with_duplicate_column_names_is_refused(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,a,y\n1,2,3,4\n5,6,7,8\n")
    with pytest.raises(ValueError, match=r"d.csv has more than one column named 'a': rename the columns"):
        data.load_file(path, target="y")


def test_a_non_utf8_csv_is_refused_with_the_fix(tmp_path):
    for name, text in (("head.csv", "café,y\n1,2\n"), ("cell.csv", "a,y\n1,2\n3,é\n")):
        (tmp_path / name).write_bytes(text.encode("latin-1"))
        with pytest.raises(ValueError, match=rf"{name} is not UTF-8 text \(byte 0xe9.*save it as UTF-8"):
            data.load_file(tmp_path / name, target="y")
    with pytest.raises(ValueError, match="head.csv is not UTF-8 text"):
        data.column_names(tmp_path / "head.csv")


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_folder_or_a_fifo_is_named_for_what_it_is(tmp_path, kind):
    path = tmp_path / "bad.npy"
    path.mkdir() if kind == "folder" else os.mkfifo(path)
    said = "is a folder, not a file" if kind == "folder" else r"is not a regular file \(a pipe"
    with pytest.raises(ValueError, match=rf"data file '.*bad.npy' {said}"):
        data.load_file(path)
    with pytest.raises(ValueError, match=rf"X file '.*bad.npy' {said}"):
        stream.fit_streaming(path, _files(tmp_path)[1], steps=1)


def test_big_endian_files_are_read_in_native_order(tmp_path):
    big = _files(tmp_path, ">f4")
    (tmp_path / "le").mkdir()
    little = _files(tmp_path / "le", "<f4")
    section = dict(config.DEFAULTS["data"], source=str(big[0]), y_source=str(big[1]))
    ds = data.load(section)
    assert ds.X.dtype == np.float32 and ds.X.dtype.isnative
    X, y = data.load_file(big[0])
    assert X.dtype.isnative and y.dtype.isnative
    np.testing.assert_array_equal(X, np.load(little[0])[:, :-1])
    in_memory = gradfit.fit(ds.X, ds.y, steps=3)
    assert np.isfinite(in_memory.params.W).all()
    for opts in (dict(STREAMED, steps=3), dict(steps=3)):  # full-batch passes; sufficient statistics
        a, b = stream.fit_streaming(*big, **opts), stream.fit_streaming(*little, **opts)
        np.testing.assert_array_equal(a.params.W, b.params.W)


def test_a_huge_synthetic_problem_is_refused_before_allocating():
    section = dict(config.DEFAULTS["data"], n_samples=10**13, n_features=16)
    with pytest.raises(ValueError, match=r"data.n_samples=10000000000000 .* needs about .* GiB \(3840000000000000 bytes"):
        data.load(section)


@pytest.mark.parametrize("change", ["rewrite y", "truncate X"])
def test_a_file_changed_between_passes_stops_the_streamed_fit(tmp_path, change):
    xp, yp = _files(tmp_path)

    def callback(state, history):  # after the first pass (a step)
        if change == "rewrite y":
            np.save(yp, -np.load(yp))
        else:
            os.truncate(xp, os.path.getsize(xp) // 2)

    changed = yp if change == "rewrite y" else xp
    with pytest.raises(ValueError, match=rf"{changed} changed while the fit was reading it"):
        stream.fit_streaming(xp, yp, **STREAMED, steps=5, chunk_size=1, callback=callback)


def test_a_file_cut_short_inside_a_chunk_read_is_an_error_not_a_crash(tmp_path, monkeypatch):
    """The file shrinks after the check before a chunk and during its read: through a memory map that read would
    touch vanished pages (SIGBUS, the process killed); read from the file, it is a short read and a ValueError."""
    xp, yp = _files(tmp_path, m=4000)
    data = _reader.StreamedData.open(xp, yp, chunk_bytes=1000 * 3 * 4)
    size = os.path.getsize(xp)
    checked, calls = _reader.StreamedData.check_unchanged, []

    def cut_after_the_check(self):  # the race: the file changes right after the check that opens a read
        checked(self)
        calls.append(1)
        if len(calls) == 3:  # the check before chunk 2 (rows 2000..3000) passed: rows 2500.. vanish
            os.truncate(xp, size - 3 * 4 * 1500)

    monkeypatch.setattr(_reader.StreamedData, "check_unchanged", cut_after_the_check)
    X0, _, _ = data.read(0)
    np.testing.assert_array_equal(X0, np.load(xp)[:1000])
    data.read(1)
    with pytest.raises(ValueError, match=rf"{xp} changed while the fit was reading it \({size} bytes at the start"):
        data.read(2)


def test_chunks_read_from_files_equal_the_memory_map(tmp_path):
    """Chunks read from the files (native and big-endian, in order and shuffled, the padded last chunk) equal the
    same rows of the memory-mapped arrays read as arrays."""
    xp, yp = _files(tmp_path, m=2500, dtype=np.dtype(">f8"))
    for kwargs in ({}, {"dtype": np.float32}):
        from_files = _reader.StreamedData.open(xp, yp, chunk_bytes=1000 * 3 * 8, **kwargs)
        from_maps = _reader.StreamedData.open(np.load(xp, mmap_mode="r"), np.load(yp, mmap_mode="r"),
                                              chunk_bytes=1000 * 3 * 8, **kwargs)
        assert from_files.files[0] is not None and from_maps.files == (None, None)
        for i in range(from_files.n_chunks):
            for seed in (None, (7, i)):
                for a, b in zip(from_files.read(i, seed), from_maps.read(i, seed)):
                    np.testing.assert_array_equal(a, b)


def test_streamed_seeds_follow_the_rules_of_fit(tmp_path):
    files = _files(tmp_path)
    opts = dict(STREAMED, steps=2, batch_size=5, shuffle="rows")
    same = stream.fit_streaming(*files, **opts, seed=np.int64(3)), stream.fit_streaming(*files, **opts, seed=3)
    np.testing.assert_array_equal(same[0].params.W, same[1].params.W)
    assert np.isfinite(stream.fit_streaming(*files, **opts, seed=-1).params.W).all()  # as fit takes it
    for fit in (gradfit.fit, stream.fit_streaming):
        with pytest.raises(ValueError, match=r"seed=1180591620717411303424 does not fit in 64 bits"):
            fit(*((np.load(files[0]), np.load(files[1])) if fit is gradfit.fit else files), seed=2**70, steps=1)


def _command(tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gradfit.cli", "fit", "--no-progress", "--set", "data.stream=true",
            "--set", f"data.source='{tmp_path / 'X.npy'}'", "--set", f"data.y_source='{tmp_path / 'y.npy'}'",
            "--set", "stream.chunk_bytes=16000", "--set", "fit.learning_rate=1e-3", "--set", "fit.tol=none",
            "--set", "fit.grad='hand'", "--set", f"output.dir='{tmp_path / 'run'}'", *extra]


@pytest.mark.slow
def test_sigterm_stops_a_streamed_cli_fit_and_resume_finishes_to_the_same_bits(tmp_path):
    _files(tmp_path, m=2000, n=8)
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    saved = tmp_path / "run" / "checkpoint.npz"
    child = subprocess.Popen(_command(tmp_path, "--set", "fit.steps=100000000", "--set", "checkpoint.every_seconds=0.5"),
                             cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not saved.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 143, err[-2000:]
    lines = [line for line in err.strip().splitlines() if line.startswith("gradfit fit:")]  # and the stop notice
    assert len(lines) == 1 and "continue with:" in lines[0] and lines[0].endswith("--resume"), err[-2000:]
    resume_equals_unbroken(_command, tmp_path, env, checkpoint.read_header(saved)["step"] + 20)
