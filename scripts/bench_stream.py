"""Benchmark: fitting from .npy files bigger than memory (gradfit.stream), peak RSS measured.

    python scripts/bench_stream.py --gb 12 --dir /tmp/gradfit-bench    # the issue's case
    python scripts/bench_stream.py --gb 1                              # a quick run

In one process: (1) a correctness check on a small file against the in-memory fit and
np.linalg.lstsq; (2) writes a synthetic X.npy of --gb GB in chunks (plain file writes, not a
memory map), a linear-regression target y_reg.npy and a 0/1 target y_cls.npy, then drops the
file from the page cache (posix_fadvise DONTNEED, this file only) so the first pass reads
from disk; (3) streams: MSE sufficient statistics in one pass; --bce-steps full-batch BCE
steps (each one pass, plus one pass for the final loss); one minibatch epoch of BCE (plus one
pass for the final loss). It reports seconds, GB/s of X+y read, and the process's peak RSS
(``getrusage`` ru_maxrss and /proc/self/status VmHWM, this process, from its start) and
deletes the files (--keep keeps them). Later passes may be served partly from the kernel's
page cache (machine RAM is printed): the GB/s of the first, cold pass is the disk's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_mb() -> dict:
    """Current and peak resident memory of this process in MB (file-backed pages included)."""
    out = {"peak_ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        for line in open("/proc/self/status"):
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


def mem_total_gb() -> float | None:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        return None


def write_problem(folder: Path, m: int, n: int, dtype, seed: int, block_rows: int = 1 << 16) -> dict:
    """X (m, n) standard normal; y_reg = X w + 0.5 + 0.1 e; y_cls ~ Bernoulli(sigmoid(X w / 2)).

    Written block by block with plain writes (no memory map), then dropped from the page cache.
    """
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n) / np.sqrt(n)
    paths = {name: folder / f"{name}.npy" for name in ("X", "y_reg", "y_cls")}
    shapes = {"X": (m, n), "y_reg": (m,), "y_cls": (m,)}
    files = {}
    for name, path in paths.items():
        f = path.open("wb")
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shapes[name]}
        np.lib.format.write_array_header_2_0(f, header)
        files[name] = f
    start = time.perf_counter()
    for a in range(0, m, block_rows):
        rows = min(block_rows, m - a)
        X = rng.standard_normal((rows, n), dtype=np.float32).astype(dtype, copy=False)
        z = X @ w.astype(dtype)
        files["X"].write(X.tobytes())
        files["y_reg"].write((z + 0.5 + 0.1 * rng.standard_normal(rows, dtype=np.float32)).astype(dtype).tobytes())
        p = 1 / (1 + np.exp(-0.5 * z))
        files["y_cls"].write((rng.random(rows, dtype=np.float32) < p).astype(dtype).tobytes())
    for f in files.values():
        f.flush()
        os.fsync(f.fileno())
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        f.close()
    return {"paths": paths, "write_seconds": time.perf_counter() - start}


def correctness_check(folder: Path, m: int, n: int, chunk_bytes: int) -> dict:
    """Streamed fits against the in-memory fit and np.linalg.lstsq on a small file."""
    import gradfit
    from gradfit import stream

    info = write_problem(folder, m, n, np.float32, seed=1)
    X = np.load(info["paths"]["X"])
    y_reg = np.load(info["paths"]["y_reg"])
    y_cls = np.load(info["paths"]["y_cls"])
    out = {"m": m, "n": n}
    opts = dict(learning_rate=0.1, steps=100)
    mem = gradfit.fit(X, y_reg, **opts)
    for method in ("stats", "hand"):  # two statistics passes, or a pass per step
        got = stream.fit_streaming(info["paths"]["X"], info["paths"]["y_reg"], grad=method, chunk_bytes=chunk_bytes, **opts)
        out[f"mse_{method}_max_abs_W_diff_vs_fit"] = float(np.max(np.abs(np.asarray(got.params.W) - np.asarray(mem.params.W))))
        out[f"mse_{method}_max_rel_loss_diff_vs_fit"] = float(np.max(np.abs(got.losses - mem.losses) / np.abs(mem.losses)))
    stats = stream.sufficient_statistics(info["paths"]["X"], info["paths"]["y_reg"], chunk_bytes=chunk_bytes)
    opt, _ = stream.least_squares(stats)
    A = np.hstack([X.astype(np.float64), np.ones((m, 1))])
    theta = np.linalg.lstsq(A, y_reg.astype(np.float64), rcond=None)[0]
    out["lstsq_from_streamed_stats_rel_err"] = float(np.linalg.norm(opt.W - theta[:n]) / np.linalg.norm(theta[:n]))
    opts = dict(loss="bce", learning_rate=0.5, steps=20)
    mem = gradfit.fit(X, y_cls, **opts)
    got = stream.fit_streaming(info["paths"]["X"], info["paths"]["y_cls"], chunk_bytes=chunk_bytes, **opts)
    out["bce_passes_max_abs_W_diff_vs_fit"] = float(np.max(np.abs(np.asarray(got.params.W) - np.asarray(mem.params.W))))
    out["bce_passes_max_rel_loss_diff_vs_fit"] = float(np.max(np.abs(got.losses - mem.losses) / np.abs(mem.losses)))
    for p in info["paths"].values():
        p.unlink()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=12.0, help="size of X in GB (1e9 bytes)")
    ap.add_argument("--n", type=int, default=64, help="features")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--dir", default=None, help="folder for the files (default: a new temporary folder)")
    ap.add_argument("--chunk-mb", type=float, default=64, help="MiB of X per chunk")
    ap.add_argument("--prefetch", type=int, default=2)
    ap.add_argument("--bce-steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--check-m", type=int, default=100_000, help="rows of the small correctness file")
    ap.add_argument("--keep", action="store_true", help="keep the files")
    ap.add_argument("--json", default=None, help="write the results here as JSON")
    args = ap.parse_args(argv)

    import jax

    from gradfit import stream

    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="gradfit-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(args.dtype)
    m = int(args.gb * 1e9 // (args.n * dtype.itemsize))
    chunk_bytes = int(args.chunk_mb * 2**20)
    need = m * args.n * dtype.itemsize * 1.1
    free = shutil.disk_usage(folder).free
    if free < need:
        print(f"error: {folder} has {free / 1e9:.1f} GB free, the files need {need / 1e9:.1f} GB: use --dir or a smaller --gb",
              file=sys.stderr)
        return 2
    results = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "mem_total_gb": mem_total_gb(),
                    "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]},
        "versions": {"jax": jax.__version__, "numpy": np.__version__},
        "m": m, "n": args.n, "dtype": str(dtype), "chunk_bytes": chunk_bytes, "prefetch": args.prefetch,
    }
    print(json.dumps(results, indent=1))
    try:
        results["correctness"] = correctness_check(folder, args.check_m, args.n, chunk_bytes=1 << 20)
        print("correctness (small file, streamed vs in-memory fit / lstsq):", json.dumps(results["correctness"], indent=1))
        results["rss_before_mb"] = rss_mb()
        info = write_problem(folder, m, args.n, dtype, seed=0)
        X_gb = m * args.n * dtype.itemsize / 1e9
        results["write_seconds"] = info["write_seconds"]
        print(f"wrote X {m} x {args.n} {dtype} = {X_gb:.2f} GB in {info['write_seconds']:.1f} s; rss {rss_mb()}")
        paths = info["paths"]

        def record(name, seconds, passes, bytes_per_pass, extra=None):
            gbs = passes * bytes_per_pass / 1e9 / seconds
            row = {"seconds": seconds, "passes": passes, "GB_per_pass": bytes_per_pass / 1e9, "GB_per_s": gbs,
                   "rss_mb": rss_mb(), **(extra or {})}
            results[name] = row
            print(f"{name}: {seconds:.2f} s, {passes} pass(es), {gbs:.2f} GB/s; peak rss {row['rss_mb']['peak_ru_maxrss_mb']:.0f} MB")

        t = time.perf_counter()
        stats = stream.sufficient_statistics(paths["X"], paths["y_reg"], chunk_bytes=chunk_bytes, prefetch=args.prefetch)
        jax.block_until_ready(stats)
        seconds = time.perf_counter() - t
        data = stream.StreamedData.open(paths["X"], paths["y_reg"], chunk_bytes=chunk_bytes)
        opt, j_opt = stream.least_squares(stats)
        record("statistics_passes_cold", seconds, 2, data.bytes_per_pass, {"optimum_loss": j_opt})
        fit = stream.fit_streaming(paths["X"], paths["y_reg"], learning_rate=0.5, steps=500, tol=1e-7,
                                   chunk_bytes=chunk_bytes, prefetch=args.prefetch)
        st = fit.stats
        record("mse_fit_by_statistics", st["run_seconds"], st["passes"], st["bytes_per_pass"], {
            "stream_seconds": st["stream_seconds"], "compile_seconds": st["compile_seconds"], "steps": fit.steps,
            "converged": fit.converged, "relative_loss_gap": (float(fit.loss) - j_opt) / j_opt})

        fit = stream.fit_streaming(paths["X"], paths["y_cls"], loss="bce", learning_rate=1.0, steps=args.bce_steps,
                                   chunk_bytes=chunk_bytes, prefetch=args.prefetch)
        st = fit.stats
        record("bce_full_batch_steps", st["stream_seconds"], st["passes"], st["bytes_per_pass"], {
            "steps": fit.steps, "seconds_per_step": st["stream_seconds"] / st["passes"],
            "compile_seconds": st["compile_seconds"], "losses": fit.losses.tolist(), "final_loss": float(fit.loss)})

        fit = stream.fit_streaming(paths["X"], paths["y_cls"], loss="bce", learning_rate=0.5, steps=1,
                                   batch_size=args.batch_size, optimizer="sgd", chunk_bytes=chunk_bytes,
                                   prefetch=args.prefetch)
        st = fit.stats
        record("bce_minibatch_epoch", st["stream_seconds"], st["passes"], st["bytes_per_pass"], {
            "batch_size": args.batch_size, "epoch_loss": fit.losses.tolist(), "final_loss": float(fit.loss),
            "compile_seconds": st["compile_seconds"]})
        results["peak_rss_mb"] = rss_mb()["peak_ru_maxrss_mb"]
        results["peak_rss_ok"] = results["peak_rss_mb"] <= 1.5 * 1024
        print(f"PEAK RSS of this process: {results['peak_rss_mb']:.0f} MB "
              f"({'within' if results['peak_rss_ok'] else 'ABOVE'} the 1.5 GB budget); X was {X_gb:.2f} GB")
    finally:
        if not args.keep:
            for name in ("X", "y_reg", "y_cls"):
                (folder / f"{name}.npy").unlink(missing_ok=True)
            if not args.dir:
                shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        from gradfit import _io

        _io.write_json(args.json, results)
    return 0 if results.get("peak_rss_ok") else 1


if __name__ == "__main__":
    sys.exit(main())
