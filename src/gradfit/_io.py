"""Run-folder files: atomic writes (a temporary file in the same folder, flushed, then renamed: a
reader sees the old file or the whole new one; a failure leaves earlier outputs as they were), checked
reads, and the lock that keeps two runs out of one folder."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import uuid
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np


def write_many(files: dict[str | Path, bytes]) -> list[Path]:
    """Write several files, all or none: each to a flushed temporary first, then all renamed into place (atomic,
    never short of space); on a failure the temporaries are removed and the error names the file."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
                staged.append((tmp, path))
                with open(tmp, "xb") as f:  # a new file, with the mode the umask gives an ordinary one
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                raise OSError(f"cannot write {path}: {e.strerror or e}; choose a writable output folder"
                              + (" (earlier outputs were left as they were)" if len(files) > 1 else "")) from None
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    return [path for _, path in staged]


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`write_text`, :func:`write_json`, :func:`write_npz` alike)."""
    return write_many({path: data})[0]


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
    return np.asarray(obj).tolist() if hasattr(obj, "tolist") else str(obj)


def read_npz(path: str | Path, keys=(), fix: str = "delete it and rerun") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file (no pickles); one that is not an .npz (damaged, cut short) or lacks one
    of ``keys`` raises a ValueError naming it and ``fix``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except (ValueError, TypeError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # not OSError: missing, unreadable
        raise ValueError(f"{path} is not a readable .npz file ({type(e).__name__}: {e}): {fix}") from None
    if missing := [k for k in keys if k not in out]:
        raise ValueError(f"{path} lacks {', '.join(missing)} (arrays: {', '.join(out) or 'none'}): {fix}")
    return out


def read_json(path: str | Path, keys=(), fix: str = "delete it and rerun") -> dict:
    """A JSON object from ``path``; one that is not JSON, not an object, or lacks one of ``keys`` raises a
    ValueError naming the file and ``fix`` (a missing file, FileNotFoundError)."""
    try:
        obj = json.loads(Path(path).read_text())
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path} is not valid JSON ({e}): {fix}") from None
    if not isinstance(obj, dict) or (missing := [k for k in keys if k not in obj]):
        raise ValueError(f"{path} lacks {', '.join(keys) if not isinstance(obj, dict) else ', '.join(missing)}: {fix}")
    return obj


def check_writable(folder: str | Path, what: str = "output folder") -> Path:
    """Prove before any compute, by creating and removing a file, that ``folder`` (or its nearest existing
    parent) is writable; else an OSError naming it and the fix (a read-only folder, a path under a file)."""
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
        raise OSError(f"cannot write to the {what} {str(folder)!r}: {e.strerror or e}; "
                      "choose a writable folder") from None
    return folder


def _alive(pid: int) -> bool:
    try:
        return os.kill(pid, 0) is None
    except OSError as e:
        return not isinstance(e, ProcessLookupError)  # PermissionError: another user's process


@contextlib.contextmanager
def locked(folder: str | Path, hold: bool = True):
    """Hold ``folder/.lock`` (created exclusively, holding this pid) while a run writes in ``folder``: another
    run gets a ValueError naming the holder; a lock whose process is gone is taken over. Removed at the end, even
    on an error or interrupt, with ``folder`` if this made it and it is empty. ``hold=False``: nothing."""
    folder, path = Path(folder), Path(folder) / ".lock"
    made = hold and not folder.exists()
    while hold:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "x") as f:  # O_CREAT | O_EXCL
                f.write(str(os.getpid()))
            break
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):  # gone meanwhile: try again
                text = path.read_text().strip()
                if not text.isdigit() or _alive(int(text)):
                    raise ValueError(f"{folder} is in use by another gradfit run (pid {text or 'unknown'}, {path}): "
                                     "wait for it, stop it, or choose another output.dir (a lock left by a crashed "
                                     f"run elsewhere: delete {path})") from None
                path.unlink()  # left by a process that is gone: take it over
    try:
        yield folder
    finally:
        if hold:
            path.unlink(missing_ok=True)
            if made:
                with contextlib.suppress(OSError):
                    folder.rmdir()
