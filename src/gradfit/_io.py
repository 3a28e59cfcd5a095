"""Atomic file writes: a temporary file in the same folder, flushed, then renamed.

A reader sees the old file or the whole new one, never half of it; a failure leaves earlier
outputs as they were and removes the temporary file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _umask() -> int:
    """The process umask (read from /proc where possible, so it is never changed even briefly)."""
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/self/status") as f:
        return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    mask = os.umask(0o022)  # no /proc: set and restore
    os.umask(mask)
    return mask


def _stage(path: Path, data: bytes, staged: list[tuple[str, Path]]) -> None:
    """Write ``data`` to a new temporary file next to ``path`` (listed in ``staged``), flushed to disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    staged.append((tmp, path))
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _publish(tmp: str, path: Path) -> None:
    """Give the temporary file the mode an ordinary new file would have, then rename it into place."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def _discard(staged: list[tuple[str, Path]]) -> None:
    """Remove the temporaries not renamed into place."""
    for tmp, _ in staged:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`write_text`, :func:`write_json`, :func:`write_npz` alike)."""
    path = Path(path)
    staged: list[tuple[str, Path]] = []
    try:
        _stage(path, data, staged)
        _publish(staged[0][0], path)
    except BaseException as e:
        _discard(staged)
        if isinstance(e, OSError):
            raise OSError(f"cannot write {path}: {e.strerror or e}; choose a writable output folder") from None
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any) -> Path:
    return write_bytes(path, json_bytes(obj))


def write_npz(path: str | Path, **arrays) -> Path:
    return write_bytes(path, npz_bytes(**arrays))


def npz_bytes(**arrays) -> bytes:
    """The bytes of ``np.savez(**arrays)`` (for :func:`write_many`)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def json_bytes(obj: Any) -> bytes:
    """The bytes :func:`write_json` writes: indented JSON (numpy values as Python ones), a final newline."""
    return (json.dumps(obj, indent=2, default=_to_builtin) + "\n").encode()


def _to_builtin(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "tolist"):
        return np.asarray(obj).tolist()
    return str(obj)


def check_writable(folder: str | Path, what: str = "output folder") -> Path:
    """Prove, before any compute, that files can be written in ``folder`` (or in its nearest existing
    parent, where it will be made) by creating and removing one; so a long run never fails at its end.
    Raises OSError naming the folder and the fix (a read-only folder, a path under a regular file)."""
    folder = existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file, not a folder")
        fd, probe = tempfile.mkstemp(prefix=".gradfit-write-check.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(f"cannot write to the {what} {str(folder)!r}: "
                      f"{e.strerror or e}; choose a writable folder") from None
    return folder


def write_many(files: dict[str | Path, bytes]) -> list[Path]:
    """Write several files so that a failure leaves every earlier version untouched: all are written
    and flushed to temporaries first, then renamed into place (renames within a folder are atomic and
    do not fail for lack of space). On a failure the temporaries are removed; the error names the file."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            try:
                _stage(path, data, staged)
            except OSError as e:
                raise OSError(f"cannot write {path}: {e.strerror or e}; "
                              "choose a writable output folder (earlier outputs were left as they were)") from None
        for tmp, path in staged:
            _publish(tmp, path)
    except BaseException:
        _discard(staged)
        raise
    return [path for _, path in staged]
