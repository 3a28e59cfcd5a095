"""What the scikit-learn estimators and the functional core cost (wall seconds, median of repeats).

    python scripts/bench_sklearn.py [--rows 20000] [--features 32] [--classes 10] [--repeats 3]

1. One-vs-rest: ``GDClassifier`` fits the k binary problems as one vmapped program;
   ``OneVsRestClassifier(GDClassifier())`` fits them one by one (one program, run k times);
   a joint (m, k) BCE fit (one W (n, k), no vmap) for reference. All run the same number of
   steps (``tol=None``). First fit (with compiling) and a refit (cached).
2. Prediction: ``GDRegressor.predict`` (numpy) on new row counts, against a jitted JAX
   ``X @ W + b`` that compiles once per new shape.
3. ``gradfit.solve``: a fixed-step solve, and the gradient of a validation loss through it
   with respect to ``l2`` and ``learning_rate`` (reverse mode through every step).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.multiclass import OneVsRestClassifier

import gradfit
from gradfit.sklearn import GDClassifier, GDRegressor


def timed(fn, repeats: int) -> tuple[float, float]:
    """(first call seconds, median of the next ``repeats`` calls)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((a.rows, a.features)).astype(np.float32)
    centres = rng.standard_normal((a.classes, a.features)) * 0.5
    y = (X @ centres.T + rng.standard_normal((a.rows, a.classes))).argmax(1)
    print(f"backend {jax.default_backend()}; X {X.shape} float32, {a.classes} classes, {a.steps} steps")

    est = dict(learning_rate=0.5, max_iter=a.steps, tol=None)
    one = timed(lambda: GDClassifier(**est).fit(X, y), a.repeats)
    ovr = timed(lambda: OneVsRestClassifier(GDClassifier(**est)).fit(X, y), a.repeats)
    print("\n1. one-vs-rest            first fit (s)  refit (s)")
    print(f"   GDClassifier (1 vmap)   {one[0]:12.3f}  {one[1]:9.3f}")
    print(f"   OneVsRest(GDClassifier) {ovr[0]:12.3f}  {ovr[1]:9.3f}   ({a.classes} fits)")
    T = np.eye(a.classes, dtype=np.float32)[y]
    joint = timed(lambda: gradfit.fit(X, T, loss="bce", learning_rate=0.5, steps=a.steps, l2=1e-4), a.repeats)
    print(f"   joint (m, k) BCE fit     {joint[0]:12.3f}  {joint[1]:9.3f}   (gradfit.fit, scalar l2: no vmap)")
    print(f"   speed-up of the vmap over k fits: {ovr[0] / one[0]:.1f}x first, {ovr[1] / one[1]:.1f}x refit")

    reg = GDRegressor(max_iter=50, tol=None).fit(X, X @ centres[0])
    jax_predict = jax.jit(lambda X, W, b: X @ W + b)
    W, b = jnp.asarray(reg.coef_), jnp.asarray(reg.intercept_)
    sizes = [1_000, 1_001, 50_000, 50_001, 200_000]
    batches = [rng.standard_normal((m, a.features)).astype(np.float32) for m in sizes]

    def numpy_all():
        for B in batches:
            reg.predict(B)

    def jax_all():
        for B in batches:
            np.asarray(jax_predict(B, W, b))

    npy = timed(numpy_all, a.repeats)
    jx = timed(jax_all, a.repeats)
    print(f"\n2. predict on {len(sizes)} new row counts {sizes}: first pass / later passes (s)")
    print(f"   GDRegressor.predict (numpy)  {npy[0]:.4f} / {npy[1]:.4f}")
    print(f"   jax.jit(X @ W + b)           {jx[0]:.4f} / {jx[1]:.4f}   (compiles once per shape)")

    Xt, Xv = X[: a.rows // 2], X[a.rows // 2 :]
    yt, yv = (X @ centres[0])[: a.rows // 2], (X @ centres[0])[a.rows // 2 :]

    def val_loss(l2, lr):
        return gradfit.losses.mse(gradfit.solve(None, Xt, yt, l2=l2, learning_rate=lr, steps=a.steps).params, Xv, yv)

    fwd = jax.jit(val_loss)
    grad = jax.jit(jax.grad(val_loss, argnums=(0, 1)))
    f = timed(lambda: jax.block_until_ready(fwd(0.1, 0.05)), a.repeats)
    g = timed(lambda: jax.block_until_ready(grad(0.1, 0.05)), a.repeats)
    print(f"\n3. gradfit.solve, {a.steps} steps on X {Xt.shape}: first call / later calls (s)")
    print(f"   validation loss               {f[0]:.3f} / {f[1]:.4f}")
    print(f"   d/d(l2, learning_rate)        {g[0]:.3f} / {g[1]:.4f}   ({g[1] / f[1]:.1f}x the forward solve)")


if __name__ == "__main__":
    main()
