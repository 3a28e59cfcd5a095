"""Data files: .npy (memory-mapped), .npz, .csv and .parquet, columns by name or index,
and an error that names the problem (file, column, row) and the fix for each bad input."""

from __future__ import annotations

import numpy as np
import pytest

from gradfit import config, data

RNG = np.random.default_rng(0)
TABLE = RNG.standard_normal((7, 4))  # columns a, b, c, t
NAMES = ["a", "b", "c", "t"]


def _csv(path, names=NAMES, table=TABLE, fmt="%.17g"):
    lines = [",".join(names)] + [",".join(fmt % v for v in row) for row in table]
    path.write_text("\n".join(lines) + "\n")
    return path


def _parquet(path, columns: dict):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table(columns), path)
    return path


# --------------------------------------------------------------------------- reading
@pytest.mark.parametrize("kind", ["npy", "csv", "parquet"])
@pytest.mark.parametrize(
    "target, features, want_X, want_y",
    [
        (None, None, [0, 1, 2], 3),  # the last column is the target
        (0, None, [1, 2, 3], 0),
        (-1, [2, 0], [2, 0], 3),
        ([2, 3], [0], [0], [2, 3]),  # k outputs
    ],
)
def test_columns_by_index(tmp_path, kind, target, features, want_X, want_y):
    path = tmp_path / f"d.{kind}"
    if kind == "npy":
        np.save(path, TABLE)
    elif kind == "csv":
        _csv(path)
    else:
        _parquet(path, {n: TABLE[:, i] for i, n in enumerate(NAMES)})
    X, y = data.load_file(path, target, features)
    np.testing.assert_array_equal(X, TABLE[:, want_X])
    np.testing.assert_array_equal(y, TABLE[:, want_y])


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_columns_by_name(tmp_path, kind):
    path = tmp_path / f"d.{kind}"
    if kind == "csv":
        _csv(path)
    else:
        _parquet(path, {n: TABLE[:, i] for i, n in enumerate(NAMES)})
    X, y = data.load_file(path, "b", ["t", "a"])
    np.testing.assert_array_equal(X, TABLE[:, [3, 0]])
    np.testing.assert_array_equal(y, TABLE[:, 1])


def test_npy_is_memory_mapped_and_contiguous_columns_stay_views(tmp_path):
    path = tmp_path / "d.npy"
    np.save(path, TABLE.astype(np.float32))
    X, y = data.load_file(path)
    assert isinstance(X, np.memmap) and isinstance(y, np.memmap)  # views of the file, not copies
    assert X.dtype == np.float32
    np.testing.assert_array_equal(X, TABLE[:, :3].astype(np.float32))


def test_npz_x_and_y_or_named_arrays(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, X=TABLE[:, :3], y=TABLE[:, 3])
    X, y = data.load_file(path)
    np.testing.assert_array_equal(X, TABLE[:, :3])
    np.testing.assert_array_equal(y, TABLE[:, 3])
    cols = tmp_path / "cols.npz"
    np.savez(cols, height=TABLE[:, 0], weight=TABLE[:, 1], age=TABLE[:, 2], label=TABLE[:, 3])
    X, y = data.load_file(cols, "label", ["age", "height"])
    np.testing.assert_array_equal(X, TABLE[:, [2, 0]])
    np.testing.assert_array_equal(y, TABLE[:, 3])
    X, y = data.load_file(cols, "label")  # all other arrays, in file order
    np.testing.assert_array_equal(X, TABLE[:, :3])


def test_csv_reads_only_the_chosen_columns_so_text_columns_can_be_skipped(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('id,x1,name,x2,y\n1,0.5,"Smith, J",2,1\n2,1.5,Lee,3,0\n')
    X, y = data.load_file(path, "y", ["x1", "x2"])
    np.testing.assert_array_equal(X, [[0.5, 2], [1.5, 3]])
    np.testing.assert_array_equal(y, [1, 0])


def test_csv_with_windows_line_ends_a_byte_order_mark_and_quotes(tmp_path):
    path = tmp_path / "w.csv"
    path.write_bytes('\ufeff"x 1",y\r\n1.5,2\r\n\r\n"3",4\r\n'.encode())
    X, y = data.load_file(path, "y", ["x 1"])
    np.testing.assert_array_equal(X, [[1.5], [3]])
    np.testing.assert_array_equal(y, [2, 4])
    path.write_text('"x",y\n1,2\n"3",4,5\n')
    with pytest.raises(ValueError, match="line 3 has 3 fields but the header names 2 columns"):
        data.load_file(path)


def test_parquet_integer_bool_and_numeric_string_columns(tmp_path):
    path = _parquet(tmp_path / "d.parquet", {"i": [1, 2, 3], "b": [True, False, True], "s": ["1.5", "2", "-3e1"],
                                             "y": [0.0, 1.0, 0.5]})
    X, y = data.load_file(path, "y")
    np.testing.assert_array_equal(X, [[1, 1, 1.5], [2, 0, 2], [3, 1, -30]])
    np.testing.assert_array_equal(y, [0, 1, 0.5])


def test_a_config_loads_a_csv_by_names(tmp_path):
    path = _csv(tmp_path / "d.csv")
    cfg = config.merge(config.DEFAULTS, {"data": {"source": str(path), "target": ["t", "a"], "features": ["b", "c"],
                                                  "dtype": "float64"}}, "test")
    ds = data.load(cfg["data"])
    np.testing.assert_array_equal(ds.X, TABLE[:, [1, 2]])
    np.testing.assert_array_equal(ds.y, TABLE[:, [3, 0]])
    assert ds.truth is None


# --------------------------------------------------------------------------- errors
def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"'.*nope\.csv' does not exist: check the path"):
        data.load_file(tmp_path / "nope.csv")


@pytest.mark.parametrize("suffix", [".csv", ".npy", ".npz", ".parquet"])
def test_empty_file(tmp_path, suffix):
    path = tmp_path / f"e{suffix}"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"is empty \(0 bytes\)"):
        data.load_file(path)


def test_header_only_and_no_header_csv(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("a,b,y\n")
    with pytest.raises(ValueError, match="a header but no data rows"):
        data.load_file(path)
    path.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(ValueError, match="holds numbers, not column names: add a header row"):
        data.load_file(path)


def test_empty_npy_and_parquet_tables(tmp_path):
    np.save(tmp_path / "e.npy", np.zeros((0, 3)))
    with pytest.raises(ValueError, match="no data rows"):
        data.load_file(tmp_path / "e.npy")
    path = _parquet(tmp_path / "e.parquet", {"a": np.zeros(0), "y": np.zeros(0)})
    with pytest.raises(ValueError, match="no data rows"):
        data.load_file(path)


@pytest.mark.parametrize("kind", ["csv", "parquet", "npz"])
def test_missing_column_lists_the_available_ones(tmp_path, kind):
    path = tmp_path / f"d.{kind}"
    if kind == "csv":
        _csv(path)
    elif kind == "npz":
        np.savez(path, **{n: TABLE[:, i] for i, n in enumerate(NAMES)})
    else:
        _parquet(path, {n: TABLE[:, i] for i, n in enumerate(NAMES)})
    with pytest.raises(ValueError, match=r"target column 'price' is not in .*: its columns are 'a', 'b', 'c', 't'"):
        data.load_file(path, "price")
    with pytest.raises(ValueError, match=r"feature column 'bb' is not in .*'a', 'b', 'c', 't'"):
        data.load_file(path, "t", ["a", "bb"])


def test_column_index_out_of_range_and_names_in_npy(tmp_path):
    np.save(tmp_path / "d.npy", TABLE)
    with pytest.raises(ValueError, match=r"index 9 is out of range: .* has 4 columns \(0..3\)"):
        data.load_file(tmp_path / "d.npy", 9)
    with pytest.raises(ValueError, match=r"has no column names: give target columns by index \(0..3\)"):
        data.load_file(tmp_path / "d.npy", "t")


def test_a_column_cannot_be_feature_and_target(tmp_path):
    path = _csv(tmp_path / "d.csv")
    with pytest.raises(ValueError, match="'a' .* is both a feature and the target"):
        data.load_file(path, "a", ["a", "b"])


@pytest.mark.parametrize(
    "body, match",
    [
        ("x,y\n1,2\nabc,3\n", r"column 'x' line 3 holds 'abc', not a number"),
        ("x,y\n1,2\n3,\n", r"column 'y' line 3 is empty: fill or drop"),
        ("x,y\n1,2\n3,4,5\n", r"line 3 has 3 fields but the header names 2 columns"),
        ("x,y\n1,2\n3,nan\n", r"column 'y' line 3 is nan: drop or impute"),
        ("x,y\n1,2\n-inf,4\n", r"column 'x' line 3 is -inf"),
    ],
)
def test_bad_csv_values_are_named_by_column_and_line(tmp_path, body, match):
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(ValueError, match=match):
        data.load_file(path)


def test_bad_parquet_values_are_named_by_column_and_row(tmp_path):
    path = _parquet(tmp_path / "s.parquet", {"x": ["1", "2", "three"], "y": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match=r"column 'x' \(string\) row 2 holds 'three', not a number"):
        data.load_file(path)
    path = _parquet(tmp_path / "n.parquet", {"x": [1.0, None, 3.0], "y": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match=r"column 'x' row 1 is null"):
        data.load_file(path)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".parquet"])
def test_corrupt_binary_files(tmp_path, suffix):
    path = tmp_path / f"c{suffix}"
    path.write_bytes(b"\x93NUMPY garbage that is not a real file" * 3)
    with pytest.raises(ValueError, match=rf"is not a readable \{suffix} file"):
        data.load_file(path)


def test_non_numeric_arrays(tmp_path):
    np.save(tmp_path / "s.npy", np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(ValueError, match="expected a plain numeric 2-d array"):
        data.load_file(tmp_path / "s.npy")
    np.savez(tmp_path / "s.npz", X=np.array([["a"], ["b"]]), y=np.zeros(2))
    with pytest.raises(ValueError, match="array 'X' .* has dtype <U1: encode it as numbers"):
        data.load_file(tmp_path / "s.npz")
    np.savez(tmp_path / "r.npz", X=np.zeros((3, 2)), y=np.zeros(4))
    with pytest.raises(ValueError, match="different numbers of rows"):
        data.load_file(tmp_path / "r.npz")
    np.savez(tmp_path / "o.npz", A=np.zeros((3, 2)), B=np.zeros(3))
    with pytest.raises(ValueError, match=r"holds the arrays 'A', 'B': name them X and y"):
        data.load_file(tmp_path / "o.npz")


@pytest.mark.parametrize(
    "target, features, match",
    [
        (1.5, None, "by name .* or index"),
        ([], None, "target is an empty list"),
        ("t", [], "features is an empty list"),
        ("t", "a", "features must be a list"),
        ("t", ["a", "a"], "chosen twice"),
    ],
)
def test_bad_selections(tmp_path, target, features, match):
    path = _csv(tmp_path / "d.csv")
    with pytest.raises(ValueError, match=match):
        data.load_file(path, target, features)


def test_unknown_format(tmp_path):
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(ValueError, match=r"unknown file format '.xlsx'"):
        data.load_file(tmp_path / "d.xlsx")
    section = dict(config.DEFAULTS["data"], source=str(tmp_path / "d.xlsx"))
    with pytest.raises(ValueError, match="neither a built-in data set"):
        data.load(section)


def test_parquet_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    import sys

    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ValueError, match=r"pip install 'gradfit\[parquet\]'"):
        data.load_file(path)
