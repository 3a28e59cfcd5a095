"""TOML configs: defaults, a file that overrides them, and ``--set section.key=value``.

A config has the sections of :data:`DEFAULTS`. Every key must be known (a typo gets a "did you mean"),
and every value must have the type of its default (or an int for a float; :data:`_OPEN_TYPES` for
keys whose default is None or a dict)."""

from __future__ import annotations

import copy
import difflib
import tomllib
from pathlib import Path
from typing import Any

from gradfit._options import FitOptions

_NOT_IN_CONFIGS = ("batched", "n_rows", "callback", "progress", "checkpoint", "checkpoint_every", "resume", "overwrite",
                   "validation")

DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {
        # "synthetic" (regression with known truth), "synthetic_classification", "diabetes", "breast_cancer"
        # (inside scikit-learn), or a path to .npy/.npz/.csv/.parquet
        "source": "synthetic",
        "n_samples": 10_000, "n_features": 16, "n_outputs": 0, "noise": 0.1, "seed": 0,  # n_outputs k > 0: y (m, k)
        "dtype": "float32",  # of X; "float64": a float64 fit; "bfloat16"/"float16": half the memory, fit in float32
        "target": None,  # for files: the target column's name or index (a list for k outputs), or the .npz array
        "features": None,  # for files: a list of column names or indices (None: all but the target)
        # bigger than memory: stream X (source) and y (y_source), .npy files, in row chunks (see [stream])
        "stream": False, "y_source": None,
    },
    # gradfit.fit's options (gradfit._options.FitOptions), less those of the Python API alone.
    "fit": {
        **{name: default for name, default in zip(FitOptions._fields, FitOptions()) if name not in _NOT_IN_CONFIGS},
        "init": "zeros",
        "optimizer_options": {},
    },
    # Several processes/hosts (gradfit.distributed); unset keys fall back to the environment
    # variables GRADFIT_COORDINATOR_ADDRESS, GRADFIT_NUM_PROCESSES, GRADFIT_PROCESS_ID.
    "distributed": {
        "coordinator_address": None, "num_processes": None, "process_id": None,  # address: "host:port" of process 0
        "initialization_timeout": 60,  # seconds for all processes to join, then a clear error
    },
    "output": {"dir": "runs/fit"},  # "~" is the home folder
    # gradfit sweep: the grid's cartesian product (keys as for gradfit.sweep; they override [fit]'s)
    "sweep": {
        "grid": {},  # e.g. {learning_rate = [0.01, 0.1], l2 = [0.0, 0.1]}
        "compact": True,  # run only still-active members between chunks
        "warm_start": False,  # members differing only in l2: a path from the largest l2, each from the last's solution
        "memory_budget_mb": 0,  # per member chunk (0: half a GPU's free memory, or 2048); bigger grids: chunks
        "top": 5,  # members printed, best first
        "plot": True,  # loss_curves.png (needs matplotlib: pip install 'gradfit[plot]')
        # validation: cv = k folds (KFold; StratifiedKFold for bce), or one random held-out validation_fraction
        "cv": 0, "validation_fraction": 0.0,  # 0: none (members ranked by training loss)
    },
    # data.stream = true: how the files are read (the plan, fit.grad, says what is computed).
    "stream": {"chunk_bytes": 64 << 20, "prefetch": 2},  # bytes of X per chunk; chunks read ahead
    # Saved atomically at chunk boundaries and at the end; `gradfit fit --resume` continues.
    "checkpoint": {
        "path": "",  # "": <output.dir>/checkpoint.npz
        "every_steps": 0, "every_seconds": 300.0,  # 0: not by steps / by time (both 0: no checkpoints)
    },
}

# Keys that no longer exist, with what replaced them.
_REMOVED = {("data", "standardize"): "fits standardise the columns internally (fit.standardize, default true) and "
            "report W and b in the data's own units, so gradfit predict applies them to raw rows: drop the key"}

# Keys whose default is None, or a dict, accept these types.
_OPEN_TYPES: dict[tuple[str, str], tuple[type, ...]] = {
    ("data", "target"): (str, int, list), ("data", "features"): (list,), ("data", "y_source"): (str,),
    ("fit", "learning_rate"): (int, float, list, str),  # str: "auto"
    ("fit", "tol"): (int, float), ("fit", "ftol"): (int, float), ("fit", "batch_size"): (int,),
    ("fit", "chunk_size"): (int,), ("fit", "optimizer_options"): (dict,), ("fit", "l2"): (int, float, list),
    ("fit", "devices"): (int, list), ("distributed", "coordinator_address"): (str,),
    ("distributed", "num_processes"): (int,), ("distributed", "process_id"): (int,),
}


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says why and how to fix it."""


def _did_you_mean(word: str, choices) -> str:
    return "".join(f" (did you mean {c!r}?)" for c in difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6))


def _check_value(section: str, key: str, value: Any, where: str) -> Any:
    default = DEFAULTS[section][key]
    allowed = _OPEN_TYPES.get((section, key)) or ((int, float) if isinstance(default, float) else (type(default),))
    if value is None and (default is None or (section, key) in _OPEN_TYPES):
        return None
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        names = " or ".join(t.__name__ for t in allowed)
        raise ConfigError(f"{where}: {section}.{key} must be {names}, got {type(value).__name__} {value!r}")
    return float(value) if isinstance(default, float) and isinstance(value, int) else value


def merge(base: dict[str, dict[str, Any]], override: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """Return ``base`` updated by ``override``, checking every section, key and type."""
    out = copy.deepcopy(base)
    for section, values in override.items():
        if section not in DEFAULTS:
            raise ConfigError(f"{where}: unknown section [{section}]{_did_you_mean(section, DEFAULTS)}; sections are "
                              f"{', '.join(DEFAULTS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: [{section}] must be a table of keys, got {values!r}")
        for key, value in values.items():
            if (section, key) in _REMOVED:
                raise ConfigError(f"{where}: {section}.{key} was removed: {_REMOVED[section, key]}")
            if key not in DEFAULTS[section]:
                raise ConfigError(f"{where}: unknown key {section}.{key}{_did_you_mean(key, DEFAULTS[section])}; "
                                  f"[{section}] takes {', '.join(DEFAULTS[section])}")
            out[section][key] = _check_value(section, key, value, where)
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"fit.learning_rate=0.1"`` -> ``{"fit": {"learning_rate": 0.1}}`` (values in TOML syntax;
    a bare word is taken as a string)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. fit.learning_rate=0.1")
    name, raw = text.split("=", 1)
    parts = name.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set {text!r}: the name must be section.key, e.g. fit.steps=500")
    raw = raw.strip()
    try:
        value = None if raw.lower() in ("none", "null") else tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return {parts[0]: {parts[1]: value}}


def load(path: str | Path | None = None, overrides: list[str] = ()) -> dict[str, dict[str, Any]]:
    """The defaults, then the TOML file at ``path``, then each ``section.key=value`` override."""
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist: check the path (examples are in configs/)")
        try:
            data = tomllib.loads(path.read_bytes().decode())  # as tomllib.load
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start}): save the config as "
                              "UTF-8 TOML") from None
        except OSError as e:
            raise ConfigError(f"cannot read config file {str(path)!r}: {e.strerror or e}") from None
        config = merge(config, data, str(path))
    for text in overrides:
        config = merge(config, parse_override(text), f"--set {text}")
    return config
