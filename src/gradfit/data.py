"""Loading the data a config names: a built-in problem or a ``.npy``, ``.npz``, ``.csv`` or ``.parquet`` file, its
columns chosen by name or index. Every problem is a ``ValueError`` naming the file, the column and row, and the fix."""

from __future__ import annotations

import csv
import os
import zipfile
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np

from gradfit import datasets
from gradfit._types import Params

FORMATS = (".npy", ".npz", ".csv", ".parquet")
FLOAT_DTYPES = ("bfloat16", "float16", "float32", "float64")
NAMED = (".csv", ".parquet")  # tables with named columns, whose target a config must name (no silent last column)


class Columns(NamedTuple):
    """What :func:`read_columns` read: X (m, n), y (m,) or (m, k) (``(m, 0)`` for no target), and the names."""

    X: np.ndarray
    y: np.ndarray
    features: list[str]
    target: list[str]


class Loaded(NamedTuple):
    """A :class:`~gradfit.datasets.Dataset` with the names of its columns, as a ``[data]`` section loads it."""

    X: np.ndarray  # (m, n)
    y: np.ndarray  # (m,) or (m, k)
    truth: Params | None  # generating weights of a synthetic problem
    features: list[str] | None = None
    target: list[str] | None = None


def load(section: dict[str, Any]) -> Loaded:
    """X, y (and a synthetic problem's truth) as a ``[data]`` section says; a 16-bit ``dtype`` applies to X only."""
    if section["dtype"] not in FLOAT_DTYPES:
        raise ValueError(f"data.dtype {section['dtype']!r} is not supported: use one of {', '.join(FLOAT_DTYPES)}")
    x_dtype = np.dtype(jnp.bfloat16) if section["dtype"] == "bfloat16" else np.dtype(section["dtype"])
    ds = _load(section, x_dtype if x_dtype.itemsize > 2 else np.dtype(np.float32))
    if ds.features is None:  # generated or built-in: columns by position
        k = 0 if ds.y.ndim == 1 else ds.y.shape[1]
        ds = ds._replace(features=[f"x{j}" for j in range(ds.X.shape[1])], target=[f"y{j}" for j in range(k)] or ["y"])
    return ds if ds.X.dtype == x_dtype else ds._replace(X=ds.X.astype(x_dtype))


def _load(section: dict[str, Any], dtype: np.dtype) -> Loaded:
    source = section["source"]
    if source in ("synthetic", "synthetic_classification"):
        for key in ("n_samples", "n_features"):
            if section[key] <= 0:
                raise ValueError(f"data.{key} must be a positive integer for a synthetic problem, got {section[key]}")
        if section["n_outputs"] < 0:
            raise ValueError(f"data.n_outputs must be 0 (y (m,)) or k > 0 (outputs), got {section['n_outputs']}")
        if section["noise"] < 0:
            raise ValueError(f"data.noise is a standard deviation, so it must be >= 0, got {section['noise']}")
        shape = (section["n_samples"], section["n_features"])
        need = shape[0] * shape[1] * 8 * 3  # about three float64 copies of X (draws, cast, fit): refused before drawing
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else need
        if need > have:
            raise ValueError(f"data.n_samples={shape[0]} with data.n_features={shape[1]} needs about {need / 2**30:.1f}"
                             f" GiB ({need} bytes) but this machine has {have / 2**30:.1f} GiB: lower data.n_samples,"
                             " or save the data to .npy files and stream them (data.stream = true)")
        if source == "synthetic_classification":
            return Loaded(*datasets.make_classification(*shape, seed=section["seed"], dtype=dtype))
        return Loaded(*datasets.make_regression(*shape, n_outputs=section["n_outputs"] or None,
                                                noise=section["noise"], seed=section["seed"], dtype=dtype))
    if source in ("diabetes", "breast_cancer"):
        return Loaded(*datasets.BUILTIN[source](dtype=dtype), datasets.feature_names(source), ["target"])
    path = Path(source)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"data.source {source!r} is neither a built-in data set "
                         f"({', '.join(datasets.BUILTIN)}) nor a file of a known format ({', '.join(FORMATS)})")
    target = section["target"]
    if section.get("y_source") is not None:  # X and y in two files, as streamed fits take them
        X, y = load_pair(path, section["y_source"], section["features"])
        return Loaded(np.asarray(X.X, dtype), np.asarray(y, dtype), None, X.features, ["y"])
    if target is None and path.suffix.lower() in NAMED:
        names = column_names(path)
        raise ValueError(f"data.target is not set: name the target column of {path} (its columns are "
                         f"{', '.join(map(repr, names))}), e.g. --set data.target={names[-1]}")
    cols = read_columns(path, target, section["features"])
    return Loaded(np.asarray(cols.X, dtype), np.asarray(cols.y, dtype), None, cols.features, cols.target)


def load_pair(x_path, y_path, features=None) -> tuple[Columns, np.ndarray]:
    """X from ``x_path`` (every column, or ``features``) and y (m,) or (m, k) from the ``.npy`` ``y_path``."""
    X = read_columns(x_path, [], features)
    y_path = Path(y_path)
    if y_path.suffix.lower() != ".npy" or not y_path.is_file():
        raise ValueError(f"data.y_source {str(y_path)!r} must be an existing .npy file of targets, (m,) or (m, k)")
    y = np.load(y_path, mmap_mode="r", allow_pickle=False)
    if y.ndim not in (1, 2) or y.shape[0] != X.X.shape[0] or y.dtype.kind not in "biuf":
        raise ValueError(f"{y_path} holds {y.dtype} {y.shape}: expected numbers of shape ({X.X.shape[0]},) or "
                         f"({X.X.shape[0]}, k), a row per row of {x_path}")
    return X, y


def column_names(path) -> list[str]:
    """The column names of a table file (``"0"``, ``"1"``, ... for ``.npy``), reading only its header."""
    path = _checked_path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return [str(j) for j in range(np.load(path, mmap_mode="r").shape[-1])]
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as fh:
                return [h.strip() for h in next(csv.reader(fh), [])]
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(path).schema_arrow.names)
        return list(np.load(path).keys())
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise _unreadable(path, e) from None


def load_file(path: str | Path, target=None, features: Sequence | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Numeric X (m, n) and y (m,) or (m, k) from a file. ``target``: a column or a list of them (None: the last;
    ``.npz``: arrays ``X`` and ``y``); ``features``: the feature columns (None: all but the target)."""
    if isinstance(target, list) and not target:
        raise ValueError("target is an empty list: name one target column, or several for k outputs")
    return read_columns(path, target, features)[:2]


def _checked_path(path) -> Path:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: unknown file format {path.suffix!r}; use one of {', '.join(FORMATS)}")
    if problem := path_problem(path):
        raise ValueError(f"data file {str(path)!r} {problem} (data.source)")
    if path.stat().st_size == 0:
        raise ValueError(f"data file {path} is empty (0 bytes): it holds no rows")
    return path


def path_problem(path: Path) -> str | None:
    """What is wrong with ``path`` as a data file, if anything: missing, a folder, or not a regular file."""
    if path.is_file():
        return None
    return ("is a folder, not a file: give the path of the file inside it" if path.is_dir() else
            "is not a regular file (a pipe, socket or device): save the data to a file first" if path.exists() else
            "does not exist: check the path")


def _unreadable(path: Path, e: Exception) -> ValueError:
    if isinstance(e, UnicodeDecodeError):
        return ValueError(f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} cannot be decoded): save it as "
                          "UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet, or iconv -f latin1 -t utf-8)")
    return ValueError(f"{path} is not a readable {path.suffix.lower()} file ({type(e).__name__}: {e}): "
                      "check that it is whole")


def read_columns(path: str | Path, target=None, features: Sequence | None = None) -> Columns:
    """:func:`load_file` with the columns' names; ``target=[]`` reads the features alone (y (m, 0))."""
    path = _checked_path(path)
    suffix = path.suffix.lower()
    _check_names(target if isinstance(target, list) else [] if target is None else [target], "target")
    if features is not None:
        if not isinstance(features, (list, tuple)):
            raise ValueError(f"features must be a list of column names or indices, got {features!r}")
        if not features:
            raise ValueError("features is an empty list: name at least one feature column, "
                             "or None for all but the target")
        _check_names(features, "features")
    reader = {".npy": _read_npy, ".npz": _read_npz, ".csv": _read_csv, ".parquet": _read_parquet}[suffix]
    try:
        X, y, f, t = reader(path, target, features)
    except (UnicodeDecodeError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise _unreadable(path, e) from None
    if X.shape[0] == 0:
        raise ValueError(f"{path} has no data rows: a fit needs at least one")
    return Columns(X, y, f, t)


def _check_names(items, what: str) -> None:
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int, np.integer)):
            raise ValueError(f"{what} must name columns by name (str) or index (int), got {item!r}")


def _resolve(name, names: list[str] | None, n_cols: int, what: str, path: Path) -> int:
    """The index of column ``name`` (a name or a possibly negative index) among ``n_cols``."""
    if isinstance(name, (int, np.integer)):
        if not -n_cols <= name < n_cols:
            raise ValueError(f"{what} column index {name} is out of range: "
                             f"{path} has {n_cols} columns (0..{n_cols - 1})")
        return int(name) % n_cols
    if names is None:
        raise ValueError(f"{path} has no column names: give {what} columns by index (0..{n_cols - 1})")
    if name not in names:
        raise ValueError(f"{what} column {name!r} is not in {path}: its columns are {', '.join(map(repr, names))}")
    return names.index(name)


def _plan(path: Path, names: list[str] | None, n_cols: int, target, features) -> tuple[list[int], list[int], bool]:
    """Feature and target column indices, and whether y is 1-d."""
    if names and (dups := sorted({c for c in names if names.count(c) > 1})):
        raise ValueError(f"{path} has more than one column named {', '.join(map(repr, dups))}: rename the columns so "
                         "that each name is unique")
    single = not isinstance(target, list)  # target [] (features alone, for predictions): y (m, 0)
    targets = [n_cols - 1 if target is None else target] if single else target
    t = [_resolve(c, names, n_cols, "target", path) for c in targets]
    if features is None:
        f = [c for c in range(n_cols) if c not in t]
        if not f:
            raise ValueError(f"{path} has no columns left for features once the target is taken: add feature columns")
    else:
        f = [_resolve(c, names, n_cols, "feature", path) for c in features]
    if both := sorted(set(f) & set(t)):
        raise ValueError(f"column {repr(names[both[0]]) if names else both[0]} of {path} is both a feature and the "
                         "target: leave it out of features")
    for cols, what in ((f, "feature"), (t, "target")):
        if len(set(cols)) != len(cols):
            raise ValueError(f"a {what} column of {path} is chosen twice: list each column once")
    return f, t, single


def _take(table: np.ndarray, cols: list[int]) -> np.ndarray:
    """``table[:, cols]``, as a view (no copy of a memory map) when cols is a contiguous range."""
    if cols and cols == list(range(cols[0], cols[0] + len(cols))):
        return table[:, cols[0] : cols[0] + len(cols)]
    return table[:, cols]


def _names(names: list[str] | None, f: list[int], t: list[int]) -> tuple[list[str], list[str]]:
    return [names[c] if names else str(c) for c in f], [names[c] if names else str(c) for c in t]


def _finite_split(path: Path, table: np.ndarray, names: list[str], cols: list[int], n_features: int, single: bool,
                  row_name) -> tuple[np.ndarray, np.ndarray]:
    """Check that ``table`` (the columns ``cols``, features first) is finite; split it into X and y."""
    bad = ~np.isfinite(table)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"{path}: column {names[cols[c]]!r} {row_name(int(r))} is {table[r, c]}: "
                         "drop or impute missing and non-finite values first")
    X, Y = table[:, :n_features], table[:, n_features:]
    return (X, Y[:, 0] if single else Y, *_names(names, cols[:n_features], cols[n_features:]))


def _check_magic(path: Path, prefix: bytes, kind: str, what: str, save: str) -> None:
    with path.open("rb") as f:
        if f.read(len(prefix)) != prefix:
            raise ValueError(f"{path} is not a readable {kind} file ({what}): "
                             f"check that it is whole, or save it with {save}")


def _read_npy(path: Path, target, features):
    _check_magic(path, b"\x93NUMPY", ".npy", "no NumPy header", "np.save")
    try:
        table = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path} is not a readable .npy file ({e}): save a numeric 2-d array with np.save") from None
    if table.dtype.names is not None or table.dtype.kind not in "biuf":
        raise ValueError(f"{path} holds dtype {table.dtype}: expected a plain numeric 2-d array (rows, columns)")
    if table.ndim != 2:
        raise ValueError(f"{path} holds an array of shape {table.shape}: expected a 2-d table (rows, columns)")
    f, t, single = _plan(path, None, table.shape[1], target, features)
    native = lambda a: a.astype(a.dtype.newbyteorder("="), copy=False)  # noqa: E731 (big-endian files: a copy)
    return native(_take(table, f)), native(table[:, t[0]] if single else _take(table, t)), *_names(None, f, t)


def _read_npz(path: Path, target, features):
    _check_magic(path, b"PK", ".npz", "not a zip archive", "np.savez")
    try:
        z = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path} is not a readable .npz file ({e}): check that it is whole") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds one array, not an .npz archive: save it with np.savez(path, X=X, y=y)")
    with z:
        names = list(z.keys())
        listed = ", ".join(map(repr, names))
        if not names:
            raise ValueError(f"{path} holds no arrays")
        if target is None and features is None:
            if not ("X" in names and "y" in names):
                raise ValueError(f"{path} holds the arrays {listed}: name them X and y, "
                                 "or choose them with target= (and features=)")
            features = ["X"]
        if target is None:
            if "y" not in names:
                raise ValueError(f"{path} has no array 'y': "
                                 f"name the target array with target= (its arrays are {listed})")
            target = "y"
        f, t, single = _plan(path, names, len(names), target, features)
        arrays = {}
        for i in f + t:
            where = f"array {names[i]!r} of {path}"
            try:
                arrays[i] = z[names[i]]
            except ValueError as e:
                raise ValueError(f"{where} cannot be read without pickle ({e}): store numbers, not objects") from None
            if arrays[i].dtype.kind not in "biuf":
                raise ValueError(f"{where} has dtype {arrays[i].dtype}: encode it as numbers first")
    rows = {names[i]: a.shape[0] if a.ndim else 0 for i, a in arrays.items()}
    if len(set(rows.values())) != 1:
        raise ValueError(f"the arrays of {path} have different numbers of rows: "
                         f"{rows}; each array needs one row per sample")
    for i, a in arrays.items():
        if a.ndim not in (1, 2):
            raise ValueError(f"array {names[i]!r} of {path} has shape {a.shape}: expected (m,) or (m, j)")
    m = next(iter(arrays.values())).shape[0]

    block = lambda cols: np.hstack([arrays[i].reshape(m, -1) for i in cols] or [np.empty((m, 0))])  # noqa: E731
    X = arrays[f[0]] if len(f) == 1 and arrays[f[0]].ndim == 2 else block(f)
    return X, arrays[t[0]] if single else block(t), *_names(names, f, t)


def _read_csv(path: Path, target, features):
    with path.open(newline="", encoding="utf-8-sig") as fh:
        header = next(csv.reader(fh), None)
        if header is None or not any(h.strip() for h in header):
            raise ValueError(f"{path} has no header row: its first line must name the columns")
        if fh.readline() == "":
            raise ValueError(f"{path} has a header but no data rows")
    names = [h.strip() for h in header]
    if all(_is_number(h) for h in names):
        raise ValueError(f"the first line of {path} holds numbers, "
                         "not column names: add a header row naming the columns")
    f, t, single = _plan(path, names, len(names), target, features)
    cols = f + t
    _check_field_counts(path, names)
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, usecols=cols, ndmin=2, quotechar='"', dtype=np.float64)
    except ValueError:
        _raise_first_bad_cell(path, names, cols)
        raise
    return _finite_split(path, table, names, cols, len(f), single, lambda r: f"line {r + 2}")  # line 1: the header


def _check_field_counts(path: Path, names: list[str]) -> None:
    """Every non-blank line must have a field per column (np.loadtxt would silently ignore extra ones)."""
    raw, n_cols = path.read_bytes(), len(names)
    if b'"' in raw:
        _raise_first_bad_cell(path, names, [])
        return
    buf = np.frombuffer(raw, np.uint8)
    ends = np.append(np.flatnonzero(buf == ord("\n")), buf.size)  # each line's end (its newline, or the file's end)
    length = np.diff(ends, prepend=-1) - 1
    commas = np.bincount(np.searchsorted(ends, np.flatnonzero(buf == ord(","))), minlength=ends.size)  # per line
    blank = (length == 0) | ((length == 1) & (buf[np.maximum(ends - 1, 0)] == ord("\r")))
    bad = np.flatnonzero(~blank & (commas != n_cols - 1))
    if bad.size:
        line = int(bad[0])
        raise ValueError(f"{path} line {line + 1} has {commas[line] + 1} fields but the header names {n_cols} columns")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _raise_first_bad_cell(path: Path, names: list[str], cols: list[int]) -> None:
    """Find the first cell that np.loadtxt could not read and raise an error naming it."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = csv.reader(fh)
        next(rows)
        for lineno, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) != len(names):
                raise ValueError(f"{path} line {lineno} has {len(row)} fields "
                                 f"but the header names {len(names)} columns")
            for c in cols:
                where = f"{path}: column {names[c]!r} line {lineno}"
                if not (cell := row[c].strip()):
                    raise ValueError(f"{where} is empty: fill or drop rows with missing values first")
                if not _is_number(cell):
                    raise ValueError(f"{where} holds {cell!r}, not a number: "
                                     "encode text as numbers first, or leave the column out of features") from None


def _read_parquet(path: Path, target, features):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("reading .parquet files needs pyarrow: pip install 'gradfit[parquet]' (or pyarrow)") from None
    try:
        pf = pq.ParquetFile(path)
    except pa.ArrowException as e:
        raise ValueError(f"{path} is not a readable .parquet file ({e}): check that it is whole") from None
    names = list(pf.schema_arrow.names)
    if not names:
        raise ValueError(f"{path} has no columns")
    f, t, single = _plan(path, names, len(names), target, features)
    cols = f + t
    table = pf.read(columns=[names[c] for c in cols])  # no rows: load_file says so
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_decimal)
    out = np.empty((table.num_rows, len(cols)), np.float64)
    for j, c in enumerate(cols):
        column, where = table.column(j), f"{path}: column {names[c]!r}"
        if column.null_count:
            row = int(np.argmax(column.is_null().to_numpy(zero_copy_only=False)))
            raise ValueError(f"{where} row {row} is null: fill or drop rows with missing values first")
        if any(is_kind(column.type) for is_kind in numeric):
            out[:, j] = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
            continue
        for row, v in enumerate(column.to_pylist()):
            try:
                out[row, j] = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"{where} ({column.type}) row {row} holds {v!r}, not a number: "
                                 "encode it as numbers first, or leave the column out of features") from None
    return _finite_split(path, out, names, cols, len(f), single, lambda r: f"row {r}")
