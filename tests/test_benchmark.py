"""The benchmark script runs and reports ratios (no timing assertions)."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_benchmark_quick_runs(tmp_path, monkeypatch):
    import runpy
    import sys

    argv = ["benchmark.py", "san", "--quick", "--json", str(tmp_path / "b.json")]
    monkeypatch.setattr(sys, "argv", argv)      # restored afterwards: later tests read the program name from it
    result = runpy.run_path(str(ROOT / "scripts" / "benchmark.py"), run_name="not_main")["main"](argv[1:])
    assert result["aggregation"][0]["memory_ratio"] > 1  # the reference holds the unfolded copy, the fast path does not
    assert result["attention"][0]["memory_ratio"] > 1  # the fused attention never holds the relation tensor
    rows = {r["model"]: r for r in result["models"]}
    assert set(rows) >= {"san10_pair", "san10_pair (unfused attention)", "resnet26"}
    assert rows["san10_pair"]["train_images_per_s"] > 0 and "train_images_per_s" not in rows[
        "san10_pair (unfused attention)"]  # training runs the same operators with or without fused inference
    assert (tmp_path / "b.json").is_file()


@pytest.mark.slow
def test_benchmark_compile_table_runs(tmp_path):
    import runpy

    main = runpy.run_path(str(ROOT / "scripts" / "benchmark.py"), run_name="not_main")["main"]
    result = main(["san", "--compile", "--quick"])
    rows = {(r["model"], r["mode"]): r for r in result["compile"]}
    assert set(rows) == {("san10_pair", "eval"), ("resnet26", "eval")}
    assert rows["san10_pair", "eval"]["graph_breaks"] == 0 and rows["san10_pair", "eval"]["graphs"] == 1
    assert all(r["first_call_s"] > 0 and r["compiled_ms"] > 0 for r in rows.values())


@pytest.mark.slow
def test_benchmark_ctx_quick_runs():
    import runpy

    main = runpy.run_path(str(ROOT / "scripts" / "benchmark.py"), run_name="not_main")["main"]
    result = main(["ctx", "--quick"])
    assert [(r["queries"], r["mode"]) for r in result["head"]] == [(3, "eval"), (3, "train"), (6, "eval"),
                                                                    (6, "train")]
    assert all(r["speedup"] > 0 and r["fast_peak_mib"] > 0 for r in result["head"])
    assert [r["mode"] for r in result["episode"]] == ["eval", "train"]


def test_benchmark_hsnet_quick_runs():
    import runpy

    main = runpy.run_path(str(ROOT / "scripts" / "benchmark.py"), run_name="not_main")["main"]
    result = main(["hsnet", "--quick"])
    (conv,) = result["conv"]
    assert conv["cp_params"] == 2 * (4 * 2 * 9 + 4) and conv["dense_params"] == 4 * 2 * 81 + 4
    assert conv["max_abs_diff"] < 1e-4 and conv["speedup"] > 0 and conv["cp_peak_mib"] > 0
    assert [r["shots"] for r in result["model"]] == [1, 5]
    assert all(r["same_prediction"] and r["max_abs_logit_diff"] < 1e-4 for r in result["model"])


@pytest.mark.slow
def test_benchmark_plugins_quick_runs():
    import runpy

    main = runpy.run_path(str(ROOT / "scripts" / "benchmark.py"), run_name="not_main")["main"]
    rows = main(["plugins", "--quick"])["plugins"]
    assert [(r["model"], r["plugin"].split(" after")[0]) for r in rows] == [
        (m, p) for m in ("resnet18", "deit_tiny_patch16_224")
        for p in ("plain", "BatchFormer V1", "BatchFormerV2", "API-Net")]
    assert all(r["identical_inference"] and r["same_inference_ops"] for r in rows)   # zero inference change
    assert all(r["train_ms"] > 0 and r["train_peak_mib"] > 0 for r in rows)
    assert [r["plugin_params"] > 0 for r in rows] == [False, True, True, True] * 2
