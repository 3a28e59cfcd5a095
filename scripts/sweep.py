"""Run a hyperparameter sweep from a TOML config (the same as ``gradfit sweep``).

    python scripts/sweep.py --config configs/sweep_lr_l2.toml [--set sweep.top=10]

Writes results.csv, histories.npz, params.npz and loss_curves.png to output.dir; a rerun
skips the groups already written.
"""

import argparse
import sys

from gradfit import config, runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", required=True, help="a TOML config with a [sweep] grid")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        summary = runs.sweep_config(config.load(args.config, args.overrides))
    except (ValueError, OSError) as e:
        print(f"sweep: error: {e}", file=sys.stderr)
        return 2
    return 0 if len(summary["rows"]) > summary["diverged"] else 1


if __name__ == "__main__":
    sys.exit(main())
