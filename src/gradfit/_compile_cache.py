"""Compiled programs on disk: :func:`enable_compilation_cache` turns on JAX's persistent compilation cache, keyed
by JAX on the lowered program, the compiler and the device (a fresh process still traces and lowers, ~0.5 s for an
L-BFGS fit, then loads instead of compiling). Storing whole serialised executables to skip tracing too was tried:
an XLA:CPU executable read back failed to find its kernels ("Function ... not found")."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import jax

CACHE_ENV = "GRADFIT_COMPILATION_CACHE"  # the command's cache folder; "0" or "" turns it off
MAX_BYTES = 1 << 30  # the folder's bound (an L-BFGS fit's programs take ~0.2 MB)


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path:
    """Keep compiled programs in ``path`` (default ``$XDG_CACHE_HOME/gradfit/jax``, else ``~/.cache/gradfit/jax``):
    a fresh process then loads gradfit's programs (and any other) from disk instead of compiling them again. This
    sets JAX's process-wide configuration, so the library leaves it to you; the ``gradfit`` command turns it on
    unless the environment variable ``GRADFIT_COMPILATION_CACHE`` is ``0`` (a folder there is used instead).
    The folder is kept under 1 GiB (least recently used entries go first) where the ``filelock`` package is
    installed, which JAX needs for that; without it the folder is not bounded. Returns the folder."""
    folder = Path(path or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gradfit" / "jax")
    folder = folder.expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # gradfit's programs compile in < 1 s
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if importlib.util.find_spec("filelock") is not None:  # JAX bounds the folder only with filelock installed
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)  # least recently used entries go first
    return folder
