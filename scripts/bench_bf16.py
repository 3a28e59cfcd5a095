"""What storing X in bfloat16 costs in accuracy, and what it saves in memory and time.

    python scripts/bench_bf16.py                 # accuracy on 4 problems + speed at m = 2e6, n = 64
    python scripts/bench_bf16.py --m 200000      # a quicker speed part

1. Accuracy. For each problem the same fit runs on X in float32 and on X rounded to
   bfloat16 (``gradfit.fit`` keeps a bfloat16 X in 16 bits and computes in float32). Both
   answers are scored in float64 on the *original* X against the float64 optimum (numpy
   least squares for mse; L-BFGS in float64 for bce): the relative objective gap
   ``(J(W) - J*) / J*``, the distance ``||W - W*|| / ||W*||`` and, for bce, the accuracy.
2. Speed and memory. BCE full-batch steps (``grad="hand"`` and ``"onepass"``) on standard
   normal X, float32 against bfloat16, in one process, interleaved; medians. Also the device
   bytes of X and the temporaries of the compiled loop (no float32 copy of X may appear).

Writes ``--md`` (default docs/bfloat16.md) and ``--json``; prints the same tables.
"""

from __future__ import annotations

import argparse
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np

import gradfit
from gradfit import _engine, _io, datasets


L2 = {"mse": 0.0, "bce": 1e-3}  # bce: a small ridge, so that separable data (breast cancer) has an optimum


def objective64(W, b, X, y, loss):
    z = X @ W + b
    if loss == "mse":
        return float(np.mean((z - y) ** 2))
    return float(np.mean(np.logaddexp(0, z) - y * z) + 0.5 * L2[loss] * W @ W)


def optimum64(X, y, loss):
    """The float64 optimum (W*, b*) on the original X."""
    if loss == "mse":
        A = np.concatenate([X, np.ones((len(X), 1))], axis=1)
        sol = np.linalg.lstsq(A, y, rcond=None)[0]
        return sol[:-1], sol[-1]
    with jax.enable_x64(True):
        r = gradfit.fit(X, y, loss="bce", l2=L2[loss], optimizer="lbfgs", steps=500, tol=0.0)
        return np.asarray(r.params.W), float(r.params.b)


def problems(m: int):
    reg = datasets.make_regression(m, 64, noise=0.1, seed=0)
    cls = datasets.make_classification(m, 64, seed=0)
    return [
        (f"synthetic regression {m}x64", "mse", reg.X, reg.y),
        ("diabetes (442x10, standardised)", "mse", *datasets.BUILTIN["diabetes"]()[:2]),
        (f"synthetic classification {m}x64", "bce", cls.X, cls.y),
        ("breast cancer (569x30, standardised)", "bce", *datasets.BUILTIN["breast_cancer"]()[:2]),
    ]


def accuracy_rows(m: int) -> list[dict]:
    rows = []
    for name, loss, X, y in problems(m):
        X64, y64 = np.asarray(X, np.float64), np.asarray(y, np.float64)
        W_star, b_star = optimum64(X64, y64, loss)
        J_star = objective64(W_star, b_star, X64, y64, loss)
        kw = dict(loss=loss, l2=L2[loss], optimizer="lbfgs", steps=300, tol=0.0)
        row = {"problem": name, "loss": loss}
        for label, Xs in (("float32", np.asarray(X, np.float32)), ("bfloat16", jnp.asarray(X, jnp.bfloat16))):
            r = gradfit.fit(Xs, np.asarray(y, np.float32), **kw)
            W, b = np.asarray(r.params.W, np.float64), float(r.params.b)
            J = objective64(W, b, X64, y64, loss)
            row[label] = {
                "gap": (J - J_star) / J_star,
                "w_dist": float(np.linalg.norm(W - W_star) / np.linalg.norm(W_star)),
            }
            if loss == "bce":
                row[label]["accuracy"] = float(np.mean(((X64 @ W + b) > 0) == (y64 > 0.5)))
        if loss == "bce":
            row["accuracy_star"] = float(np.mean(((X64 @ W_star + b_star) > 0) == (y64 > 0.5)))
        rows.append(row)
    return rows


def step_ms(X, y, grad, reps, steps=10):
    """Median per-step time of a compiled fit, (run of 1 + steps - run of 1) / steps, and the
    largest temporaries (bytes) of the fit's compiled programs."""
    kw = dict(loss="bce", grad=grad, learning_rate=0.1, tol=0.0)
    _engine._EXECUTABLES.clear()
    gradfit.fit(X, y, steps=1, **kw)
    temp = max(exe.memory_analysis().temp_size_in_bytes for exe in _engine._EXECUTABLES.values())
    one = [gradfit.fit(X, y, steps=1, **kw).stats["run_seconds"] for _ in range(reps)]
    many = [gradfit.fit(X, y, steps=1 + steps, **kw).stats["run_seconds"] for _ in range(reps)]
    return 1e3 * (np.median(many) - np.median(one)) / steps, temp


def speed_rows(m: int, n: int, reps: int, rounds: int) -> list[dict]:
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.standard_normal((m, n), dtype=np.float32))
    w = rng.standard_normal(n).astype(np.float32) / 8
    y = jnp.asarray((rng.random(m) < 1 / (1 + np.exp(-(np.asarray(X) @ w)))).astype(np.float32))
    stores = {"float32": X, "bfloat16": X.astype(jnp.bfloat16)}
    times: dict[tuple[str, str], list[float]] = {}
    temps: dict[tuple[str, str], int] = {}
    for _ in range(rounds):  # interleaved, so machine noise hits every cell alike
        for grad in ("hand", "onepass"):
            for label, Xs in stores.items():
                ms, temps[grad, label] = step_ms(Xs, y, grad, reps)
                times.setdefault((grad, label), []).append(ms)
    return [{"plan": grad, "X": label, "step_ms": float(np.median(t)), "x_mb": stores[label].nbytes / 2**20,
             "temp_mb": temps[grad, label] / 2**20} for (grad, label), t in times.items()]


def render(res: dict) -> str:
    out = ["# bfloat16 storage of X: accuracy, memory, speed", "",
           f"`{res['command']}` on {res['machine']} (jax {res['jax']}, backend {res['backend']}).", "",
           "## Accuracy (scored in float64 on the original X against the float64 optimum)", "",
           "| problem | X | relative objective gap | ‖W−W*‖/‖W*‖ | accuracy (optimum) |",
           "|---|---|---|---|---|"]
    for r in res["accuracy"]:
        for label in ("float32", "bfloat16"):
            a = r[label]
            acc = f"{a['accuracy']:.4f} ({r['accuracy_star']:.4f})" if "accuracy" in a else ""
            out.append(f"| {r['problem']} | {label} | {a['gap']:.2e} | {a['w_dist']:.2e} | {acc} |")
    out += ["", f"## Speed and memory (BCE full-batch step, m = {res['m']}, n = {res['n']}; medians)", "",
            "| plan | X | step (ms) | X on device (MB) | loop temporaries (MB) |", "|---|---|---|---|---|"]
    for r in res["speed"]:
        out.append(f"| {r['plan']} | {r['X']} | {r['step_ms']:.2f} | {r['x_mb']:.0f} | {r['temp_mb']:.1f} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--m", type=int, default=2_000_000, help="rows of the speed part")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--accuracy-m", type=int, default=200_000, help="rows of the synthetic accuracy problems")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--md", default="docs/bfloat16.md")
    p.add_argument("--json", default="docs/bfloat16.json")
    a = p.parse_args(argv)
    res = {
        "command": "python scripts/bench_bf16.py" + ("" if argv is None and len(sys.argv) == 1 else " " + " ".join(argv or sys.argv[1:])),
        "machine": f"{platform.processor() or platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s)",
        "jax": jax.__version__, "backend": jax.default_backend(), "m": a.m, "n": a.n,
        "accuracy": accuracy_rows(a.accuracy_m),
        "speed": speed_rows(a.m, a.n, a.reps, a.rounds),
    }
    text = render(res)
    print(text)
    if a.md:
        _io.write_text(a.md, text)
    if a.json:
        _io.write_json(a.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
