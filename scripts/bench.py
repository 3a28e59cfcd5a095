"""Large-m benchmark: gradfit's plans against numpy, PyTorch, scikit-learn and the memory floor.

One process, one run. For MSE (linear regression) and BCE (logistic regression) on standard
normal float32 data X (m, n), it measures, per method: compile time (separately), the median
time per full-batch step, the time to a stated tolerance (relative objective gap to the
optimum), the effective read bandwidth over X, the ratio to the floor (one read of X at the
best read bandwidth this run measured), the peak RSS while the method ran (sampled), and the
distance of the method's answer to the optimum, so that no timing is of a broken method.

    python scripts/bench.py                      # defaults: m=2e6, n=64, a few minutes on 2 cores
    python scripts/bench.py --m 200000 --quick   # a smoke run
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python scripts/bench.py   # numpy at full speed

Writes ``--json`` (all numbers) and ``--md`` (tables, machine, versions, command). PyTorch is
used when installed. Nothing here is device-specific: with a CUDA jaxlib the gradfit rows
run on the GPU (numpy, torch and scikit-learn stay on the CPU) and the floor is the GPU's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import gradfit
from gradfit import _io, _plan

# --------------------------------------------------------------------------- measuring


class PeakRSS:
    """Peak resident set size (MB) of this process while the ``with`` block runs (5 ms samples)."""

    def __init__(self):
        self.peak = 0.0
        self._stop = threading.Event()

    @staticmethod
    def current() -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            self._stop.wait(0.005)

    def __enter__(self):
        self.peak = self.current()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def chunks(m: int, size: int = 1 << 16):
    for i in range(0, m, size):
        yield slice(i, min(m, i + size))


def objective64(W, b, X, y, loss: str, l2: float) -> float:
    """The objective in float64, in row chunks (the referee for every method)."""
    W = np.asarray(W, np.float64)
    total = 0.0
    for s in chunks(len(X)):
        z = X[s].astype(np.float64) @ W + float(b)
        if loss == "mse":
            total += np.sum((z - y[s]) ** 2)
        else:
            total += np.sum(np.logaddexp(0, z) - y[s] * z)
    return total / len(X) + 0.5 * l2 * float(W @ W)


def least_squares64(X, y):
    """The exact MSE optimum (W*, b*) by float64 normal equations on centred data, chunked."""
    m, n = X.shape
    mu = np.zeros(n)
    nu = float(np.mean(y, dtype=np.float64))
    for s in chunks(m):
        mu += X[s].sum(0, dtype=np.float64)
    mu /= m
    G = np.zeros((n, n))
    c = np.zeros(n)
    for s in chunks(m):
        Xc = X[s].astype(np.float64) - mu
        G += Xc.T @ Xc
        c += Xc.T @ (y[s] - nu)
    W = np.linalg.solve(G, c)
    return W, nu - mu @ W


# --------------------------------------------------------------------------- baselines


def numpy_steps(X, y, loss: str, lr: float, steps: int, l2: float = 0.0):
    """The seeds' numpy loop: Q&A seed for mse, notes seed for bce (samples in rows). Per-step times."""
    m, n = X.shape
    W = np.zeros(n, X.dtype)
    b = X.dtype.type(0)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        y_hat = X.dot(W) + b
        if loss == "mse":
            dW = -(2 * (X.T).dot(y - y_hat)) / m
            db = -(2 * np.sum(y - y_hat)) / m
        else:
            a = 1 / (1 + np.exp(-y_hat))
            dW = X.T.dot(a - y) / m + l2 * W
            db = np.sum(a - y) / m
        W = W - lr * dW
        b = b - lr * db
        times.append(time.perf_counter() - t)
    return W, b, times


def torch_steps(X, y, loss: str, lr: float, steps: int, l2: float = 0.0):
    import torch

    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    W = torch.zeros(X.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([W, b], lr=lr)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        opt.zero_grad()
        z = Xt @ W + b
        if loss == "mse":
            J = torch.mean((z - yt) ** 2)
        else:
            J = torch.nn.functional.binary_cross_entropy_with_logits(z, yt) + 0.5 * l2 * (W @ W)
        J.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return W.detach().numpy(), float(b.detach()), times


# --------------------------------------------------------------------------- gradfit


def fit_seed(X, y, **kw):
    """gradfit.fit on the seeds' iterates: raw coordinates (standardize=False), every step run (tol=None),
    so the numpy loops' iterates are the reference and a workload of N steps runs N steps."""
    return gradfit.fit(X, y, **{"standardize": False, "tol": None, **kw})


def gradfit_step_time(X, y, *, reps: int, steps: int, **kw) -> tuple[float, dict]:
    """Median per-step time of a compiled fit: (run time of 1+steps - run time of 1) / steps.

    ``steps`` is a traced input, so both fits share one compiled program; the difference
    cancels the fixed costs (the final objective, transfers).
    """
    first = fit_seed(X, y, steps=1, **kw)
    t1, t2 = [], []
    for _ in range(reps):
        t1.append(fit_seed(X, y, steps=1, **kw).stats["run_seconds"])
        r = fit_seed(X, y, steps=1 + steps, **kw)
        t2.append(r.stats["run_seconds"])
    per = (float(np.median(t2)) - float(np.median(t1))) / steps
    if per <= 0:  # tiny problems: the difference is noise; fall back to the whole run per step
        per = float(np.median(t2)) / (1 + steps)
    return per, {"compile_seconds": first.stats["compile_seconds"], "result": r}


# --------------------------------------------------------------------------- the run


def machine_info() -> dict:
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or "",
        "cores": os.cpu_count(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "numpy": np.__version__,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE"),
        "loadavg_start": os.getloadavg(),
    }
    try:
        info["cpu"] = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    try:
        import threadpoolctl

        info["threadpools"] = [
            {k: p.get(k) for k in ("internal_api", "num_threads", "version", "architecture")}
            for p in threadpoolctl.threadpool_info()
        ]
    except ImportError:
        pass
    for mod in ("optax", "sklearn", "torch"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    if jax.default_backend() == "gpu":
        try:
            info["gpu"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def row(method, *, compile_s=None, step_s=None, steps_to_tol=None, time_to_tol=None, bytes_per_step=None,
        floor=None, rss=None, gap=None, dist=None, note=""):
    gbps = None if not step_s or not bytes_per_step else bytes_per_step / step_s / 1e9
    print(f"  {method}: step {None if step_s is None else round(1e3 * step_s, 3)} ms, "
          f"to tol {time_to_tol}, compile {compile_s}", flush=True)
    return {
        "method": method, "compile_s": compile_s, "step_ms": None if step_s is None else 1e3 * step_s,
        "steps_to_tol": steps_to_tol, "time_to_tol_s": time_to_tol, "GBps": gbps,
        "x_floor": None if not step_s or not floor else step_s / floor, "peak_rss_mb": rss,
        "rel_gap": gap, "rel_dist": dist, "note": note,
    }


def rel_dist(W, W_star) -> float:
    return float(np.linalg.norm(np.asarray(W, np.float64) - W_star) / max(np.linalg.norm(W_star), 1e-300))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--m", type=int, default=2_000_000, help="rows (default 2e6: X is 512 MB at n=64)")
    p.add_argument("--n", type=int, default=64, help="features")
    p.add_argument("--lbfgs-m", type=int, default=1_000_000, help="rows for the L-BFGS vs scikit-learn race")
    p.add_argument("--steps", type=int, default=10, help="steps timed per direct method")
    p.add_argument("--workload", type=int, default=1000, help="the fixed MSE workload in steps")
    p.add_argument("--reps", type=int, default=3, help="repetitions (medians)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the BCE step timings (medians)")
    p.add_argument("--tol", type=float, default=1e-6, help="relative objective gap that counts as converged")
    p.add_argument("--quick", action="store_true", help="fewer reps, skip the slowest baselines")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--json", default="docs/benchmarks.json")
    p.add_argument("--md", default="docs/benchmarks.md")
    args = p.parse_args(argv)
    reps = 1 if args.quick else args.reps
    m, n = args.m, args.n
    try:
        import torch  # noqa: F401

        have_torch = not args.no_torch
    except ImportError:
        have_torch = False
    from sklearn.linear_model import LinearRegression, LogisticRegression, SGDClassifier, SGDRegressor

    info = machine_info()
    print(json.dumps(info, indent=1), flush=True)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((m, n), dtype=np.float32)
    W_true = (rng.standard_normal(n) / np.sqrt(n)).astype(np.float32)
    y_mse = (X @ W_true + 0.5 + 0.1 * rng.standard_normal(m, dtype=np.float32)).astype(np.float32)
    z = X @ (2 * W_true) - 0.2
    y_bce = (rng.random(m, dtype=np.float32) < 1 / (1 + np.exp(-z))).astype(np.float32)
    del z
    nbytes = X.nbytes
    Xj = jax.device_put(X)

    # The floor: one read of X at the best read bandwidth measured (whole-array column sum).
    colsum = jax.jit(lambda A: jnp.sum(A, axis=0))
    colsum(Xj).block_until_ready()
    read_s = min(median_time(lambda: colsum(Xj).block_until_ready(), 5) for _ in range(2))
    np_read_s = median_time(lambda: X.sum(0), 3)
    floor = min(read_s, np_read_s)
    bw = nbytes / floor / 1e9
    print(f"floor: one read of X ({nbytes / 2**20:.0f} MiB) = {1e3 * floor:.2f} ms ({bw:.1f} GB/s)", flush=True)
    results = {"machine": info, "m": m, "n": n, "X_bytes": nbytes, "floor_ms": 1e3 * floor, "read_GBps": bw,
               "jax_read_ms": 1e3 * read_s, "numpy_read_ms": 1e3 * np_read_s, "tol": args.tol}

    # ------------------------------------------------------------------ MSE
    lr = 0.1
    W_star, b_star = least_squares64(X, y_mse)
    J_star = objective64(W_star, b_star, X, y_mse, "mse", 0.0)
    gap = lambda W, b: (objective64(W, b, X, y_mse, "mse", 0.0) - J_star) / J_star  # noqa: E731
    mse_rows = []
    # Gradient descent's iterates are the same for every full-batch method: steps to tolerance
    # from the exact-in-float64 iteration count of gradfit's (stats) run.
    ref = fit_seed(Xj, y_mse, grad="stats", learning_rate=lr, steps=args.workload)
    hist = np.asarray(ref.losses, np.float64)
    steps_to_tol = int(np.argmax((hist - J_star) / J_star <= args.tol)) if np.any((hist - J_star) / J_star <= args.tol) else None
    results["mse_steps_to_tol"] = steps_to_tol
    print(f"mse: J* = {J_star:.6g}; gradient descent (lr={lr}) needs {steps_to_tol} steps to a {args.tol:g} gap", flush=True)

    with PeakRSS() as rss:
        Wn, bn, times = numpy_steps(X, y_mse, "mse", lr, max(3, args.steps))
    t_np = float(np.median(times))
    mse_rows.append(row("numpy loop (Q&A seed)", step_s=t_np, steps_to_tol=steps_to_tol,
                        time_to_tol=None if steps_to_tol is None else t_np * steps_to_tol,
                        bytes_per_step=2 * nbytes, floor=floor, rss=rss.peak,
                        note=f"{args.workload} steps: {t_np * args.workload:.1f} s (median step x {args.workload})"))
    results["numpy_mse_workload_s"] = t_np * args.workload
    if have_torch:
        with PeakRSS() as rss:
            _, _, times = torch_steps(X, y_mse, "mse", lr, max(3, args.steps))
        t = float(np.median(times[1:]))
        mse_rows.append(row("PyTorch CPU loop (autograd + SGD)", step_s=t, steps_to_tol=steps_to_tol,
                            time_to_tol=None if steps_to_tol is None else t * steps_to_tol,
                            bytes_per_step=2 * nbytes, floor=floor, rss=rss.peak))
    for plan in ("autodiff", "hand", "onepass"):
        with PeakRSS() as rss:
            per, extra = gradfit_step_time(Xj, y_mse, reps=reps, steps=args.steps, grad=plan, learning_rate=lr)
        mse_rows.append(row(f"gradfit grad='{plan}'", compile_s=extra["compile_seconds"], step_s=per,
                            steps_to_tol=steps_to_tol, time_to_tol=None if steps_to_tol is None else per * steps_to_tol,
                            bytes_per_step=(1 if plan == "onepass" else 2) * nbytes, floor=floor, rss=rss.peak,
                            note=f"{args.workload} steps: {per * args.workload:.1f} s"))
    with PeakRSS() as rss:
        r = min((fit_seed(Xj, y_mse, grad="stats", learning_rate=lr, steps=args.workload) for _ in range(reps)),
                key=lambda r: r.stats["run_seconds"])
        r_tol = fit_seed(Xj, y_mse, grad="stats", learning_rate=lr, steps=max(1, steps_to_tol or 1))
    pre = r.stats["precompute_seconds"]
    per = (r.stats["run_seconds"] - pre) / args.workload
    mse_rows.append(row("gradfit grad='stats' (auto picks it)", compile_s=ref.stats["compile_seconds"],
                        step_s=per, steps_to_tol=steps_to_tol, time_to_tol=r_tol.stats["run_seconds"],
                        floor=floor, rss=rss.peak, gap=gap(r.params.W, r.params.b), dist=rel_dist(r.params.W, W_star),
                        note=f"{args.workload} steps: {r.stats['run_seconds']:.3f} s incl. the {pre:.3f} s statistics pass "
                             f"({3 * nbytes / pre / 1e9:.1f} GB/s over 3 reads)"))
    results["stats_workload_s"] = r.stats["run_seconds"]
    results["stats_speedup_vs_numpy"] = t_np * args.workload / r.stats["run_seconds"]
    # The direct plans run the same iterates: their answers are checked at steps_to_tol.
    for rr in mse_rows:
        if rr["method"].startswith("gradfit grad=") and "stats" not in rr["method"]:
            plan = rr["method"].split("'")[1]
            rt = fit_seed(Xj, y_mse, grad=plan, learning_rate=lr, steps=max(1, steps_to_tol or 1))
            rr["rel_gap"], rr["rel_dist"] = gap(rt.params.W, rt.params.b), rel_dist(rt.params.W, W_star)
            rr["note"] += "; gap/dist after steps_to_tol"
    Wn, bn, _ = numpy_steps(X, y_mse, "mse", lr, max(1, steps_to_tol or 1))
    mse_rows[0]["rel_gap"], mse_rows[0]["rel_dist"] = gap(Wn, bn), rel_dist(Wn, W_star)
    mse_rows[0]["note"] += "; gap/dist after steps_to_tol"

    with PeakRSS() as rss:
        t = time.perf_counter()
        lin = LinearRegression().fit(X, y_mse)
        t_lin = time.perf_counter() - t
    mse_rows.append(row("scikit-learn LinearRegression (lstsq)", time_to_tol=t_lin, rss=rss.peak,
                        gap=gap(lin.coef_, lin.intercept_), dist=rel_dist(lin.coef_, W_star)))
    epochs = 1 if args.quick else 3
    with PeakRSS() as rss, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        sgd = SGDRegressor(alpha=0.0, max_iter=epochs, tol=None, random_state=0).fit(X, y_mse)
        t_sgd = time.perf_counter() - t
    mse_rows.append(row(f"scikit-learn SGDRegressor ({epochs} epochs)", step_s=t_sgd / epochs, bytes_per_step=nbytes,
                        floor=floor, rss=rss.peak, gap=gap(sgd.coef_, sgd.intercept_[0]), dist=rel_dist(sgd.coef_, W_star),
                        note="time/step = one epoch"))
    # gradfit minibatch epochs (shuffle='blocks' vs 'rows'), for comparison with SGDRegressor.
    for shuffle in ("blocks", "rows"):
        if shuffle == "rows" and args.quick:
            continue
        kw = dict(batch_size=4096, shuffle=shuffle, learning_rate=0.1, grad="autodiff")
        with PeakRSS() as rss:
            first = fit_seed(Xj, y_mse, steps=1, **kw)
            r = fit_seed(Xj, y_mse, steps=2, **kw)
        per = r.stats["run_seconds"] / 2
        mse_rows.append(row(f"gradfit minibatch 4096, shuffle='{shuffle}'", compile_s=first.stats["compile_seconds"],
                            step_s=per, bytes_per_step=nbytes, floor=floor, rss=rss.peak,
                            gap=gap(r.params.W, r.params.b), dist=rel_dist(r.params.W, W_star),
                            note="time/step = one epoch (2 epochs run)"))
    results["mse"] = mse_rows

    # ------------------------------------------------------------------ BCE full-batch steps
    C = 1.0
    l2 = 1 / (C * m)
    # The timed fits run 1 + steps gradient-descent steps from zero: every method's iterate
    # after that many steps is compared with the numpy loop's (rel. dist W, to numpy). The
    # methods are timed in `rounds` interleaved rounds (medians), so that the machine's
    # changing load hits each alike. X in bfloat16: half the memory, products and sums in
    # float32; the iterate moves by the rounding of X (scripts/bench_bf16.py scores it
    # against the optimum).
    Xh = Xj.astype(jnp.bfloat16)

    def numpy_method():
        W, _, times = numpy_steps(X, y_bce, "bce", 0.5, 1 + args.steps, l2)
        return float(np.median(times)), {"W": np.asarray(W, np.float64)}

    def torch_method():
        W, _, times = torch_steps(X, y_bce, "bce", 0.5, 1 + args.steps, l2)
        return float(np.median(times[1:])), {"W": W}

    def gradfit_method(plan, data):
        def run():
            per, extra = gradfit_step_time(data, y_bce, reps=reps, steps=args.steps, grad=plan, loss="bce",
                                           learning_rate=0.5, l2=l2)
            return per, {"W": extra["result"].params.W, "compile_s": extra["compile_seconds"]}
        return run

    methods = {"numpy loop (notes seed)": (numpy_method, 2 * nbytes, "the reference iterate")}
    if have_torch:
        methods["PyTorch CPU loop (autograd + SGD)"] = (torch_method, 2 * nbytes, "rel. dist W: to the numpy iterate")
    for plan in ("autodiff", "hand", "onepass"):
        auto = " (auto picks it)" if plan == _plan.DIRECT else ""
        methods[f"gradfit grad='{plan}'{auto}"] = (
            gradfit_method(plan, Xj), (1 if plan == "onepass" else 2) * nbytes,
            ("reads X once" if plan == "onepass" else "reads X twice") + "; rel. dist W: to the numpy iterate")
    for plan in ("hand", "onepass"):
        methods[f"gradfit grad='{plan}', X in bfloat16"] = (
            gradfit_method(plan, Xh), (1 if plan == "onepass" else 2) * nbytes // 2,
            "X in half the memory; x floor against float32 X")
    times: dict[str, list[float]] = {name: [] for name in methods}
    extras: dict[str, dict] = {}
    peaks: dict[str, float] = {name: 0.0 for name in methods}
    for _ in range(args.rounds):
        for name, (run, _, _) in methods.items():
            with PeakRSS() as rss:
                per, extra = run()
            extras[name] = {**extra, "compile_s": extras.get(name, extra).get("compile_s")}  # the first round compiles
            times[name].append(per)
            peaks[name] = max(peaks[name], rss.peak)
    del Xh
    W_np = extras["numpy loop (notes seed)"]["W"]
    bce_rows = []
    for name, (_, bytes_per_step, note) in methods.items():
        per = float(np.median(times[name]))
        bce_rows.append(row(name, compile_s=extras[name].get("compile_s"), step_s=per, bytes_per_step=bytes_per_step,
                            floor=floor, rss=peaks[name], dist=None if name.startswith("numpy") else rel_dist(extras[name]["W"], W_np),
                            note=note + f"; median of {args.rounds} rounds: " + ", ".join(f"{1e3 * t:.1f}" for t in times[name])))
    t_np_bce = float(np.median(times["numpy loop (notes seed)"]))
    best = min(float(np.median(t)) for name, t in times.items() if name.startswith("gradfit") and "bfloat16" not in name)
    results["bce_step_speedup_vs_numpy"] = t_np_bce / best
    results["bce_best_step_x_floor"] = best / floor
    results["bce_steps"] = bce_rows

    # ------------------------------------------------------------------ L-BFGS vs scikit-learn
    ml = min(args.lbfgs_m, m)
    Xl, yl = X[:ml], y_bce[:ml]
    l2l = 1 / (C * ml)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tight = LogisticRegression(C=C, tol=1e-12, max_iter=1000).fit(Xl, yl)
    J_bce = objective64(tight.coef_[0], tight.intercept_[0], Xl, yl, "bce", l2l)
    bgap = lambda W, b: (objective64(W, b, Xl, yl, "bce", l2l) - J_bce) / J_bce  # noqa: E731
    lb_rows = []
    Xlj = jax.device_put(Xl)
    for plan in ("autodiff", "hand", "onepass"):
        kw = dict(loss="bce", optimizer="lbfgs", l2=l2l, grad=plan)
        first = gradfit.fit(Xlj, yl, steps=1, **kw)
        found = None
        with PeakRSS() as rss:
            for s in range(2, 101):
                r = gradfit.fit(Xlj, yl, steps=s, **kw)
                g_ = bgap(r.params.W, r.params.b)
                if g_ <= args.tol:
                    found = (s, min(gradfit.fit(Xlj, yl, steps=s, **kw).stats["run_seconds"] for _ in range(reps)), g_, r)
                    break
        if found:
            s, t, g_, r = found
            J_bce = min(J_bce, objective64(r.params.W, r.params.b, Xl, yl, "bce", l2l))
            auto = " (auto picks it)" if plan == _plan.DIRECT else ""
            lb_rows.append(row(f"gradfit lbfgs grad='{plan}'{auto}", compile_s=first.stats["compile_seconds"], steps_to_tol=s,
                               time_to_tol=t, rss=rss.peak, gap=g_, note=f"{s} iterations"))
        else:
            lb_rows.append(row(f"gradfit lbfgs grad='{plan}'", note="did not reach the tolerance in 100 iterations"))
    with PeakRSS() as rss, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = None
        for it in range(2, 201):
            t = time.perf_counter()
            lr_ = LogisticRegression(C=C, tol=0.0, max_iter=it).fit(Xl, yl)
            t = time.perf_counter() - t
            g_ = bgap(lr_.coef_[0], lr_.intercept_[0])
            if g_ <= args.tol:
                t = min([t] + [median_time(lambda: LogisticRegression(C=C, tol=0.0, max_iter=it).fit(Xl, yl), 1)
                               for _ in range(reps - 1)])
                found = (it, t, g_)
                break
    if found:
        lb_rows.append(row("scikit-learn LogisticRegression(lbfgs)", steps_to_tol=found[0], time_to_tol=found[1],
                           rss=rss.peak, gap=found[2], note=f"max_iter={found[0]}, tol=0"))
    with PeakRSS() as rss, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        sgdc = SGDClassifier(loss="log_loss", alpha=l2l, max_iter=epochs, tol=None, random_state=0).fit(Xl, yl)
        t = time.perf_counter() - t
    lb_rows.append(row(f"scikit-learn SGDClassifier ({epochs} epochs)", step_s=t / epochs, bytes_per_step=Xl.nbytes,
                       rss=rss.peak, gap=bgap(sgdc.coef_[0], sgdc.intercept_[0]), note="time/step = one epoch"))
    results["lbfgs_m"] = ml
    results["lbfgs"] = lb_rows
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["command"] = " ".join([os.path.basename(sys.executable)] + sys.argv)

    _io.write_json(args.json, results)
    _io.write_text(args.md, render(results))
    print(render(results))
    return 0


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def table(rows, cols) -> str:
    head = "| " + " | ".join(c[0] for c in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    lines = [head, sep]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c[1]), c[2]) if c[2] else str(r.get(c[1]) or "") for c in cols) + " |")
    return "\n".join(lines)


COLS = [
    ("method", "method", None), ("compile s", "compile_s", ".2f"), ("time/step ms", "step_ms", ".2f"),
    ("steps to tol", "steps_to_tol", "d"), ("time to tol s", "time_to_tol_s", ".3f"), ("GB/s", "GBps", ".1f"),
    ("x floor", "x_floor", ".2f"), ("peak RSS MB", "peak_rss_mb", ".0f"), ("rel. gap", "rel_gap", ".1e"),
    ("rel. dist W", "rel_dist", ".1e"), ("note", "note", None),
]


def render(res: dict) -> str:
    mi = res["machine"]
    out = [
        "# Benchmarks",
        "",
        "Produced by `scripts/bench.py` in one process, one run. Numbers are medians; compile",
        "time is separate from run time everywhere. *rel. gap* is (J - J*)/J* of the method's",
        "answer evaluated in float64, *rel. dist W* is ||W - W*|| / ||W*||; *x floor* is the time per",
        "step over one read of X at the best read bandwidth measured in the same run. *peak RSS*",
        "is the whole process while the method ran, including the harness's own copies of the",
        "data (X in numpy and on the device, about 2 x the size of X).",
        "",
        f"- command: `{res['command']}`",
        f"- machine: {mi.get('cpu')}, {mi.get('cores')} cores; {mi.get('platform')}",
        f"- load average at start / end: {mi['loadavg_start']} / {mi.get('loadavg_end')} (machine shared)",
        f"- versions: python {mi['python']}, jax {mi['jax']} ({mi['jax_backend']}: {', '.join(mi['jax_devices'])}), "
        f"optax {mi.get('optax')}, numpy {mi['numpy']}, scikit-learn {mi.get('sklearn')}, torch {mi.get('torch')}",
        f"- OpenBLAS env: OPENBLAS_CORETYPE={mi.get('OPENBLAS_CORETYPE')}, OPENBLAS_L2_SIZE={mi.get('OPENBLAS_L2_SIZE')}; "
        f"threadpools: {mi.get('threadpools')}",
        f"- data: X ({res['m']}, {res['n']}) float32 standard normal = {res['X_bytes'] / 2**20:.0f} MiB; "
        f"floor = {res['floor_ms']:.2f} ms per read ({res['read_GBps']:.1f} GB/s; jax column sum "
        f"{res['jax_read_ms']:.2f} ms, numpy {res['numpy_read_ms']:.2f} ms)",
        f"- tolerance: relative objective gap <= {res['tol']:g}",
        "",
        "## Goals (this run)",
        "",
        f"- {res.get('mse_steps_to_tol')} gradient-descent steps reach the tolerance for MSE (lr 0.1).",
        f"- 1000 MSE steps, numpy loop vs gradfit stats: {res['numpy_mse_workload_s']:.1f} s vs "
        f"{res['stats_workload_s']:.3f} s = **{res['stats_speedup_vs_numpy']:.0f}x** (goal >= 100x).",
        f"- full-batch BCE step, numpy loop / best gradfit plan: **{res['bce_step_speedup_vs_numpy']:.2f}x** "
        f"(goal >= 1.5x); best gradfit step = **{res['bce_best_step_x_floor']:.2f}x** the floor (stretch <= 1.3x).",
    ]
    lb = {r["method"]: r for r in res["lbfgs"]}
    sk = lb.get("scikit-learn LogisticRegression(lbfgs)", {}).get("time_to_tol_s")
    ours = [r["time_to_tol_s"] for k, r in lb.items() if k.startswith("gradfit") and r.get("time_to_tol_s")]
    if sk and ours:
        out.append(f"- L-BFGS to the tolerance on m = {res['lbfgs_m']}: gradfit {min(ours):.3f} s vs scikit-learn "
                   f"{sk:.3f} s (goal: no slower).")
    out += ["", "## MSE (linear regression), full batch, SGD lr 0.1", "", table(res["mse"], COLS), "",
            "## BCE (logistic regression), full-batch step", "", table(res["bce_steps"], COLS), "",
            f"## Logistic regression to the tolerance: L-BFGS vs scikit-learn (m = {res['lbfgs_m']}, C = 1)", "",
            table(res["lbfgs"], COLS), "", NOTES]
    return "\n".join(out)


NOTES = """## Reading these numbers

- The development machine is shared: the load average above says how many other processes
  competed for its 2 cores. Whole-array XLA fusions and OpenBLAS calls split every operation
  over both cores and wait for the slower one, so they lose most under load; gradfit's
  one-pass loop runs each step on one core and loses least. The floor is measured in the
  same conditions (a whole-array column sum), so *x floor* stays comparable within a run.
- BCE step: `grad='hand'` reads X twice, each read a whole-array product at about the floor
  (X^T s as a batched product over ~1 MiB row blocks, `gradfit.gradients.xt_dot`), so it sits
  near 2x the floor, as the numpy loop's two BLAS calls do. One read per step would need the
  forward and the backward product fused in one multi-core pass, which XLA:CPU does not do:
  the one-pass loop runs on one core and is bound by its arithmetic there.
- `grad='stats'`: the time to tolerance and the 1000-step workload include the statistics
  pass (three reads of X and the Gram products), not just the O(n^2) steps.
- L-BFGS: *time to tol* is the run time of the first iteration budget whose answer is within
  the tolerance (gradfit: `steps`, a traced input, so no recompile between budgets;
  scikit-learn: `max_iter` with `tol=0`); gradfit's compile time is in its own column and is
  paid once per shape.
- Minibatch epochs: `shuffle='blocks'` reads X once per epoch; `shuffle='rows'` spends its
  time on the permutation (a sort of m keys) and the row gathers, not on arithmetic.
- bfloat16 storage of X: the BCE rows "X in bfloat16"; its accuracy against the optimum is
  measured by `python scripts/bench_bf16.py` (docs/bfloat16.md); and
  one pass over X split over several CPU devices (`scripts/onepass_devices.py`), an
  experiment towards a one-read step at the bandwidth of all cores: the devices' programs
  did not run concurrently (22.4 ms on 2 devices against 24.4 ms on one)."""


if __name__ == "__main__":
    sys.exit(main())
