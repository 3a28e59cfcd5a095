"""The ``gradfit`` command: thin wrappers that parse flags, call the library and write outputs.

    gradfit fit --config configs/quickstart.toml [--set fit.learning_rate=0.1 ...]
    gradfit check-grads
    gradfit info
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="a TOML config (defaults are used without one)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set fit.learning_rate=0.1 (repeatable)",
    )


def least_squares_optimum(X, y, *, reduction: str, l2: float, fit_intercept: bool):
    """The exact minimiser of ``c ||y - X w - b||^2 + (l2/2) ||w||^2`` in float64 (for reports).

    The bias is unpenalised, so with an intercept the problem is solved on centred data and
    ``b = mean(y) - mean(X) w``.
    """
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    c = {"mean": 1 / len(X), "half_mean": 0.5 / len(X), "sum": 1.0}[reduction]
    xm = X.mean(0) if fit_intercept else np.zeros(X.shape[1])
    ym = y.mean(0) if fit_intercept else np.zeros(y.shape[1:])
    Xc, yc = X - xm, y - ym
    A = 2 * c * Xc.T @ Xc + l2 * np.eye(X.shape[1])
    W = np.linalg.solve(A, 2 * c * Xc.T @ yc)
    b = ym - xm @ W
    r = y - X @ W - b
    value = c * np.sum(r * r) + 0.5 * l2 * np.sum(W * W)
    return W, b, value


def cmd_fit(args) -> int:
    import jax

    from gradfit import _io, config, data, datasets, distributed, solver

    cfg = config.load(args.config, args.overrides)
    multi = distributed.initialize_from_config(cfg["distributed"]) is not None
    f = dict(cfg["fit"])
    extra = {}
    if multi and str(cfg["data"]["source"]).endswith(".npy"):  # each process reads its own rows
        d = cfg["data"]
        loaded = distributed.load_rows(
            d["source"], target=d["target"], features=d["features"], dtype=d["dtype"],
            standardize=d["standardize"], devices=f.pop("devices"),
        )
        ds = datasets.Dataset(loaded.data.X, loaded.data.y, None)
        extra = {"sample_weight": loaded.data.sample_weight, "n_rows": loaded.n_rows}
    else:
        ds = data.load(cfg["data"])
    options = f.pop("optimizer_options")
    lr = f.pop("learning_rate")
    l2 = f.pop("l2")
    out_dir = Path(cfg["output"]["dir"])
    print(f"data: {cfg['data']['source']}  X {ds.X.shape} {ds.X.dtype}  y {ds.y.shape}")
    print(f"fit: loss={f['loss']} reduction={f['reduction']} optimizer={f['optimizer']} "
          f"learning_rate={lr} steps={f['steps']} tol={f['tol']} l2={l2}")
    wall = time.perf_counter()
    result = solver.fit(
        ds.X, ds.y, learning_rate=None if lr is None else np.asarray(lr), l2=np.asarray(l2),
        optimizer_options=options, **f, **extra,
    )
    wall = time.perf_counter() - wall
    st = result.stats
    report = {
        "loss": float(result.loss),
        "steps": result.steps,
        "converged": result.converged,
        "diverged": result.diverged,
        "compile_seconds": st["compile_seconds"],
        "run_seconds": st["run_seconds"],
        "wall_seconds": wall,
        "backend": st["backend"],
        "plan": st.get("plan"),
        "devices": [str(d) for d in jax.devices()],
        "fit_devices": st["devices"],  # how many the rows were split over
        "config": cfg,
    }
    print(f"loss {report['loss']:.6g} after {result.steps} steps "
          f"(converged={result.converged}, diverged={result.diverged})")
    print(f"time: compile {st['compile_seconds']:.3f} s, run {st['run_seconds']:.3f} s "
          f"({1e3 * st['run_seconds'] / max(result.steps, 1):.3f} ms/step) on {st['backend']}, plan {st.get('plan')!r}")
    if f["loss"] == "mse" and np.ndim(l2) == 0 and isinstance(ds.X, np.ndarray):
        W_opt, b_opt, j_opt = least_squares_optimum(
            ds.X, ds.y, reduction=f["reduction"], l2=float(l2), fit_intercept=f["fit_intercept"]
        )
        W = np.asarray(result.params.W, np.float64)
        dist = float(np.linalg.norm(W - W_opt) / max(np.linalg.norm(W_opt), 1e-300))
        gap = (report["loss"] - j_opt) / max(abs(j_opt), 1e-300)
        report.update(optimum_loss=j_opt, relative_loss_gap=gap, relative_distance_to_optimum=dist)
        print(f"least-squares optimum: loss {j_opt:.6g}; relative gap {gap:.3e}; "
              f"||W - W*|| / ||W*|| = {dist:.3e}")
    if ds.truth is not None:
        err = float(np.linalg.norm(np.asarray(result.params.W) - ds.truth.W) / np.linalg.norm(ds.truth.W))
        report["relative_error_to_truth"] = err
        print(f"known truth: ||W - W_true|| / ||W_true|| = {err:.3e}")
    if distributed.is_writer():  # results are replicated: process 0 writes them once
        _io.write_npz(out_dir / "params.npz", W=result.params.W, b=result.params.b)
        _io.write_npz(out_dir / "history.npz", losses=result.losses)
        _io.write_json(out_dir / "report.json", report)
        print(f"wrote {out_dir}/params.npz, history.npz, report.json")
    return 1 if result.diverged else 0


def cmd_check_grads(args) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)  # this command's own process only
    from gradfit import gradients

    rows = gradients.check_gradients()
    print(gradients.format_table(rows))
    bad = [r for r in rows if not r.ok]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} cases within tolerance")
    return 1 if bad else 0


def cmd_info(args) -> int:
    import jax
    import jaxlib
    import optax

    import gradfit

    print(f"gradfit {gradfit.__version__}")
    print(f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, optax {optax.__version__}, numpy {np.__version__}")
    print(f"backend: {jax.default_backend()}")
    for d in jax.devices():
        print(f"  {d.id}: {d.device_kind} ({d.platform})")
    print(f"x64 enabled: {jax.config.jax_enable_x64}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradfit", description="Linear models by compiled gradient descent (JAX).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fit", help="fit one model from a config")
    _add_config_args(p)
    p.set_defaults(func=cmd_fit)
    p = sub.add_parser("check-grads", help="compare the hand-derived gradients with jax.grad")
    p.set_defaults(func=cmd_check_grads)
    p = sub.add_parser("info", help="print the JAX backend and devices")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:  # user mistakes: one clear line, no traceback
        print(f"gradfit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # includes TimeoutError (a coordinator that never answered)
        print(f"gradfit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
