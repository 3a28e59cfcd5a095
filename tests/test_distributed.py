"""Several processes: checked settings, bounded failures, per-process loading, the same fit.

Nothing here calls ``jax.distributed.initialize`` in the pytest process: the bad-setting
tests fail in gradfit's own checks before it, and the real multi-process runs are
subprocesses on 127.0.0.1 (CPU collectives: gloo, JAX's default on CPU), each process with
two forced host devices, so four devices in all.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import gradfit
from gradfit import cli, distributed

SRC = str(Path(gradfit.__file__).resolve().parents[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- settings
def test_nothing_set_is_a_single_process():
    assert distributed.settings(environ={}) is None
    assert distributed.initialize(environ={}) is None


def test_settings_come_from_the_environment():
    env = {"GRADFIT_COORDINATOR_ADDRESS": "127.0.0.1:1234", "GRADFIT_NUM_PROCESSES": "4", "GRADFIT_PROCESS_ID": "3"}
    s = distributed.settings(environ=env)
    assert (s.host, s.port, s.num_processes, s.process_id) == ("127.0.0.1", 1234, 4, 3)
    s = distributed.settings(process_id=1, environ=env)  # an argument wins over its variable
    assert s.process_id == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=2), "process_id 2 .* out of range for 2"),
        (dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=-1), "out of range"),
        (dict(coordinator_address="127.0.0.1:1234", num_processes=0, process_id=0), "num_processes .* must be >= 1"),
        (dict(coordinator_address="127.0.0.1:1234", num_processes=2), r"process_id not set.*\$GRADFIT_PROCESS_ID"),
        (dict(coordinator_address="127.0.0.1", num_processes=2, process_id=0), "must be host:port"),
        (dict(coordinator_address="127.0.0.1:99999", num_processes=2, process_id=0), "port '99999'"),
        (dict(coordinator_address="no-such-host.invalid:1234", num_processes=2, process_id=0), "cannot be resolved"),
        (dict(coordinator_address="127.0.0.1:1234", num_processes="two", process_id=0), "must be an integer"),
    ],
)
def test_bad_settings_raise_before_connecting(kwargs, match):
    start = time.monotonic()
    with pytest.raises(ValueError, match=match):
        distributed.initialize(**kwargs, environ={})
    assert time.monotonic() - start < 5


def test_an_unreachable_coordinator_times_out_with_a_clear_error():
    port = free_port()  # nobody listens there
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=f"coordinator 127.0.0.1:{port} did not answer within 1 s"):
        distributed.initialize(f"127.0.0.1:{port}", 2, 1, initialization_timeout=1, environ={})
    assert time.monotonic() - start < 5


def test_a_busy_coordinator_port_is_refused():
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ValueError, match=f"cannot serve the coordinator on port {port}"):
            distributed.initialize(f"127.0.0.1:{port}", 2, 0, environ={})


def test_the_command_reports_a_bad_process_id(capsys):
    code = cli.main([
        "fit", "--set", "distributed.coordinator_address=127.0.0.1:1234",
        "--set", "distributed.num_processes=2", "--set", "distributed.process_id=5",
    ])
    assert code == 2
    assert "process_id 5" in capsys.readouterr().err


# --------------------------------------------------------------------------- loading
def write_table(path: Path, m: int, n: int, seed: int, pieces=(1.0,), classification=False) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, n))
    if classification:
        y = (rng.random(m) < 1 / (1 + np.exp(-X @ rng.standard_normal(n)))).astype(float)
    else:
        y = X @ rng.standard_normal(n) + 0.5 + 0.1 * rng.standard_normal(m)
    table = np.column_stack([X, y]).astype(np.float32)
    cuts = np.round(np.cumsum(pieces) / np.sum(pieces) * m).astype(int)
    names, start = [], 0
    for i, stop in enumerate(cuts):
        name = str(path / f"table-{seed}-{i}.npy")
        np.save(name, table[start:stop])
        names.append(name)
        start = stop
    return table, names


def test_load_rows_reads_consecutive_files_as_one_table(tmp_path):
    table, names = write_table(tmp_path, 103, 4, 0, pieces=(3, 1, 2))
    loaded = distributed.load_rows(names, target=0, features=[3, 1])
    assert loaded.n_rows == 103 and loaded.data.sample_weight is None  # one device: no padding
    np.testing.assert_array_equal(loaded.data.X, table[:, [3, 1]])
    np.testing.assert_array_equal(loaded.data.y, table[:, 0])


def test_load_rows_standardizes_over_the_real_rows(tmp_path):
    table, names = write_table(tmp_path, 50, 3, 1)
    loaded = distributed.load_rows(names, standardize=True)
    X = table[:, :3].astype(np.float64)
    np.testing.assert_allclose(loaded.data.X, (X - X.mean(0)) / X.std(0), atol=1e-5)


def test_shard_files_that_do_not_add_up_are_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((4, 3), np.float32))
    np.save(tmp_path / "b.npy", np.ones((4, 2), np.float32))
    np.save(tmp_path / "c.npy", np.ones((4, 3), np.float64))
    with pytest.raises(ValueError, match="do not add up: .*a.npy is 3 columns of float32 but .*b.npy is 2 columns"):
        distributed.load_rows([tmp_path / "a.npy", tmp_path / "b.npy"])
    with pytest.raises(ValueError, match="do not add up"):
        distributed.load_rows([tmp_path / "a.npy", tmp_path / "c.npy"])
    with pytest.raises(ValueError, match="does not exist"):
        distributed.load_rows([tmp_path / "a.npy", tmp_path / "missing.npy"])
    with pytest.raises(ValueError, match="target column 3 is out of range"):
        distributed.load_rows(tmp_path / "a.npy", target=3)
    with pytest.raises(ValueError, match=r"feature columns \[5\] are out of range"):
        distributed.load_rows(tmp_path / "a.npy", features=[0, 5])


# --------------------------------------------------------------------------- two processes
WORKER = textwrap.dedent(
    r"""
    import json, sys
    import numpy as np
    from gradfit import distributed
    pid, port, out, reg, cls = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4].split(","), sys.argv[5]
    distributed.initialize(f"127.0.0.1:{port}", 2, pid, initialization_timeout=60)
    import jax, gradfit
    res = {"process_count": jax.process_count(), "devices": jax.device_count(), "local": jax.local_device_count()}
    loaded = distributed.load_rows(reg)
    d = loaded.data
    res["rows"] = [list(s.index[0].indices(d.X.shape[0])[:2]) for s in d.X.addressable_shards]
    res["shape"] = list(d.X.shape)
    runs = {
        "mse": (loaded, dict(loss="mse", learning_rate=0.1, steps=60)),
        "mse_minibatch": (loaded, dict(loss="mse", learning_rate=0.05, steps=4, batch_size=100, seed=2)),
        "bce": (distributed.load_rows(cls), dict(loss="bce", learning_rate=0.5, steps=60)),
    }
    for name, (ld, kw) in runs.items():
        r = gradfit.fit(ld.data.X, ld.data.y, sample_weight=ld.data.sample_weight, n_rows=ld.n_rows, **kw)
        res[name] = {"W": np.asarray(r.params.W).tolist(), "b": float(r.params.b), "loss": float(r.loss),
                     "steps": int(r.steps), "devices": r.stats["devices"]}
    with open(f"{out}.{pid}.json", "w") as f:
        json.dump(res, f)
    """
)


def run_pair(args_for, tmp_path: Path, timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """Start process 1 then process 0 (each with two forced host devices); wait for both."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    procs = [
        subprocess.Popen(args_for(pid), env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for pid in (1, 0)
    ]
    done = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return done[::-1]  # process 0 first


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two")
    reg, reg_files = write_table(tmp, 1001, 5, 0, pieces=(2, 1))  # 1001 rows: 3 padded over 4 devices
    cls, cls_files = write_table(tmp, 1003, 5, 1, classification=True)
    (tmp / "worker.py").write_text(WORKER)
    port = free_port()
    procs = run_pair(
        lambda pid: [sys.executable, "worker.py", str(pid), str(port), "res", ",".join(reg_files), ",".join(cls_files)], tmp
    )
    for p in procs:
        assert p.returncode == 0, p.stderr[-3000:]
    return reg, cls, [json.loads((tmp / f"res.{pid}.json").read_text()) for pid in (0, 1)]


@pytest.mark.xdist_group("two_processes")
def test_two_processes_see_four_devices_and_load_their_own_rows(two_processes):
    _, _, (r0, r1) = two_processes
    for r in (r0, r1):
        assert (r["process_count"], r["devices"], r["local"]) == (2, 4, 2)
        assert r["shape"] == [1004, 5]
    assert r0["rows"] == [[0, 251], [251, 502]]
    assert r1["rows"] == [[502, 753], [753, 1004]]


@pytest.mark.xdist_group("two_processes")
@pytest.mark.parametrize("name", ["mse", "mse_minibatch", "bce"])
def test_two_processes_give_the_fit_of_one(two_processes, name):
    reg, cls, (r0, r1) = two_processes
    table = cls if name == "bce" else reg
    kw = {
        "mse": dict(loss="mse", learning_rate=0.1, steps=60),
        "mse_minibatch": dict(loss="mse", learning_rate=0.05, steps=4, batch_size=100, seed=2),
        "bce": dict(loss="bce", learning_rate=0.5, steps=60),
    }[name]
    one = gradfit.fit(table[:, :-1], table[:, -1], **kw)  # one process, one device
    assert r0[name] == r1[name]  # results are replicated: every process holds the same
    assert r0[name]["devices"] == 4 and r0[name]["steps"] == one.steps
    np.testing.assert_allclose(r0[name]["W"], one.params.W, atol=2e-5)
    np.testing.assert_allclose(r0[name]["b"], one.params.b, atol=2e-5)
    np.testing.assert_allclose(r0[name]["loss"], one.loss, rtol=1e-5)


@pytest.mark.slow  # two processes; the library-level two-process tests stay in the default suite
def test_the_command_runs_on_two_processes_and_writes_once(tmp_path):
    table, names = write_table(tmp_path, 601, 4, 2)
    port = free_port()
    common = [
        "--set", f"data.source={names[0]!r}", "--set", "fit.learning_rate=0.1", "--set", "fit.steps=50",
        "--set", "output.dir='out'", "--set", f"distributed.coordinator_address='127.0.0.1:{port}'",
        "--set", "distributed.num_processes=2",
    ]
    procs = run_pair(
        lambda pid: [sys.executable, "-m", "gradfit.cli", "fit", *common, "--set", f"distributed.process_id={pid}"], tmp_path
    )
    for p in procs:
        assert p.returncode == 0, p.stderr[-3000:]
    assert "wrote out/params.npz" in procs[0].stdout and "wrote" not in procs[1].stdout
    one = gradfit.fit(table[:, :-1].astype(np.float32), table[:, -1], learning_rate=0.1, steps=50)
    with np.load(tmp_path / "out" / "params.npz") as z:
        np.testing.assert_allclose(z["W"], one.params.W, atol=2e-5)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(report["devices"]) == 4


def test_a_process_that_never_joins_ends_the_run_within_the_timeout(tmp_path):
    # Process 0 is up but process 1 never comes: JAX ends process 0 after the timeout.
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    code = (
        "from gradfit import distributed; "
        f"distributed.initialize('127.0.0.1:{free_port()}', 2, 0, initialization_timeout=2)"
    )
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "DEADLINE_EXCEEDED" in proc.stderr or "Deadline" in proc.stderr
    assert time.monotonic() - start < 30
