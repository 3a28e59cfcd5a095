"""Host arrays onto the device (gradfit._transfer) and the fast finite checks (gradfit._validation): the values
are numpy's own, an aliased buffer outlives its name, the user's array is never changed nor, once copied, shared."""

import gc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradfit import _transfer, _validation

on_cpu = pytest.mark.skipif(jax.default_backend() != "cpu", reason="aliasing host memory is the CPU client's")


def _misaligned(shape, dtype=np.float32):
    """A C-contiguous array whose data start 16 bytes past a 64-byte boundary (numpy's usual large allocation)."""
    base = _transfer.aligned_empty((int(np.prod(shape)) + 16,), dtype)
    a = base[16 // np.dtype(dtype).itemsize :][: int(np.prod(shape))].reshape(shape)
    a[...] = np.random.default_rng(0).standard_normal(shape)
    return a


def test_aligned_empty_is_aligned_and_contiguous():
    for shape, dtype in [((3, 5), np.float32), ((1000, 7), np.float64), ((0, 4), np.float32)]:
        a = _transfer.aligned_empty(shape, dtype)
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
        assert a.size == 0 or a.ctypes.data % _transfer.ALIGN == 0


@on_cpu
def test_a_misaligned_array_is_copied_once_and_not_shared():
    X = _misaligned((40_000, 16))  # 2.5 MB: above SMALL
    assert not _transfer.is_aliasable(X, np.float32)
    Xd = _transfer.to_device(X, np.float32)
    np.testing.assert_array_equal(np.asarray(Xd), X)
    X[0, 0] = 123.0  # the user's array changes; the device copy does not
    assert float(Xd[0, 0]) != 123.0


@on_cpu
def test_an_aligned_array_is_aliased_and_kept_alive():
    host = _transfer.aligned_empty((40_000, 16), np.float32)
    host[...] = np.arange(host.size, dtype=np.float32).reshape(host.shape)
    expected = host.copy()
    Xd = _transfer.to_device(host, np.float32)
    assert Xd.unsafe_buffer_pointer() == host.ctypes.data  # no copy
    del host
    gc.collect()
    _ = [np.ones((40_000, 16), np.float32) for _ in range(4)]  # reuse freed memory, if it had been freed
    np.testing.assert_array_equal(np.asarray(Xd), expected)


@pytest.mark.parametrize("src,dst", [(np.float64, np.float32), (np.float32, np.float32), (np.int64, np.float32),
                                     (np.float32, jnp.bfloat16)])
def test_cast_equals_numpys(src, dst):
    X = (np.random.default_rng(1).standard_normal((30_000, 24)) * 10).astype(src)
    Xd = _transfer.to_device(X, dst)
    assert Xd.dtype == np.dtype(dst)
    np.testing.assert_array_equal(np.asarray(Xd), X.astype(dst))


def test_parallel_row_copy_equals_copyto():
    a = np.random.default_rng(2).standard_normal((70_001, 33)).astype(np.float64)  # 18 MB: above PARALLEL
    out = _transfer.aligned_empty(a.shape, np.float32)
    _transfer.copy_rows(out, a)
    np.testing.assert_array_equal(out, a.astype(np.float32))


@pytest.mark.parametrize("kind", ["numpy", "fortran", "jax", "batched"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_finite_finds_one_bad_value(kind, bad):
    X = np.random.default_rng(3).standard_normal((5000, 8)).astype(np.float32)
    X[4321, 5] = bad
    arr = {"numpy": X, "fortran": np.asfortranarray(X), "jax": jnp.asarray(X), "batched": X.reshape(2, 2500, 8)}[kind]
    with pytest.raises(ValueError, match="contains NaN or inf"):
        _validation.check_finite(arr, "X")


@pytest.mark.parametrize("kind", ["numpy", "jax"])
def test_check_finite_passes_values_whose_sum_overflows(kind):
    """Finite values near float32's largest: their sum is inf, yet nothing is NaN or inf."""
    X = np.full((64, 4), 3e38, np.float32)
    X[::2] *= -1
    X[1] = 3e38
    _validation.check_finite(jnp.asarray(X) if kind == "jax" else X, "X")  # no error


@pytest.mark.parametrize("batched", [False, True])
def test_padded_rows_are_zero_weight_and_the_real_rows_numpys(batched):
    # A full-batch fit pads the rows to their bucket in one aligned host copy (the device aliases it on a CPU).
    from gradfit import solver

    rng = np.random.default_rng(3)
    lead = (2,) if batched else ()
    m, n = 1000, 300  # 1.2 MB of float32: the large-array path
    X, y = _misaligned(lead + (m, n)), rng.standard_normal(lead + (m,)).astype(np.float32)
    w = rng.uniform(0.5, 2, lead + (m,)).astype(np.float32)
    inputs = solver.Inputs(X, y, w, np.dtype(np.float32), m, n, None, batched)
    data, rows = solver._padded(inputs, solver._options.FitOptions(batched=batched))
    b = solver.row_bucket(m, X.nbytes)
    assert rows == m and data.X.shape == lead + (b, n)
    axis = 1 if batched else 0
    for got, want in ((data.X, X), (data.y, y), (data.sample_weight, w)):
        got = np.asarray(got)
        np.testing.assert_array_equal(np.take(got, np.arange(m), axis=axis), want)
        assert not np.take(got, np.arange(m, b), axis=axis).any()  # the padding: zero rows of weight 0
    X[...] = 0  # the user's array is not shared
    assert np.asarray(data.X).any()
