"""Where the time goes in the two rows of issue 14 that gradfit does not win: each part timed on its own.

    python scripts/bench_floor.py                 # m=1000 logistic and m=5e5 k=32 least squares, 5 rounds (~1 min)
    python scripts/bench_floor.py --smoke --json /tmp/f.json --md /tmp/f.md   # tiny sizes, 1 round (a test)

1. **Small data** (m=1000, n=10, logistic, L-BFGS, C=1): a warm ``gradfit.fit`` against scikit-learn's lbfgs,
   then the fit's parts: ``solver.prepare`` (option and data checks, the conditioning and scaling estimates,
   placement), ``solver.build``, the init program, the run (its chunk program and the end-of-run rule),
   ``solver.finish``; the chunk program alone for 1 and 20 steps (``tol=0``: fixed cost and cost per step), a
   program that returns its arguments unchanged (the cost of a call with the chunk's 40-odd arguments), and
   optax's L-BFGS alone, 10 steps in one compiled loop, its init included (the optimizer's own floor).
2. **Multi-output least squares** (m=5e5, n=64, k=32, float32): numpy's normal equations (``hstack`` of a ones
   column, ``X1^T X1`` and ``X1^T Y``) against gradfit's statistics pass, split into the Gram pass and the
   residual pass that certifies the answer on the rows (``gradfit._stats``), and the whole ``gradfit.fit``.

Internal parts are timed through gradfit's private modules, so this script follows their names, not a public API.
Medians of ``--rounds`` interleaved rounds, every part warmed first (no compile is timed).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradfit
from gradfit import _runner, _stats, solver
from gradfit._driver import CompiledStepper

SIZES = {"full": {"m_small": 1000, "m_multi": 500_000}, "smoke": {"m_small": 300, "m_multi": 4000}}


def median_ms(fn, repeat):
    """The median of ``repeat`` calls of ``fn`` in ms, after one untimed call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def small_parts(m, n=10):
    """name -> a no-argument call, for the m-row logistic problem."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((m, n), dtype=np.float32)
    y = (rng.random(m) < 1 / (1 + np.exp(-(X @ (2 * rng.standard_normal(n) / np.sqrt(n)))))).astype(np.float32)
    options = dict(loss="bce", reduction="sum", l2=1.0, optimizer="lbfgs", tol=1e-3, steps=1000)
    prepared = solver.prepare(X, y, **options)
    problem = solver.build(*prepared[:5])
    stepper = CompiledStepper(problem.operand, problem.hyper, problem.program)
    state0 = stepper.init(problem.params, problem.key)

    def run():
        return _runner.run(stepper, state0, problem.hyper, chunk_steps=problem.program.chunk_size, max_steps=1000)

    result, info = run()
    c, inputs = prepared[0], prepared[1]
    fixed = solver.build(*solver.prepare(X, y, **{**options, "tol": 0.0})[:5])
    fixed_stepper = CompiledStepper(fixed.operand, fixed.hyper, fixed.program)
    fixed0 = fixed_stepper.init(fixed.params, fixed.key)
    args = (fixed0, fixed.operand, fixed.hyper, np.asarray(1, np.int32))
    echo = jax.jit(lambda *a: a[0]).lower(*args).compile()

    def objective(p):
        z = jnp.asarray(X) @ p[:n] + p[n]
        return jnp.sum(jnp.logaddexp(0.0, z) - jnp.asarray(y) * z) + 0.5 * jnp.sum(p[:n] ** 2)

    lbfgs = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    @jax.jit
    def bare(p):
        def body(carry):
            p, s, i = carry
            v, g = value_and_grad(p, state=s)
            u, s = lbfgs.update(g, s, p, value=v, grad=g, value_fn=objective)
            return optax.apply_updates(p, u), s, i + 1
        return jax.lax.while_loop(lambda c: c[2] < 10, body, (p, lbfgs.init(p), 0))[0]

    from sklearn.linear_model import LogisticRegression

    return {
        "gradfit.fit, warm call": lambda: gradfit.fit(X, y, **options).params,
        "sklearn LogisticRegression(lbfgs, tol=1e-4)": lambda: LogisticRegression(C=1.0, tol=1e-4).fit(X, y).coef_,
        "  prepare: checks, conditioning, scaling, placement": lambda: solver.prepare(X, y, **options).plan,
        "  build": lambda: solver.build(*prepared[:5]).params,
        "  init program": lambda: stepper.init(problem.params, problem.key),
        "  run: chunk program and end-of-run rule": lambda: run()[0].state,
        "  finish": lambda: solver.finish(problem, result, c, inputs, prepared.condition, info).params,
        "chunk program, 1 step (tol=0)": lambda: fixed_stepper.chunk(fixed0, 1)[0],
        "chunk program, 20 steps (tol=0)": lambda: fixed_stepper.chunk(fixed0, 20)[0],
        "a program returning the chunk's arguments": lambda: echo(*args),
        "optax.lbfgs alone, 10 steps in one program (init included)": lambda: bare(jnp.zeros(n + 1)),
    }, {"steps": int(result.state.step), "evaluations": int(result.state.evaluations), "leaves": len(
        jax.tree.leaves(args))}


def multi_parts(m, n=64, k=32):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((m, n), dtype=np.float32)
    Y = (X @ rng.standard_normal((n, k)).astype(np.float32) + rng.standard_normal((m, k), dtype=np.float32))
    Xd, Yd = jnp.asarray(X), jnp.asarray(Y)
    whole = jax.jit(_stats.sufficient_statistics)
    stats = whole(Xd, Yd)
    block = _stats.block_rows(n + 1 + k, 4, m)
    zero = jnp.zeros((n + 1 + k,) * 2, jnp.float32)
    gram = jax.jit(lambda X, Y, mu, nu: _stats.block_sums(
        lambda a, b, w: _stats.gram_block(a, b, w, mu, nu), X, Y, None, block, (zero, zero), add=_stats.kahan_add))
    residual = jax.jit(lambda X, Y, s: _stats.block_sums(
        lambda a, b, w: _stats.residual_moments(a, b, w, s), X, Y, None, max(1, block // 4),
        (jnp.zeros(k, jnp.float32), jnp.zeros((n + 1, k), jnp.float32))))

    def normal_equations():
        X1 = np.hstack([X, np.ones((m, 1), X.dtype)])
        return X1.T @ X1, X1.T @ Y

    return {
        "numpy normal equations: hstack, X1^T X1, X1^T Y": normal_equations,
        "gradfit statistics pass, whole (X on the device)": lambda: whole(Xd, Yd),
        "  Gram pass: [X - mu, 1]^T [X - mu, 1, Y - nu]": lambda: gram(Xd, Yd, stats.x_mean, stats.y_mean),
        "  residual pass: r = X W* + b* - Y, sum r^2, X^T r": lambda: residual(Xd, Yd, stats),
        "gradfit.fit(X, Y, loss='mse', tol=3e-4), numpy X": lambda: gradfit.fit(X, Y, loss="mse", tol=3e-4,
                                                                             steps=20000).params,
    }, {"block_rows": block, "gram_macs_per_row": (n + 1) * (n + 1 + k), "residual_macs_per_row": 2 * n * k,
        "numpy_macs_per_row": (n + 1) * (n + 1 + k)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 1 round (a test)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; 1 with --smoke)")
    p.add_argument("--repeat", type=int, default=None, help="calls per part per round (default 50; 2 with --smoke)")
    p.add_argument("--json", default="docs/bench_floor.json")
    p.add_argument("--md", default="docs/bench_floor.md")
    args = p.parse_args(argv)
    size = SIZES["smoke" if args.smoke else "full"]
    rounds, repeat = args.rounds or (1 if args.smoke else 5), args.repeat or (2 if args.smoke else 50)
    start = time.perf_counter()
    sections = []
    for title, (parts, facts), calls in (
            (f"small data: m={size['m_small']}, n=10, logistic, L-BFGS", small_parts(size["m_small"]), repeat),
            (f"multi-output least squares: m={size['m_multi']:g}, n=64, k=32, float32", multi_parts(size["m_multi"]),
             max(1, repeat // 10))):
        times = {name: [] for name in parts}
        for _ in range(rounds):
            for name, fn in parts.items():
                times[name].append(median_ms(fn, calls))
        sections.append({"title": title, "facts": facts, "calls_per_round": calls,
                         "ms": {name: float(np.median(t)) for name, t in times.items()}})
        print(json.dumps(sections[-1]), flush=True)
    res = {"sections": sections, "rounds": rounds, "seconds": time.perf_counter() - start, "loadavg": os.getloadavg(),
           "jax": jax.__version__, "optax": optax.__version__, "numpy": np.__version__, "cores": os.cpu_count(),
           "command": " ".join(["python", "scripts/bench_floor.py", *(argv if argv is not None else os.sys.argv[1:])])}
    Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    Path(args.md).write_text(render(res) + "\n")
    print(render(res))
    return 0


def render(res):
    out = ["# Where the time goes: the small-data call and k=32 least squares (issue 14)", "",
           f"Produced by `{res['command']}` ({res['rounds']} interleaved rounds, {res['seconds']:.0f} s; jax "
           f"{res['jax']}, optax {res['optax']}, numpy {res['numpy']}, {res['cores']} cores, load average at the end "
           f"{tuple(round(x, 2) for x in res['loadavg'])}). Medians in ms; indented rows are parts of the row above.",
           ""]
    for s in res["sections"]:
        out += [f"## {s['title']}", "", "| part | median ms |", "|---|---|"]
        out += [f"| {name.replace('|', '/')} | {ms:.3f} |" for name, ms in s["ms"].items()]
        out += ["", "Facts: " + ", ".join(f"{k} {v}" for k, v in s["facts"].items()), ""]
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
