"""Accuracy on the NIST StRD linear regressions, as a table: dataset, how it was fitted, LRE, status.

LRE is the number of correct digits of the worst coefficient against NIST's certified values
(``tests/test_nist.py`` has the files' loader and asserts the floors). Rows: numpy's lstsq on
the same columns (the yardstick), and gradfit in float64 with each plan and optimizer asked for.

    python scripts/nist_table.py                 # markdown table on stdout
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_nist import lre, load  # noqa: E402

import gradfit  # noqa: E402

DATASETS = ["Norris", "Pontius", "NoInt1", "NoInt2", "Longley", "Wampler1", "Wampler2", "Wampler3", "Wampler4",
            "Wampler5", "Filip"]
FITS = {
    "lbfgs, grad=auto": dict(optimizer="lbfgs", grad="auto"),
    "lbfgs, grad=hand": dict(optimizer="lbfgs", grad="hand"),
    "lbfgs, raw (standardize=False)": dict(optimizer="lbfgs", grad="auto", standardize=False),
    "gd, auto step (the default optimizer)": dict(optimizer="sgd", learning_rate="auto"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tol", type=float, default=1e-12)
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    print("| dataset | fit | LRE | status | G |")
    print("|---|---|---|---|---|")
    with jax.enable_x64(True), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in DATASETS:
            X, y, certified, intercept = load(name)
            A = np.hstack([np.ones((len(X), 1)), X]) if intercept else X
            print(f"| {name} | numpy lstsq | {lre(np.linalg.lstsq(A, y, rcond=None)[0], certified):.1f} | | |")
            for label, options in FITS.items():
                r = gradfit.fit(X, y, fit_intercept=intercept, steps=args.steps, tol=args.tol, **options)
                got = np.concatenate([[float(r.params.b)], np.asarray(r.params.W)]) if intercept else np.asarray(
                    r.params.W)
                print(f"| {name} | {label} | {lre(got, certified):.1f} | {r.status} | {r.stats['grad_norm']:.1e} |",
                      flush=True)


if __name__ == "__main__":
    main()
