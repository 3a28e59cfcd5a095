"""Rows sharded across devices: the same fit as one device, and clear errors for bad choices.

The in-process tests run on the sandbox's single CPU device. The multi-device cases run in a
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (the flag must be set
before JAX starts), which prints its measurements as JSON for the assertions here; the
references are a float64 numpy gradient descent written from the formulas and the unsharded
fit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import gradfit
from gradfit import sharding
from gradfit._types import Data

SRC = str(Path(gradfit.__file__).resolve().parents[1])


# --------------------------------------------------------------------------- in process
def test_padded_rows_is_the_next_multiple():
    assert [sharding.padded_rows(m, 4) for m in (1, 4, 5, 1001, 1004)] == [4, 4, 8, 1004, 1004]


@pytest.mark.parametrize(
    "devices, match",
    [
        (0, "devices=0 but 1 device"),
        (2, "devices=2 but 1 device"),
        ("cpu", "devices must be None, a positive device count"),
        ([], "non-empty list"),
        ([7], "not a jax device or a device id"),
        (True, "devices must be None"),
    ],
)
def test_bad_devices_raise_before_compute(devices, match):
    X, y = np.ones((8, 2), np.float32), np.ones(8, np.float32)
    with pytest.raises(ValueError, match=match):
        gradfit.fit(X, y, devices=devices, steps=1)


def test_a_device_listed_twice_is_refused():
    d = jax.devices()[0]
    with pytest.raises(ValueError, match="lists a device twice"):
        sharding.resolve_devices([d, d], 10)


def test_auto_uses_one_device_below_the_threshold():
    assert sharding.resolve_devices(None, 10) == (jax.devices()[0],)


def test_n_rows_needs_presharded_input():
    X, y = np.ones((8, 2), np.float32), np.ones(8, np.float32)
    with pytest.raises(ValueError, match="n_rows is only for X already padded"):
        gradfit.fit(X, y, n_rows=8, steps=1)


def test_one_named_device_matches_numpy_gradient_descent():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.3
    # standardize=False, tol=None: the raw (W, b) iterates of the numpy loop, all 20 steps
    result = gradfit.fit(X.astype(np.float32), y.astype(np.float32), learning_rate=0.1, steps=20, devices=[jax.devices()[0].id],
                         standardize=False, tol=None)
    W, b = np.zeros(3), 0.0
    for _ in range(20):  # dW = (2/m) X^T r, db = (2/m) sum r (the Q&A seed)
        r = X @ W + b - y
        W, b = W - 0.1 * 2 / 50 * X.T @ r, b - 0.1 * 2 / 50 * r.sum()
    np.testing.assert_allclose(result.params.W, W, rtol=1e-5, atol=1e-5)
    assert result.stats["devices"] == 1


def test_shard_rows_checks_row_counts():
    with pytest.raises(ValueError, match="X has 4 rows but y has 3"):
        gradfit.shard_rows(Data(np.ones((4, 2)), np.ones(3)), 1)


# --------------------------------------------------------------------------- four host devices
FOUR_DEVICES = textwrap.dedent(
    r"""
    import json, re
    import jax, numpy as np
    import gradfit
    from gradfit import _engine
    from gradfit._types import Data

    out = {"devices": jax.device_count()}
    rng = np.random.default_rng(0)

    def numpy_gd(X, y, loss, lr, steps):
        # float64 gradient descent from the formulas: dW = c X^T g, db = c sum g
        X, y = X.astype(np.float64), y.astype(np.float64)
        m = len(X); W = np.zeros(X.shape[1]); b = 0.0
        for _ in range(steps):
            z = X @ W + b
            g = 2 * (z - y) if loss == "mse" else 1 / (1 + np.exp(-z)) - y
            W, b = W - lr * X.T @ g / m, b - lr * g.sum() / m
        return W, b

    def diff(a, b):
        return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))

    # m = 1001 and 1003 rows: not divisible by 4, so 3 and 1 zero-weight rows are padded.
    X = rng.standard_normal((1001, 6)).astype(np.float32)
    y = (X @ rng.standard_normal(6) + 0.5 + 0.1 * rng.standard_normal(1001)).astype(np.float32)
    Xc = rng.standard_normal((1003, 6)).astype(np.float32)
    yc = (rng.random(1003) < 1 / (1 + np.exp(-Xc @ rng.standard_normal(6)))).astype(np.float32)
    raw = dict(standardize=False, tol=None)  # full batch: every step of the raw (W, b) iterates of numpy_gd
    cases = {
        "mse": (X, y, dict(loss="mse", learning_rate=0.1, steps=60, **raw)),
        "mse_hand": (X, y, dict(loss="mse", learning_rate=0.1, steps=60, grad="hand", **raw)),
        "bce": (Xc, yc, dict(loss="bce", learning_rate=0.5, steps=60, **raw)),
        "mse_minibatch": (X, y, dict(loss="mse", learning_rate=0.05, steps=5, batch_size=100, seed=3)),
        "bce_minibatch": (Xc, yc, dict(loss="bce", learning_rate=0.2, steps=5, batch_size=128, seed=1)),
    }
    for name, (A, t, kw) in cases.items():
        one = gradfit.fit(A, t, devices=1, **kw)
        four = gradfit.fit(A, t, devices=4, **kw)
        rec = {
            "devices": four.stats["devices"],
            "W_diff": diff(one.params.W, four.params.W),
            "b_diff": diff(one.params.b, four.params.b),
            "loss_one": float(one.loss), "loss_four": float(four.loss),
            "losses_diff": diff(one.losses, four.losses),
            "steps": [one.steps, four.steps],
            "W_sharding": str(four.params.W.sharding.spec),
        }
        if "batch_size" not in kw:
            W, b = numpy_gd(A, t, kw["loss"], kw["learning_rate"], kw["steps"])
            rec["W_ref_diff"] = diff(four.params.W, W)
            rec["b_ref_diff"] = diff(four.params.b, b)
        out[name] = rec
        if name == "mse_minibatch":
            out["_mb_one_W"] = np.asarray(one.params.W)

    # k = 3 outputs with a per-output learning rate (vmapped columns over sharded rows)
    Y = np.stack([y, -y, 2 * y], axis=1)
    one = gradfit.fit(X, Y, learning_rate=np.array([0.1, 0.05, 0.02]), steps=30, devices=1)
    four = gradfit.fit(X, Y, learning_rate=np.array([0.1, 0.05, 0.02]), steps=30, devices=4)
    out["per_output"] = {"W_diff": diff(one.params.W, four.params.W), "devices": four.stats["devices"]}

    # B = 2 problems vmapped over rows sharded on axis 1
    Xb, yb = np.stack([X, X[::-1]]), np.stack([y, y[::-1]])
    one = gradfit.fit(Xb, yb, batched=True, learning_rate=0.1, steps=30, devices=1)
    four = gradfit.fit(Xb, yb, batched=True, learning_rate=0.1, steps=30, devices=4)
    out["batched"] = {"W_diff": diff(one.params.W, four.params.W), "devices": four.stats["devices"]}

    # Data laid out once by shard_rows (y left on the host), then fitted with the real row count.
    d = gradfit.shard_rows(Data(X, y), 4)
    pre = gradfit.fit(d.X, y_padded := np.concatenate([y, np.zeros(3, np.float32)]), sample_weight=d.sample_weight,
                      n_rows=1001, learning_rate=0.05, steps=5, batch_size=100, seed=3)
    out["presharded_minibatch_W_diff"] = diff(pre.params.W, out.pop("_mb_one_W"))

    # The layout shard_rows makes, and the collectives XLA put in the compiled chunks.
    d = gradfit.shard_rows(Data(X, y), 4)
    out["layout"] = {
        "shape": list(d.X.shape),
        "shard_rows": [s.data.shape[0] for s in d.X.addressable_shards],
        "spec": str(d.X.sharding.spec),
        "weights_sum": float(np.asarray(d.sample_weight).sum()),
        "pad_X_zero": bool((np.asarray(d.X)[1001:] == 0).all()),
        "real_rows_equal": bool((np.asarray(d.X)[:1001] == X).all()),
    }
    out["hlo"] = {}
    for key, exe in _engine._EXECUTABLES.items():
        if key[0] is _engine.run_chunk and key[2].loss == "mse" and key[2].batch_size is None and key[2].plan in ("autodiff", "hand", "stats"):  # grad="auto": stats on one device, hand sharded
            txt = exe.as_text()
            ops = sorted(set(re.findall(r"\b(all-reduce|all-gather|all-to-all|reduce-scatter)\(", txt)))
            out["hlo"]["sharded" if "all-reduce(" in txt or "all-gather(" in txt else "single"] = ops
    # X^T s in blocks (gradients.xt_dot): 20000 rows of 64 -> 4 blocks of 5000, one per device.
    from gradfit import gradients
    Xl = rng.standard_normal((20000, 64)).astype(np.float32)
    yl = (rng.random(20000) < 1 / (1 + np.exp(-Xl @ rng.standard_normal(64) / 8))).astype(np.float32)
    one = gradfit.fit(Xl, yl, loss="bce", grad="hand", learning_rate=0.5, steps=20, devices=1)
    four = gradfit.fit(Xl, yl, loss="bce", grad="hand", learning_rate=0.5, steps=20, devices=4)
    ops = [sorted(set(re.findall(r"\b(all-reduce|all-gather|all-to-all|reduce-scatter|collective-permute)\(", exe.as_text())))
           for key, exe in _engine._EXECUTABLES.items()
           if key[0] is _engine.run_chunk and key[2].loss == "bce" and key[2].parts == 4 and key[2].batch_size is None]
    out["blocked"] = {"rows": [gradients.block_rows(20000, 64, 4), gradients.block_rows(20000, 64, 4, 4)],
                      "W_diff": diff(one.params.W, four.params.W), "ops": ops}
    # X in bfloat16 stays 16-bit in every device's rows (1003 rows: padded to 1004)
    Xh = jax.numpy.asarray(Xc, jax.numpy.bfloat16)
    one = gradfit.fit(Xh, yc, loss="bce", learning_rate=0.5, steps=20, devices=1)
    four = gradfit.fit(Xh, yc, loss="bce", learning_rate=0.5, steps=20, devices=4)
    out["bfloat16"] = {"W_diff": diff(one.params.W, four.params.W), "W_dtype": str(four.params.W.dtype),
                       "devices": four.stats["devices"]}
    # A second sharded fit with a new learning rate compiles nothing (the "mse" case's program).
    again = gradfit.fit(X, y, loss="mse", learning_rate=0.07, steps=60, devices=4, standardize=False)
    out["recompile_seconds"] = again.stats["compile_seconds"]
    print("RESULT" + json.dumps(out))
    """
)


def run_forced_devices(script: str, count: int = 4, timeout: float = 300) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


@pytest.fixture(scope="module")
def four_devices() -> dict:
    """One subprocess with four host devices (~40 s of compiles): its tests share the xdist group "four_devices",
    so ``-n 2`` runs it on one worker, once (pyproject.toml: ``--dist loadgroup``)."""
    return run_forced_devices(FOUR_DEVICES)


@pytest.mark.xdist_group("four_devices")
def test_four_forced_devices_are_used(four_devices):
    assert four_devices["devices"] == 4
    for name in ("mse", "mse_hand", "bce", "mse_minibatch", "bce_minibatch"):
        assert four_devices[name]["devices"] == 4
        assert four_devices[name]["W_sharding"] == "P()"  # parameters replicated


@pytest.mark.xdist_group("four_devices")
@pytest.mark.parametrize("name", ["mse", "mse_hand", "bce"])
def test_full_batch_fit_is_the_same_on_four_devices(four_devices, name):
    r = four_devices[name]
    assert r["steps"][0] == r["steps"][1]
    assert r["W_diff"] < 1e-5 and r["b_diff"] < 1e-5
    assert abs(r["loss_one"] - r["loss_four"]) <= 1e-6 * max(1.0, abs(r["loss_one"]))
    assert r["losses_diff"] < 1e-5
    # ... and both equal plain gradient descent written in numpy (float64) from the formulas
    assert r["W_ref_diff"] < 1e-4 and r["b_ref_diff"] < 1e-4


@pytest.mark.xdist_group("four_devices")
@pytest.mark.parametrize("name", ["mse_minibatch", "bce_minibatch"])
def test_minibatch_fit_draws_the_same_batches_on_four_devices(four_devices, name):
    # Padding rows are never drawn, so the permutations and the batches are those of one device.
    r = four_devices[name]
    assert r["W_diff"] < 1e-5 and r["b_diff"] < 1e-5
    assert r["losses_diff"] < 1e-5


@pytest.mark.xdist_group("four_devices")
def test_per_output_hyperparameters_on_four_devices(four_devices):
    assert four_devices["per_output"]["devices"] == 4
    assert four_devices["per_output"]["W_diff"] < 1e-5


@pytest.mark.xdist_group("four_devices")
def test_batched_problems_on_four_devices(four_devices):
    assert four_devices["batched"]["devices"] == 4
    assert four_devices["batched"]["W_diff"] < 1e-5


@pytest.mark.xdist_group("four_devices")
def test_presharded_data_with_n_rows_gives_the_minibatch_fit_of_one_device(four_devices):
    assert four_devices["presharded_minibatch_W_diff"] < 1e-5


@pytest.mark.xdist_group("four_devices")
def test_shard_rows_pads_with_zero_weight_rows(four_devices):
    layout = four_devices["layout"]
    assert layout["shape"] == [1004, 6]
    assert layout["shard_rows"] == [251, 251, 251, 251]
    assert layout["spec"] == "P('rows',)"
    assert layout["weights_sum"] == 1001.0  # "mean" divides by the true m
    assert layout["pad_X_zero"] and layout["real_rows_equal"]


@pytest.mark.xdist_group("four_devices")
def test_the_row_sum_becomes_an_all_reduce(four_devices):
    # The one-device program has no collective; the sharded one all-reduces the gradient and
    # never gathers X.
    assert four_devices["hlo"]["single"] == []
    assert four_devices["hlo"]["sharded"] == ["all-reduce"]


@pytest.mark.xdist_group("four_devices")
def test_new_hyperparameters_do_not_recompile_when_sharded(four_devices):
    assert four_devices["recompile_seconds"] == 0.0


@pytest.mark.xdist_group("four_devices")
def test_blocked_gradient_keeps_whole_blocks_on_each_device(four_devices):
    # One device would take 5 blocks of 4000 rows; four take 4 blocks of 5000, one each, so the
    # reshape into blocks never moves rows between devices: the only collective is the all-reduce.
    blocked = four_devices["blocked"]
    assert blocked["rows"] == [4000, 5000]
    assert blocked["W_diff"] < 1e-5
    assert blocked["ops"] and all(ops == ["all-reduce"] for ops in blocked["ops"])


@pytest.mark.xdist_group("four_devices")
def test_bfloat16_X_on_four_devices(four_devices):
    r = four_devices["bfloat16"]
    assert r["devices"] == 4 and r["W_dtype"] == "float32"
    assert r["W_diff"] < 1e-5
