"""The ``gradfit`` command: thin wrappers that parse flags, call the library and write outputs.

    gradfit fit --config configs/quickstart.toml [--set fit.learning_rate=0.1 ...] [--resume]
    gradfit sweep --config configs/sweep_lr.toml
    gradfit plot RUN_DIR
    gradfit check-grads
    gradfit info
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
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


def _long_run_options(cfg: dict, args, *, multi: bool = False) -> dict:
    """fit()'s progress and checkpoint arguments from the config and flags (checked before compute).

    With several processes (``multi``) only process 0 draws a bar, and there are no
    checkpoints yet (each process holds only its own rows).
    """
    from gradfit import checkpoint, config, distributed
    from gradfit import progress as progress_bar

    ck = cfg["checkpoint"]
    for key in ("every_steps", "every_seconds"):
        if ck[key] < 0:
            raise config.ConfigError(f"checkpoint.{key} must be >= 0 (0 turns it off), got {ck[key]}")
    every = checkpoint.Every(ck["every_steps"] or None, ck["every_seconds"] or None)
    path = Path(ck["path"]) if ck["path"] else Path(cfg["output"]["dir"]) / "checkpoint.npz"
    if multi:
        if args.resume:
            raise config.ConfigError("--resume is not available with several processes yet: run without --resume")
        every = checkpoint.Every()
    if every == checkpoint.Every():
        if args.resume:
            raise config.ConfigError(
                "--resume needs checkpoints, but checkpoint.every_steps and checkpoint.every_seconds are both 0: "
                "set one of them"
            )
        options = {}
    else:
        options = {"checkpoint": path, "checkpoint_every": every, "resume": args.resume}
        if args.resume and not path.exists():
            print(f"no checkpoint at {path}: starting afresh")
    show = args.progress
    if show is None:  # on by default where someone watches
        show = sys.stderr.isatty() and progress_bar.available()
    elif show and not progress_bar.available():
        raise ValueError("--progress needs tqdm: pip install 'gradfit[progress]', or drop --progress")
    return {"progress": show and (not multi or distributed.is_writer()), **options}


def cmd_fit(args) -> int:
    import jax

    from gradfit import _io, config, data, datasets, distributed, solver

    cfg = config.load(args.config, args.overrides)
    if cfg["data"]["dtype"] == "float64" and not jax.config.jax_enable_x64:
        with jax.enable_x64(True):  # float64 data, float64 fit; the setting is restored afterwards
            return cmd_fit(args)
    if cfg["data"]["stream"]:
        return _cmd_fit_stream(cfg, args)
    multi = distributed.initialize_from_config(cfg["distributed"]) is not None
    out_dir = Path(cfg["output"]["dir"])
    _io.check_writable(out_dir)  # fail now, not after the fit
    long_run = _long_run_options(cfg, args, multi=multi)
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
    print(f"data: {cfg['data']['source']}  X {ds.X.shape} {ds.X.dtype}  y {ds.y.shape}")
    print(f"fit: loss={f['loss']} reduction={f['reduction']} optimizer={f['optimizer']} "
          f"learning_rate={lr} steps={f['steps']} tol={f['tol']} l2={l2}")
    wall = time.perf_counter()
    result = solver.fit(
        ds.X, ds.y, learning_rate=lr if lr is None or isinstance(lr, str) else np.asarray(lr), l2=np.asarray(l2),
        optimizer_options=options, **f, **extra, **long_run,
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
    # Numerical health (gradfit.health): condition estimate, separable classes, divergence.
    report.update({k: st[k] for k in ("learning_rate", "condition_number", "separable",
                                      "diverged_at_step", "suggested_learning_rate") if k in st})
    if "learning_rate" in st:
        print(f"learning_rate='auto': 1/L = {st['learning_rate']:.4g}")
    if "checkpoint" in st:
        report["checkpoint"] = {k: st[k] for k in ("checkpoint", "resumed_from_step", "checkpoints", "checkpoint_seconds")}
        if st["resumed_from_step"]:
            print(f"resumed from step {st['resumed_from_step']} of {st['checkpoint']}")
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
        # All or none: a failed write leaves the earlier outputs as they were.
        outputs = {
            out_dir / "params.npz": _io.npz_bytes(W=result.params.W, b=result.params.b),
            out_dir / "history.npz": _io.npz_bytes(losses=result.losses),
        }
        if not multi:  # a sample of rows for gradfit plot (rows of other processes are not here)
            outputs[out_dir / "predictions.npz"] = _io.npz_bytes(**_prediction_sample(ds.X, ds.y, result, f["loss"]))
        outputs[out_dir / "report.json"] = _io.json_bytes(report)
        _io.write_many(outputs)
        print(f"wrote {out_dir}/params.npz, history.npz, {'' if multi else 'predictions.npz, '}report.json")
    return 1 if result.diverged else 0


def _prediction_sample(X, y, result, loss: str, size: int = 1000, seed: int = 0) -> dict:
    """Up to ``size`` rows (a fixed random sample) with targets and predictions, for plots.

    ``prediction`` is ``X @ W + b``, or ``sigmoid`` of it (a probability) for bce.
    """
    rows = np.sort(np.random.default_rng(seed).permutation(len(X))[:size])
    pred = np.asarray(result.predict(np.asarray(X[rows])), np.float64)
    if loss == "bce":
        pred = 1 / (1 + np.exp(-pred))
    return {"rows": rows, "target": np.asarray(y[rows]), "prediction": pred}


def cmd_sweep(args) -> int:
    from gradfit import config, sweep_runs

    from gradfit import progress as progress_bars

    cfg = config.load(args.config, args.overrides)
    show = args.progress
    if show is None:  # on by default where someone watches
        show = sys.stderr.isatty() and progress_bars.available()
    elif show and not progress_bars.available():
        raise ValueError("--progress needs tqdm: pip install 'gradfit[progress]', or drop --progress")
    summary = sweep_runs.run_config(cfg, progress=show)
    return 0 if len(summary["rows"]) > summary["diverged"] else 1


def cmd_plot(args) -> int:
    from gradfit import plotting

    try:
        paths = plotting.plot(args.run_dir)
    except ImportError as e:
        print(f"gradfit plot: error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"wrote {path}")
    return 0
def _cmd_fit_stream(cfg, args) -> int:
    """``gradfit fit`` with ``data.stream = true``: X and y streamed from .npy files."""
    from gradfit import _io, config, stream

    if args.resume:
        raise config.ConfigError("--resume is not available for streamed fits (data.stream = true) yet: run without it")

    d = cfg["data"]
    if d["y_source"] is None:
        raise ValueError("data.stream = true needs data.y_source, the .npy file of targets (data.source is X)")
    f = dict(cfg["fit"])
    if f.pop("init") not in (None, "zeros"):
        raise ValueError("streamed fits start from zeros: leave fit.init unset")
    if f.pop("devices", None) is not None or any(v is not None for k, v in cfg.get("distributed", {}).items()
                                                  if k != "initialization_timeout"):
        raise ValueError("data.stream = true runs in one process on one device: leave fit.devices and [distributed] unset")
    f.pop("shuffle", None)  # in-memory minibatch sampling; streamed fits take [stream] shuffle
    options = f.pop("optimizer_options")
    lr = f.pop("learning_rate")
    out_dir = Path(cfg["output"]["dir"])
    _io.check_writable(out_dir)  # fail now, not after the fit
    if d["standardize"]:
        print("note: data.standardize is not applied to streamed data (the files are used as stored)")
    print(f"data: streamed from {d['source']} and {d['y_source']}")
    wall = time.perf_counter()
    result = stream.fit_streaming(
        d["source"], d["y_source"], learning_rate=lr, optimizer_options=options, dtype=d["dtype"],
        **f, **cfg["stream"],
    )
    wall = time.perf_counter() - wall
    st = result.stats
    report = {
        "loss": float(result.loss), "steps": result.steps, "converged": result.converged,
        "diverged": result.diverged, "wall_seconds": wall,
        **{k: st[k] for k in ("compile_seconds", "run_seconds", "stream_seconds", "passes", "bytes_per_pass",
                              "chunk_rows", "n_chunks", "method", "backend", "dtype")},
        "config": cfg,
    }
    print(f"loss {report['loss']:.6g} after {result.steps} steps "
          f"(converged={result.converged}, diverged={result.diverged}); method {st['method']}, "
          f"{st['passes']} streamed passes of {st['bytes_per_pass'] / 1e9:.3g} GB")
    print(f"time: compile {st['compile_seconds']:.3f} s, run {st['run_seconds']:.3f} s "
          f"(streaming {st['stream_seconds']:.3f} s) on {st['backend']}")
    stats = st.get("sufficient_statistics")
    if stats is not None and np.ndim(cfg["fit"]["l2"]) == 0:
        opt, j_opt = stream.solve_statistics(
            stats, reduction=f["reduction"], l2=float(cfg["fit"]["l2"]), fit_intercept=f["fit_intercept"]
        )
        W = np.asarray(result.params.W, np.float64)
        dist = float(np.linalg.norm(W - opt.W) / max(np.linalg.norm(opt.W), 1e-300))
        gap = (report["loss"] - j_opt) / max(abs(j_opt), 1e-300)
        report.update(optimum_loss=j_opt, relative_loss_gap=gap, relative_distance_to_optimum=dist)
        print(f"least-squares optimum (from the streamed statistics): loss {j_opt:.6g}; relative gap {gap:.3e}; "
              f"||W - W*|| / ||W*|| = {dist:.3e}")
    _io.write_many({  # all or none: a failed write leaves the earlier outputs as they were
        out_dir / "params.npz": _io.npz_bytes(W=result.params.W, b=result.params.b),
        out_dir / "history.npz": _io.npz_bytes(losses=result.losses),
        out_dir / "report.json": _io.json_bytes(report),
    })
    print(f"wrote {out_dir}/params.npz, history.npz, report.json")
    return 1 if result.diverged else 0


def cmd_check_grads(args) -> int:
    import jax

    from gradfit import gradients

    with jax.enable_x64(True):  # float64 rows too; the setting is restored afterwards
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
    p.add_argument(
        "--resume", action="store_true",
        help="continue from the checkpoint ([checkpoint] path, default <output.dir>/checkpoint.npz) if it exists",
    )
    p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="show a progress bar on stderr (default: when stderr is a terminal and tqdm is installed)",
    )
    p.set_defaults(func=cmd_fit)
    p = sub.add_parser("sweep", help="fit every member of a [sweep] grid (one compile per group); resumable")
    _add_config_args(p)
    p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="one progress bar per group on stderr (default: when stderr is a terminal and tqdm is installed)",
    )
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("plot", help="draw a fit or sweep output folder as PNG (needs matplotlib)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the output.dir of a gradfit fit or gradfit sweep")
    p.set_defaults(func=cmd_plot)
    p = sub.add_parser("check-grads", help="compare the hand-derived gradients with jax.grad")
    p.set_defaults(func=cmd_check_grads)
    p = sub.add_parser("info", help="print the JAX backend and devices")
    p.set_defaults(func=cmd_info)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"gradfit: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning  # a warning is one line, no source excerpt
            return args.func(args)
    except ValueError as e:  # user mistakes: one clear line, no traceback
        print(f"gradfit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # includes TimeoutError (a coordinator that never answered)
        print(f"gradfit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
