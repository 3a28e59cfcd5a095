"""A sweep run folder: one file per group (so a rerun resumes), a table, histories and a plot.

``run_config(cfg)`` is what ``gradfit sweep`` and ``scripts/sweep.py`` call. In ``output.dir``
it writes, each file atomically (:mod:`gradfit._io`):

- ``sweep.json``: the config, its fingerprint and the groups (one compiled program each);
- ``group_NNN.npz``: each group's members as soon as the group finishes. A rerun of the same
  config skips the groups already written; a different config in the same folder is an error;
- ``results.csv``: one row per member: group, the grid's values, ``final_loss``, ``steps``,
  ``converged``, ``diverged``, ``seconds`` (the member's run time) and ``group_wall_seconds``;
- ``histories.npz``: ``losses`` (K, T) NaN-padded, the status columns and ``config_<key>``;
- ``params.npz``: ``W`` (K, n[, k]) and ``b`` (K[, k]);
- ``loss_curves.png`` (and ``heatmap.png`` for a learning_rate x l2 grid) with matplotlib.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from gradfit import _io

_MANIFEST = "sweep.json"
_STATUS = ("final_loss", "steps", "converged", "diverged", "seconds", "group_wall_seconds")


def fit_options(fit_section: dict[str, Any], grid: dict[str, Any]) -> dict[str, Any]:
    """``[fit]`` as gradfit.sweep keywords: keys the grid sweeps are dropped (the grid wins);
    list-valued learning_rate/l2 (per-output) become arrays."""
    options = {k: v for k, v in fit_section.items() if k not in grid}
    options["optimizer_options"] = {k: v for k, v in options.get("optimizer_options", {}).items() if k not in grid}
    for key in ("learning_rate", "l2"):
        if isinstance(options.get(key), list):
            options[key] = np.asarray(options[key])
    if options.get("learning_rate", 0) is None:
        del options["learning_rate"]
    return options


def fingerprint(cfg: dict[str, Any]) -> str:
    """A hash of everything that decides the members' numbers (data, fit, grid)."""
    keep = {"data": cfg["data"], "fit": cfg["fit"], "grid": cfg["sweep"]["grid"]}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _group_path(out_dir: Path, i: int) -> Path:
    return out_dir / f"group_{i:03d}.npz"


def _save_group(path: Path, result, wall: float) -> None:
    _io.write_npz(
        path,
        configs=json.dumps(result.configs, default=str),
        W=result.params.W, b=result.params.b, losses=result.losses, final_loss=result.final_loss,
        steps=result.steps, converged=result.converged, diverged=result.diverged, seconds=result.seconds,
        group_wall_seconds=wall, stats=json.dumps(result.stats, default=str),
    )


def _load_group(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    out["configs"] = json.loads(str(out["configs"]))
    return out


def run_config(cfg: dict[str, Any], *, log: Callable[[str], None] = print, progress: bool = False) -> dict[str, Any]:
    """Run (or resume) the sweep a config describes and write its folder; return a summary.

    ``progress``: one bar per group over its members' steps (:class:`gradfit.progress.MemberBar`).
    """
    import gradfit
    from gradfit import data
    from gradfit.sweep import format_table, split_grid

    grid = cfg["sweep"]["grid"]
    if not grid:
        raise ValueError(
            "the config has no [sweep] grid: add e.g. [sweep] grid = {learning_rate = [0.01, 0.1]} "
            "(examples: configs/sweep_lr.toml)"
        )
    if cfg["sweep"]["memory_budget_mb"] < 0:
        raise ValueError(f"sweep.memory_budget_mb must be >= 0 (0: automatic), got {cfg['sweep']['memory_budget_mb']}")
    out_dir = Path(cfg["output"]["dir"])
    options = fit_options(cfg["fit"], grid)
    parts = split_grid(grid, **options)  # checks the grid before loading data
    ds = data.load(cfg["data"])
    log(f"data: {cfg['data']['source']}  X {ds.X.shape} {ds.X.dtype}  y {ds.y.shape}")

    print_ = fingerprint(cfg)
    manifest_path = out_dir / _MANIFEST
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("fingerprint") != print_:
            raise ValueError(
                f"{out_dir} holds a sweep of a different config (fingerprint {old.get('fingerprint')} "
                f"!= {print_}): choose another output.dir, or delete the folder to start over"
            )
    _io.write_json(manifest_path, {"fingerprint": print_, "groups": parts, "config": cfg})

    groups = []
    for i, part in enumerate(parts):
        path = _group_path(out_dir, i)
        label = {k: v[0] for k, v in part.items() if len(v) == 1 and len(grid[k]) > 1} or "all"
        if path.is_file():
            log(f"group {i + 1}/{len(parts)} {label}: already written, skipped")
            groups.append(_load_group(path))
            continue
        members = math.prod(len(v) for v in part.values())
        log(f"group {i + 1}/{len(parts)} {label}: {members} members ...")
        wall = time.perf_counter()
        result = gradfit.sweep(
            ds.X, ds.y, grid=part, compact=cfg["sweep"]["compact"],
            memory_budget=int(cfg["sweep"]["memory_budget_mb"] * 2**20) or None, progress=progress, **options,
        )
        wall = time.perf_counter() - wall
        st = result.stats
        log(f"  compile {st['compile_seconds']:.2f} s, run {st['run_seconds']:.2f} s, wall {wall:.2f} s "
            f"({st['programs']} programs, {st['member_chunks']} member chunks)")
        _save_group(path, result, wall)
        groups.append(_load_group(path))

    rows, histories = _combine(groups)
    _write_results(out_dir, rows, histories, list(grid))
    log(f"wrote {out_dir}/results.csv, histories.npz, params.npz ({len(rows)} members)")
    plots = []
    if cfg["sweep"]["plot"]:
        try:
            from gradfit import plotting

            plots = plotting.plot_sweep(out_dir)
            log(f"wrote {', '.join(str(p) for p in plots)}")
        except ImportError as e:
            log(f"no plot: {e}")
    log("")
    log(format_table([{k: v for k, v in r.items() if k != "group_wall_seconds"} for r in rows], top=cfg["sweep"]["top"]))
    n_div = sum(r["diverged"] for r in rows)
    return {"rows": rows, "diverged": n_div, "plots": plots, "out_dir": out_dir}


def _combine(groups: list[dict[str, Any]]):
    rows = []
    T = max(g["losses"].shape[-1] for g in groups)
    losses, W, b, status = [], [], [], {k: [] for k in _STATUS}
    for gi, g in enumerate(groups):
        K = len(g["configs"])
        pad = np.full((*g["losses"].shape[:-1], T - g["losses"].shape[-1]), np.nan, g["losses"].dtype)
        losses.append(np.concatenate([g["losses"], pad], axis=-1))
        W.append(g["W"])
        b.append(g["b"])
        steps = g["steps"].reshape(K, -1).max(axis=1)
        converged = g["converged"].reshape(K, -1).all(axis=1)
        diverged = g["diverged"].reshape(K, -1).any(axis=1)
        for i, config in enumerate(g["configs"]):
            row = {"group": gi, **config, "final_loss": float(g["final_loss"][i]), "steps": int(steps[i]),
                   "converged": bool(converged[i]), "diverged": bool(diverged[i]),
                   "seconds": float(g["seconds"][i]), "group_wall_seconds": float(g["group_wall_seconds"])}
            rows.append(row)
            for k in _STATUS:
                status[k].append(row[k])
    histories = {"losses": np.concatenate(losses), "W": np.concatenate(W), "b": np.concatenate(b)}
    histories.update({k: np.asarray(v) for k, v in status.items()})
    return rows, histories


def _column(values: list) -> np.ndarray:
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return np.asarray(values, np.float64)
    return np.asarray([str(v) for v in values])


def _write_results(out_dir: Path, rows: list[dict], histories: dict, keys: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    _io.write_text(out_dir / "results.csv", buf.getvalue())
    configs = {f"config_{k}": _column([r[k] for r in rows]) for k in keys}
    _io.write_npz(
        out_dir / "histories.npz", losses=histories["losses"], keys=np.asarray(keys),
        **{k: histories[k] for k in _STATUS}, **configs,
    )
    _io.write_npz(out_dir / "params.npz", W=histories["W"], b=histories["b"])

