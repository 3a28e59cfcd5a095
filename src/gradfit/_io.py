"""Atomic file writes: a temporary file in the same folder, flushed, then renamed.

A reader sees the old file or the whole new one, never half of it; a failure leaves earlier
outputs as they were and removes the temporary file.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _umask() -> int:
    """The process umask (read from /proc where possible, so it is never changed even briefly)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publish(tmp: str, path: Path) -> None:
    """Give the temporary file the mode an ordinary new file would have, then rename it into place."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OSError(f"cannot write {path}: {e.strerror or e}; choose a writable output folder") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise OSError(f"cannot write {path}: {e.strerror or e}; choose a writable output folder") from None
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=_to_builtin) + "\n")


def write_npz(path: str | Path, **arrays) -> Path:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return write_bytes(path, buf.getvalue())


def _to_builtin(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "tolist"):
        return np.asarray(obj).tolist()
    return str(obj)


def check_writable(folder: str | Path, what: str = "output folder") -> Path:
    """Prove that files can be written in ``folder``, before any compute, without leaving a trace.

    A file is created and removed in ``folder``, or, if it does not exist yet, in its nearest
    existing parent (where it will be made). Raises OSError naming the folder and the fix
    when it cannot be written (a read-only folder, a path under a regular file), so a long
    run never fails at its end.
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file, not a folder")
        fd, probe = tempfile.mkstemp(prefix=".gradfit-write-check.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(
            f"cannot write to the {what} {str(folder)!r}: {e.strerror or e}; choose a writable folder"
        ) from None
    return folder


def write_many(files: dict[str | Path, bytes]) -> list[Path]:
    """Write several files so that a failure leaves every earlier version untouched.

    Each file goes to a temporary file in its own folder first; only when all of them are
    written and flushed are they renamed into place (renames within a folder are atomic and
    do not fail for lack of space). On a failure before the renames, the temporaries are
    removed and the error names the file and the fix.
    """
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
                staged.append((tmp, path))
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                raise OSError(
                    f"cannot write {path}: {e.strerror or e}; choose a writable output folder "
                    "(earlier outputs were left as they were)"
                ) from None
        for tmp, path in staged:
            _publish(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise
    return [path for _, path in staged]


def npz_bytes(**arrays) -> bytes:
    """The bytes of ``np.savez(**arrays)`` (for :func:`write_many`)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def json_bytes(obj: Any) -> bytes:
    """The bytes :func:`write_json` writes."""
    return (json.dumps(obj, indent=2, default=_to_builtin) + "\n").encode()
