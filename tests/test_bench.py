"""The benchmark script end to end on a tiny problem (slow: it compiles every plan)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


@pytest.mark.slow
def test_bench_runs_and_writes_outputs(tmp_path):
    spec = importlib.util.spec_from_file_location("bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out_json, out_md = tmp_path / "b.json", tmp_path / "b.md"
    assert bench.main(["--m", "4096", "--n", "8", "--lbfgs-m", "2048", "--steps", "2", "--workload", "50",
                       "--quick", "--no-torch", "--json", str(out_json), "--md", str(out_md)]) == 0
    res = json.loads(out_json.read_text())
    md = out_md.read_text()
    assert "## Goals (this run)" in md and "numpy loop" in md
    stats_row = next(r for r in res["mse"] if "stats" in r["method"])
    assert stats_row["rel_gap"] < 1e-5  # the timed answer is right
    assert any(r["method"].startswith("gradfit lbfgs") and r["rel_gap"] is not None and r["rel_gap"] <= 1e-6
               for r in res["lbfgs"])
