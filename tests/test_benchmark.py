"""The benchmark script runs and reports ratios (no timing assertions)."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


STAND_IN_TIMM_BENCHMARK = '''
import argparse, json
import timm, torch
p = argparse.ArgumentParser()
for a in ("--model", "--bench", "--device"):
    p.add_argument(a)
for a in ("-b", "--img-size", "--num-warm-iter", "--num-bench-iter"):
    p.add_argument(a, type=int)
p.add_argument("--no-retry", action="store_true")
a = p.parse_args()
m = timm.create_model(a.model).eval()          # only relzoo's registration makes a SAN name known to timm
with torch.inference_mode():
    m(torch.randn(a.b, 3, a.img_size, a.img_size))
speed = {"san10_pair": 2.0, "resnet26": 8.0}[a.model]
print("log lines first")
print("--result\\n" + json.dumps({"model": a.model, "infer_samples_per_sec": speed, "train_samples_per_sec": speed / 4,
                                   "argv": vars(a)}))
'''


@pytest.mark.slow
def test_benchmark_quick_runs_beside_timms_benchmark_script(tmp_path, monkeypatch):
    """The quick SAN tables, and --timm_benchmark: the given benchmark.py (timm's own, from a pytorch-image-models
    checkout; a stand-in with the same command line and output protocol here) runs once per model per round with
    relzoo registered, its ratios are taken within each round, and the table puts them beside relzoo's."""
    import os
    import runpy
    import sys

    script = tmp_path / "benchmark.py"
    script.write_text(STAND_IN_TIMM_BENCHMARK)
    argv = ["benchmark.py", "san", "--quick", "--json", str(tmp_path / "b.json"), "--timm_benchmark", str(script),
            "--timm_iters", "1", "2"]
    monkeypatch.setattr(sys, "argv", argv)      # restored afterwards: later tests read the program name from it
    result = runpy.run_path(str(ROOT / "scripts" / "benchmark.py"), run_name="not_main")["main"](argv[1:])
    assert result["aggregation"][0]["memory_ratio"] > 1  # the reference holds the unfolded copy, the fast path does not
    attention = {(r["sa_type"], r["mode"]): r for r in result["attention"]}
    assert set(attention) == {(t, m) for t in ("pairwise", "patchwise") for m in ("inference", "train")}
    assert all(r["kernels"] and r["speedup"] > 0 for r in attention.values())
    assert attention["pairwise", "train"]["memory_ratio"] > 1  # the kernels never hold the relation tensor
    rows = {r["model"]: r for r in result["models"]}
    assert set(rows) >= {"san10_pair", "san10_pair (PyTorch operators)", "resnet26"}
    assert rows["san10_pair"]["train_images_per_s"] > 0 and rows["san10_pair (PyTorch operators)"][
        "train_images_per_s"] > 0
    assert rows["san10_pair"]["kernels"] and not rows["san10_pair (PyTorch operators)"]["kernels"]
    pids = [pid for r in result["models"] for pid in r["processes"]]
    assert len(pids) == len(set(pids)) == len(rows) and os.getpid() not in pids  # one fresh process per model row
    assert (tmp_path / "b.json").is_file()
    timm_rows = {r["model"]: r for r in result["timm"]}
    assert set(timm_rows) == {"san10_pair", "resnet26"}
    assert timm_rows["san10_pair"]["infer_vs_baseline"] == 0.25 and timm_rows["san10_pair"]["train_vs_baseline"] == 0.25
    assert timm_rows["san10_pair"]["infer_images_per_s_range"] == (2.0, 2.0) and timm_rows["san10_pair"]["rounds"] == 1
    low, high = rows["san10_pair"]["vs_baseline_range"]
    assert low <= rows["san10_pair"]["vs_baseline"] <= high


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




def test_benchmark_options_belong_to_their_benchmark(capsys):
    import runpy

    main = runpy.run_path(str(ROOT / "scripts" / "benchmark.py"), run_name="not_main")["main"]
    with pytest.raises(SystemExit):
        main(["ctx", "--quick", "--compile"])
    assert "--compile is for san, got it with ctx" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["san", "--quick", "--repeats", "0"])
    assert "--repeats must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--timm_benchmark must be timm's benchmark.py file, got 'nowhere.py'"):
        main(["san", "--quick", "--timm_benchmark", "nowhere.py"])
    with pytest.raises(SystemExit, match="--burst must be at least 1, got 0"):
        main(["san", "--quick", "--burst", "0"])
    with pytest.raises(SystemExit, match="NAME:KIND with KIND one of .*, got 'san10_pair:fastest'"):
        main(["san", "--quick", "--skip_operators", "--models", "san10_pair:fastest"])


def test_timm_scripts_runner_passes_the_arguments_and_runs_as_main(tmp_path, capsys, monkeypatch):
    """``python -m relzoo.timm_scripts SCRIPT ARGS`` (used by the side-by-side test in a real subprocess, where the
    stand-in's create_model of a SAN name proves the registration)."""
    import sys

    from relzoo.timm_scripts import run_script

    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    script = tmp_path / "probe.py"
    script.write_text("import sys, timm\nprint(sys.argv[1:], timm.is_model('san10_patch'), __name__)\n")
    run_script(str(script), ["--model", "x", "-b", "2"])
    assert capsys.readouterr().out.strip() == "['--model', 'x', '-b', '2'] True __main__"
    with pytest.raises(SystemExit, match="must be an existing .py file.*missing.py"):
        run_script(str(tmp_path / "missing.py"), [])


def test_gpu_check_script_says_when_no_gpu_is_visible(tmp_path):
    """scripts/gpu_check.sh (the CUDA tests + benchmark tables in one command) stops at once, naming the reason, where
    torch sees no CUDA device; on a GPU machine it is run itself, not from here."""
    import os
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: run scripts/gpu_check.sh itself")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "out")], capture_output=True,
                          text=True, env=dict(os.environ, PY=sys.executable), timeout=120)
    assert proc.returncode != 0
    assert f"gpu_check.sh: torch {torch.__version__} sees no CUDA device" in proc.stderr
    assert not (tmp_path / "out" / "device.txt").exists()    # nothing ran past the check


def test_profile_table_names_the_operators_and_the_ceilings():
    """--profile: per-operator self time of an inference and a training step, shares summing to the whole, SAN's own
    operators among those named, and the device's measured matmul / bandwidth ceilings."""
    import runpy

    main = runpy.run_path(str(ROOT / "scripts" / "benchmark.py"), run_name="not_main")["main"]
    result = main(["san", "--quick", "--profile"])
    rows = {(r["model"], r["mode"]): r for r in result["profile"]}
    assert set(rows) == {(m, mode) for m in ("san10_pair", "resnet26") for mode in ("inference", "train")}
    for r in rows.values():
        assert abs(sum(o["share"] for o in r["ops"]) - 1) < 1e-6 and r["ops"][-1]["op"] == "(all others)"
        assert r["gflop"] > 0 and r["profiled_s"] > 0
    san_train_ops = {o["op"] for o in rows["san10_pair", "train"]["ops"]}
    assert any(op.startswith("relzoo::") for op in san_train_ops), san_train_ops
    assert result["limits"]["matmul_gflops"] > 0 and result["limits"]["copy_gbytes_per_s"] > 0
