"""PNG pictures of a run folder (matplotlib, the extra ``gradfit[plot]``), drawn on an Agg canvas (no
global backend change, no display) and written atomically: for a fit, ``loss_curve.png`` and
``predictions.png``; for a sweep, ``loss_curves.png``, over learning_rate x l2 ``heatmap.png``, and when it was
cross-validated ``validation_curve.png``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from gradfit import _io


def _axes(width: float, height: float, n: int = 1):
    """A new figure's ``n`` axes side by side (one Axes when n is 1)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'gradfit[plot]'") from None
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig.add_subplot() if n == 1 else fig.subplots(1, n)


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return _io.write_bytes(path, buf.getvalue())


def _positive(losses: np.ndarray) -> np.ndarray:
    """Loss values drawable on a log axis (non-positive and non-finite values as NaN)."""
    out = np.asarray(losses, np.float64)
    return np.where(np.isfinite(out) & (out > 0), out, np.nan)


def plot(run_dir) -> list[Path]:
    """Draw a fit or a sweep folder (found by its files); return the PNGs written."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run folder {str(run_dir)!r} does not exist: give the output.dir of a gradfit fit or sweep")
    if (run_dir / "histories.npz").is_file():
        return plot_sweep(run_dir)
    if (run_dir / "history.npz").is_file():
        return plot_fit(run_dir)
    raise ValueError(f"{run_dir} holds neither a fit (history.npz) nor a sweep (histories.npz): "
                     "run gradfit fit or gradfit sweep with output.dir set to it first")


def plot_fit(run_dir) -> list[Path]:
    """``loss_curve.png`` (objective per step, log scale) and, from ``predictions.npz``, ``predictions.png``."""
    run_dir, fix = Path(run_dir), "rerun gradfit fit with output.dir set to the folder"
    losses = np.asarray(_io.read_npz(run_dir / "history.npz", ["losses"], fix)["losses"], np.float64)
    report = _io.read_json(run_dir / "report.json", (), fix) if (run_dir / "report.json").is_file() else {}
    ax = _axes(7, 4.2)
    curves = losses.reshape(-1, losses.shape[-1])
    for i, curve in enumerate(curves):
        ax.plot(np.arange(len(curve)), _positive(curve), lw=1.5, label=f"output {i}" if len(curves) > 1 else None)
    if report.get("optimum_loss") is not None:
        ax.axhline(report["optimum_loss"], color="k", ls=":", lw=1, label="least-squares optimum")
    title = f": final {report.get('loss', float('nan')):.4g} after {report.get('steps')} steps" if report else ""
    ax.set(yscale="log", xlabel="step", ylabel="objective J (log scale)", title="Loss vs step" + title)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    written = [_save(ax.figure, run_dir / "loss_curve.png")]
    if (run_dir / "predictions.npz").is_file():
        z = _io.read_npz(run_dir / "predictions.npz", ["target", "prediction"], fix)
        target, prediction = np.asarray(z["target"], np.float64), np.asarray(z["prediction"], np.float64)
        loss = report.get("config", {}).get("fit", {}).get("loss", "mse")
        written.append(_plot_predictions(target, prediction, loss, run_dir))
    return written


def _plot_predictions(target: np.ndarray, prediction: np.ndarray, loss: str, run_dir: Path) -> Path:
    """Target and prediction bars for a few rows, their residuals, and a scatter (bce: histograms) of all."""
    t, p = target.reshape(len(target), -1)[:, 0], prediction.reshape(len(prediction), -1)[:, 0]
    ax1, ax2, ax3 = _axes(15, 4.4, 3)
    x = np.arange(rows := min(20, len(t)))
    ax1.bar(x - 0.2, t[:rows], 0.4, label="target", color="steelblue")
    ax1.bar(x + 0.2, p[:rows], 0.4, label="P(y=1)" if loss == "bce" else "prediction", color="coral", alpha=0.9)
    ax1.set(xlabel="sample (first rows of the saved sample)", ylabel="value", title="Target vs predicted")
    ax1.legend()
    ax2.bar(x, t[:rows] - p[:rows], color="gray")
    ax2.axhline(0, color="k", lw=0.5)
    ax2.set(xlabel="sample", ylabel="target - prediction", title="Residuals")
    for ax in (ax1, ax2):
        ax.grid(True, axis="y", alpha=0.3)
    if loss == "bce":
        for cls, color in ((0, "steelblue"), (1, "coral")):
            ax3.hist(p[t == cls], bins=30, range=(0, 1), alpha=0.6, color=color, label=f"target {cls}")
        ax3.set(xlabel="predicted P(y=1)", ylabel="rows", title=f"Predicted probability by class ({len(t)} rows)")
    else:
        ax3.scatter(t, p, s=6, alpha=0.5)
        lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        ax3.plot([lo, hi], [lo, hi], "k--", lw=1, label="prediction = target")
        ax3.set(xlabel="target", ylabel="prediction", title=f"Predicted vs target ({len(t)} rows)")
    ax3.legend()
    ax3.grid(True, alpha=0.3)
    return _save(ax1.figure, run_dir / "predictions.png")


def plot_sweep(run_dir) -> list[Path]:
    """``loss_curves.png``, one curve per member (cross-validated: the mean over folds), for a learning_rate x l2 grid
    ``heatmap.png`` (by mean validation loss when cross-validated), and with validation ``validation_curve.png``."""
    run_dir = Path(run_dir)
    h = _io.read_npz(run_dir / "histories.npz", ["keys", "losses", "final_loss", "diverged"], "rerun gradfit sweep "
                     "with output.dir set to the folder (it rewrites histories.npz from the group files)")
    keys, K = [str(k) for k in h["keys"]], len(h["final_loss"])
    configs = [{k: h[f"config_{k}"][i].item() for k in keys} for i in range(K)]
    losses = h["losses"].reshape(K, -1, h["losses"].shape[-1])[:, 0] if h["losses"].ndim == 3 else h["losses"]
    final, diverged = h["final_loss"], h["diverged"].astype(bool)
    order = np.argsort(np.where(diverged | ~np.isfinite(final), np.inf, final))
    rank, good = np.argsort(order), int((~diverged).sum())
    show = order[: K if K <= 10 else 6].tolist()  # labelled, best first; then the rest
    ax = _axes(9, 5.2)
    import matplotlib  # after _axes, which says how to install it

    steps, first_diverged = np.arange(1, losses.shape[-1] + 1), int(np.argmax(diverged)) if diverged.any() else -1
    for i in show + [i for i in range(K) if i not in show]:
        label = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in configs[i].items())
        label = label if i in show and not diverged[i] else None
        label = f"diverged ({int(diverged.sum())} members)" if i == first_diverged else label
        ax.plot(steps, _positive(losses[i]), lw=1.2, ls="--" if diverged[i] else "-", alpha=0.9, label=label,
                color="red" if diverged[i] else matplotlib.colormaps["viridis"](0.9 * rank[i] / max(good - 1, 1)))
    ok = _positive(losses[~diverged] if good else losses)
    if np.isfinite(ok).any():  # a diverged member's blow-up must not flatten the others
        ax.set_ylim(np.nanmin(ok) / 2, np.nanmax(ok) * 5)
    ax.set(xscale="log", yscale="log", xlabel="step (log scale)", ylabel="objective J (log scale)",
           title=f"Sweep: {K} members (colour: rank by final loss, best dark; red dashed: diverged)")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), title_fontsize=8,
                  title="members, best first" if K <= 10 else "best members")
    written = [_save(ax.figure, run_dir / "loss_curves.png")]
    validated = "val_loss" in h and "val_train_loss" in h
    if validated and (curve := _validation_curve(configs, keys, h, run_dir)) is not None:
        written.append(curve)
    if "learning_rate" in keys and "l2" in keys:
        value = np.mean(h["val_loss"], axis=1) if validated else final
        written.append(_heatmap(configs, value, diverged, run_dir, "mean validation loss" if validated else
                                "final objective"))
    return written


def _validation_curve(configs, keys, h, run_dir: Path) -> Path | None:
    """Training and validation loss (mean over folds, a +-1 std band) against each swept numeric key, the other
    keys at the best member's values; the best marked. None when no numeric key takes several values."""
    val, train = np.asarray(h["val_loss"], np.float64), np.asarray(h["val_train_loss"], np.float64)
    best = int(h["best"])
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    swept = [k for k in keys if len({c[k] for c in configs}) > 1 and all(number(c[k]) for c in configs)]
    if not swept:
        return None
    axes = np.atleast_1d(_axes(5.2 * len(swept), 4.2, len(swept)))
    ref = configs[best if best >= 0 else 0]
    for ax, key in zip(axes, swept):
        idx = sorted((i for i, c in enumerate(configs) if all(c[k] == ref[k] for k in keys if k != key)),
                     key=lambda i: configs[i][key])
        x = np.asarray([configs[i][key] for i in idx], np.float64)
        for name, s, color in (("training", train, "tab:blue"), ("validation", val, "tab:orange")):
            mean, std = s[idx].mean(axis=1), s[idx].std(axis=1)
            ax.plot(x, mean, "o-", color=color, lw=1.5, ms=4, label=f"{name} loss")
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, lw=0)
        if best >= 0:
            ax.plot([configs[best][key]], [val[best].mean()], "*", color="red", ms=14, zorder=5,
                    label=f"best: {key}={configs[best][key]:g}")
        positive = x[x > 0]
        if positive.size and positive.max() > 10 * positive.min():
            ax.set_xscale("log") if positive.size == x.size else ax.set_xscale("symlog", linthresh=positive.min())
        finite = np.concatenate([val[idx].ravel(), train[idx].ravel()])
        if np.all(finite[np.isfinite(finite)] > 0):
            ax.set_yscale("log")
        others = ", ".join(f"{k}={ref[k]}" for k in keys if k != key)
        ax.set(xlabel=key, ylabel="loss (mean over folds)", title=f"Validation curve: {key}" +
               (f"\n({others})" if others else ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(axes[0].figure, run_dir / "validation_curve.png")


def _heatmap(configs, final, diverged, run_dir: Path, what: str = "final objective") -> Path:
    import matplotlib
    from matplotlib.colors import LogNorm

    lrs, l2s = sorted({c["learning_rate"] for c in configs}), sorted({c["l2"] for c in configs})
    grid = np.full((len(l2s), len(lrs)), np.inf)
    for c, f, d in zip(configs, final, diverged):
        i, j = l2s.index(c["l2"]), lrs.index(c["learning_rate"])
        grid[i, j] = min(grid[i, j], np.inf if d or not np.isfinite(f) else float(f))
    ax = _axes(1.2 + 0.9 * len(lrs), 1.2 + 0.6 * len(l2s))
    cmap = matplotlib.colormaps["viridis_r"].with_extremes(bad="lightgray")
    finite = grid[np.isfinite(grid) & (grid > 0)]
    norm = LogNorm(vmin=finite.min(), vmax=finite.max()) if finite.size and finite.min() < finite.max() else None
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto", origin="lower")
    for (i, j), value in np.ndenumerate(grid):
        dark = np.isfinite(value) and norm is not None and norm(value) > 0.6  # dark end of viridis_r
        ax.text(j, i, f"{value:.4g}" if np.isfinite(value) else "div.", ha="center", va="center", fontsize=7,
                color="white" if dark else "black" if np.isfinite(value) else "red")
    ax.set_xticks(range(len(lrs)), [f"{v:g}" for v in lrs], rotation=45)
    ax.set_yticks(range(len(l2s)), [f"{v:g}" for v in l2s])
    ax.set(xlabel="learning_rate", ylabel="l2", title=f"{what.capitalize()} (best over other keys; grey: diverged)")
    ax.figure.colorbar(image, ax=ax, label=what)
    return _save(ax.figure, run_dir / "heatmap.png")
