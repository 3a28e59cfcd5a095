"""Loading the data a config names: a built-in problem or a file.

Files: ``.npy`` (X alone, memory-mapped; the target is its column ``target``), ``.npz``
(arrays named ``X`` and ``y``, or ``features``/``target`` names), ``.csv`` (a header row;
the target column by name or index).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gradfit import datasets

FLOAT_DTYPES = ("float16", "float32", "float64")


def load(section: dict[str, Any]) -> datasets.Dataset:
    """Load X, y (and the truth of synthetic problems) as a ``[data]`` config section says."""
    source = section["source"]
    if section["dtype"] not in FLOAT_DTYPES:
        raise ValueError(f"data.dtype {section['dtype']!r} is not supported: use one of {', '.join(FLOAT_DTYPES)}")
    dtype = np.dtype(section["dtype"])
    if source in ("synthetic", "synthetic_classification"):
        for key in ("n_samples", "n_features"):
            if section[key] <= 0:
                raise ValueError(f"data.{key} must be a positive integer for a synthetic problem, got {section[key]}")
        if section["n_outputs"] < 0:
            raise ValueError(f"data.n_outputs must be 0 (y is (m,)) or a positive number of outputs, got {section['n_outputs']}")
        if section["noise"] < 0:
            raise ValueError(f"data.noise is a standard deviation, so it must be >= 0, got {section['noise']}")
    if source == "synthetic":
        return datasets.make_regression(
            section["n_samples"], section["n_features"], n_outputs=section["n_outputs"] or None,
            noise=section["noise"], seed=section["seed"], dtype=dtype,
        )
    if source == "synthetic_classification":
        return datasets.make_classification(section["n_samples"], section["n_features"], seed=section["seed"], dtype=dtype)
    if source in ("diabetes", "breast_cancer"):
        return datasets.BUILTIN[source](dtype=dtype)
    path = Path(source)
    if path.suffix not in (".npy", ".npz", ".csv"):
        raise ValueError(
            f"data.source {source!r} is neither a built-in data set ({', '.join(datasets.BUILTIN)}) "
            "nor a .npy, .npz or .csv file"
        )
    if not path.is_file():
        raise ValueError(f"data file {source!r} does not exist: check data.source")
    X, y = load_file(path, section["target"], section["features"])
    if section["standardize"]:
        X = datasets.standardize(np.asarray(X, np.float64))
    return datasets.Dataset(np.asarray(X, dtype), np.asarray(y, dtype), None)


def _column_index(name, header: list[str] | None, n_cols: int, what: str) -> int:
    if isinstance(name, int) and not isinstance(name, bool):
        if not -n_cols <= name < n_cols:
            raise ValueError(f"{what} column index {name} is out of range: the file has {n_cols} columns")
        return name % n_cols
    if header is None or name not in header:
        known = ", ".join(header) if header else "(no header)"
        raise ValueError(f"{what} column {name!r} is not in the file: its columns are {known}")
    return header.index(name)


def _split_columns(table: np.ndarray, header, target, features):
    n_cols = table.shape[1]
    t = _column_index(n_cols - 1 if target is None else target, header, n_cols, "target")
    cols = [c for c in range(n_cols) if c != t] if features is None else [
        _column_index(f, header, n_cols, "feature") for f in features
    ]
    return table[:, cols], table[:, t]


def load_file(path: Path, target=None, features=None) -> tuple[np.ndarray, np.ndarray]:
    """Read (X, y) from a .npy, .npz or .csv file; the target defaults to the last column."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if "X" in z and "y" in z and target is None:
                    return z["X"], z["y"]
                names = list(z.keys())
                raise ValueError(f"{path} must hold arrays named 'X' and 'y'; it holds {', '.join(names)}")
        if path.suffix == ".npy":
            table = np.load(path, mmap_mode="r", allow_pickle=False)
            if table.ndim != 2:
                raise ValueError(f"{path} holds an array of shape {table.shape}: expected (rows, columns)")
            return _split_columns(table, None, target, features)
        with path.open() as f:
            header = [h.strip() for h in f.readline().strip().split(",")]
        try:
            table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
        except ValueError as e:
            raise ValueError(f"{path} has a non-numeric value ({e}): encode text columns as numbers first") from None
        return _split_columns(table, header, target, features)
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    except ValueError as e:
        if str(path) in str(e) or "column" in str(e):
            raise
        raise ValueError(f"{path} is not a readable {path.suffix} file ({e})") from None
