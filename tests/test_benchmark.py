"""The benchmark script runs and reports ratios (no timing assertions)."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_benchmark_quick_runs(tmp_path):
    import runpy
    import sys

    sys.argv = ["benchmark.py", "san", "--quick", "--json", str(tmp_path / "b.json")]
    result = runpy.run_path(str(ROOT / "scripts" / "benchmark.py"), run_name="not_main")["main"](sys.argv[1:])
    assert result["aggregation"][0]["memory_ratio"] > 1  # the reference holds the unfolded copy, the fast path does not
    assert {r["model"] for r in result["models"]} >= {"san10_patch", "resnet26"}
    assert (tmp_path / "b.json").is_file()
