"""Run folders: what a config's fit or sweep writes, every file atomically, under a lock (:mod:`gradfit._io`).

:func:`fit_config` (``gradfit fit``) writes, all or none, ``params.npz`` (``W``, ``b``, in the data's units),
``model.json`` (loss, link, dtype, columns: what :func:`predict_run` needs), ``history.npz``, ``report.json`` and
``predictions.npz`` (a sample of rows, for ``gradfit plot``). :func:`sweep_config` (``gradfit sweep``) writes
``sweep.json`` (config, fingerprint, groups), ``group_NNN.npz`` as each group finishes (a rerun of the same config
and data skips those), then ``results.csv``, ``histories.npz``, ``params.npz`` (README, "Sweeps"); with ``[sweep]
cv`` or ``validation_fraction``, validation scores per member (mean and std over folds, the best row marked)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from gradfit import _cv, _io, _stats, config, data, distributed, plotting, solver, stream, sweeps
from gradfit._options import Every
from gradfit._params import predict
from gradfit._types import Params

Log = Callable[[str], None]


def _out_dir(cfg: dict) -> Path:
    """output.dir with ``~`` expanded; "" is refused (it would write into the current folder)."""
    if not str(cfg["output"]["dir"]).strip():
        raise config.ConfigError('output.dir is "": name a folder for the run\'s files, e.g. --set output.dir=runs/a')
    return Path(cfg["output"]["dir"]).expanduser()


def _fit_options(cfg: dict, *, resume: bool, restart: bool, progress: bool, multi: bool, log: Log) -> dict:
    """fit's options from ``[fit]`` and ``[checkpoint]`` (checked before any compute)."""
    f = {k: np.asarray(v) if k in ("learning_rate", "l2") and isinstance(v, list) else v for k, v in cfg["fit"].items()}
    ck = cfg["checkpoint"]
    for key in ("every_steps", "every_seconds"):
        if ck[key] < 0:
            raise config.ConfigError(f"checkpoint.{key} must be >= 0 (0 turns it off), got {ck[key]}")
    every = Every(ck["every_steps"] or None, ck["every_seconds"] or None)
    if multi or every == Every():
        if resume:
            raise config.ConfigError("--resume is not available with several processes yet: run without --resume"
                                     if multi else "--resume needs checkpoints, but checkpoint.every_steps and "
                                     "checkpoint.every_seconds are both 0: set one of them")
        return {**f, "progress": progress and distributed.is_writer()}
    path = Path(ck["path"]).expanduser() if ck["path"] else _out_dir(cfg) / "checkpoint.npz"
    if resume and not path.exists():
        log(f"no checkpoint at {path}: starting afresh")
    return {**f, "progress": progress, "checkpoint": path, "checkpoint_every": every, "resume": resume,
            "overwrite": restart}


def fit_config(cfg: dict, *, resume: bool = False, restart: bool = False, progress: bool = False,
               log: Log = print) -> solver.FitResult:
    """Fit as a config says and write its run folder, holding its lock (a second run there is refused); return
    the result. ``resume``/``restart``: continue the checkpoint, or start over though it holds an unfinished run."""
    d = cfg["data"]
    if d["dtype"] == "float64" and not jax.config.jax_enable_x64:
        with jax.enable_x64(True):  # float64 data, float64 fit; the setting is restored afterwards
            return fit_config(cfg, resume=resume, restart=restart, progress=progress, log=log)
    multi = not d["stream"] and distributed.initialize_from_config(cfg["distributed"]) is not None
    out_dir = _io.check_writable(_out_dir(cfg))  # fail now, not after the fit
    options = _fit_options(cfg, resume=resume, restart=restart, progress=progress, multi=multi, log=log)
    if d["stream"]:
        if d["y_source"] is None:
            raise ValueError("data.stream = true needs data.y_source, the .npy file of targets (data.source is X)")
        hosts = [v for k, v in cfg.get("distributed", {}).items() if k != "initialization_timeout"]
        if options.pop("devices", None) is not None or any(v is not None for v in hosts):
            raise ValueError("data.stream = true runs in one process on one device: leave fit.devices and "
                             "[distributed] unset")
        if d["features"] is not None or d["target"] is not None:
            raise ValueError("data.stream = true reads every column of data.source as features and data.y_source as "
                             "the target: leave data.features and data.target unset")
    with _io.locked(out_dir, hold=distributed.is_writer()):  # process 0 alone writes
        return _fit(cfg, options, multi, out_dir, log)


def _fit(cfg: dict, options: dict, multi: bool, out_dir: Path, log: Log) -> solver.FitResult:
    """:func:`fit_config`'s fit and writes."""
    d, wall, ds = cfg["data"], time.perf_counter(), None
    if d["stream"]:
        result = stream.fit_streaming(d["source"], d["y_source"], dtype=d["dtype"], **options, **cfg["stream"])
        names = (data.column_names(d["source"]), ["y"] if result.params.b.ndim == 0 else
                 [f"y{j}" for j in range(result.params.b.shape[0])])
        log(f"data: streamed from {d['source']} and {d['y_source']}; {_columns(*names)}")
    else:
        if multi and str(d["source"]).endswith(".npy"):  # each process reads its own rows
            loaded = distributed.load_rows(d["source"], target=d["target"], features=d["features"], dtype=d["dtype"],
                                           devices=options.pop("devices"))
            n_cols = len(data.column_names(d["source"]))
            target = (-1 if d["target"] is None else d["target"]) % n_cols
            columns = d["features"] or [j for j in range(n_cols) if j != target]
            ds = data.Loaded(loaded.data.X, loaded.data.y, None, [str(j) for j in columns], [str(target)])
            extra = {"sample_weight": loaded.data.sample_weight, "n_rows": loaded.n_rows}
        else:
            ds, extra = data.load(d), {}
        names = ds.features, ds.target
        log(f"data: {d['source']}  X {ds.X.shape} {ds.X.dtype}  y {ds.y.shape}; {_columns(*names)}")
        shown = ("loss", "reduction", "optimizer", "learning_rate", "steps", "tol", "l2")
        log(f"fit: {', '.join(f'{k}={options[k]}' for k in shown)}")
        result = solver.fit(ds.X, ds.y, **options, **extra)
    report = _report(result, cfg, time.perf_counter() - wall, ds, log)
    if distributed.is_writer():  # results are replicated: process 0 writes them once
        model = {"loss": options["loss"], "link": "sigmoid" if options["loss"] == "bce" else "identity",
                 "dtype": d["dtype"], "features": names[0], "target": names[1], "source": d["source"],
                 "standardized_by_loader": d["source"] in ("diabetes", "breast_cancer")}
        files = {out_dir / "params.npz": _io.npz_bytes(W=result.params.W, b=result.params.b),
                 out_dir / "model.json": _io.json_bytes(model),
                 out_dir / "history.npz": _io.npz_bytes(losses=result.losses)}
        if ds is not None and not multi:  # for gradfit plot: a fixed random sample of up to 1000 rows
            rows = np.sort(np.random.default_rng(0).permutation(len(ds.X))[:1000])
            pred = np.asarray(result.predict(np.asarray(ds.X[rows])), np.float64)
            pred = 1 / (1 + np.exp(-pred)) if options["loss"] == "bce" else pred  # bce: the probability
            target = np.asarray(ds.y[rows])
            files[out_dir / "predictions.npz"] = _io.npz_bytes(rows=rows, target=target, prediction=pred)
        files[out_dir / "report.json"] = _io.json_bytes(report)
        _io.write_many(files)  # all or none: a failed write leaves the earlier outputs as they were
        log(f"wrote {out_dir}/{', '.join(p.name for p in files)}")
    return result


def _columns(features: list[str], target: list[str]) -> str:
    """``features 'a', 'b', ... (n); target 'y'``: what the log says the fit used."""
    shown = ", ".join(map(repr, features[:8])) + (f", ... ({len(features)})" if len(features) > 8 else "")
    return f"features {shown}; target {', '.join(map(repr, target))}"


def predict_run(run_dir: str | Path, source: str | Path, output: str | Path | None = None) -> np.ndarray:
    """Apply the model of a ``gradfit fit`` run folder to the rows of a data file (``gradfit predict``).

    Reads ``model.json`` and ``params.npz``, takes the model's feature columns from ``source`` by name (a ``.npy`` by
    index: a table laid out as the fit's, or its feature columns alone), in the fit's dtype, and returns ``X @ W +
    b`` (``FitResult.predict``), or ``sigmoid`` of it, the probability of class 1, for bce: (m,) or (m, k).
    ``output``: a ``.csv`` (a header, then a row per row) or ``.npy`` file, written atomically, or ``"-"``, the CSV
    on stdout."""
    run_dir, fix = Path(run_dir), "rerun the gradfit fit that wrote the folder"
    try:
        model = _io.read_json(run_dir / "model.json", ("link", "dtype", "features", "target"), fix)
        params = _io.read_npz(run_dir / "params.npz", ("W", "b"), fix)
    except FileNotFoundError as e:
        raise ValueError(f"{run_dir} is not the output.dir of a gradfit fit ({Path(e.filename).name} is missing): "
                         "give the folder a fit wrote (a sweep folder holds many models)") from None
    if output not in (None, "-") and Path(output).suffix.lower() not in (".csv", ".npy"):
        raise ValueError(f"--output {str(output)!r}: write predictions to a .csv or .npy file")
    W, b, features = params["W"], params["b"], model["features"]
    if Path(source).suffix.lower() == ".npy":
        if not all(c.isdigit() for c in features):
            raise ValueError(f"{source} is a .npy table without column names, but the model's features are named "
                             f"({', '.join(features[:4])}, ...): give a .csv, .parquet or .npz with them")
        features, n_cols = [int(c) for c in features], len(data.column_names(source))
        width = 1 + max(features + [int(t) for t in model["target"] if t.isdigit()])  # the fit's table
        features = list(range(n_cols)) if n_cols == len(features) < width else features  # or the features alone
        if n_cols not in (width, len(features)):
            raise ValueError(f"{source} has {n_cols} columns, but the model takes {len(features)} features, columns "
                             f"{model['features'][:8]} of a {width}-column table: give a .npy laid out as the fit's "
                             f"data, or its {len(features)} feature columns alone")
    x_dtype = np.dtype(jnp.bfloat16) if model["dtype"] == "bfloat16" else np.dtype(model["dtype"])
    X = data.read_columns(source, [], features).X  # as data.load stores it: 16-bit floats by way of float32
    X = np.asarray(X, x_dtype if x_dtype.itemsize > 2 else np.float32).astype(x_dtype)
    with jax.enable_x64(W.dtype == np.float64):  # as the fit computed: FitResult.predict's product
        scores = np.asarray(predict(Params(jnp.asarray(W), jnp.asarray(b)), jnp.asarray(X)))
    out = 1 / (1 + np.exp(-scores.astype(np.float64))) if model["link"] == "sigmoid" else scores
    if output is not None and str(output).lower().endswith(".npy"):
        buf = io.BytesIO()
        np.save(buf, out)
        _io.write_bytes(output, buf.getvalue())
    elif output is not None:
        names = ["probability"] if model["link"] == "sigmoid" else [f"predicted_{t}" for t in model["target"]]
        text = io.StringIO()
        np.savetxt(text, out.reshape(len(out), -1), delimiter=",", header=",".join(names), comments="",
                   fmt="%.17g" if W.dtype == np.float64 else "%.9g")  # every digit of the dtype
        sys.stdout.write(text.getvalue()) if output == "-" else _io.write_text(output, text.getvalue())
    return out


def _report(result: solver.FitResult, cfg: dict, wall: float, ds, log: Log) -> dict:
    """report.json: status, timings, plan, health, the distance to the optimum, the config."""
    st = result.stats
    keys = ("compile_seconds", "run_seconds", "backend", "plan", "learning_rate", "condition_number", "separable",
            "diverged_at_step", "suggested_learning_rate", "stream_seconds", "passes", "bytes_per_pass", "chunk_rows",
            "n_chunks", "dtype")
    report = {"loss": float(np.sum(result.loss)), "steps": result.steps, "status": result.status,
              "converged": result.converged, "diverged": result.diverged, "grad_norm": st["grad_norm"],
              "wall_seconds": wall, **{k: st[k] for k in keys if k in st},
              "fit_devices": st["devices"], "devices": [str(d) for d in jax.devices()]}  # fit_devices: the rows' split
    if "checkpoint" in st:
        names = ("checkpoint", "resumed_from_step", "checkpoints", "checkpoint_seconds")
        report["checkpoint"] = {k: st[k] for k in names}
        if st["resumed_from_step"]:
            log(f"resumed from step {st['resumed_from_step']} of {st['checkpoint']}")
    if "learning_rate" in st:
        log(f"learning_rate='auto': 1/L = {st['learning_rate']:.4g}")
    log(f"loss {report['loss']:.6g} after {result.steps} steps: {result.status} (scaled gradient norm "
        f"{np.max(st['grad_norm']):.3g})")
    per_step = 1e3 * st["run_seconds"] / max(int(np.max(result.steps)), 1)
    log(f"time: compile {st['compile_seconds']:.3f} s, run {st['run_seconds']:.3f} s ({per_step:.3f} ms/step) "
        f"on {st['backend']}, plan {st['plan']!r}" + (f", {st['passes']} streamed passes" if "passes" in st else ""))
    _optimum(report, result, cfg, ds, log)
    if ds is not None and ds.truth is not None:
        err = float(np.linalg.norm(np.asarray(result.params.W) - ds.truth.W) / np.linalg.norm(ds.truth.W))
        report["relative_error_to_truth"] = err
        log(f"known truth: ||W - W_true|| / ||W_true|| = {err:.3e}")
    report["config"] = cfg
    return report


def _optimum(report: dict, result: solver.FitResult, cfg: dict, ds, log: Log) -> None:
    """For mse with a scalar l2: the least-squares optimum (:func:`gradfit.stream.least_squares`)."""
    f = cfg["fit"]
    if f["loss"] != "mse" or np.ndim(f["l2"]) != 0:
        return
    stats = result.stats.get("sufficient_statistics")
    if stats is None:
        if ds is None or not isinstance(ds.X, np.ndarray):
            return
        with jax.enable_x64(True):
            stats = _stats.sufficient_statistics(jnp.asarray(ds.X, jnp.float64), jnp.asarray(ds.y, jnp.float64))
    opt, j_opt = _stats.least_squares(stats, reduction=f["reduction"], l2=float(f["l2"]),
                                      fit_intercept=f["fit_intercept"])
    dist = float(np.linalg.norm(np.asarray(result.params.W, np.float64) - opt.W) / max(np.linalg.norm(opt.W), 1e-300))
    gap = (report["loss"] - j_opt) / max(abs(j_opt), 1e-300)
    report.update(optimum_loss=j_opt, relative_loss_gap=gap, relative_distance_to_optimum=dist)
    log(f"least-squares optimum: loss {j_opt:.6g}; relative gap {gap:.3e}; ||W - W*|| / ||W*|| = {dist:.3e}")


_STATUS = ("final_loss", "steps", "converged", "diverged", "status", "seconds", "group_wall_seconds")


def sweep_options(fit_section: dict[str, Any], grid: dict[str, Any]) -> dict[str, Any]:
    """``[fit]`` as gradfit.sweep keywords: keys the grid sweeps are dropped (the grid wins);
    list-valued learning_rate/l2 (per-output) become arrays."""
    options = {k: np.asarray(v) if k in ("learning_rate", "l2") and isinstance(v, list) else v
               for k, v in fit_section.items() if k not in grid}
    options["optimizer_options"] = {k: v for k, v in options.get("optimizer_options", {}).items() if k not in grid}
    if options.get("learning_rate", 0) is None:
        del options["learning_rate"]
    return options


def fingerprint(cfg: dict[str, Any], ds=None) -> str:
    """A hash of everything that decides the members' numbers: ``[data]``, ``[fit]``, the grid and, given,
    the loaded data ``ds`` (its X and y: a data file changed under the same path changes the hash)."""
    keep = {"data": cfg["data"], "fit": cfg["fit"], "grid": cfg["sweep"]["grid"]}
    if cfg["sweep"].get("cv") or cfg["sweep"].get("validation_fraction"):  # absent: earlier folders keep their hash
        keep["validation"] = [cfg["sweep"]["cv"], cfg["sweep"]["validation_fraction"]]
    h = hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode())
    for a in () if ds is None else (ds.X, ds.y):
        h.update(f"{a.shape} {a.dtype}".encode())
        h.update(np.ascontiguousarray(a).view(np.uint8))
    return h.hexdigest()[:16]


def sweep_config(cfg: dict[str, Any], *, log: Log = print, progress: bool = False) -> dict[str, Any]:
    """Run (or resume) the sweep a config describes and write its folder, holding its lock; return a summary.
    ``progress``: one bar per group over its members' steps (:class:`gradfit.progress.MemberBar`)."""
    if cfg["data"]["dtype"] == "float64" and not jax.config.jax_enable_x64:
        with jax.enable_x64(True):  # float64 data, float64 members; the setting is restored afterwards
            return sweep_config(cfg, log=log, progress=progress)
    grid = cfg["sweep"]["grid"]
    if not grid:
        raise ValueError("the config has no [sweep] grid: add e.g. [sweep] grid = {learning_rate = [0.01, 0.1]} "
                         "(examples: configs/sweep_lr.toml)")
    if cfg["sweep"]["memory_budget_mb"] < 0:
        raise ValueError(f"sweep.memory_budget_mb must be >= 0 (0: automatic), got {cfg['sweep']['memory_budget_mb']}")
    cv, fraction = cfg["sweep"]["cv"], cfg["sweep"]["validation_fraction"]
    if cv < 0 or cv == 1 or not 0 <= fraction < 1 or (cv and fraction):
        raise ValueError(f"sweep.cv = {cv}, sweep.validation_fraction = {fraction}: set cv to a number of folds >= 2 "
                         "or validation_fraction in (0, 1) for one held-out part, not both (0: no validation)")
    if cfg["sweep"]["warm_start"] and "l2" not in grid:
        raise ValueError("sweep.warm_start = true runs the members as a path of l2 values: put l2 in [sweep] grid "
                         "(e.g. l2 = [1.0, 0.1, 0.01]), or set warm_start = false")
    out_dir = _io.check_writable(_out_dir(cfg))
    options = sweep_options(cfg["fit"], grid)
    parts = sweeps.split_grid(grid, **options)  # checks the grid before loading data
    ds = data.load(cfg["data"])
    log(f"data: {cfg['data']['source']}  X {ds.X.shape} {ds.X.dtype}  y {ds.y.shape}")
    options["cv"] = _cv.holdout(len(ds.X), fraction, cfg["data"]["seed"]) if fraction else cv or None
    manifest = {"fingerprint": fingerprint(cfg, ds), "groups": parts, "config": cfg}
    path, fix = out_dir / "sweep.json", f"delete the folder {out_dir} to start the sweep over"
    with _io.locked(out_dir):
        old = _io.read_json(path, ["fingerprint"], fix) if path.is_file() else manifest  # an earlier run's
        if old["fingerprint"] != manifest["fingerprint"]:
            raise ValueError(f"{out_dir} holds a sweep of a different config or data (fingerprint {old['fingerprint']}"
                             f" != {manifest['fingerprint']}): choose another output.dir, or {fix}")
        _io.write_json(path, manifest)
        try:
            groups = [_sweep_group(i, part, parts, grid, ds, cfg, options, out_dir, log, progress)
                      for i, part in enumerate(parts)]
        except KeyboardInterrupt as stop:  # for the command's last line (gradfit.cli)
            saved = sum((out_dir / f"group_{i:03d}.npz").is_file() for i in range(len(parts)))
            stop.saved = f"{saved} of {len(parts)} groups saved in {out_dir}"
            raise
        rows = _write_results(out_dir, groups, list(grid))
    log(f"wrote {out_dir}/results.csv, histories.npz, params.npz ({len(rows)} members)")
    if options["cv"] is not None:
        best = next((r for r in rows if r["best"]), None)
        log(f"best by validation loss: {({k: best[k] for k in grid} if best else 'none (every member diverged)')}")
    plots = []
    if cfg["sweep"]["plot"]:
        try:
            plots = plotting.plot_sweep(out_dir)
            log(f"wrote {', '.join(str(p) for p in plots)}")
        except ImportError as e:
            log(f"no plot: {e}")
    log("")
    log(sweeps.format_table([{k: v for k, v in r.items() if k != "group_wall_seconds"} for r in rows],
                            top=cfg["sweep"]["top"]))
    return {"rows": rows, "diverged": sum(r["diverged"] for r in rows), "plots": plots, "out_dir": out_dir}


def _sweep_group(i, part, parts, grid, ds, cfg, options, out_dir: Path, log: Log, progress: bool) -> dict:
    """Run group i and write ``group_NNN.npz`` (a rerun finds it written and skips the run); read it back."""
    path = out_dir / f"group_{i:03d}.npz"
    label = {k: v[0] for k, v in part.items() if len(v) == 1 and len(grid[k]) > 1} or "all"
    if path.is_file():
        log(f"group {i + 1}/{len(parts)} {label}: already written, skipped")
    else:
        log(f"group {i + 1}/{len(parts)} {label}: {math.prod(len(v) for v in part.values())} members ...")
        wall = time.perf_counter()
        result = sweeps.sweep(ds.X, ds.y, grid=part, compact=cfg["sweep"]["compact"], progress=progress,
                              warm_start=cfg["sweep"]["warm_start"],
                              memory_budget=int(cfg["sweep"]["memory_budget_mb"] * 2**20) or None, **options)
        wall, st = time.perf_counter() - wall, result.stats
        log(f"  compile {st['compile_seconds']:.2f} s, run {st['run_seconds']:.2f} s, wall {wall:.2f} s "
            f"({st['programs']} programs, {st['member_chunks']} member chunks)")
        scores = {} if result.cv is None else {"penalty": result.cv.penalty,
                                               **{f"val_{k}": v for k, v in result.cv.scores.items()}}
        _io.write_npz(path, configs=json.dumps(result.configs, default=str), W=result.params.W, b=result.params.b,
                      losses=result.losses, **{k: getattr(result, k) for k in _STATUS[:-1]}, group_wall_seconds=wall,
                      stats=json.dumps(st, default=str), **scores)
    out = _io.read_npz(path, ("configs", "W", "b", "losses", *_STATUS), "delete it to run that group again")
    return {**out, "configs": json.loads(str(out["configs"]))}


def _group_scores(groups: list[dict[str, Any]]) -> _cv.CVScores | None:
    """The groups' validation scores (``val_*`` arrays) as one :class:`gradfit._cv.CVScores` over all members (a
    score some groups lack, e.g. accuracy of mse members, is NaN there); sets each group's ``scores``."""
    if "penalty" not in groups[0]:
        return None
    names = sorted({k[4:] for g in groups for k in g if k.startswith("val_")})
    for g in groups:
        shape = g["val_loss"].shape
        g["scores"] = {k: g.get(f"val_{k}", np.full(shape, np.nan)) for k in names}
    scores = {k: np.concatenate([g["scores"][k] for g in groups]) for k in names}
    return _cv.CVScores([], scores, np.concatenate([g["penalty"] for g in groups]))


def _write_results(out_dir: Path, groups: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """results.csv, histories.npz and params.npz of every group's members; returns their rows
    (:meth:`gradfit.sweeps.SweepResult.rows`, with ``group`` and ``group_wall_seconds``; cross-validated: the
    validation columns, ``best`` over all groups, and the histories averaged over the folds)."""
    rows, T = [], max(g["losses"].shape[-1] for g in groups)
    cv = _group_scores(groups)
    for gi, g in enumerate(groups):
        result = sweeps.SweepResult(g["configs"], None, None, stats={}, **{k: g[k] for k in _STATUS[:-1]},
                                    cv=None if cv is None else cv._replace(scores=g["scores"], penalty=g["penalty"]))
        rows += [{"group": gi, **r, "group_wall_seconds": float(g["group_wall_seconds"])} for r in result.rows()]
    best = None if cv is None else _cv.best_index(cv)
    for i, r in enumerate(rows if cv is not None else ()):
        r["best"] = i == best
    pad = lambda a: np.full((*a.shape[:-1], T - a.shape[-1]), np.nan, a.dtype)  # noqa: E731
    losses = np.concatenate([np.concatenate([g["losses"], pad(g["losses"])], axis=-1) for g in groups])
    if cv is not None:  # (K, F[, k], T): the mean curve over the folds
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # steps no fold ran: NaN
            losses = np.nanmean(losses, axis=1)
    extra = {} if cv is None else {f"val_{k}": v for k, v in cv.scores.items()}
    W, b = (np.concatenate([g[name] for g in groups]) for name in ("W", "b"))

    def config_column(k: str) -> np.ndarray:  # numbers as float64, anything else as text
        values = [r[k] for r in rows]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        return np.asarray(values, np.float64) if numeric else np.asarray([str(v) for v in values])

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    _io.write_text(out_dir / "results.csv", buf.getvalue())
    _io.write_npz(out_dir / "histories.npz", losses=losses, keys=np.asarray(keys),
                  **{k: np.asarray([r[k] for r in rows]) for k in _STATUS},
                  **{f"config_{k}": config_column(k) for k in keys}, **extra,
                  **({} if cv is None else {"best": np.asarray(-1 if best is None else best)}))
    _io.write_npz(out_dir / "params.npz", W=W, b=b)
    return rows
