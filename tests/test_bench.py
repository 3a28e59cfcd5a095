"""The benchmark script end to end on a tiny problem (slow: it compiles every plan)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_bench_speed_smoke_writes_checked_rows(tmp_path):
    """scripts/bench_speed.py (issue 14's time-to-the-answer table) on tiny problems."""
    out_json, out_md = tmp_path / "s.json", tmp_path / "s.md"
    assert _load("bench_speed").main(["--smoke", "--no-torch", "--rows", "logistic,least_squares", "--json",
                                      str(out_json), "--md", str(out_md)]) == 0
    res = json.loads(out_json.read_text())
    md = out_md.read_text()
    assert "gradfit vs best" in md and "--smoke" in md and "load average" in md
    assert [r["workload"].split(",")[0] for r in res["rows"]] == ["logistic", "least squares"]
    for row in res["rows"]:
        for m in row["methods"]:  # every timed answer was scored against the float64 reference
            assert m["reached"] == (m["gap"] <= 1e-6)
        gradfit_rec = row["methods"][0]
        assert gradfit_rec["method"].startswith("gradfit") and gradfit_rec["reached"]
        assert row["ratio"].endswith("x")


@pytest.mark.slow
def test_bench_runs_and_writes_outputs(tmp_path):
    bench = _load("bench")
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


@pytest.mark.slow
def test_bench_floor_smoke_times_every_part(tmp_path):
    """scripts/bench_floor.py (where issue 14's small-data and k=32 time goes) on tiny problems."""
    out_json, out_md = tmp_path / "f.json", tmp_path / "f.md"
    assert _load("bench_floor").main(["--smoke", "--json", str(out_json), "--md", str(out_md)]) == 0
    res = json.loads(out_json.read_text())
    assert [s["title"].split(":")[0] for s in res["sections"]] == ["small data", "multi-output least squares"]
    for section in res["sections"]:
        assert section["ms"] and all(ms > 0 for ms in section["ms"].values())
    assert res["sections"][0]["facts"]["steps"] >= 1
    assert "| part | median ms |" in out_md.read_text()
