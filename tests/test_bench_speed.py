"""scripts/bench_speed.py (issue 14's time-to-the-answer table) end to end on tiny problems (slow: it compiles)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_speed.py"


@pytest.mark.slow
def test_bench_speed_smoke_writes_checked_rows(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_speed", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out_json, out_md = tmp_path / "s.json", tmp_path / "s.md"
    assert bench.main(["--smoke", "--no-torch", "--rows", "logistic,least_squares", "--json", str(out_json),
                       "--md", str(out_md)]) == 0
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
