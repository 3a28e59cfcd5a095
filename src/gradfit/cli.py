"""The ``gradfit`` command, ``fit``, ``predict``, ``sweep``, ``plot``, ``check-grads`` and ``info``
(``gradfit COMMAND --help`` lists the flags): thin wrappers that parse flags, call the library and write outputs."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
import warnings

import jax
import jaxlib
import numpy as np
import optax

import gradfit
from gradfit import _compile_cache, config, gradients, plotting, progress, runs


def _progress(args) -> bool:
    if args.progress is None:  # on by default where someone watches
        return sys.stderr.isatty() and progress.available()
    if args.progress and not progress.available():
        raise ValueError("--progress needs tqdm: pip install 'gradfit[progress]', or drop --progress")
    return args.progress


def cmd_fit(args) -> int:
    result = runs.fit_config(config.load(args.config, args.overrides), resume=args.resume, restart=args.restart,
                             progress=_progress(args))
    return 1 if np.any(result.diverged) else 0


def cmd_predict(args) -> int:
    out = runs.predict_run(args.run_dir, args.data, args.output)
    if args.output != "-":
        print(f"wrote {args.output} ({len(out)} rows)", file=sys.stderr)
    return 0


def cmd_sweep(args) -> int:
    summary = runs.sweep_config(config.load(args.config, args.overrides), progress=_progress(args))
    return 0 if len(summary["rows"]) > summary["diverged"] else 1  # 1: every member diverged


def cmd_plot(args) -> int:
    for path in plotting.plot(args.run_dir):
        print(f"wrote {path}")
    return 0


def cmd_check_grads(args) -> int:
    with jax.enable_x64(True):  # float64 rows too; the setting is restored afterwards
        rows = gradients.check_gradients()
    print(gradients.format_table(rows))
    bad = [r for r in rows if not r.ok]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} cases within tolerance")
    return 1 if bad else 0


def cmd_info(args) -> int:
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

    def command(name: str, func, text: str, runs_config: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text)
        p.set_defaults(func=func)
        if runs_config:
            p.add_argument("--config", "-c", help="a TOML config (defaults are used without one)")
            p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                           help="override one config value, e.g. --set fit.learning_rate=0.1 (repeatable)")
            p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="show a progress "
                           "bar on stderr (default: when stderr is a terminal and tqdm is installed)")
        return p

    p = command("fit", cmd_fit, "fit one model from a config", runs_config=True)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint (default "
                   "<output.dir>/checkpoint.npz)")
    p.add_argument("--restart", action="store_true", help="start over though the checkpoint holds an unfinished run")
    p = command("predict", cmd_predict, "apply a fitted run folder's model to the rows of a data file")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the output.dir of a gradfit fit")
    p.add_argument("data", metavar="DATA", help="a .csv, .parquet, .npz or .npy file with the model's feature columns")
    p.add_argument("--output", "-o", default="-", help="a .csv or .npy file for the predictions (bce: probabilities; "
                   "default: CSV on stdout)")
    command("sweep", cmd_sweep, "fit every member of a [sweep] grid (one compile per group); resumable",
            runs_config=True)
    command("plot", cmd_plot, "draw a fit or sweep output folder as PNG (needs matplotlib)").add_argument(
        "run_dir", metavar="RUN_DIR", help="the output.dir of a gradfit fit or gradfit sweep")
    command("check-grads", cmd_check_grads, "compare the hand-derived gradients with jax.grad")
    command("info", cmd_info, "print the JAX backend and devices")
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"gradfit: warning: {message}", file=sys.stderr if file is None else file)


def _interrupted(args, argv: list[str], stop: KeyboardInterrupt) -> int:
    """One line on stderr saying where the run stopped and how to continue; exit 128 + the signal."""
    signum = getattr(stop, "signum", signal.SIGINT)
    words = ["gradfit", *argv]
    if args.command == "fit" and getattr(stop, "checkpoint", None) is not None:
        again = [w for w in words if w != "--restart"] + ([] if args.resume else ["--resume"])
        how = f"saved {stop.checkpoint}; continue with: {shlex.join(again)}"
    elif args.command == "fit":
        how = "no checkpoint was saved: a rerun starts afresh"
    elif args.command == "sweep":
        how = f"{getattr(stop, 'saved', 'the groups written are kept')}; continue with: {shlex.join(words)}"
    else:
        how = "nothing was written"
    print(f"gradfit {args.command}: {str(stop) or 'interrupted'}; {how}", file=sys.stderr)
    return 128 + signum


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a run's loop (loading, compiling, writing): stop as Ctrl-C would."""

    signum = signal.SIGTERM


def _terminate(signum, frame):
    raise Terminated("terminated by SIGTERM")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    cache = os.environ.get(_compile_cache.CACHE_ENV)
    if cache not in ("0", ""):  # compiled programs kept on disk: a later command starts in a fraction of a second
        _compile_cache.enable_compilation_cache(cache)
    own = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    if own:  # a run's loop takes it over (gradfit._driver), then gives it back; main gives back its own
        signal.signal(signal.SIGTERM, _terminate)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning  # a warning is one line, no source excerpt
            return args.func(args)
    except (ValueError, OSError, ImportError) as e:  # user mistakes, unreadable files, a missing extra, a coordinator
        print(f"gradfit {args.command}: error: {e}", file=sys.stderr)  # one clear line, no traceback
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: the run saved where it stopped (gradfit._driver)
        return _interrupted(args, argv, stop)
    finally:
        if own:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
