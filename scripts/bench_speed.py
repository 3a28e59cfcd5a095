"""Time to the answer (issue 14, "Fastest to the answer"): gradfit against PyTorch, numpy and scikit-learn.

    python scripts/bench_speed.py                  # full sizes (m up to 2e6; ~3 GB RAM; several minutes on 2 cores)
    python scripts/bench_speed.py --quick --json /tmp/bs.json --md /tmp/bs.md   # m 2e5/4e5/1e5/5e4, 1 round
    python scripts/bench_speed.py --smoke --no-torch --json /tmp/s.json --md /tmp/s.md   # tiny sizes (a test)

Every timed answer is scored in float64 against a float64 reference: the relative objective gap
(J - J*) / |J*| must be <= 1e-6 (``--gap``); a method that misses it is reported with its gap, never as a
time. Each iterative method runs at the loosest tolerance of its ladder that reaches the gap (chosen once,
untimed, before the timed rounds). Timings are wall-clock medians of ``--rounds`` interleaved rounds, all
methods of a row side by side in one process, each given the same float32 numpy arrays. gradfit is measured
through its public API only (``gradfit.fit``, ``gradfit.sweep``, ``gradfit.health``), so the script measures
whatever gradfit is at run time; its first call on a shape (compile included) is reported apart.

Objectives (m rows, intercept b never penalised):
- logistic: scikit-learn's ``LogisticRegression(C)`` minimises C * sum_i logloss_i + ||w||^2 / 2, which is C times
  gradfit's ``loss="bce", reduction="sum", l2=1/C`` (== ``reduction="mean", l2=1/(C m)`` times m; see
  ``gradfit.losses.l2_penalty``). PyTorch minimises the same divided by m (mean BCE + ||w||^2 / (2 C m)): the same
  minimiser and the same relative gap. Reference: ``LogisticRegression(solver="newton-cholesky", tol=1e-12)``
  on float64 data.
- least squares: ``loss="mse"`` (mean; with k outputs the sum of the k column means), no penalty; reference
  ``np.linalg.lstsq`` in float64 with a column of ones. ``Ridge(alpha=1e-8)`` is the same up to 1e-8.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

GF_TOLS = (1e-3, 3e-4, 1e-4, 3e-5, 1e-5)  # gradfit's tol: scaled gradient G, G^2 ~ (J - J*)/J
SK_TOLS = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)
TORCH_TOLS = (1e-4, 1e-5, 1e-6, 1e-7, 1e-8)  # LBFGS tolerance_grad (max |grad| of the mean objective)
STEPS = 1000  # most steps of an L-BFGS fit (gradfit, torch) / max_iter (scikit-learn)
CACHE_NAMES = ("enable_compilation_cache", "enable_persistent_cache", "compilation_cache")

# --------------------------------------------------------------------------- data, objectives, methods (no jax here)


def logistic_data(m, n, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, n), dtype=np.float32)
    w = 2 * rng.standard_normal(n) / np.sqrt(n)
    y = (rng.random(m) < 1 / (1 + np.exp(-(X @ w - 0.2)))).astype(np.float32)
    return X, y


def ls_data(m, n, k=None, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, n), dtype=np.float32)
    W = (rng.standard_normal((n,) if k is None else (n, k)) / np.sqrt(n)).astype(np.float32)
    y = X @ W + 0.5 + 0.1 * rng.standard_normal((m,) + W.shape[1:], dtype=np.float32)
    return X, y


def chunks(m, size=1 << 16):
    return (slice(i, min(m, i + size)) for i in range(0, m, size))


def bce64(W, b, X, y, C):
    """sum_i logloss_i + ||W||^2 / (2C) in float64 (scikit-learn's objective / C)."""
    W = np.asarray(W, np.float64).ravel()
    tot = 0.0
    for s in chunks(len(X)):
        z = X[s].astype(np.float64) @ W + float(b)
        tot += np.sum(np.logaddexp(0, z) - y[s] * z)
    return tot + 0.5 / C * float(W @ W)


def mse64(W, b, X, Y):
    """sum over outputs of the mean squared residual, float64."""
    W, b, tot = np.asarray(W, np.float64), np.asarray(b, np.float64), 0.0
    for s in chunks(len(X)):
        r = X[s].astype(np.float64) @ W + b - Y[s]
        tot += float(np.sum(r * r))
    return tot / len(X)


sys.path.insert(0, str(Path(__file__).resolve().parent))  # for scripts/bench.py's PeakRSS, imported where used:
# it imports jax and gradfit, which a --child must time itself


def gradfit_info(r):
    """The FitResult's counters: steps, status, plan, compile/run seconds, and any evaluation count in stats."""
    s = r.stats
    info = {"steps": np.asarray(r.steps).tolist(), "plan": s.get("plan"), "compile_s": s.get("compile_seconds"),
            "run_s": s.get("run_seconds")}
    info.update({k: np.asarray(v).tolist() for k, v in s.items() if "eval" in k})
    if "status" in r._fields:
        info["status"] = np.asarray(r.status).tolist()
    return info


def gradfit_lbfgs(X, y, C, tol):
    import gradfit

    r = gradfit.fit(X, y, loss="bce", reduction="sum", l2=1.0 / C, optimizer="lbfgs", tol=tol, steps=STEPS)
    return np.asarray(r.params.W), float(r.params.b), gradfit_info(r)


def sklearn_logistic(X, y, C, tol, solver="lbfgs"):
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e = LogisticRegression(C=C, solver=solver, tol=tol, max_iter=STEPS).fit(X, y)
    return e.coef_[0], float(e.intercept_[0]), {"n_iter": int(e.n_iter_[0])}


def torch_lbfgs(X, y, C, tol):
    """torch.optim.LBFGS, full batch, float32, strong Wolfe line search; mean BCE + ||w||^2 / (2 C m)."""
    import torch
    import torch.nn.functional as F

    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    w = torch.zeros(X.shape[1] + 1, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=STEPS, tolerance_grad=tol, line_search_fn="strong_wolfe")
    evals = [0]

    def closure():
        opt.zero_grad()
        evals[0] += 1
        W = w[:-1]
        J = F.binary_cross_entropy_with_logits(Xt @ W + w[-1], yt) + 0.5 / (C * len(X)) * (W @ W)
        J.backward()
        return J

    opt.step(closure)
    iters = opt.state[opt._params[0]].get("n_iter")
    w = w.detach().numpy()
    return w[:-1].copy(), float(w[-1]), {"evaluations": evals[0], "n_iter": iters}


def child(spec):
    """One fresh process (``--child``): the small-data first/new-m/warm calls, or peak RSS of one method."""
    t0 = time.perf_counter()
    lib = spec["lib"]
    via = None
    if lib.startswith("gradfit"):
        import jax

        import gradfit

        if spec.get("cache"):
            helper = next((getattr(gradfit, n) for n in CACHE_NAMES if hasattr(gradfit, n)), None)
            if helper is not None:
                helper(spec["cache"])
                via = f"gradfit.{helper.__name__}"
            else:  # JAX_COMPILATION_CACHE_DIR is set in the environment
                jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
                via = "JAX_COMPILATION_CACHE_DIR + jax_persistent_cache_min_compile_time_secs=0"
        fit = gradfit_lbfgs
    elif lib == "torch":
        import torch  # noqa: F401

        fit = torch_lbfgs
    else:
        import sklearn.linear_model  # noqa: F401

        fit = sklearn_logistic
    out = {"import_s": time.perf_counter() - t0, "cache_via": via}

    def timed(X, y):
        t = time.perf_counter()
        W, b, _ = fit(X, y, spec["C"], spec["setting"])
        return time.perf_counter() - t, [np.asarray(W, float).tolist(), b]

    if spec["kind"] == "small":
        out["first_s"], out["first"] = timed(*logistic_data(1000, 10, 0))
        out["new_m_s"], out["new_m"] = timed(*logistic_data(900, 10, 1))
        out["warm_s"] = float(np.median([timed(*logistic_data(1000, 10, 0))[0] for _ in range(5)]))
    else:
        from bench import PeakRSS  # the same 5 ms sampler as scripts/bench.py

        X, y = logistic_data(spec["m"], spec["n"], 0)
        if lib == "gradfit-jax":
            X = jax.block_until_ready(jax.device_put(X))
        out["base_mb"] = base = PeakRSS.current()
        with PeakRSS() as rss:
            timed(X, y)
        out["first_above_mb"] = rss.peak - base  # compile included
        out["warm_base_mb"] = warm = PeakRSS.current()
        with PeakRSS() as rss:
            timed(X, y)
        out["warm_above_mb"] = rss.peak - warm  # the call's own working memory
    print(json.dumps(out))


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    child(json.loads(sys.argv[2]))
    sys.exit(0)

import jax

import gradfit

# --------------------------------------------------------------------------- measuring


def calibrate(fn, ladder, gap_of, target):
    """The loosest setting of ``ladder`` whose answer is within ``target`` (calls ``fn(setting)`` in order):
    {setting, gap, reached, first_s (wall of the very first call: compile included), info}."""
    first = None
    for setting in ladder:
        t = time.perf_counter()
        W, b, info = fn(setting)
        first = first or (time.perf_counter() - t, info)
        if (gap := gap_of(W, b)) <= target:
            break
    return {"setting": setting, "gap": gap, "reached": bool(gap <= target), "first_s": first[0],
            "compile_s_first": first[1].get("compile_s"), "info": info}


def race(methods, rounds, target):
    """methods: {name: (fn(setting) -> (W, b, info), ladder, gap_of)}. Calibrates each method, then times it in
    ``rounds`` interleaved rounds; the gap shown is the last timed answer's. Returns one record per method."""
    recs = {name: {"method": name, **calibrate(fn, ladder, gap, target), "times": []}
            for name, (fn, ladder, gap) in methods.items()}
    last = {}
    for _ in range(rounds):
        for name, (fn, _, _) in methods.items():
            t = time.perf_counter()
            *last[name], recs[name]["info"] = fn(recs[name]["setting"])
            recs[name]["times"].append(time.perf_counter() - t)
    for name, (_, _, gap_of) in methods.items():
        rec = recs[name]
        rec["gap"] = gap_of(*last[name])
        rec["reached"] = bool(rec["gap"] <= target)
        rec["time_s"] = float(np.median(rec["times"]))
        print(f"  {name}: {rec['time_s']:.4g} s (first call {rec['first_s']:.3g} s), setting {rec['setting']}, "
              f"gap {rec['gap']:.2e}{'' if rec['reached'] else ' MISSED'} {rec['info']}", flush=True)
    return list(recs.values())


def summary(workload, recs, gradfit_name=None):
    """The issue table's row: gradfit's record, the fastest peer that reached the gap, best peer / gradfit."""
    g = next(r for r in recs if r["method"] == (gradfit_name or recs[0]["method"]))
    peers = [r for r in recs if not r["method"].startswith("gradfit") and r["reached"]]
    best = min(peers, key=lambda r: r["time_s"], default=None)
    ratio = best["time_s"] / g["time_s"] if best and g["reached"] else None
    more = "".join(f"; {r['method']}: {r['time_s']:.3g} s" for r in recs
                   if r is not g and r["method"].startswith("gradfit") and r["reached"])
    return {"workload": workload, "gradfit": cell(g) + more, "best_peer": cell(best) if best else "-",
            "ratio": f"{ratio:.2f}x" if ratio else ("gradfit missed the gap" if not g["reached"] else "-"),
            "methods": recs}


def cell(r):
    if not r["reached"]:
        return f"{r['method']}: MISSED, gap {r['gap']:.1e} at {r['setting']}"
    extra, i = "", r["info"]
    if r["method"].startswith("gradfit"):
        evals = "".join(f", {k} {v}" for k, v in i.items() if "eval" in k)
        extra = f"; {i.get('steps')} steps{evals}; first call {r['first_s']:.2f} s, compile {r['compile_s_first']:.2f} s"
    return f"{r['time_s']:.3g} s ({r['method']}, tol {r['setting']}{extra})"


# --------------------------------------------------------------------------- the rows


def row_logistic(X, y, C, args):
    print(f"logistic m={len(X)} n={X.shape[1]} C={C}", flush=True)
    J = bce64(*sklearn_logistic(X.astype(np.float64), y, C, 1e-12, "newton-cholesky")[:2], X, y, C)
    gap = lambda W, b: (bce64(W, b, X, y, C) - J) / abs(J)
    Xj = jax.block_until_ready(jax.device_put(X))
    methods = {
        "gradfit lbfgs": (lambda t: gradfit_lbfgs(X, y, C, t), GF_TOLS, gap),
        "gradfit lbfgs, X as jax.Array": (lambda t: gradfit_lbfgs(Xj, y, C, t), GF_TOLS, gap),
        "sklearn lbfgs": (lambda t: sklearn_logistic(X, y, C, t), SK_TOLS, gap),
        "sklearn newton-cholesky": (lambda t: sklearn_logistic(X, y, C, t, "newton-cholesky"), SK_TOLS, gap),
    }
    if args.torch:
        methods["torch LBFGS (strong Wolfe)"] = (lambda t: torch_lbfgs(X, y, C, t), TORCH_TOLS, gap)
    return summary(f"logistic, m={len(X):.0e}, n={X.shape[1]}, C={C:g}, time to {args.gap:g} gap",
                   race(methods, args.rounds, args.gap))


def row_least_squares(m, n, k, args):
    X, Y = ls_data(m, n, k)
    print(f"least squares m={m} n={n} k={k}", flush=True)
    X1 = np.hstack([X.astype(np.float64), np.ones((m, 1))])
    Wb = np.linalg.lstsq(X1, Y.astype(np.float64), rcond=None)[0]
    del X1
    J = mse64(Wb[:-1], Wb[-1], X, Y)
    gap = lambda W, b: (mse64(W, b, X, Y) - J) / J

    def gf(tol):
        r = gradfit.fit(X, Y, loss="mse", tol=tol, steps=20 * STEPS)
        return np.asarray(r.params.W), np.asarray(r.params.b), gradfit_info(r)

    def normal(_):
        X1 = np.hstack([X, np.ones((m, 1), X.dtype)])
        Wb = np.linalg.solve(X1.T @ X1, X1.T @ Y)
        return Wb[:-1], Wb[-1], {}

    def ridge(_):
        from sklearn.linear_model import Ridge

        e = Ridge(alpha=1e-8, solver="cholesky").fit(X, Y)
        return e.coef_.T, e.intercept_, {}

    methods = {"gradfit mse": (gf, GF_TOLS, gap), "numpy normal equations": (normal, [None], gap),
               "sklearn Ridge(alpha=1e-8, cholesky)": (ridge, [None], gap)}
    name = "least squares" if k is None else f"multi-output k={k}"
    return summary(f"{name}, m={m:.0e}, n={n}, time to {args.gap:g} gap", race(methods, args.rounds, args.gap))


def row_sweep(m, n, args):
    X, y = logistic_data(m, n, 2)
    Cs = np.logspace(-3, 2, 16)
    print(f"sweep over 16 C, logistic m={m} n={n}", flush=True)
    X64 = X.astype(np.float64)
    J = [bce64(*sklearn_logistic(X64, y, C, 1e-12, "newton-cholesky")[:2], X, y, C) for C in Cs]
    del X64

    def gap(W, b):  # the worst member
        return max((bce64(w, bb, X, y, C) - j) / abs(j) for w, bb, C, j in zip(W, b, Cs, J))

    def gf(tol, warm_start=True):
        s = gradfit.sweep(X, y, grid={"l2": [float(1 / C) for C in Cs]}, loss="bce", reduction="sum",
                          optimizer="lbfgs", tol=tol, steps=STEPS, warm_start=warm_start)
        info = {"steps": int(np.sum(s.steps)), "compile_s": s.stats.get("compile_seconds"),
                "run_s": s.stats.get("run_seconds"), "programs": s.stats.get("programs")}
        return np.asarray(s.params.W), np.asarray(s.params.b), info

    def sk(tol, solver):
        from sklearn.linear_model import LogisticRegression

        e, W, b, it = LogisticRegression(solver=solver, tol=tol, max_iter=STEPS, warm_start=True), [], [], 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for C in Cs:
                e.set_params(C=C).fit(X, y)
                W.append(e.coef_[0].copy()), b.append(float(e.intercept_[0]))
                it += int(e.n_iter_[0])
        return W, b, {"n_iter": it}

    methods = {"gradfit sweep lbfgs, warm_start path": (gf, GF_TOLS, gap),
               "gradfit sweep lbfgs, cold members": (lambda t: gf(t, False), GF_TOLS, gap),
               "sklearn lbfgs, warm_start loop": (lambda t: sk(t, "lbfgs"), SK_TOLS, gap),
               "sklearn newton-cholesky, warm_start loop": (lambda t: sk(t, "newton-cholesky"), SK_TOLS, gap)}
    return summary(f"16 values of C (1e-3..1e2), logistic, m={m:.0e}, n={n} (worst member's gap)",
                   race(methods, args.rounds, args.gap))


def run_child(spec, env=None):
    p = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, check=False,
                       env={**os.environ, **(env or {})}, timeout=900)
    if p.returncode:
        raise RuntimeError(f"child {spec} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def row_small(args):
    """m=1000, n=10: first call in a fresh process, a new m (900, the same row bucket as 1000) in that process, a warm call."""
    print("small data m=1000 n=10 (fresh processes)", flush=True)
    C, data = 1.0, {1000: logistic_data(1000, 10, 0), 900: logistic_data(900, 10, 1)}
    J = {m: bce64(*sklearn_logistic(X.astype(np.float64), y, C, 1e-12, "newton-cholesky")[:2], X, y, C)
         for m, (X, y) in data.items()}
    gap = lambda m, W, b: (bce64(W, b, *data[m], C) - J[m]) / abs(J[m])
    tol_gf = calibrate(lambda t: gradfit_lbfgs(*data[1000], C, t), GF_TOLS, lambda W, b: gap(1000, W, b), args.gap)
    tol_sk = calibrate(lambda t: sklearn_logistic(*data[1000], C, t), SK_TOLS, lambda W, b: gap(1000, W, b), args.gap)
    cache = tempfile.mkdtemp(prefix="gradfit_jax_cache_")
    kinds = {"gradfit, no persistent cache": ("gradfit", None), "gradfit, cold persistent cache": ("gradfit", cache),
             "gradfit, warm persistent cache": ("gradfit", cache), "sklearn lbfgs": ("sklearn", None)}
    runs = {name: [] for name in kinds}
    for _ in range(args.rounds):
        for name, (lib, cdir) in kinds.items():
            if "cold" in name:  # empty the cache folder: a cold cache every round
                for f in Path(cdir).rglob("*"):
                    f.unlink() if f.is_file() else None
            spec = {"kind": "small", "lib": lib, "C": C, "cache": cdir,
                    "setting": (tol_gf if lib == "gradfit" else tol_sk)["setting"]}
            runs[name].append(run_child(spec, {"JAX_COMPILATION_CACHE_DIR": cdir} if cdir else {}))
    recs = []
    for name, rs in runs.items():
        med = {k: float(np.median([r[k] for r in rs])) for k in ("import_s", "first_s", "new_m_s", "warm_s")}
        last = rs[-1]
        g = max(gap(1000, *last["first"]), gap(900, *last["new_m"]))
        recs.append({"method": name, **med, "gap": g, "reached": g <= args.gap, "cache_via": last["cache_via"],
                     "setting": (tol_gf if name.startswith("gradfit") else tol_sk)["setting"],
                     "cache_files": sum(1 for f in Path(cache).rglob("*") if f.is_file()) if "cache" in name else None})
        print(f"  {name}: {med} gap {g:.2e} via {last['cache_via']}", flush=True)
    sk = recs[-1]
    rows = []
    for key, what in (("first_s", "first call in a fresh process"), ("new_m_s", "a new m (900, the same row bucket as 1000) in that process"),
                      ("warm_s", "warm call")):
        g = recs[0]
        gtxt = f"{g[key]:.3g} s" + (f" (warm persistent cache: {recs[2][key]:.3g} s)" if key != "warm_s" else "")
        ratio = f"{sk[key] / g[key]:.3g}x" if g["reached"] else "gradfit missed the gap"
        ratio += "" if sk["reached"] else f" (sklearn's answer missed the gap: {sk['gap']:.1e})"
        rows.append({"workload": f"small data m=1000, n=10, logistic: {what}", "gradfit": gtxt,
                     "best_peer": f"{sk[key]:.3g} s (sklearn lbfgs)", "ratio": ratio,
                     "methods": recs if not rows else []})
    return rows


def row_auto_lr(X, y, C, args):
    print(f"learning_rate='auto', logistic m={len(X)}", flush=True)
    J = bce64(*sklearn_logistic(X.astype(np.float64), y, C, 1e-12, "newton-cholesky")[:2], X, y, C)
    gap = lambda W, b: (bce64(W, b, X, y, C) - J) / abs(J)
    Xj = jax.block_until_ready(jax.device_put(X))

    def estimate(_):
        lr = gradfit.health.safe_learning_rate(Xj, loss="bce", reduction="sum", l2=1.0 / C)
        return None, None, {"learning_rate": lr}

    def fit(tol):
        r = gradfit.fit(X, y, loss="bce", reduction="sum", l2=1.0 / C, optimizer="sgd", learning_rate="auto",
                        tol=tol, steps=args.sgd_steps)
        return np.asarray(r.params.W), float(r.params.b), {**gradfit_info(r), "learning_rate": r.stats.get("learning_rate")}

    methods = {"gradfit.health.safe_learning_rate (X as jax.Array)": (estimate, [None], lambda W, b: 0.0),
               "gradfit sgd, learning_rate='auto'": (fit, GF_TOLS, gap)}
    est, full = race(methods, args.rounds, args.gap)
    frac = est["time_s"] / full["time_s"]
    return {"workload": f"learning_rate='auto', logistic m={len(X):.0e}, n={X.shape[1]}",
            "gradfit": f"estimate {est['time_s']:.3g} s (first call {est['first_s']:.3g} s); whole fit {cell(full)}",
            "best_peer": "-", "ratio": f"{frac:.3f} of the fit" if full["reached"] else
            f"{frac:.3f} of the fit (fit missed the gap)", "methods": [est, full]}


def row_rss(m, n, C, tol_gf, tol_sk, tol_torch, args):
    print(f"peak RSS above the data, logistic m={m} (fresh processes)", flush=True)
    libs = {"gradfit lbfgs, X as jax.Array": ("gradfit-jax", tol_gf), "gradfit lbfgs, X as numpy": ("gradfit", tol_gf),
            "sklearn lbfgs": ("sklearn", tol_sk)}
    if args.torch:
        libs["torch LBFGS"] = ("torch", tol_torch)
    x_mb = m * n * 4 / 2**20
    recs = []
    for name, (lib, tol) in libs.items():
        r = run_child({"kind": "rss", "lib": lib, "m": m, "n": n, "C": C, "setting": tol})
        recs.append({"method": name, "setting": tol, "x_mb": x_mb, **r, "x_ratio": r["warm_above_mb"] / x_mb})
        print(f"  {name}: warm call {r['warm_above_mb']:.0f} MB above = {recs[-1]['x_ratio']:.2f}x X ({r})", flush=True)
    txt = lambda r: (f"{r['warm_above_mb']:.0f} MB = {r['x_ratio']:.2f}x X "
                     f"(first call, compile incl.: {r['first_above_mb']:.0f} MB)")
    best = min(recs[2:], key=lambda r: r["warm_above_mb"])
    return {"workload": f"peak RSS above the data, warm call, logistic m={m:.0e}, n={n}, lbfgs (X = {x_mb:.0f} MB)",
            "gradfit": "; ".join(f"{r['method'][15:]}: {txt(r)}" for r in recs[:2]),
            "best_peer": f"{best['method']}: {txt(best)}",
            "ratio": " / ".join(f"{best['warm_above_mb'] / max(r['warm_above_mb'], 1):.2f}x" for r in recs[:2]) +
            " (jax.Array / numpy X; >1: gradfit uses less)", "methods": recs}


# --------------------------------------------------------------------------- run, render


def machine_info():
    info = {"python": platform.python_version(), "platform": platform.platform(), "cores": os.cpu_count(),
            "jax": jax.__version__, "jax_backend": jax.default_backend(), "numpy": np.__version__,
            "gradfit": getattr(gradfit, "__version__", None), "loadavg_start": os.getloadavg(),
            **{k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS")}}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    for mod in ("optax", "sklearn", "scipy", "torch"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    return info


SIZES = {"full": {"m_log": 1_000_000, "m_ls": 2_000_000, "m_multi": 500_000, "m_sweep": 200_000},
         "quick": {"m_log": 200_000, "m_ls": 400_000, "m_multi": 100_000, "m_sweep": 50_000},
         "smoke": {"m_log": 4_000, "m_ls": 4_000, "m_multi": 2_000, "m_sweep": 2_000}}
ROWS = ("logistic", "least_squares", "multi", "sweep", "small", "auto_lr", "rss")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="m 2e5/4e5/1e5/5e4 and 1 round")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 1 round (a test)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 3; 1 quick/smoke)")
    p.add_argument("--gap", type=float, default=1e-6, help="relative objective gap that counts as the answer")
    p.add_argument("--sgd-steps", type=int, default=5000, help="most steps of the learning_rate='auto' sgd fit")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--json", default="docs/bench_speed.json")
    p.add_argument("--md", default="docs/bench_speed.md")
    args = p.parse_args(argv)
    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    args.rounds = args.rounds or (1 if size != "full" else 3)
    try:
        import torch

        args.torch = not args.no_torch
        torch.set_num_threads(os.cpu_count())
    except ImportError:
        args.torch = False
    rows = set(args.rows.split(","))
    z = SIZES[size]
    info = machine_info()
    print(json.dumps(info), flush=True)
    C, out = 1.0, []
    t0 = time.perf_counter()
    command = " ".join(["python", os.path.relpath(__file__)] + (sys.argv[1:] if argv is None else list(argv)))

    def add(rows_):  # write the outputs after every row: a later failure keeps the rows done
        out.extend(rows_ if isinstance(rows_, list) else [rows_])
        info["loadavg_end"] = os.getloadavg()
        res = {"machine": info, "size": size, "sizes": z, "rounds": args.rounds, "gap": args.gap, "rows": out,
               "seconds": time.perf_counter() - t0, "command": command}
        for path, text in ((args.json, json.dumps(res, indent=1, default=str)), (args.md, render(res))):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text + "\n")
        return res

    if rows & {"logistic", "auto_lr", "rss"}:
        X, y = logistic_data(z["m_log"], 64, 0)
        tols = {}
        if "logistic" in rows:
            add(lg := row_logistic(X, y, C, args))
            tols = {r["method"]: r["setting"] for r in lg["methods"]}
        if "auto_lr" in rows:
            add(row_auto_lr(X, y, C, args))
        del X, y
        if "rss" in rows:
            add(row_rss(z["m_log"], 64, C, tols.get("gradfit lbfgs", 1e-4), tols.get("sklearn lbfgs", 1e-4),
                        tols.get("torch LBFGS (strong Wolfe)", 1e-6), args))
    if "least_squares" in rows:
        add(row_least_squares(z["m_ls"], 64, None, args))
    if "multi" in rows:
        add(row_least_squares(z["m_multi"], 64, 32, args))
    if "sweep" in rows:
        add(row_sweep(z["m_sweep"], 32, args))
    if "small" in rows:
        add(row_small(args))
    res = add([])
    print(render(res))
    return 0


def md_table(head, lines):
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                     ["| " + " | ".join(str(c) for c in ln) + " |" for ln in lines])


def fmt(v, spec=".3g"):
    return "" if v is None else format(v, spec) if isinstance(v, float) else str(v)


HEADER = """# Time to the answer (issue 14)

Produced by `scripts/bench_speed.py` ({size} sizes, {rounds} interleaved round(s), {seconds:.0f} s). Every answer is
within a relative objective gap of {gap:g} of a float64 reference unless the row says MISSED; each iterative method
runs at the loosest tolerance of its ladder that reaches the gap (shown). Times are wall-clock medians of whole calls,
every method given the same float32 numpy arrays (gradfit also with X as a jax.Array where said).
**gradfit vs best** = best peer's time / gradfit's time: **> 1 means gradfit is faster** (peak RSS: best peer's
memory / gradfit's; learning_rate='auto': the estimate's share of the whole fit).

- command: `{command}`
- machine: {m[cpu]}, {m[cores]} cores, {m[platform]}; load average at start {m[loadavg_start]}, at end {m[loadavg_end]}
  (shared machine)
- versions: python {m[python]}, jax {m[jax]} ({m[jax_backend]}), gradfit {m[gradfit]}, optax {m[optax]}, numpy
  {m[numpy]}, scipy {m[scipy]}, scikit-learn {m[sklearn]}, torch {m[torch]}
"""

NOTES = """Notes: gradfit's *first call* is its first call on that shape in this process (compile included; *compile s*
is that call's stats['compile_seconds']; *info* is the last timed call's). The small-data and peak-RSS rows run each
method in fresh processes (`--child`). Peak RSS is sampled every 5 ms: *warm call* is a second call's peak above the
RSS just before it (its working memory), *first call* the first call's peak above the RSS once the data exist (JIT
compile included)."""


def render(res):
    out = [HEADER.format(m=res["machine"], **res),
           md_table(["workload", "gradfit", "best peer", "gradfit vs best (>1: gradfit faster)"],
                    [(r["workload"], r["gradfit"], r["best_peer"], r["ratio"]) for r in res["rows"]]),
           "", "## Every method", ""]
    lines = []
    for r in res["rows"]:
        for m in r["methods"]:
            t = m.get("time_s", m.get("first_s"))
            times = ", ".join(f"{x:.3g}" for x in m.get("times", []))
            if "warm_s" in m:
                times = (f"import {m['import_s']:.2f}, first {m['first_s']:.3g}, new m {m['new_m_s']:.3g}, warm "
                         f"{m['warm_s']:.3g}" + (f"; cache files {m['cache_files']} via {m['cache_via']}"
                                                 if m.get("cache_via") else ""))
            if "warm_above_mb" in m:
                t, times = None, (f"warm call {m['warm_above_mb']:.0f} MB above = {m['x_ratio']:.2f}x X; first call "
                                  f"{m['first_above_mb']:.0f} MB above the data ({m['base_mb']:.0f} MB)")
            info = ", ".join(f"{k} {fmt(v)}" for k, v in (m.get("info") or {}).items())
            lines.append((r["workload"].split(",")[0], m["method"], fmt(m.get("setting")), fmt(t), times,
                          fmt(m.get("first_s")) if "time_s" in m else "", fmt(m.get("compile_s_first")),
                          fmt(m.get("gap"), ".1e"), "yes" if m.get("reached", True) else "**MISSED**", info))
    head = ["row", "method", "tol", "median s", "rounds s", "first call s", "compile s", "gap", "reached", "info"]
    return "\n".join([*out, md_table(head, lines), "", NOTES])


if __name__ == "__main__":
    sys.exit(main())
